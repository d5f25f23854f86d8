"""Flags on an Unleash server, changed through its Admin API, one read-modify-write at
a time.

Unleash has no transaction over several flags and no ``If-Match`` on its Admin API, so
a change is made safe in two layers:

- Between shim processes, a lock: the feature ``shim.ops.lock``, held for a lease the
  holder renews while it works (:mod:`._admin_lock`).
- Against edits outside shim (the UI, another tool), which take no lock: each rollout
  is written with a JSON Patch that first tests the rollout read (Unleash applies the
  patch only if the test passes), and after writing, the tasks are read again. If a
  test fails, or the read-back differs from the plan, shim first puts back what it
  wrote in this attempt (each rollout by a tested patch from its value to the one read,
  so a later edit is never undone), then reads and plans again, up to ``attempts``
  times. A change is thus always planned from flags that hold none of shim's own
  unrecorded writes, and one command never climbs two rungs. A failure part-way (the
  server stops answering) puts back what was written too, and says so. The on/off
  switch of an environment has no such test: an edit of it that lands between the
  write and the check is caught by the check, one that lands after it is not (it is a
  later edit, and ``shim status`` shows it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError

from shim.base.errors import ConfigError, Problem, ShimError

from ._admin_http import AdminApi, failed_test
from ._admin_lock import LOCK_FLAG, AdminLock, Lease, LockLost
from ._change import Change, Plan, Setting, changes_from, setting_of
from ._model import KILL_SWITCH, FlagState, TaskFlags
from ._rules import serve_flag, shadow_flag

__all__ = ["LOCK_FLAG", "UnleashAdminStore"]


class _Conflict(Exception):
    """A flag changed between reading it and writing it."""


@dataclass(frozen=True, slots=True)
class _Flag:
    """One Unleash flag in the store's environment, as read."""

    exists: bool = False
    enabled: bool = False
    strategy: dict[str, Any] | None = None  # the flexibleRollout strategy, with its id

    @property
    def rollout(self) -> str | None:
        return None if self.strategy is None else str(self.strategy["parameters"].get("rollout"))

    @property
    def percent(self) -> int:
        """What the flag serves: its rollout when enabled (100 without a strategy);
        ValueError when that rollout is no percentage."""
        if not self.enabled:
            return 0
        if self.strategy is None:
            return 100
        try:
            percent = int(float(self.rollout or 0))
        except (ValueError, OverflowError):
            raise ValueError(f"rollout {self.rollout!r} is not a percentage") from None
        if not 0 <= percent <= 100:
            raise ValueError(f"rollout {self.rollout!r} is not a percentage from 0 to 100")
        return percent

    @property
    def stickiness(self) -> str:
        params = (self.strategy or {}).get("parameters", {})
        return str(params.get("stickiness") or "default")


@dataclass(frozen=True, slots=True)
class _Wrote:
    """One write of an attempt, with what puts it back."""

    flag: str
    what: str  # "create", "strategy", "rollout" or "switch"
    old: Any = None  # the rollout (str) or the switch (bool) as read
    new: Any = None
    strategy_id: str | None = None


