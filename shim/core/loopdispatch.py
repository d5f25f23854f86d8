"""Bounded background work for async call sites: tasks on their event loop.

Like :class:`~shim.core.dispatch.ThreadDispatcher`, it reserves a slot before the
caller's work starts and gives it back when the job ends; a caller that finds no slot
drops the comparison (and the shim counts it). Nothing here ever makes a caller wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from shim.core.dispatch import DropHook, ErrorHook
from shim.core.loopend import ending

__all__ = ["LoopDispatcher"]

_LOOP_CLOSED = (
    "an event loop ended while a compared call's legacy run was still running in the "
    "background, and that run could not be kept (it was cancelled with the loop's other "
    "tasks); such comparisons are counted as dropped. End each job with "
    "`await s.aflush()` before its loop ends to keep them"
)


class LoopDispatcher:
    """Background tasks on one event loop, at most ``capacity`` at a time, each held
    by a strong reference until done.

    A task cancelled before it finished is told to ``on_cancelled`` (``aclose``
    cancels what is late). One cancelled because its loop ended (``asyncio.run``
    returning; see :mod:`shim.core.loopend`, which keeps most of them running to the
    end) is counted through ``on_dropped`` (reason ``loop_closed``; without it,
    ``on_cancelled``), and the first one on a loop is reported to ``on_error``
    (``loop_closed``): a warning that names ``aflush``, once per loop.
    """

    def __init__(
        self,
        *,
        capacity: int,
        on_error: ErrorHook,
        on_cancelled: Callable[[str], None] | None = None,
        on_dropped: DropHook | None = None,
    ) -> None:
        self.capacity = capacity
        self._on_error = on_error
        self._on_cancelled = on_cancelled  # told of each task cancelled before it finished
        self._on_dropped = on_dropped
        self._told_loop_closed = False
        self._pending = 0
        self._tasks: dict[asyncio.Task[None], str] = {}

    @property
    def pending(self) -> int:
        """Tasks reserved or running."""
        return self._pending

    def try_reserve(self) -> bool:
        """Take a slot; False (at once) when all are taken."""
        if self._pending >= self.capacity:
            return False
        self._pending += 1
        return True

    def release(self) -> None:
        """Give back a reserved slot that will not be used."""
        self._pending -= 1

    def spawn(self, task: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task; the caller must hold a reserved slot."""
        job = asyncio.get_running_loop().create_task(work)
        self._tasks[job] = task
        job.add_done_callback(self._done)

    def _done(self, job: asyncio.Task[None]) -> None:
        task = self._tasks.pop(job, "?")
        self._pending -= 1
        if job.cancelled():  # by drain, or by the loop's end (asyncio.run cancels all)
            if ending(job.get_loop()):
                self._loop_closed(task)
            elif self._on_cancelled is not None:
                self._on_cancelled(task)
        elif (exc := job.exception()) is not None:
            self._on_error("dispatch", exc)

    def _loop_closed(self, task: str) -> None:
        """A comparison the loop's end took with it: counted, and said once per loop."""
        if self._on_dropped is not None:
            product, _, name = task.partition(".")
            self._on_dropped(product, name, "loop_closed")
        elif self._on_cancelled is not None:
            self._on_cancelled(task)
        if not self._told_loop_closed:
            self._told_loop_closed = True
            self._on_error("loop_closed", RuntimeError(_LOOP_CLOSED))

    async def drain(self, timeout: float, *, cancel: bool = True) -> None:
        """Wait up to ``timeout`` for running tasks; cancel the rest unless told not to
        (each one cancelled is told to ``on_cancelled`` as it ends)."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(list(self._tasks), timeout=timeout)
        if cancel and late:
            for job in late:
                job.cancel()
            await asyncio.wait(late, timeout=1.0)
