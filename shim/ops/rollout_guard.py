"""What keeps a rollout one rollout: a human's approval of the step it waits for, and
one controller per task and log at a time."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shim.flags.store import Change, FlagStore, setting_of
from shim.ops.logtail import LogTail
from shim.ops.promote import OpsError, record

__all__ = ["approve", "controller_lock", "waiting_for"]

#: What ends a wait for approval: the step moved, or the rollout ended.
_PAST = ("advance", "rollback", "stopped", "complete", "start")


def waiting_for(task: str, log: Path) -> int | None:
    """The step ``task``'s rollout waits for an approval of, by ``log`` (its last
    ``await_approval`` record with no later move or end); None when none waits."""
    product, _, name = task.partition(".")
    waiting = None
    for rec in LogTail([log]).poll():
        if rec.get("event") != "shim.rollout" or (rec.get("product"), rec.get("task")) != (
            product,
            name,
        ):
            continue
        if rec.get("action") == "await_approval" and isinstance(rec.get("step"), int):
            waiting = rec["step"]
        elif rec.get("action") in _PAST:
            waiting = None
    return waiting


def approve(task: str, step: int, store: FlagStore, log: Path) -> None:
    """Approve ``step`` of ``task``'s rollout (a ``shim.rollout`` record, ``action:
    approved``), for a rollout with ``confirm: true``; OpsError unless the rollout
    waits for that step (an approval no one asked for would be taken later, unseen)."""
    waiting = waiting_for(task, log)
    if waiting != step:
        now = (
            f"no step of {task}'s rollout waits for an approval in {log}"
            if waiting is None
            else f"{task}'s rollout waits for step {waiting}, not {step}"
        )
        raise OpsError(f"{now}: nothing approved")
    setting = setting_of(store.read([task]), task)
    same = [Change(task, setting, setting)]
    extra = {"action": "approved", "step": step}
    record("shim.rollout", same, store, log, reason=f"step {step} approved", extra=extra)


@contextmanager
def controller_lock(task: str, log: Path) -> Iterator[None]:
    """Hold the lock of ``task``'s controller on ``log`` (a file beside it, locked with
    ``flock``) while the block runs; OpsError when another controller holds it."""
    path = log.with_name(f".{log.name}.{task}.rollout.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # the controller writes its decisions there too
        raise OpsError(f"{path}: cannot lock the controller ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise OpsError(
                f"another `shim rollout {task}` runs on {log} (pid {holder}): one "
                "controller a task, or their decisions would cross"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
