"""Promote and roll back: pick the flag store, then one read-modify-write under the
store's lock: read the flags, plan the change from them, apply it, record it."""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shim.base.errors import ConfigError, ShimError
from shim.base.names import check_task_name
from shim.base.secrets import Redactor, env_secrets
from shim.flags import FlagState
from shim.flags.store import (
    DEFAULT_RAMP,
    Change,
    FileStore,
    FlagStore,
    Setting,
    UnleashAdminStore,
    next_rung,
    setting_of,
)
from shim.records.observe import envelope
from shim.records.sinks import FileSink

__all__ = [
    "Change",
    "Gate",
    "OpsError",
    "apply",
    "check_request",
    "check_task",
    "known_tasks",
    "open_store",
    "plan_promote",
    "plan_rollback",
    "promote",
    "read_state",
    "record",
    "rollback",
]

#: Called with a change that serves more, before it is applied: returns what the
#: ``shim.promote`` record adds (the evidence), or raises to refuse.
Gate = Callable[[Change], dict[str, Any]]

# Evidence is read outside the lock (a report over big logs takes seconds, and a
# rollback must not wait for it); when the task moved meanwhile, it is read again.
_GATE_ATTEMPTS = 8


class OpsError(ShimError):
    """A promote or rollback that cannot go ahead; the message says why (exit 2)."""


class _Moved(Exception):
    """The task is no longer where the evidence was read for."""


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


def check_task(task: str, state: FlagState, known: Sequence[str]) -> None:
    """``task`` is a task name, and in the flags or in assignments.yaml (``known``)."""
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
    check_task(task, state, known)
    _percent("serve", serve)
    _percent("shadow", shadow)
    before = setting_of(state, task)
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
        check_task(task, state, known)
        before = setting_of(state, task)
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
    when: float | None = None,
) -> list[dict[str, Any]]:
    """Write one ``shim.promote`` / ``shim.rollback`` record per change to ``log``,
    stamped now (or ``when``).

    The lines go through the same redaction as the recorder's (the environment's
    secrets and the store's own, in every form, and URL passwords): the reason and
    evidence are free text, and they bypass the recorder."""
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    rows = []
    for change in changes:
        product, _, task = change.task.partition(".")
        row = envelope(event, product, task, when)
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
        redact = _redactor(store)
        lines = [redact(json.dumps(r, separators=(",", ":"))) + "\n" for r in rows]
        sink = FileSink(log)
        try:
            sink.write(lines)
        finally:
            sink.close()
    return rows


def _redactor(store: FlagStore) -> Callable[[str], str]:
    """The environment's secrets and the store's own (an admin token passed in code)."""
    mine = Redactor(env_secrets())
    theirs = getattr(store, "redact", None)
    if not callable(theirs):
        return mine
    return lambda text: mine(theirs(text))


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


def read_state(store: FlagStore, tasks: Sequence[str] | None = None) -> FlagState:
    """The store's flags (all, or at least ``tasks``'), with load errors turned into
    OpsError."""
    try:
        return store.read(tasks)
    except ConfigError as exc:
        raise OpsError(str(exc)) from None


def _update(
    store: FlagStore,
    plan: Callable[[FlagState], Mapping[str, Setting]],
    tasks: Sequence[str] | None,
    then: Callable[[list[Change]], None] | None,
) -> list[Change]:
    try:
        return store.update(plan, tasks=tasks, on_applied=then)
    except ConfigError as exc:
        raise OpsError(str(exc)) from None


def _recorder(
    event: str,
    store: FlagStore,
    log: Path | None,
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Callable[[list[Change]], None]:
    def write(changes: list[Change]) -> None:
        record(event, changes, store, log, reason=reason, extra=extra)

    return write


def promote(
    store: FlagStore,
    task: str,
    known: Sequence[str],
    *,
    serve: int | None = None,
    shadow: int | None = None,
    ramp: Sequence[int] = DEFAULT_RAMP,
    gate: Gate | None = None,
    log: Path | None = None,
    dry_run: bool = False,
) -> tuple[Change | None, dict[str, Any]]:
    """Promote ``task`` in one read-modify-write; returns the change applied (None when
    already live; ``before == after``, nothing written, when explicit percentages were
    already set) and what its record added.

    ``gate`` sees a change that serves more before it is applied, and is asked again
    if the task moved before the lock was taken (evidence belongs to one stage).
    With ``dry_run`` nothing is written: the change is planned from a plain read.
    """
    for _ in range(_GATE_ATTEMPTS):
        planned = plan_promote(
            read_state(store, [task]), task, known, serve=serve, shadow=shadow, ramp=ramp
        )
        if planned is None:
            return None, {}
        needs_gate = gate is not None and planned.after.serve > planned.before.serve
        extra = gate(planned) if gate is not None and needs_gate else {}
        if dry_run:
            return planned, extra

        locked: list[Change] = []

        def plan(
            state: FlagState, planned: Change = planned, locked: list[Change] = locked
        ) -> dict[str, Setting]:
            change = plan_promote(state, task, known, serve=serve, shadow=shadow, ramp=ramp)
            if change is None:
                raise _Moved
            gated = gate is not None and change.after.serve > change.before.serve
            # The same setting plans the same change; another one (someone else's: a
            # store plans again only after putting back its own writes) may need the
            # gate, or the evidence of another stage: read it again.
            if gated and change.before != planned.before:
                raise _Moved
            locked.append(change)
            return {task: change.after}

        try:
            _update(store, plan, [task], _recorder("shim.promote", store, log, extra=extra))
        except _Moved:
            continue
        # Unchanged (before == after) when explicit percentages were already in place.
        return locked[-1], extra
    raise OpsError(
        f"{task} kept changing while its evidence was read ({_GATE_ATTEMPTS} times); "
        "nothing was changed: check `shim status` and run the command again"
    )


def rollback(
    store: FlagStore,
    tasks: Sequence[str] | None,
    known: Sequence[str],
    *,
    log: Path | None = None,
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> list[Change]:
    """Serve 0 for ``tasks`` (None: every task that serves, as the flags are under the
    lock), in one read-modify-write; returns the changes applied, each recorded as
    ``shim.rollback`` with the setting it actually replaced."""

    def plan(state: FlagState) -> dict[str, Setting]:
        names = tasks if tasks is not None else [t for t, f in state.tasks.items() if f.serve]
        return {c.task: c.after for c in plan_rollback(state, names, known)}

    if dry_run:
        state = read_state(store, tasks)
        return [Change(t, setting_of(state, t), after) for t, after in plan(state).items()]
    then = _recorder("shim.rollback", store, log, reason=reason, extra=extra)
    return _update(store, plan, list(tasks) if tasks is not None else None, then)


def apply(store: FlagStore, changes: Sequence[Change]) -> None:
    """Apply ``changes`` only if every task is still at its ``before`` (a compare-and-
    set under the store's lock); OpsError, and nothing changed, when one moved. Prefer
    :func:`promote` and :func:`rollback`, which plan from the flags under the lock."""

    def plan(state: FlagState) -> dict[str, Setting]:
        for change in changes:
            now = setting_of(state, change.task)
            if now != change.before:
                raise OpsError(
                    f"{change.task} changed since it was read: it is at serve {now.serve} %, "
                    f"shadow {now.shadow} %, not {change.before.serve} % and "
                    f"{change.before.shadow} %; nothing was changed: run the command again"
                )
        return {c.task: c.after for c in changes}

    _update(store, plan, [c.task for c in changes], None)
