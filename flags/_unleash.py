"""Flags from an Unleash server, through the official UnleashClient SDK.

Each task is two Unleash flags, ``<product>.<task>.serve`` and ``.shadow``, each one
``flexibleRollout`` strategy (``rollout``, ``stickiness``, ``groupId`` = flag name). The
SDK fetches them in the background; every fetch is compiled into :class:`Rules`, and
plain rollouts are decided with the same bucketing the file backend uses (no SDK call
per decision). A flag that is more than a plain rollout (constraints, segments, several
strategies, another group id) is decided by the SDK's own engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from shim.base.context import current_context
from shim.base.names import check_task_name
from shim.base.secrets import checked_secret, warn_if_plain_http, without_credentials

from ._model import KILL_SWITCH, FlagState, TaskFlags
from ._rules import Decision, Engine, Rules
from ._source import Events, FlagListener

__all__ = ["UnleashFlags", "compile_features"]

_SUFFIXES = (".serve", ".shadow")
# The SDK's cache keys (UnleashClient.constants ETAG and FEATURES_URL); not imported, so
# that importing flags does not load the SDK.
_ETAG, _FEATURES = "etag", "/client/features"


def _plain(feature: Mapping[str, Any]) -> tuple[int, str] | None:
    """(rollout %, stickiness) when the flag is a plain rollout, else None."""
    if not feature.get("enabled", False):
        return 0, "default"
    strategies = [s for s in feature.get("strategies") or [] if not s.get("disabled")]
    if not strategies:
        return 100, "default"  # enabled without strategies: on for everyone
    if len(strategies) != 1:
        return None
    strategy = strategies[0]
    if strategy.get("constraints") or strategy.get("segments"):
        return None
    if strategy.get("name") == "default":
        return 100, "default"
    if strategy.get("name") != "flexibleRollout":
        return None
    params = strategy.get("parameters") or {}
    if (params.get("groupId") or feature.get("name")) != feature.get("name"):
        return None
    try:
        rollout = int(float(params.get("rollout", 0)))
    except (TypeError, ValueError):
        return None
    return max(0, min(100, rollout)), str(params.get("stickiness") or "default")


def compile_features(features: list[Mapping[str, Any]], engine_for: Any = None) -> Rules:
    """Rules from Unleash feature definitions (``/api/client/features``).

    ``engine_for(flag_name)`` returns an :data:`~flags.Engine` for a flag that is not a
    plain rollout; without it such flags count as off.
    """
    percents: dict[str, dict[str, int]] = {}
    stickiness: dict[str, str] = {}
    engines: dict[str, Engine] = {}
    kill = False
    for feature in features:
        name = str(feature.get("name", ""))
        plain = _plain(feature)
        if name == KILL_SWITCH:
            kill = plain[0] >= 100 if plain else bool(engine_for and engine_for(name)(None))
            continue
        suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            continue
        task = name[: -len(suffix)]
        try:
            check_task_name(task)
        except ValueError:
            continue
        if plain is None:
            if engine_for is not None:
                engines[name] = engine_for(name)
            plain = (0, "default")
        percents.setdefault(task, {})[suffix[1:]] = plain[0]
        if suffix == ".serve" or task not in stickiness:
            stickiness[task] = plain[1]
    tasks = {
        task: TaskFlags(
            serve=p.get("serve", 0),
            shadow=p.get("shadow", 0),
            stickiness=stickiness.get(task, "default"),
        )
        for task, p in percents.items()
    }
    return Rules(FlagState(tasks, kill), engines)


def _unleash_context(sticky: str | None, stickiness: str) -> dict[str, Any]:
    fields = dict(current_context())
    context: dict[str, Any] = {}
    user, session = fields.pop("user_id", None), fields.pop("session_id", None)
    if sticky is not None:
        if stickiness in ("default", "userId", "user_id"):
            user = sticky
        elif stickiness in ("sessionId", "session_id"):
            session = sticky
        else:
            fields[stickiness] = sticky
    if user is not None:
        context["userId"] = user
    if session is not None:
        context["sessionId"] = session
    if fields:
        context["properties"] = fields
    return context


class _MemoryCache:
    """The SDK's cache, in memory: no state shared through ``~/.cache`` between runs.

    It also tells whether each poll reached the server (the SDK reports a failed fetch
    only in its log): every poll reads the ETag first and the features last, and
    :meth:`heard`, a requests response hook, notes in between that the server answered
    (a 200 or a 304; Unleash sends a 304 without an ETag, so the cache is not written).
    """

    def __init__(self, on_poll: Callable[[bool], None] | None = None) -> None:
        self.data: dict[str, Any] = {}
        self.bootstrapped = False
        self._on_poll = on_poll
        self._polling = self._answered = False

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def heard(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        """requests' response hook: the features endpoint answered."""
        if response.status_code in (200, 304) and response.url.split("?")[0].endswith(
            "/client/features"
        ):
            self._answered = True
        return response

    def mset(self, data: dict[str, Any]) -> None:
        self.data.update(data)

    def get(self, key: str, default: Any = None) -> Any:
        if key == _ETAG:  # a poll begins
            self._polling, self._answered = True, False
        elif key == _FEATURES and self._polling:  # ... and ends
            self._polling = False
            if self._on_poll is not None:
                self._on_poll(self._answered)
        return self.data.get(key, default)

    def exists(self, key: str) -> bool:
        return key in self.data

    def destroy(self) -> None:
        self.data.clear()


