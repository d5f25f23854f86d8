"""Flags from any OpenFeature client: whatever provider it has decides.

Each task is the two boolean flags the other backends use, ``<product>.<task>.serve``
and ``.shadow``, evaluated by the client for every call of a task the source was given
(OpenFeature cannot list flags, so the tasks are named up front). The sticky value is
the evaluation context's targeting key and the shim's context fields its attributes,
so a provider buckets a caller as it would anywhere else in the app. ``shim.kill`` is a
boolean flag evaluated off the caller's path: at start, on the provider's events and
every ``kill_interval`` seconds, by a poller that also makes out each task's stage.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
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

    The provider's percentages are not visible through OpenFeature, so the source makes
    out each task's stage from what its calls got: ``canary`` once a call was served by
    the task path, ``shadow`` once one was compared, and back down (to ``shadow`` or
    ``off``) after ``stage_hold`` seconds (10 minutes) without such a call. A call that
    got more than its task's stage (the first served one) is recorded at what it got.
    ``shim status`` / ``shim promote`` need a backend whose percentages the shim can
    read and write (:class:`FileFlags`, :class:`UnleashFlags`).
    """

    def __init__(
        self,
        client: Any,
        tasks: Iterable[str],
        *,
        kill_interval: float = 1.0,
        stage_hold: float = 600.0,
    ) -> None:
        from openfeature.evaluation_context import EvaluationContext
        from openfeature.event import ProviderEvent

        names = tuple(dict.fromkeys(tasks))
        for task in names:
            check_task_name(task)
        if not names:
            raise ValueError("OpenFeatureFlags needs the tasks it decides, e.g. ['kiwi.ocr']")
        for name, value in (("kill_interval", kill_interval), ("stage_hold", stage_hold)):
            if not value > 0:
                raise ValueError(f"{name} must be above 0 seconds, not {value}")
        self._client = client
        self._context = EvaluationContext
        self.tasks = names
        self.version = 0
        self.errors = 0
        self._seen_errors: set[tuple[str, str]] = set()
        self._not_ready_said = False
        self._events = Events(f"openfeature:{_provider_name(client)}")
        #: when a call of each task was last served by the task path, and last compared
        self._served_at: dict[str, float] = {}
        self._compared_at: dict[str, float] = {}
        self._stages = dict.fromkeys(names, "off")
        self._hold = stage_hold
        self._kill = False
        self._engines: dict[str, Engine] = {}
        for task in names:
            self._engines[serve_flag(task)] = self._engine(serve_flag(task), self._served_at)
            self._engines[shadow_flag(task)] = self._engine(shadow_flag(task), self._compared_at)
        self.rules = self._rules()
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
        self._thread: threading.Thread | None = None
        self._start()
        ref = weakref.ref(self)

        def after_fork() -> None:  # a forked worker polls the kill switch too
            source = ref()
            if source is not None and not source._stop.is_set():
                source._lock = threading.Lock()
                source._start()

        os.register_at_fork(after_in_child=after_fork)

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._poll, name="shim-openfeature-poller", daemon=True
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
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def stages(self) -> dict[str, str]:
        """Each task's stage as the source makes it out now."""
        return dict(self._stages)

    # -- evaluating ----------------------------------------------------------------

    def _engine(self, flag: str, seen: dict[str, float]) -> Engine:
        details = self._client.get_boolean_details
        context = self._context
        task = flag.rpartition(".")[0]

        def evaluate(sticky: str | None) -> bool:
            result = details(flag, False, context(sticky, dict(current_context())))
            if result.error_code is not None:
                self._failed(flag, result)
                return False
            if result.value is True:
                seen[task] = time.monotonic()
                return True
            return False

        return evaluate

    def _rules(self) -> Rules:
        state = {task: TaskFlags() for task in self.tasks}
        return Rules(FlagState(state, kill=self._kill), self._engines, dict(self._stages))

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
        """Evaluate the kill switch and swap the rules when it changed. A kill switch
        that cannot be read (another type, an error) leaves it as it was: counted, said
        once, never taken for off; one the provider does not have is off."""
        result = self._client.get_boolean_details(KILL_SWITCH, False, self._context())
        code = getattr(result.error_code, "value", result.error_code)
        if result.error_code is not None and code != "FLAG_NOT_FOUND":
            self._failed(KILL_SWITCH, result)
            if self.version:
                return
        kill = result.value is True and result.error_code is None
        with self._lock:
            if kill == self._kill and self.version:
                return
            self._kill = kill
            self.rules = self._rules()
            self.version += 1
        if kill:
            self._emit("warning", f"{KILL_SWITCH} is on: every task legacy, nothing compared")
        elif self.version > 1:
            self._emit("info", f"{KILL_SWITCH} is off: tasks decided by their flags again")

    def _restage(self) -> None:
        """Each task's stage from what its calls got lately (see the class)."""
        now, moved = time.monotonic(), []
        with self._lock:
            for task in self.tasks:
                if now - self._served_at.get(task, -math.inf) < self._hold:
                    stage = "canary"
                elif now - self._compared_at.get(task, -math.inf) < self._hold:
                    stage = "shadow"
                else:
                    stage = "off"
                if stage != self._stages[task]:
                    moved.append(f"{task}: {self._stages[task]} -> {stage}")
                    self._stages[task] = stage
            if moved:
                self.rules = self._rules()
                self.version += 1
        for change in moved:
            self._emit("info", f"stage {change}, by what its calls got")

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            self._restage()
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
