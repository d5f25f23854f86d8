"""Bounded background work for sync call sites: worker threads (tasks on the event
loop for async ones are :mod:`shim.core.loopdispatch`'s).

Both reserve a slot before the caller's work starts and give it back when the job ends;
a caller that finds no slot drops the comparison (and the shim counts it). Nothing
here ever makes a caller wait.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from shim.core.call import Call
from shim.core.lifecycle import renew_in_child
from shim.records.values import settle, size_of

__all__ = ["QUEUE_BYTES", "DropHook", "ErrorHook", "ThreadDispatcher", "weigh"]

Job = tuple[str, Callable[..., None], tuple[Any, ...]]  # (task name, work, its arguments)
#: A job on its way to the workers, with the bytes it was weighed at.
_Queued = tuple[str, Callable[..., None], tuple[Any, ...], int]
ErrorHook = Callable[[str, BaseException], None]
DropHook = Callable[[str, str, str], None]  # (product, task, reason)

#: The bytes the jobs queued for the workers may hold (copies of arguments and
#: outputs), estimated; past it a job is dropped (``queue_full``) as past ``capacity``.
QUEUE_BYTES = 32 * 1024 * 1024


def weigh(job: Job) -> int:
    """The bytes a job's arguments hold, estimated, once the app's objects in them are
    copied (:func:`~shim.records.values.settle`, :meth:`~shim.core.call.Call.settle`):
    the app may change them as soon as the call returns. ``type(arg) is Call``, not
    duck typing: an argument may be the app's object."""
    return sum(a.settle() if type(a) is Call else size_of(settle(a)) for a in job[2])