class UnleashAdminStore:
    """Flags on an Unleash server, changed through its Admin API.

    ``url`` is the server's base (``http://host:4242``; a trailing ``/api`` is accepted);
    ``admin_token`` is checked here, and never shown (see :class:`._admin_http.AdminApi`).
    Missing flags are created with one flexibleRollout strategy (``groupId`` = flag
    name); 0 % disables the flag in ``environment``, more enables it. ``lock_timeout``
    is how long :meth:`update` waits for another process's change to finish;
    ``lock_ttl`` the lease of the lock, renewed while a change runs, after which an
    unrenewed lock counts as abandoned.
    """

    def __init__(
        self,
        url: str,
        admin_token: str,
        *,
        environment: str = "development",
        project: str = "default",
        http: httpx.Client | None = None,
        lock_timeout: float = 15.0,
        lock_ttl: float = 60.0,
        attempts: int = 5,
    ) -> None:
        self._api = AdminApi(url, admin_token, environment=environment, project=project, http=http)
        self._lock = AdminLock(self._api, timeout=lock_timeout, ttl=lock_ttl)
        self.description = self._api.description  # the server without credentials
        #: Takes the admin token and URL credentials out of text (operation records).
        self.redact = self._api.redact
        self.environment = environment
        self.lock_timeout = lock_timeout
        self.lock_ttl = lock_ttl
        self.attempts = attempts

    # -- reading ----------------------------------------------------------------------

    def read(self, tasks: Collection[str] | None = None) -> FlagState:
        """Every task with a serve or shadow flag in the project, or only ``tasks``
        (two requests per task, so naming them is much quicker on a busy server).
        ConfigError, naming the flag, when a task's flag says no percentage."""
        return _Session(self._api, None).read(tasks)[0]

    # -- changing ---------------------------------------------------------------------

    def update(
        self,
        plan: Plan,
        *,
        tasks: Collection[str] | None = None,
        on_applied: Callable[[list[Change]], None] | None = None,
    ) -> list[Change]:
        """Under the lock: read, plan, write each rollout conditionally, read back. When
        anything moved underneath, put back what this attempt wrote, then read and plan
        again."""
        with self._lock.held() as lease:
            session = _Session(self._api, lease)
            for _ in range(self.attempts):
                state, raw = session.read(tasks)
                changes = changes_from(state, plan(state))
                if not changes:
                    return []
                wrote: list[_Wrote] = []
                try:
                    for change in changes:
                        session.set(serve_flag(change.task), change.after.serve, raw, wrote)
                        session.set(shadow_flag(change.task), change.after.shadow, raw, wrote)
                    after, _ = session.read([c.task for c in changes])
                except _Conflict:
                    _put_back(session, wrote)
                    continue
                except LockLost as exc:
                    # Not ours to put back: the new holder may have planned from it.
                    raise LockLost(f"{exc}{_left(wrote)}") from None
                except BaseException as exc:
                    left = _put_back_quietly(session, wrote)
                    if type(exc) is ShimError:
                        raise ShimError(f"{exc}; {left}") from None
                    raise
                if all(setting_of(after, c.task) == c.after for c in changes):
                    if on_applied is not None:
                        on_applied(changes)
                    return changes
                _put_back(session, wrote)
        raise ShimError(
            f"{self.description}: the flags kept changing while shim changed them "
            f"({self.attempts} attempts; each time, what shim had written was put back); "
            "is someone editing them by hand? Check them with `shim status`, then run "
            "the command again"
        )

    def apply(self, changes: Mapping[str, Setting]) -> None:
        """Set both flags of each task, whatever they were."""
        self.update(lambda _state: changes, tasks=list(changes))

    def close(self) -> None:
        """Close the HTTP client."""
        self._api.close()


def _put_back(session: _Session, wrote: list[_Wrote]) -> None:
    """Put back what was written before planning again; an error says what is left."""
    try:
        session.put_back(wrote)
    except ShimError as exc:
        raise type(exc)(f"{exc}; shim was putting back its own writes{_left(wrote)}") from None


def _put_back_quietly(session: _Session, wrote: list[_Wrote]) -> str:
    """Put back what was written, for an error message: what became of it."""
    if not wrote:
        return "nothing had been written"
    try:
        session.put_back(wrote)
    except ShimError as exc:
        return f"what shim had written could not be put back ({exc}){_left(wrote)}"
    return "what shim had written of this change was put back"


def _left(wrote: list[_Wrote]) -> str:
    """What of this attempt is still written, for an error message."""
    if not wrote:
        return ""
    done = ", ".join(f"{w.flag} {_said(w)}" for w in wrote)
    return f"; written and not recorded: {done}; check `shim status`"


def _said(wrote: _Wrote) -> str:
    if wrote.what == "create":
        return "created"
    if wrote.what == "strategy":
        return f"rollout {wrote.new} % added"
    if wrote.what == "rollout":
        return f"rollout {wrote.old} -> {wrote.new} %"
    return "switched on" if wrote.new else "switched off"


