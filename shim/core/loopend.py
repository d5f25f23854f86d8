"""Background work that outlasts its event loop's end, within a deadline.

``asyncio.run`` (and any ``asyncio.Runner``) ends a loop by cancelling every task left
on it, then waits for them all, then shuts down async generators. A served async
call's legacy run, compared in the background as a task on the caller's loop, would
be cancelled there whenever the job returns first: with one loop per job (task
queues, command-line tools) that is every time. :func:`outlast` awaits a background
step so that this one cancellation does not reach it: it goes on until it is done or
its deadline passes, and the runner's wait for its cancelled tasks keeps the loop
running until then. Any other cancellation (the deadline's own, ``aclose``, legacy's
own timeouts) goes through as before.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Generator
from typing import Any, TypeVar

__all__ = ["LoopEnded", "ended", "ending", "outlast"]

T = TypeVar("T")

_MARGIN = 0.001  # seconds

# Loops seen ending: once one background task has kept running through the end, the
# others on that loop (no longer "cancelling" once it uncancels) must be told too.
_ended: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
# Tasks that took back the loop's end: the runner cancels each task once, so a second
# cancellation is someone else's (a timeout of legacy's own) and goes through.
_absorbed: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


class LoopEnded(Exception):
    """A background step failed after its event loop began to end: what the job had
    set up for it (its own client, closed as the job returned) may be gone, so the
    failure says nothing about the step."""


def ended(exc: BaseException) -> BaseException:
    """``exc`` as the background step in the current task raised it, or
    :class:`LoopEnded` if the task had gone on past its loop's end (a timeout is still
    a timeout: the deadline is the step's own)."""
    if not isinstance(exc, Exception) or isinstance(exc, TimeoutError):
        return exc
    task = asyncio.current_task()
    if task is None or task not in _absorbed:
        return exc
    ended = LoopEnded(f"after its event loop ended: {type(exc).__name__}: {exc}")
    ended.__cause__ = exc
    return ended


def ending(loop: asyncio.AbstractEventLoop) -> bool:
    """True once ``loop`` is ending: every task left on it is being cancelled, which
    is what a runner does after its main task returned (no task of the program is
    still running to ask for a cancellation of its own)."""
    if loop in _ended:
        return True
    for task in asyncio.all_tasks(loop):
        if not task.done() and not task.cancelling():
            return False
    _ended.add(loop)
    return True


def outlast(step: Awaitable[T], deadline: float) -> Awaitable[T]:
    """Await ``step`` so that the end of its event loop does not cancel it before
    ``deadline`` (the loop's clock); see the module's docstring."""
    return _Outlasting(step, deadline)


class _Outlasting:
    """An awaitable that drives ``step`` itself, so a cancellation of the task reaches
    this driver first: the loop's end is absorbed (the task uncancelled, the step's
    future awaited further), anything else is passed on as the task would have."""

    __slots__ = ("deadline", "step")

    def __init__(self, step: Awaitable[Any], deadline: float) -> None:
        self.step = step
        self.deadline = deadline

    def __await__(self) -> Generator[Any, Any, Any]:
        loop = asyncio.get_running_loop()
        inner = self.step.__await__()
        reply: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                yielded = inner.send(reply) if thrown is None else inner.throw(thrown)
            except StopIteration as stop:
                return stop.value
            reply, thrown = None, None
            awaited = _future_of(yielded, loop)
            try:
                if awaited is None:  # a bare yield (sleep(0)) or what the task rejects
                    try:
                        reply = yield yielded
                    except asyncio.CancelledError:
                        if not self._absorb(loop):
                            raise
                    continue
                awaited._asyncio_future_blocking = False  # as the task does: it waits
                while not (yield from self._wait(awaited, loop)):
                    pass
            except GeneratorExit:
                inner.close()
                raise
            except BaseException as exc:
                thrown = exc

    def _wait(
        self, awaited: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> Generator[Any, Any, bool]:
        """Wait for ``awaited`` on a future of our own; True once it is done, False
        when the loop's end was absorbed before (wait again). A cancellation not
        absorbed is passed on as the task would have: ``awaited`` cancelled too."""
        waiter = loop.create_future()

        def wake(_: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)

        awaited.add_done_callback(wake)
        try:
            yield from waiter.__await__()
        except asyncio.CancelledError:
            awaited.remove_done_callback(wake)
            if self._absorb(loop):
                return awaited.done()  # it may have finished just as the loop ended
            awaited.cancel()
            raise
        return True

    def _absorb(self, loop: asyncio.AbstractEventLoop) -> bool:
        """The cancellation just received is the loop's end, and there is time left:
        take it back (the task's count of cancellations stays as it was, so a later
        timeout is a timeout) and go on."""
        task = asyncio.current_task(loop)
        if task is None or task in _absorbed:
            return False
        # The deadline's own timer may fire a hair before it (the loop's clock
        # resolution): a cancellation that close to it is the deadline's.
        if loop.time() + _MARGIN >= self.deadline or not ending(loop):
            return False
        _absorbed.add(task)
        task.uncancel()
        return True


def _future_of(yielded: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any] | None:
    """What a step yielded, if it is a future of this loop that the task would wait
    on (``await fut`` yields the future with ``_asyncio_future_blocking`` set)."""
    if getattr(yielded, "_asyncio_future_blocking", False) is not True:
        return None
    get_loop = getattr(yielded, "get_loop", None)
    if get_loop is None or get_loop() is not loop:
        return None
    future: asyncio.Future[Any] = yielded
    return future
