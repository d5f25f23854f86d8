"""Promote and roll back: pick the flag store, compute the change, apply, record it."""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shim.base.errors import ConfigError, ShimError
from shim.base.names import check_task_name
from shim.flags import FlagState
from shim.flags.store import (
    DEFAULT_RAMP,
    FileStore,
    FlagStore,
    Setting,
    UnleashAdminStore,
    next_rung,
)
from shim.records.observe import envelope
from shim.records.sinks import FileSink

__all__ = [
    "Change",
    "OpsError",
    "apply",
    "check_request",
    "known_tasks",
    "open_store",
    "plan_promote",
    "plan_rollback",
    "read_state",
    "record",
]


class OpsError(ShimError):
    """A promote or rollback that cannot go ahead; the message says why (exit 2)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One task moving from one setting to another."""

    task: str
    before: Setting
    after: Setting


def open_store(flags_path: Path | None) -> FlagStore:
    """The flags.yaml given (or in SHIM_FLAGS), or the Unleash server when
    ``SHIM_FLAGS=unleash`` (Admin API: UNLEASH_URL, UNLEASH_ADMIN_TOKEN,
    UNLEASH_ENVIRONMENT)."""
    env = os.environ
    source = str(flags_path) if flags_path is not None else env.get("SHIM_FLAGS", "")
    if not source:
        raise OpsError("no flags: pass --flags PATH or set SHIM_FLAGS (a path, or 'unleash')")
    if source != "unleash":
        if not Path(source).is_file():
            raise OpsError(f"{source}: no such flags file")
        return FileStore(source)
    missing = [v for v in ("UNLEASH_URL", "UNLEASH_ADMIN_TOKEN") if not env.get(v)]
    if missing:
        raise OpsError(
            f"SHIM_FLAGS=unleash needs {' and '.join(missing)} (an admin token for the Admin API)"
        )
    return UnleashAdminStore(
        env["UNLEASH_URL"],
        env["UNLEASH_ADMIN_TOKEN"],
        environment=env.get("UNLEASH_ENVIRONMENT") or "development",
    )


def _setting(state: FlagState, task: str) -> Setting:
    flags = state.tasks.get(task)
    return Setting(flags.serve, flags.shadow) if flags else Setting(0, 0)


def check_request(
    tasks: Sequence[str], serve: int | None = None, shadow: int | None = None
) -> None:
    """What can be checked before asking the flag store anything."""
    for task in tasks:
        try:
            check_task_name(task)
        except ValueError as exc:
            raise OpsError(str(exc)) from None
    _percent("serve", serve)
    _percent("shadow", shadow)


def _check_task(task: str, state: FlagState, known: Sequence[str]) -> None:
    check_request([task])
    if task not in state.tasks and task not in known:
        raise OpsError(
            f"unknown task {task!r}: it is neither in the flags nor in "
            "assignments.yaml (check the name, or register the task first)"
        )


def _percent(name: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= 100:
        raise OpsError(f"--{name} must be a percentage from 0 to 100, got {value}")


def plan_promote(
    state: FlagState,
    task: str,
    known: Sequence[str],
    *,
    serve: int | None,
    shadow: int | None,
    ramp: Sequence[int] = DEFAULT_RAMP,
) -> Change | None:
    """The next rung (or the explicit percentages); None when already live."""
    _check_task(task, state, known)
    _percent("serve", serve)
    _percent("shadow", shadow)
    before = _setting(state, task)
    if serve is not None or shadow is not None:
        after = Setting(
            before.serve if serve is None else serve, before.shadow if shadow is None else shadow
        )
    else:
        rung = next_rung(before, ramp)
        if rung is None:
            return None
        after = rung
    return Change(task, before, after)


def plan_rollback(state: FlagState, tasks: Sequence[str], known: Sequence[str]) -> list[Change]:
    """Serve 0 for these tasks, shadow kept; tasks already at serve 0 are left alone."""
    changes = []
    for task in tasks:
        _check_task(task, state, known)
        before = _setting(state, task)
        if before.serve:
            changes.append(Change(task, before, Setting(0, before.shadow)))
    return changes


def record(
    event: str,
    changes: Sequence[Change],
    store: FlagStore,
    log: Path | None,
    *,
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Write one ``shim.promote`` / ``shim.rollback`` record per change to ``log``."""
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    rows = []
    for change in changes:
        product, _, task = change.task.partition(".")
        row = envelope(event, product, task)
        row.update(
            {
                "who": who,
                "backend": store.description,
                "from": change.before.as_record(),
                "to": change.after.as_record(),
            }
        )
        if reason:
            row["reason"] = reason
        row.update(extra or {})
        rows.append(row)
    if log is not None and rows:
        sink = FileSink(log)
        try:
            sink.write([json.dumps(r, separators=(",", ":")) + "\n" for r in rows])
        finally:
            sink.close()
    return rows


def known_tasks(assignments: Path | None) -> list[str]:
    """Tasks in assignments.yaml (SHIM_ASSIGNMENTS or kiwi's), for name checks."""
    from shim.base.orch import AssignmentsFile, default_config_path, parse_file

    path = assignments or Path(
        os.environ.get("SHIM_ASSIGNMENTS") or default_config_path("assignments.yaml")
    )
    try:
        return list(parse_file(path, AssignmentsFile)[0].assignments)
    except ConfigError:
        return []


def read_state(store: FlagStore) -> FlagState:
    """The store's flags, with load errors turned into OpsError."""
    try:
        return store.read()
    except ConfigError as exc:
        raise OpsError(str(exc)) from None


def apply(store: FlagStore, changes: Sequence[Change]) -> None:
    """Apply the changes; errors become OpsError."""
    try:
        store.apply({c.task: c.after for c in changes})
    except ConfigError as exc:
        raise OpsError(str(exc)) from None
