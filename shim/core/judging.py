"""Judges: a sampled share of compared pairs is put to a judge model through the
coordinator, on a bounded pool of threads of its own.

A pair the :class:`Judge` samples waits in the pool, not in the recorder: its record is
written once the judge answered (with ``judge``), or failed, or could not be asked
(without). The recorder never waits for a judge, and a judge never costs a record:
what cannot be judged (the pool full, the budget spent, the judge failing, the Shim
closing) is recorded as it is and counted, per task and reason, as
``shim.judge_skipped``.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from shim.client.task import TaskRequest
from shim.client.task_client import TaskClient
from shim.comparators import JUDGE_RUBRIC, judge_prompt, read_winner
from shim.core.lifecycle import renew_in_child
from shim.records.observe import Pending, describe
from shim.records.values import NOT_RECORDED, OutputNotRecorded, restore

__all__ = ["Judge", "JudgePool", "SkipHook"]

_log = logging.getLogger("shim")

#: ``(pending, reason, detail)``: a sampled pair recorded without a judge's verdict.
SkipHook = Callable[[Pending, str, str], None]

_STOP = object()


@dataclass(frozen=True, slots=True)
class Judge:
    """Put ``sample`` of the compared pairs (both sides answered) to the judge task
    ``task`` (``product.task``, registered on the coordinator like any other).

    Which answer the judge reads first is drawn for each pair; ``both_orders`` of the
    judged pairs are judged in both orders, which measures the judge's position bias
    (a pair whose two verdicts disagree counts as a tie). Equal outputs are a tie
    without a judge call (``identical``). At most ``budget`` judge calls are made per
    ``per`` seconds (per process); ``threads`` threads ask, and at most ``queue``
    pairs wait for them. ``tasks`` limits judging to those tasks (None: every task).
    """

    task: str = "kiwi.judge"
    sample: float = 0.1
    both_orders: float = 0.1
    budget: int = 1000
    per: float = 3600.0
    threads: int = 2
    queue: int = 64
    timeout: float = 30.0
    rubric: str = JUDGE_RUBRIC
    tasks: frozenset[str] | None = None

    def __post_init__(self) -> None:
        product, _, name = self.task.partition(".")
        if not product or not name:
            raise ValueError(f"Judge task must be product.task, got {self.task!r}")
        for share in ("sample", "both_orders"):
            value = getattr(self, share)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Judge {share} must be a share from 0 to 1, got {value}")
        if self.budget < 0 or not self.per > 0 or not math.isfinite(self.per):
            raise ValueError("Judge budget must be >= 0 calls per a positive number of seconds")
        if self.threads < 1 or self.queue < 1 or not self.timeout > 0:
            raise ValueError("Judge threads and queue must be >= 1, timeout > 0")
        if self.tasks is not None and not isinstance(self.tasks, frozenset):
            object.__setattr__(self, "tasks", frozenset(self.tasks))


class _Budget:
    """At most ``calls`` in any ``per`` seconds: the calls counted per whole second,
    and a second let go once all of it is more than ``per`` seconds old (so never
    more, and memory by the window's seconds, not its calls)."""

    def __init__(self, calls: int, per: float) -> None:
        self.calls, self.per = calls, per
        self.seconds: deque[list[int]] = deque()  # [second, calls in it]
        self.total = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Count ``n`` calls now, if the budget has room for them."""
        with self.lock:
            now = time.monotonic()
            while self.seconds and self.seconds[0][0] + 1 <= now - self.per:
                self.total -= self.seconds.popleft()[1]
            if self.total + n > self.calls:
                return False
            second = int(now)
            if self.seconds and self.seconds[-1][0] == second:
                self.seconds[-1][1] += n
            else:
                self.seconds.append([second, n])
            self.total += n
            return True


class JudgePool:
    """The threads that ask the judge, and the bounded queue of pairs waiting for them.

    ``offer`` takes a finished pair the judge samples (True: the pool records it,
    exactly once) or leaves it to the caller (False). ``record`` writes a pair (on a
    pool thread, or the closing one); ``skipped`` counts one recorded without a
    verdict; ``on_error`` hears of a failure of the pool's own work. A forked child
    starts a pool of its own: its threads, its queue, its counts and budget.
    """

    def __init__(
        self,
        judge: Judge,
        *,
        connect: Callable[[float], TaskClient],
        record: Callable[[Pending], None],
        skipped: SkipHook,
        on_error: Callable[[str, BaseException], None],
        rng: random.Random | None = None,
    ) -> None:
        self.judge = judge
        self._product, _, self._task = judge.task.partition(".")
        self._connect = connect
        self._record = record
        self._on_skip = skipped
        self._on_error = on_error
        self._rng = rng or random.Random()
        self._keys = itertools.count()
        self._closed = False
        self._start()
        renew_in_child(self)

    def _start(self) -> None:
        # Also a forked child's: the pairs the parent took are the parent's to judge
        # and record; the child starts empty, with threads and locks of its own.
        self._budget = _Budget(self.judge.budget, self.judge.per)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._owned: dict[int, Pending] = {}  # taken, not yet recorded by anyone
        self._waiting = 0  # queued for a thread: bounded by judge.queue
        self._unrecorded = 0  # taken and not yet written (what flush waits for)
        self._stopped = False
        self.calls = 0
        self.judged = 0
        self.skips: dict[str, int] = {}
        self._local = threading.local()  # each thread's task client
        self._threads = [
            threading.Thread(target=self._run, name=f"shim-judge-{i}", daemon=True)
            for i in range(self.judge.threads)
        ]
        for thread in self._threads:
            thread.start()

    def after_fork(self) -> None:
        """In a forked child: a pool of its own (the parent's threads are not in it)."""
        if not self._closed:
            self._start()

    # -- the caller's side (a worker thread, or the caller's own) -------------------

    def offer(self, pending: Pending) -> bool:
        """Take ``pending`` to be judged, if sampled; False leaves it to the caller."""
        judge = self.judge
        legacy, candidate = pending.legacy, pending.candidate
        if (
            self._closed
            or not (legacy.ok and candidate.ok)
            or legacy.value is NOT_RECORDED
            or candidate.value is NOT_RECORDED
            or (judge.tasks is not None and pending.site.name not in judge.tasks)
            or self._rng.random() >= judge.sample
        ):
            return False
        both = self._rng.random() < judge.both_orders
        # stamped now: the record's time is the call's, not the judge's answer's
        pending = replace(pending, at=time.time())
        with self._lock:  # taken and queued at once: a close cannot come in between
            taken = not self._closed and self._waiting < judge.queue
            if taken:
                key = next(self._keys)
                self._owned[key] = pending
                self._waiting += 1
                self._unrecorded += 1
                self._queue.put((key, self._rng.random() < 0.5, both))
        if not taken and not self._closed:
            self._skip(pending, "pool_full", f"{judge.queue} pairs already wait")
        return taken

    def _skip(self, pending: Pending, reason: str, detail: str) -> None:
        with self._lock:
            self.skips[reason] = self.skips.get(reason, 0) + 1
        self._on_skip(pending, reason, detail)

    # -- the pool's threads --------------------------------------------------------

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not _STOP:
                key, legacy_first, both = item
                with self._lock:
                    self._waiting -= 1
                    pending, stopped = self._owned.get(key), self._stopped
                if pending is None:
                    continue  # the close recorded it already
                verdict: dict[str, Any] | None = None
                skip: tuple[str, str] | None = _SHUTDOWN
                if not stopped:
                    verdict, skip = self._verdict(pending, legacy_first, both)
                with self._lock:
                    if self._owned.pop(key, None) is None:
                        continue  # the close took it while the judge was asked
                self._finish(pending, verdict, skip)
        finally:
            client = getattr(self._local, "client", None)
            if client is not None:
                client.close()

    def _finish(
        self, pending: Pending, verdict: dict[str, Any] | None, skip: tuple[str, str] | None
    ) -> None:
        """Record a pair this thread owns, with its verdict or counted as ``skip``;
        whatever fails on the way, the pair is recorded and the failure told."""
        try:
            if skip is not None:
                self._skip(pending, *skip)
            if verdict is not None:
                pending = replace(pending, judge=verdict)
                with self._lock:
                    self.judged += 1
        except Exception as exc:
            self._on_error("judge", exc)
        finally:
            try:
                self._record(pending)
            except Exception as exc:
                self._on_error("record", exc)
            finally:
                with self._lock:
                    self._unrecorded -= 1

    def _verdict(
        self, pending: Pending, legacy_first: bool, both: bool
    ) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        """The record's ``judge`` for one pair, or why there is none (never raises)."""
        orders = (legacy_first, not legacy_first) if both else (legacy_first,)
        winners: list[str] = []
        model = None
        try:
            # copies of the outputs, as the record's comparators read them
            outputs = restore(pending.legacy.value), restore(pending.candidate.value)
            if any(output is NOT_RECORDED for output in outputs):
                raise OutputNotRecorded("an output could not be copied for the judge")
            if _same(*outputs):  # nothing to judge: a tie, and no judge call spent on it
                return {
                    "winner": "tie",
                    "model": None,
                    "order": _order(legacy_first),
                    "identical": True,
                }, None
            if not self._budget.take(len(orders)):
                judge = self.judge
                return None, ("budget", f"{judge.budget} judge calls per {judge.per:g} s")
            for first_is_legacy in orders:
                winner, model = self._ask(pending, outputs, first_is_legacy)
                winners.append(winner)
        except Exception as exc:
            return None, ("failed", describe(exc))
        verdict: dict[str, Any] = {
            "winner": winners[0] if len(set(winners)) == 1 else "tie",
            "model": model,
            "order": _order(legacy_first),
        }
        if both:  # what each order said: how the judge leans to a position
            verdict["orders"] = {_order(o): w for o, w in zip(orders, winners, strict=True)}
        return verdict, None

    def _ask(
        self, pending: Pending, outputs: tuple[Any, Any], legacy_first: bool
    ) -> tuple[str, Any]:
        legacy, candidate = outputs
        first, second = (legacy, candidate) if legacy_first else (candidate, legacy)
        request = pending.legacy.prompt or pending.candidate.prompt
        prompt = judge_prompt(self.judge.rubric, first, second, request)
        with self._lock:
            self.calls += 1
        client = getattr(self._local, "client", None)
        if client is None:  # one per thread, made by the thread that uses it
            client = self._local.client = self._connect(self.judge.timeout)
        result = client.infer(self._product, self._task, TaskRequest(prompt=prompt))
        return _who(read_winner(result.output), legacy_first), result.model

    # -- counts and closing --------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """``{"calls", "judged", "waiting", "skipped": {reason: n}}`` so far
        (``waiting``: pairs taken and not yet recorded)."""
        with self._lock:
            return {
                "calls": self.calls,
                "judged": self.judged,
                "waiting": self._unrecorded,
                "skipped": dict(self.skips),
            }

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every pair taken so far to be recorded
        (written to the recorder: its flush writes them); True if they were."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._unrecorded:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def close(self, timeout: float) -> None:
        """Take no more pairs; give those taken ``timeout`` seconds to be judged, then
        record what is left without a verdict (``shutdown``)."""
        with self._lock:
            self._closed = True
        self.wait(timeout)
        with self._lock:
            self._stopped = True  # a thread taking a pair from here records it as it is
            left = list(self._owned.values())
            self._owned.clear()
        for _ in self._threads:
            self._queue.put(_STOP)
        for pending in left:
            self._finish(pending, None, _SHUTDOWN)


_SHUTDOWN = ("shutdown", "the Shim closed before the judge answered")


def _same(legacy: Any, candidate: Any) -> bool:
    """The two outputs are equal (as values: key order and int/float aside)."""
    try:
        return type(legacy) is type(candidate) and bool(legacy == candidate)
    except Exception:  # an object of the app's whose == raises: let the judge read it
        return False


def _order(legacy_first: bool) -> str:
    return "legacy_first" if legacy_first else "candidate_first"


def _who(slot: str, legacy_first: bool) -> str:
    """The path behind a slot the judge named."""
    if slot == "tie":
        return "tie"
    return "legacy" if (slot == "A") == legacy_first else "candidate"