class _Session:
    """Reads and writes of one store, under ``lease`` (None: no lock, reads only):
    every request first keeps the lease."""

    def __init__(self, api: AdminApi, lease: Lease | None) -> None:
        self._api = api
        self._lease = lease
        self._features = api.features

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if self._lease is not None:
            self._lease.keep()
        return self._api.call(method, path, **kw)

    # -- reading ----------------------------------------------------------------------

    def read(self, tasks: Collection[str] | None) -> tuple[FlagState, dict[str, _Flag]]:
        if tasks is None:
            reply = self.call("GET", self._features)
            self._api.ok(reply, "list flags")
            names = [f["name"] for f in reply.json().get("features", [])]
            tasks = sorted(
                {n.rsplit(".", 1)[0] for n in names if n.endswith((".serve", ".shadow"))}
            )
        raw: dict[str, _Flag] = {}
        found: dict[str, TaskFlags] = {}
        for task in tasks:
            serve = raw[serve_flag(task)] = self._flag(serve_flag(task))
            shadow = raw[shadow_flag(task)] = self._flag(shadow_flag(task))
            if serve.exists or shadow.exists:
                found[task] = self._task_flags(task, serve, shadow)
        kill = self._flag(KILL_SWITCH)
        return FlagState(found, kill=_full(kill)), raw

    def _task_flags(self, task: str, serve: _Flag, shadow: _Flag) -> TaskFlags:
        """The task's flags; ConfigError naming the flag that says no percentage (a task
        left out would read as serving nothing while it may serve)."""
        percents = {}
        for name, flag in ((serve_flag(task), serve), (shadow_flag(task), shadow)):
            try:
                percents[name] = flag.percent
            except ValueError as exc:
                raise self._problem(name, f"{exc}; fix the flag in Unleash") from None
        try:
            return TaskFlags(
                serve=percents[serve_flag(task)],
                shadow=percents[shadow_flag(task)],
                stickiness=serve.stickiness,
            )
        except ValidationError:
            raise self._problem(
                serve_flag(task),
                f"stickiness {serve.stickiness!r} is not a context field name; fix the "
                "flag in Unleash",
            ) from None

    def _problem(self, flag: str, message: str) -> ConfigError:
        return ConfigError([Problem(self._api.description, None, flag, message)])

    def _flag(self, name: str) -> _Flag:
        reply = self.call("GET", f"{self._features}/{name}")
        if reply.status_code == 404:
            return _Flag()
        self._api.ok(reply, f"read {name}")
        for env in reply.json().get("environments", []):
            if env.get("name") == self._api.environment:
                rollout = next(
                    (s for s in env.get("strategies", []) if s.get("name") == "flexibleRollout"),
                    None,
                )
                return _Flag(True, bool(env.get("enabled")), rollout)
        return _Flag(True)

    # -- writing ----------------------------------------------------------------------

    def _env(self, name: str) -> str:
        return f"{self._features}/{name}/environments/{self._api.environment}"

    def set(self, name: str, percent: int, raw: Mapping[str, _Flag], wrote: list[_Wrote]) -> None:
        """Write ``name`` at ``percent``, each write appended to ``wrote`` as it lands;
        _Conflict when the flag is no longer as read."""
        read = raw.get(name, _Flag())
        if not read.exists:
            reply = self.call("POST", self._features, json={"name": name, "type": "release"})
            if reply.status_code == 409:
                raise _Conflict(name)
            self._api.ok(reply, f"create {name}")
            wrote.append(_Wrote(name, "create"))
        path = self._env(name)
        if read.strategy is None:
            params = {"rollout": str(percent), "stickiness": "default", "groupId": name}
            body = {"name": "flexibleRollout", "parameters": params, "constraints": []}
            reply = self.call("POST", f"{path}/strategies", json=body)
            self._api.ok(reply, f"add a rollout to {name}")
            wrote.append(_Wrote(name, "strategy", None, percent, str(reply.json().get("id"))))
        elif read.rollout != str(percent):
            if not self._swap_rollout(name, read.strategy["id"], read.rollout, str(percent)):
                raise _Conflict(name)
            wrote.append(_Wrote(name, "rollout", read.rollout, str(percent), read.strategy["id"]))
        if not read.exists or read.enabled != (percent > 0):
            self._switch(name, percent > 0)
            wrote.append(_Wrote(name, "switch", read.enabled, percent > 0))

    def _swap_rollout(self, name: str, strategy_id: str, old: str | None, new: str) -> bool:
        # The test makes the write conditional: Unleash refuses the whole patch when the
        # rollout is no longer ``old``.
        patch = [
            {"op": "test", "path": "/parameters/rollout", "value": old},
            {"op": "replace", "path": "/parameters/rollout", "value": new},
        ]
        reply = self.call("PATCH", f"{self._env(name)}/strategies/{strategy_id}", json=patch)
        if failed_test(reply):
            return False
        self._api.ok(reply, f"set {name} to {new} %")
        return True

    def _switch(self, name: str, on: bool) -> None:
        switch = "on" if on else "off"
        self._api.ok(self.call("POST", f"{self._env(name)}/{switch}"), f"switch {name} {switch}")

    def put_back(self, wrote: list[_Wrote]) -> None:
        """Undo ``wrote``, newest first, each only while it is still what shim wrote: a
        rollout by a tested patch back to the value read (a later edit is kept); a
        switch back to its old state (with two states, one changed since is there
        already); a strategy or a flag shim added, removed. Empties ``wrote``."""
        while wrote:
            step = wrote[-1]
            if step.what == "rollout" and step.strategy_id is not None:
                self._swap_rollout(step.flag, step.strategy_id, step.new, step.old)
            elif step.what == "switch":
                self._switch(step.flag, bool(step.old))
            elif step.what == "strategy":
                reply = self.call("DELETE", f"{self._env(step.flag)}/strategies/{step.strategy_id}")
                if reply.status_code != 404:
                    self._api.ok(reply, f"remove the rollout shim added to {step.flag}")
            elif step.what == "create":
                # Switched off already (steps are undone newest first), so a flag that
                # cannot be removed serves nothing.
                self.call("DELETE", f"{self._features}/{step.flag}")  # archives it ...
                self.call("DELETE", f"/api/admin/archive/{step.flag}")  # ... removes it
            wrote.pop()


def _full(flag: _Flag) -> bool:
    """The kill switch is on when it serves everyone (a rollout that reads as no
    percentage counts as off: the switch is a flag like any other)."""
    try:
        return flag.percent >= 100
    except ValueError:
        return False