class UnleashFlags:
    """Per-task flags from an Unleash server (``url`` ends in ``/api``).

    Until the first successful fetch every task is off (legacy) and a ``warning`` event
    says so; afterwards a server that goes away leaves the last fetched flags in force,
    with a ``warning`` event when a poll first fails and an ``info`` event when the
    server answers again (``failed_polls`` counts them). ``refresh_interval`` is the
    SDK's polling period in seconds.

    ``api_token`` is checked here (whitespace around it stripped; one a header cannot
    carry is a ConfigError that never quotes it). ``url`` is the server as events and
    records show it: credentials in the URL given are replaced by ``[redacted]``.
    """

    def __init__(
        self,
        *,
        url: str,
        api_token: str,
        app_name: str = "task-shim",
        refresh_interval: int = 15,
        environment: str = "default",
        disable_metrics: bool = True,
    ) -> None:
        from UnleashClient import UnleashClient  # type: ignore[attr-defined]
        from UnleashClient.cache import BaseCache
        from UnleashClient.utils import InstanceAllowType

        token = checked_secret(
            api_token, name="api_token (UNLEASH_API_TOKEN)", where="UnleashFlags"
        )
        self.url = without_credentials(url)
        self.rules = Rules()
        self.version = 0
        self.failed_polls = 0
        self._down_since: float | None = None
        self._events = Events(self.url)
        if token:
            warn_if_plain_http(url, what="the Unleash API token", setting="UNLEASH_URL")
        cache = _MemoryCache(self._on_poll)
        BaseCache.register(_MemoryCache)
        self._client = UnleashClient(
            url=url,
            app_name=app_name,
            environment=environment,
            refresh_interval=refresh_interval,
            custom_headers={"Authorization": token or ""},
            custom_options={"hooks": {"response": cache.heard}},
            disable_metrics=disable_metrics,
            cache=cache,  # type: ignore[arg-type]
            event_callback=self._on_event,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )
        self._client.initialize_client()
        if self.version == 0:
            self._emit(
                "warning",
                f"Unleash at {self.url} did not answer; every task is off (legacy) until it does",
            )

    def decide(self, task: str, sticky: str | None) -> Decision:
        """The decision for one call of ``task``."""
        return self.rules.decide(task, sticky)

    def subscribe(self, listener: FlagListener) -> None:
        """Send events to ``listener``, starting with any that happened before."""
        self._events.subscribe(listener)

    def close(self) -> None:
        """Stop the SDK's polling."""
        self._client.destroy()

    def _engine(self, flag: str) -> Engine:
        client = self._client
        stickiness = "default"

        def evaluate(sticky: str | None) -> bool:
            return bool(client.is_enabled(flag, _unleash_context(sticky, stickiness)))

        return evaluate

    def _on_event(self, event: Any) -> None:
        features = getattr(event, "features", None)
        if features is None:  # impression events and READY carry no flags
            return
        try:
            rules = compile_features(features, self._engine)
        except Exception as exc:
            self._emit(
                "error",
                f"cannot use the flags Unleash sent: {type(exc).__name__}: "
                f"{exc}; keeping the last good flags",
            )
            return
        first = self.version == 0
        self.rules = rules
        self.version += 1
        if first:
            self._emit("info", f"Unleash at {self.url}: {len(rules.state.tasks)} tasks")

    def _on_poll(self, answered: bool) -> None:
        if not answered:
            self.failed_polls += 1
            if self._down_since is None and self.version > 0:
                self._down_since = time.monotonic()
                self._emit(
                    "warning",
                    f"Unleash at {self.url} did not answer; keeping the last flags "
                    f"(version {self.version}) until it does",
                )
        elif self._down_since is not None:
            down, self._down_since = time.monotonic() - self._down_since, None
            self._emit("info", f"Unleash at {self.url} answers again after {down:.1f} s")

    def _emit(self, level: str, message: str) -> None:
        self._events.emit(level, message, self.version)
