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
    (a pair whose two verdicts disagree counts as a tie). At most ``budget`` judge
    calls are made per ``per`` seconds; ``threads`` threads ask, and at most ``queue``
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

    def give_back(self, n: int) -> None:
        with self.lock:
            if self.seconds:
                back = min(n, self.seconds[-1][1])
                self.seconds[-1][1] -= back
                self.total -= back


class JudgePool:
    """The threads that ask the judge, and the bounded queue of pairs waiting for them.

    ``offer`` takes a finished pair the judge samples (True: the pool records it) or
    leaves it to the caller (False). ``record`` writes a pair (on a pool thread);
    ``skipped`` counts one recorded without a verdict. Counts: :attr:`calls`,
    :attr:`judged`, :attr:`skipped` (by reason).
    """

    def __init__(
        self,
        judge: Judge,
        *,
        connect: Callable[[float], TaskClient],
        record: Callable[[Pending], None],
        skipped: SkipHook,
        rng: random.Random | None = None,
    ) -> None:
        self.judge = judge
        self._product, _, self._task = judge.task.partition(".")
        self._connect = connect
        self._record = record
        self._on_skip = skipped
        self._rng = rng or random.Random()
        self._budget = _Budget(judge.budget, judge.per)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0  # pairs queued, bounded by judge.queue
        self._inflight: dict[int, Pending] = {}
        self._closed = False
        self._stopped = False
        self._local = threading.local()
        self.calls = 0
        self.judged = 0
        self.skips: dict[str, int] = {}
        self._threads = [
            threading.Thread(target=self._run, name=f"shim-judge-{i}", daemon=True)
            for i in range(judge.threads)
        ]
        for thread in self._threads:
            thread.start()

    # -- the caller's side (a worker thread, or the recorder's) ---------------------

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
        calls = 2 if both else 1
        if not self._budget.take(calls):
            self._skip(pending, "budget", f"{judge.budget} judge calls per {judge.per:g} s")
            return False
        with self._lock:
            full = self._waiting >= judge.queue
            if not full:
                self._waiting += 1
        if full:
            self._budget.give_back(calls)
            self._skip(pending, "pool_full", f"{judge.queue} pairs already wait")
            return False
        self._queue.put((pending, self._rng.random() < 0.5, both))
        return True

    def _skip(self, pending: Pending, reason: str, detail: str) -> None:
        with self._lock:
            self.skips[reason] = self.skips.get(reason, 0) + 1
        self._on_skip(pending, reason, detail)

    # -- the pool's threads --------------------------------------------------------

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not _STOP:
                pending, legacy_first, both = item
                key = id(item)
                with self._lock:
                    self._waiting -= 1
                    stopped = self._stopped
                    if not stopped:
                        self._inflight[key] = pending
                if stopped:
                    self._skip(pending, "shutdown", "the Shim closed before the judge answered")
                    self._record(pending)
                    continue
                verdict = self._verdict(pending, legacy_first, both)
                with self._lock:
                    if self._inflight.pop(key, None) is None:
                        continue  # the close took it: recorded already, without a verdict
                if verdict is not None:
                    pending = replace(pending, judge=verdict)
                    with self._lock:
                        self.judged += 1
                self._record(pending)
        finally:
            client = getattr(self._local, "client", None)
            if client is not None:
                client.close()

    def _verdict(self, pending: Pending, legacy_first: bool, both: bool) -> dict[str, Any] | None:
        """The record's ``judge`` for one pair, or None (counted) if the judge failed."""
        orders = (legacy_first, not legacy_first) if both else (legacy_first,)
        winners: list[str] = []
        model = None
        try:
            # copies of the outputs, as the record's comparators read them
            outputs = restore(pending.legacy.value), restore(pending.candidate.value)
            if any(output is NOT_RECORDED for output in outputs):
                raise OutputNotRecorded("an output could not be copied for the judge")
            for first_is_legacy in orders:
                winner, model = self._ask(pending, outputs, first_is_legacy)
                winners.append(winner)
        except Exception as exc:
            self._skip(pending, "failed", describe(exc))
            return None
        verdict: dict[str, Any] = {
            "winner": winners[0] if len(set(winners)) == 1 else "tie",
            "model": model,
            "order": "legacy_first" if legacy_first else "candidate_first",
        }
        if both:  # what each order said: how the judge leans to a position
            verdict["orders"] = {_order(o): w for o, w in zip(orders, winners, strict=True)}
        return verdict

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

    # -- closing -------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """``{"calls", "judged", "waiting", "skipped": {reason: n}}`` so far."""
        with self._lock:
            return {
                "calls": self.calls,
                "judged": self.judged,
                "waiting": self._waiting + len(self._inflight),
                "skipped": dict(self.skips),
            }

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the pairs queued and being judged to be
        recorded; True if they were."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._waiting and not self._inflight:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def close(self, timeout: float) -> None:
        """Take no more pairs; give those queued and being judged ``timeout`` seconds,
        then record what is left without a verdict (``shutdown``)."""
        with self._lock:
            self._closed = True
        self.wait(timeout)
        with self._lock:
            self._stopped = True  # a thread taking a pair from here records it as it is
            left = list(self._inflight.values())
            self._inflight.clear()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            left.append(item[0])
        for _ in self._threads:
            self._queue.put(_STOP)
        for pending in left:
            self._skip(pending, "shutdown", "the Shim closed before the judge answered")
            self._record(pending)


def _order(legacy_first: bool) -> str:
    return "legacy_first" if legacy_first else "candidate_first"


def _who(slot: str, legacy_first: bool) -> str:
    """The path behind a slot the judge named."""
    if slot == "tie":
        return "tie"
    return "legacy" if (slot == "A") == legacy_first else "candidate"