class ThreadDispatcher:
    """``workers`` daemon threads; at most ``capacity`` jobs queued or running, holding
    at most ``max_bytes`` (as ``weigh`` estimates them; one job alone may hold more).

    A caller hands a job over by appending it to an inbox (no system call, no lock);
    a pump thread moves jobs to the workers, polling every ``poll`` seconds while work
    arrives and sleeping on an event once idle, so only the first job after a quiet
    spell pays for a wake-up. The pump copies the app's objects a job holds and weighs
    it (:func:`weigh`), off the caller's path but before the job waits behind others:
    one past ``max_bytes`` is dropped (told to ``on_dropped``, reason ``queue_full``).

    Workers wake as the work needs them, not one per job: a worker that ends a job takes
    the next queued one at once; the pump wakes a waiting worker as it queues a job when
    none is busy, and one more for each job still queued a poll later (the busy ones
    are waiting on slow answers). Workers taking turns on the interpreter lock cost
    more CPU than the jobs' own work (``bench/cpu.py``), so a coordinator that answers
    fast keeps one busy, a slow one all of them.
    A job handed over after :meth:`close` counted the unfinished ones (a compared
    call whose legacy was still running) is dropped too, reason ``shutdown``.
    Threads start on first use and again in a forked child.
    """

    def __init__(
        self,
        *,
        workers: int,
        capacity: int,
        on_error: ErrorHook,
        poll: float = 0.01,
        max_bytes: int = QUEUE_BYTES,
        on_dropped: DropHook | None = None,
    ) -> None:
        if workers < 1 or capacity < 1 or max_bytes < 1:
            raise ValueError("workers, capacity and max_bytes must be at least 1")
        self.workers = workers
        self.capacity = capacity
        self.poll = poll
        self.max_bytes = max_bytes
        #: Told of each job dropped for its bytes; the Shim's recorder counts them.
        self.on_dropped = on_dropped
        self._on_error = on_error
        self._reset()
        renew_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: none of the parent's threads, jobs or locks."""
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inbox: deque[Job] = deque()
        self._wake = threading.Event()
        self._pump_asleep = False
        # Jobs for the workers, and how the pump wakes them (see the class).
        self._ready = threading.Condition(threading.Lock())
        self._jobs: deque[_Queued] = deque()
        self._waiting = 0  # workers waiting for a job
        self._woken = 0  # of those, woken and not yet running
        self._taken = 0  # jobs the workers took, ever
        self._stopping = False
        # The free slots, as tokens: taking one is one C call and no lock, which every
        # compared call pays.
        self._free: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(self.capacity):
            self._free.put(None)
        self._running: dict[int, str] = {}
        # Workers whose job close() counted as unfinished, and those whose job's result
        # is being recorded (keep_result): a job is one or the other, never both.
        self._abandoned: set[int] = set()
        self._keeping: set[int] = set()
        self._bytes = 0  # what the queued and running jobs hold, as weighed
        self._bytes_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        # close() has counted what did not finish: jobs from here on are dropped.
        self._drained = False
        # The job the pump is settling and weighing: neither in the inbox nor queued,
        # so close() looks here too (and takes it, under the lock).
        self._in_hand: Job | None = None

    @property
    def queued_bytes(self) -> int:
        """The bytes the queued and running jobs hold, as weighed."""
        return self._bytes

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
        """:meth:`submit` for a ready-made ``(task, work, args)`` job: the cheapest way in.
        After :meth:`close`, the job is dropped (``shutdown``) and its slot given back."""
        if self._drained:  # close() counted the unfinished already
            self._drop(job, "shutdown")
            return
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
        inbox, idle = self._inbox, 0
        seen = (0, 0)  # (jobs queued, jobs taken) when the workers were last woken
        while True:
            if inbox:
                idle = 0
                while inbox:
                    job = self._in_hand = inbox.popleft()
                    size = self._weigh(job)
                    with self._lock:
                        mine = self._in_hand is job  # else close() took and counted it
                        self._in_hand = None
                        late = mine and self._drained
                        if mine and not late and size >= 0:
                            self._queue_job((*job, size))
                            continue
                    self._unweigh(max(size, 0))
                    if late:  # handed over just as close() counted the unfinished
                        self._drop(job, "shutdown")
                    elif mine:  # too big for what the queue holds already
                        self._drop(job, "queue_full")
            if self._jobs:
                seen = self._wake_workers(seen)
            if inbox:
                continue
            if self._closed and not self.pending:
                return
            idle += 1
            if idle < 100 or self._jobs:
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

    def _queue_job(self, job: _Queued) -> None:
        """Queue a job for the workers, waking one if none is busy or about to be."""
        with self._ready:
            self._jobs.append(job)
            if self._waiting - self._woken == len(self._threads) - 1:
                self._notify(1)

    def _wake_workers(self, seen: tuple[int, int]) -> tuple[int, int]:
        """Wake waiting workers for the queued jobs: one for each job that was queued
        at the last call and is still waiting (``seen``: the jobs queued and taken
        then; the busy workers are waiting on slow answers). Returns what to pass
        next time."""
        with self._ready:
            queued, taken = len(self._jobs), self._taken
            stale = max(0, seen[0] - (taken - seen[1]))  # queued then, not taken since
            self._notify(stale)
            return queued, taken

    def _notify(self, count: int) -> None:
        """Wake up to ``count`` waiting workers that are not woken already (under
        ``_ready``)."""
        count = min(count, self._waiting - self._woken)
        if count > 0:
            self._woken += count
            self._ready.notify(count)

    def _weigh(self, job: Job) -> int:
        """The job's bytes, counted in (its copies made first); -1 if they do not fit
        beside what is queued already (the caller drops it, ``queue_full``)."""
        try:
            size = weigh(job)
        except Exception as exc:  # a size that cannot be read: not counted
            self._on_error("dispatch", exc)
            return 0
        if not size:
            return 0
        with self._bytes_lock:
            if self._bytes and self._bytes + size > self.max_bytes:
                refused = True
            else:
                refused = False
                self._bytes += size
        return -1 if refused else size

    def _drop(self, job: Job, reason: str) -> None:
        """``job`` will not run: its slot given back, the drop told (``reason``)."""
        self.release()
        if self.on_dropped is not None:
            product, _, task = job[0].partition(".")
            self.on_dropped(product, task, reason)

    def _unweigh(self, size: int) -> None:
        if size:
            with self._bytes_lock:
                self._bytes -= size

    def _next_job(self) -> _Queued | None:
        """The next queued job, waiting for the pump to wake this worker when there is
        none; None once the dispatcher stops."""
        with self._ready:
            while not self._jobs:
                if self._stopping:
                    return None
                self._waiting += 1
                try:
                    self._ready.wait()
                finally:
                    self._waiting -= 1
                    self._woken = max(0, self._woken - 1)
            self._taken += 1
            return self._jobs.popleft()

    def _work(self) -> None:
        ident = threading.get_ident()
        while True:
            job = self._next_job()
            if job is None:
                return
            task, work, args, size = job
            self._running[ident] = task
            try:
                work(*args)
            except BaseException as exc:
                self._on_error("dispatch", exc)
            finally:
                with self._lock:
                    self._running.pop(ident, None)
                    self._abandoned.discard(ident)
                    self._keeping.discard(ident)
                self._unweigh(size)
                self.release()

    def keep_result(self) -> bool:
        """Asked by a job about to record its result: False if :meth:`close` already
        counted it as unfinished (recorded twice, it would be counted twice). On a
        thread that is not one of the workers, True."""
        ident = threading.get_ident()
        with self._lock:
            if ident in self._abandoned:
                return False
            if ident in self._running:
                self._keeping.add(ident)
            return True

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
            # Still running: counted here unless already recording their result; those
            # counted here record nothing when they end (keep_result).
            for ident, task in list(self._running.items()):
                if ident not in self._keeping:
                    self._abandoned.add(ident)
                    unfinished[task] += 1
            # From here on a job handed over is dropped as it comes (handoff, the pump).
            self._drained = True
            in_hand, self._in_hand = self._in_hand, None
        if in_hand is not None:  # the pump's, being weighed: it lets go of it
            unfinished[in_hand[0]] += 1
            self.release()
        while True:  # handed over, not weighed yet
            try:
                job = self._inbox.popleft()
            except IndexError:  # a late handoff or the pump took the last one
                break
            unfinished[job[0]] += 1
            self.release()
        with self._ready:
            queued, self._jobs = list(self._jobs), deque()
            self._stopping = True
            self._ready.notify_all()
        for task, _, _, size in queued:
            unfinished[task] += 1
            self._unweigh(size)
            self.release()
        self._wake.set()
        return unfinished
