"""Flags on an Unleash server, changed through its Admin API, one read-modify-write at
a time.

Unleash has no transaction over several flags and no ``If-Match`` on its Admin API, so
a change is made safe in two layers:

- Between shim processes, a lock: the feature ``shim.ops.lock``. Creating a feature
  whose name exists fails (409), so whoever creates it holds the lock; releasing it
  archives and deletes it. Its description says who holds it and until when (``ttl``);
  a lock past that time was left by a process that died, and is broken.
- Against edits outside shim (the UI, another tool), which take no lock: each rollout
  is written with a JSON Patch that first tests the rollout read (Unleash applies the
  patch only if the test passes), and after writing, the tasks are read again. If
  anything differs from what was planned, the plan runs again from what is there, up
  to ``attempts`` times. The on/off switch of an environment has no such test: an edit
  of it that lands between the write and the check is caught by the check, one that
  lands after it is not (it is a later edit, and ``shim status`` shows it).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from shim.base.errors import ShimError

from ._change import Change, Plan, Setting, changes_from, setting_of
from ._model import KILL_SWITCH, FlagState, TaskFlags
from ._rules import serve_flag, shadow_flag

__all__ = ["LOCK_FLAG", "UnleashAdminStore"]

#: The feature that, while it exists, says a shim process is changing flags.
LOCK_FLAG = "shim.ops.lock"


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
        """What the flag serves: its rollout when enabled (100 without a strategy)."""
        if not self.enabled:
            return 0
        return 100 if self.strategy is None else int(float(self.rollout or 0))

    @property
    def stickiness(self) -> str:
        params = (self.strategy or {}).get("parameters", {})
        return str(params.get("stickiness") or "default")


class UnleashAdminStore:
    """Flags on an Unleash server, changed through its Admin API.

    ``url`` is the server's base (``http://host:4242``; a trailing ``/api`` is accepted).
    Missing flags are created with one flexibleRollout strategy (``groupId`` = flag
    name); 0 % disables the flag in ``environment``, more enables it. ``lock_timeout``
    is how long :meth:`update` waits for another process's change to finish;
    ``lock_ttl`` how long a lock is honoured before it counts as abandoned.
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
        base = url.rstrip("/").removesuffix("/api")
        self.description = f"Unleash {base} ({environment})"
        self.environment = environment
        self.lock_timeout = lock_timeout
        self.lock_ttl = lock_ttl
        self.attempts = attempts
        self._project = f"/api/admin/projects/{project}/features"
        self._http = http or httpx.Client(
            base_url=base, timeout=10.0, headers={"Authorization": admin_token}
        )

    # -- reading ----------------------------------------------------------------------

    def read(self, tasks: Collection[str] | None = None) -> FlagState:
        """Every task with a serve or shadow flag in the project, or only ``tasks``
        (two requests per task, so naming them is much quicker on a busy server)."""
        return self._read(tasks)[0]

    def _read(self, tasks: Collection[str] | None) -> tuple[FlagState, dict[str, _Flag]]:
        if tasks is None:
            reply = self._call("GET", self._project)
            self._ok(reply, "list flags")
            names = [f["name"] for f in reply.json().get("features", [])]
            tasks = sorted(
                {n.rsplit(".", 1)[0] for n in names if n.endswith((".serve", ".shadow"))}
            )
        raw: dict[str, _Flag] = {}
        found: dict[str, TaskFlags] = {}
        for task in tasks:
            serve = raw[serve_flag(task)] = self._flag(serve_flag(task))
            shadow = raw[shadow_flag(task)] = self._flag(shadow_flag(task))
            if not (serve.exists or shadow.exists):
                continue
            try:
                found[task] = TaskFlags(
                    serve=serve.percent, shadow=shadow.percent, stickiness=serve.stickiness
                )
            except ValueError:
                continue
        kill = self._flag(KILL_SWITCH)
        return FlagState(found, kill=kill.percent >= 100), raw

    def _flag(self, name: str) -> _Flag:
        reply = self._call("GET", f"{self._project}/{name}")
        if reply.status_code == 404:
            return _Flag()
        self._ok(reply, f"read {name}")
        for env in reply.json().get("environments", []):
            if env.get("name") == self.environment:
                rollout = next(
                    (s for s in env.get("strategies", []) if s.get("name") == "flexibleRollout"),
                    None,
                )
                return _Flag(True, bool(env.get("enabled")), rollout)
        return _Flag(True)

    # -- changing ---------------------------------------------------------------------

    def update(
        self,
        plan: Plan,
        *,
        tasks: Collection[str] | None = None,
        on_applied: Callable[[list[Change]], None] | None = None,
    ) -> list[Change]:
        """Under the lock: read, plan, write each rollout conditionally, read back; plan
        again from what is there when anything moved underneath."""
        with self._locked():
            for _ in range(self.attempts):
                state, raw = self._read(tasks)
                changes = changes_from(state, plan(state))
                if not changes:
                    return []
                try:
                    for change in changes:
                        self._set(serve_flag(change.task), change.after.serve, raw)
                        self._set(shadow_flag(change.task), change.after.shadow, raw)
                except _Conflict:
                    continue
                after, _ = self._read([c.task for c in changes])
                if all(setting_of(after, c.task) == c.after for c in changes):
                    if on_applied is not None:
                        on_applied(changes)
                    return changes
        raise ShimError(
            f"{self.description}: the flags kept changing while shim changed them "
            f"({self.attempts} attempts); is someone editing them by hand? Check them "
            "with `shim status`, then run the command again"
        )

    def apply(self, changes: Mapping[str, Setting]) -> None:
        """Set both flags of each task, whatever they were."""
        self.update(lambda _state: changes, tasks=list(changes))

    def _set(self, name: str, percent: int, raw: Mapping[str, _Flag]) -> None:
        read = raw.get(name, _Flag())
        if not read.exists:
            reply = self._call("POST", self._project, json={"name": name, "type": "release"})
            if reply.status_code == 409:
                raise _Conflict(name)
            self._ok(reply, f"create {name}")
        path = f"{self._project}/{name}/environments/{self.environment}"
        if read.strategy is None:
            params = {"rollout": str(percent), "stickiness": "default", "groupId": name}
            body = {"name": "flexibleRollout", "parameters": params, "constraints": []}
            self._ok(
                self._call("POST", f"{path}/strategies", json=body), f"add a rollout to {name}"
            )
        elif read.rollout != str(percent):
            # The test makes the write conditional: Unleash refuses the whole patch when
            # the rollout is no longer the one this plan was made from.
            patch = [
                {"op": "test", "path": "/parameters/rollout", "value": read.rollout},
                {"op": "replace", "path": "/parameters/rollout", "value": str(percent)},
            ]
            reply = self._call("PATCH", f"{path}/strategies/{read.strategy['id']}", json=patch)
            if reply.status_code == 404 or "TEST_OPERATION_FAILED" in reply.text:
                raise _Conflict(name)
            self._ok(reply, f"set {name} to {percent} %")
        if not read.exists or read.enabled != (percent > 0):
            switch = "on" if percent > 0 else "off"
            self._ok(self._call("POST", f"{path}/{switch}"), f"switch {name} {switch}")

    # -- the lock ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        me = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + self.lock_timeout
        while True:
            holder = {"holder": me, "expires": time.time() + self.lock_ttl}
            body = {"name": LOCK_FLAG, "type": "operational", "description": json.dumps(holder)}
            reply = self._call("POST", self._project, json=body)
            if reply.status_code < 300:
                break
            if reply.status_code != 409:
                self._ok(reply, f"take the lock {LOCK_FLAG}")
            held = self._holder()
            if held is None:
                # Archived, not yet deleted: a lock being released (or left half-released
                # by a process that died); deleting it from the archive is always safe.
                self._call("DELETE", f"/api/admin/archive/{LOCK_FLAG}")
            elif float(held.get("expires", 0)) < time.time():
                self._drop(held)  # abandoned: its holder would have released it by now
            elif time.monotonic() > deadline:
                until = time.strftime("%H:%M:%S", time.localtime(float(held["expires"])))
                raise ShimError(
                    f"{self.description}: another change holds the lock (feature "
                    f"{LOCK_FLAG}, held by {held.get('holder')}); try again. If that "
                    f"process died, the lock lapses at {until}"
                )
            else:
                time.sleep(0.05)
        try:
            yield
        finally:
            self._drop(holder)

    def _holder(self) -> dict[str, Any] | None:
        reply = self._call("GET", f"{self._project}/{LOCK_FLAG}")
        if reply.status_code == 404:
            return None
        self._ok(reply, f"read the lock {LOCK_FLAG}")
        try:
            held = json.loads(reply.json().get("description") or "{}")
        except ValueError:
            held = {}
        return held if isinstance(held, dict) else {}

    def _drop(self, holder: Mapping[str, Any]) -> None:
        """Release the lock if ``holder`` still holds it (a lock broken as abandoned and
        taken by another process is theirs now)."""
        current = self._holder()
        if current is None or current.get("holder") != holder.get("holder"):
            return
        self._call("DELETE", f"{self._project}/{LOCK_FLAG}")  # archives it ...
        self._call("DELETE", f"/api/admin/archive/{LOCK_FLAG}")  # ... and frees the name

    # -- HTTP -------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            reply = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ShimError(
                f"{self.description}: {type(exc).__name__}: {exc}; is the "
                "server up and UNLEASH_URL right?"
            ) from None
        if reply.status_code in (401, 403):
            raise ShimError(
                f"{self.description} refused the admin token "
                f"({reply.status_code}); check UNLEASH_ADMIN_TOKEN"
            )
        return reply

    def _ok(self, reply: httpx.Response, what: str) -> None:
        if reply.status_code >= 300:
            raise ShimError(
                f"{self.description}: cannot {what}: {reply.status_code} {reply.text[:200]}"
            )

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()
