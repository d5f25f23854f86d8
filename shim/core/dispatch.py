"""Bounded background work: worker threads for sync call sites, tasks for async ones.

Both reserve a slot before the caller's work starts and give it back when the job ends;
a caller that finds no slot drops the comparison (and the shim counts it). Nothing
here ever makes a caller wait.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from typing import Any

from shim.core.loopend import ending

__all__ = ["ErrorHook", "Gate", "LoopDispatcher", "ThreadDispatcher"]

Job = tuple[str, Callable[..., None], tuple[Any, ...]]  # (task name, work, its arguments)
ErrorHook = Callable[[str, BaseException], None]
DropHook = Callable[[str, str, str], None]  # (product, task, reason)

_LOOP_CLOSED = (
    "an event loop ended while a compared call's legacy run was still running in the "
    "background, and that run could not be kept (it was cancelled with the loop's other "
    "tasks); such comparisons are counted as dropped. End each job with "
    "`await s.aflush()` before its loop ends to keep them"
)


class ThreadDispatcher:
    """``workers`` daemon threads; at most ``capacity`` jobs queued or running.

    A caller hands a job over by appending it to an inbox (no system call, no lock);
    a pump thread moves jobs to the workers, polling every ``poll`` seconds while work
    arrives and sleeping on an event once idle, so only the first job after a quiet
    spell pays for a wake-up. Threads start on first use and again in a forked child.
    """

    def __init__(
        self, *, workers: int, capacity: int, on_error: ErrorHook, poll: float = 0.001
    ) -> None:
        if workers < 1 or capacity < 1:
            raise ValueError("workers and capacity must be at least 1")
        self.workers = workers
        self.capacity = capacity
        self.poll = poll
        self._on_error = on_error
        self._reset()
        ref = weakref.ref(self)

        def after_fork() -> None:
            dispatcher = ref()
            if dispatcher is not None:
                dispatcher._reset()

        os.register_at_fork(after_in_child=after_fork)

    def _reset(self) -> None:
        # Also the after-fork hook: the child has none of the parent's threads or jobs.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inbox: deque[Job] = deque()
        self._wake = threading.Event()
        self._pump_asleep = False
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # The free slots, as tokens: taking one is one C call and no lock, which every
        # compared call pays.
        self._free: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(self.capacity):
            self._free.put(None)
        self._running: dict[int, str] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def pending(self) -> int:
        """Jobs reserved, queued or running."""
        return self.capacity - self._free.qsize()

    def try_reserve(self) -> bool:
        """Take a slot for one job; False (at once) when all are taken."""
        if self._closed:
            return False
        try:
            self._free.get_nowait()
        except queue.Empty:
            return False
        return True

    def release(self) -> None:
        """Give back a slot: its job ended, or will not be used."""
        self._free.put(None)
        if self._free.qsize() == self.capacity:  # idle: close may be waiting for it
            with self._lock:
                self._idle.notify_all()

    def submit(self, task: str, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)`` on a worker; the caller must hold a reserved slot."""
        self.handoff((task, work, args))

    def handoff(self, job: Job) -> None:
        """:meth:`submit` for a ready-made ``(task, work, args)`` job: the cheapest way in."""
        if not self._threads:
            self._start()
        self._inbox.append(job)
        if self._pump_asleep:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            pump = threading.Thread(target=self._pump, name="shim-pump", daemon=True)
            pump.start()
            self._threads.append(pump)
            for i in range(self.workers):
                thread = threading.Thread(target=self._work, name=f"shim-worker-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self) -> None:
        inbox, put, idle = self._inbox, self._queue.put, 0
        while True:
            if inbox:
                idle = 0
                while inbox:
                    put(inbox.popleft())
                continue
            if self._closed and not self.pending:
                return
            idle += 1
            if idle < 100:
                time.sleep(self.poll)
                continue
            # Quiet for a while: sleep until a submit sets the event. Checking the inbox
            # after announcing sleep closes the race with a submit that saw us awake.
            self._pump_asleep = True
            if not inbox:
                self._wake.wait(1.0)
            self._wake.clear()
            self._pump_asleep = False
            idle = 0

    def _work(self) -> None:
        ident = threading.get_ident()
        while True:
            job = self._queue.get()
            if job is None:
                return
            task, work, args = job
            self._running[ident] = task
            try:
                work(*args)
            except BaseException as exc:
                self._on_error("dispatch", exc)
            finally:
                self._running.pop(ident, None)
                self.release()

    def close(self, timeout: float) -> Counter[str]:
        """Stop taking jobs, finish queued ones within ``timeout`` seconds.

        Returns how many jobs per task did not finish (never started, or still running).
        """
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._lock:
            self._closed = True
            while self.pending and self._threads:
                left = deadline - time.monotonic()
                if left <= 0 or not self._idle.wait(left):
                    break
        unfinished: Counter[str] = Counter()
        for source in (self._inbox, self._queue):
            while True:
                try:
                    job = source.popleft() if isinstance(source, deque) else source.get_nowait()
                except (IndexError, queue.Empty):
                    break
                if job is not None:
                    unfinished[job[0]] += 1
                    self.release()
        unfinished.update(self._running.values())
        for _ in range(self.workers):
            self._queue.put(None)
        self._wake.set()
        return unfinished


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


class Gate:
    """At most ``limit`` callers inside at once, across threads and event loops; the
    rest are turned away at once (never made to wait). ``peak`` is the most ever in."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.inside = 0
        self.peak = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        """Come in if there is room; False at once when full."""
        with self._lock:
            if self.inside >= self.limit:
                return False
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            return True

    def leave(self) -> None:
        """Make room for the next caller."""
        with self._lock:
            self.inside -= 1
