"""Flags from any OpenFeature client: whatever provider it has decides.

Each task is the two boolean flags the other backends use, ``<product>.<task>.serve``
and ``.shadow``, evaluated by the client for every call of a task the source was given
(OpenFeature cannot list flags, so the tasks are named up front). The sticky value is
the evaluation context's targeting key and the shim's context fields its attributes,
so a provider buckets a caller as it would anywhere else in the app. ``shim.kill`` is a
boolean flag evaluated off the caller's path: at start, on the provider's events and
every ``kill_interval`` seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from shim.base.context import current_context
from shim.base.names import check_task_name

from ._model import KILL_SWITCH, FlagState, TaskFlags
from ._rules import Decision, Engine, Rules, serve_flag, shadow_flag
from ._source import Events, FlagListener

__all__ = ["OpenFeatureFlags"]


class OpenFeatureFlags:
    """Per-task flags from an OpenFeature client (``openfeature.api.get_client()``).

    ``tasks`` names the tasks (``product.task``) the client decides; any other task is
    off. Each call asks the client for the task's ``.serve`` and ``.shadow`` flags, with
    ``False`` as the default: a flag the provider does not have, cannot evaluate or
    answers with another type leaves its part off (legacy), counted in ``errors`` with
    a ``warning`` event the first time for each flag and kind of error
    (``FLAG_NOT_FOUND`` is an ``info``: a task may define only one of its two flags).
    Until the provider is ready every task is off, with one ``warning`` event.

    The provider's percentages are not visible through OpenFeature, so records take
    each call's stage from what it got (``canary`` served by the task path, ``shadow``
    compared, ``off``), and ``shim status`` / ``shim promote`` need a backend whose
    percentages the shim can read and write (:class:`FileFlags`, :class:`UnleashFlags`).
    """

    def __init__(self, client: Any, tasks: Iterable[str], *, kill_interval: float = 1.0) -> None:
        from openfeature.evaluation_context import EvaluationContext
        from openfeature.event import ProviderEvent

        names = tuple(dict.fromkeys(tasks))
        for task in names:
            check_task_name(task)
        if not names:
            raise ValueError("OpenFeatureFlags needs the tasks it decides, e.g. ['kiwi.ocr']")
        if kill_interval <= 0:
            raise ValueError(f"kill_interval must be above 0 seconds, not {kill_interval}")
        self._client = client
        self._context = EvaluationContext
        self.tasks = names
        self.version = 0
        self.errors = 0
        self._seen_errors: set[tuple[str, str]] = set()
        self._not_ready_said = False
        self._events = Events(f"openfeature:{_provider_name(client)}")
        engines: dict[str, Engine] = {}
        for task in names:
            engines[serve_flag(task)] = self._engine(serve_flag(task))
            engines[shadow_flag(task)] = self._engine(shadow_flag(task))
        state = {task: TaskFlags() for task in names}
        self._live = Rules(FlagState(state), engines)
        self._killed = Rules(FlagState(state, kill=True), engines)
        self.rules = self._live
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = kill_interval
        self._recheck()
        self._handlers = [
            (ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, self._on_change),
            (ProviderEvent.PROVIDER_READY, self._on_ready),
            (ProviderEvent.PROVIDER_ERROR, self._on_trouble),
            (ProviderEvent.PROVIDER_STALE, self._on_trouble),
        ]
        for event, handler in self._handlers:
            client.add_handler(event, handler)
        self._thread = threading.Thread(
            target=self._poll, name="shim-openfeature-kill", daemon=True
        )
        self._thread.start()

    def decide(self, task: str, sticky: str | None) -> Decision:
        """The decision for one call of ``task``."""
        return self.rules.decide(task, sticky)

    def subscribe(self, listener: FlagListener) -> None:
        """Send events to ``listener``, starting with any that happened before."""
        self._events.subscribe(listener)

    def close(self) -> None:
        """Stop checking the kill switch and stop hearing the provider's events (the
        client and its provider stay the app's to shut down)."""
        self._stop.set()
        for event, handler in self._handlers:
            self._client.remove_handler(event, handler)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # -- evaluating ----------------------------------------------------------------

    def _engine(self, flag: str) -> Engine:
        details = self._client.get_boolean_details
        context = self._context

        def evaluate(sticky: str | None) -> bool:
            result = details(flag, False, context(sticky, dict(current_context())))
            if result.error_code is not None:
                self._failed(flag, result)
                return False
            return result.value is True

        return evaluate

    def _failed(self, flag: str, result: Any) -> None:
        code = getattr(result.error_code, "value", str(result.error_code))
        if code == "PROVIDER_NOT_READY":  # starting: said once, not counted per call
            with self._lock:
                first = not self._not_ready_said
                self._not_ready_said = True
            if first:
                self._emit(
                    "warning",
                    f"OpenFeature provider {_provider_name(self._client)} is not ready; "
                    "every task is off (legacy) until it is",
                )
            return
        with self._lock:
            self.errors += 1
            first = (flag, code) not in self._seen_errors
            self._seen_errors.add((flag, code))
        if first:
            level = "info" if code == "FLAG_NOT_FOUND" else "warning"
            why = f": {result.error_message}" if result.error_message else ""
            self._emit(level, f"flag {flag}: {code}{why}; its part of each call is off")

    def _recheck(self) -> None:
        """Evaluate the kill switch and swap the rules when it changed."""
        result = self._client.get_boolean_details(KILL_SWITCH, False, self._context())
        if result.error_code is not None and getattr(result.error_code, "value", "") != (
            "FLAG_NOT_FOUND"
        ):
            self._failed(KILL_SWITCH, result)
        kill = result.value is True and result.error_code is None
        with self._lock:
            rules = self._killed if kill else self._live
            if rules is self.rules and self.version:
                return
            self.rules = rules
            self.version += 1
        if kill:
            self._emit("warning", f"{KILL_SWITCH} is on: every task legacy, nothing compared")
        elif self.version > 1:
            self._emit("info", f"{KILL_SWITCH} is off: tasks decided by their flags again")

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._recheck()
            except Exception as exc:  # a provider that raises: keep the last state
                self._emit("error", f"cannot evaluate {KILL_SWITCH}: {type(exc).__name__}: {exc}")

    # -- the provider's events -----------------------------------------------------

    def _on_change(self, details: Any) -> None:
        self._recheck()

    def _on_ready(self, details: Any) -> None:
        self._emit("info", f"OpenFeature provider {_provider_name(self._client)} is ready")
        self._recheck()

    def _on_trouble(self, details: Any) -> None:
        message = getattr(details, "message", None) or "no message"
        self._emit(
            "warning",
            f"OpenFeature provider {_provider_name(self._client)} reports trouble "
            f"({message}); a flag it cannot evaluate is off",
        )

    def _emit(self, level: str, message: str) -> None:
        self._events.emit(level, message, self.version)


def _provider_name(client: Any) -> str:
    try:
        return str(client.provider.get_metadata().name)
    except Exception:
        return "unknown"
