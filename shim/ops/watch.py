"""``shim watch``: follow a comparison log and roll a task back when it breaches.

:class:`Watch` is the I/O-free core: feed it records, it evaluates each task every
``watch_step`` new pairs. The error increase, the mismatch rate, the content score
(``min_quality``, relative to legacy's own noise where noise runs say it), the typical
latency ratio (against ``max_latency_ratio_p50``), the p95 latency ratio (against
``max_latency_ratio_p95``) and, with prices, the cost per call (``max_cost_ratio``) are
tested on the task's stage with always-valid bounds
(:class:`~shim.analysis.stage_tests.StageTests`), started again every
:data:`EPOCH_PAIRS` pairs with a share of alpha that shrinks as 1/k^2: one crossing is a
breach, and however long a stage is watched, false rollbacks stay at 5 %. Routing
errors and judge verdicts are read over the last ``watch_window`` pairs, a breach after
``watch_consecutive`` failing evaluations in a row or ``watch_cumulative`` in the stage.
It counts what it read and evaluated, so a one-off run can tell "no
breach" from "nothing to judge". :func:`wait_for_log` waits for a log
to appear; :func:`follow` reads a growing log, across rotation.
:func:`auto_rollback` acts on a breach: one read-modify-write under the flag store's
lock, so a promote that read the flags before it cannot undo it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shim.analysis.log_lines import MAX_LINE_BYTES
from shim.analysis.policy import Gates, Policy
from shim.analysis.report_judge import judge_gate, judge_summary
from shim.analysis.sequential import ALPHA
from shim.analysis.stage_tests import StageTests

if TYPE_CHECKING:
    from shim.flags.store import Change, FlagStore
    from shim.ops.prom_evidence import Gains

__all__ = ["EPOCH_PAIRS", "Breach", "Watch", "auto_rollback", "follow", "wait_for_log"]

#: The always-valid tests start again every this many pairs of a stage (see feed()).
EPOCH_PAIRS = 2000


@dataclass(frozen=True, slots=True)
class Breach:
    """A task that crossed a rollback line often enough to act on."""

    task: str
    stage: str
    reasons: tuple[str, ...]
    consecutive: int
    cumulative: int
    pairs: int

    def describe(self) -> str:
        """One line for people and for the rollback record."""
        return (
            f"{self.task} breached in stage {self.stage}: {self.consecutive} failing "
            f"evaluation(s) in a row, {self.cumulative} in the stage, over {self.pairs} "
            "pairs: " + "; ".join(self.reasons)
        )


@dataclass
class _TaskWatch:
    #: the last ``watch_window`` pairs: whether the task path went where the
    #: configuration does not send it (a routing error)
    window: deque[bool]
    #: the last ``watch_window`` judge verdicts (see _judged): a judge reads a sample,
    #: so its verdicts get a window of their own, as long as the pairs'
    judged: deque[tuple[str, int | None]]
    #: every pair of the stage, for the always-valid tests
    tests: StageTests = field(default_factory=StageTests)
    #: how many epochs of EPOCH_PAIRS pairs the stage's tests have started again
    epoch: int = 0
    stage: str = ""
    since_eval: int = 0
    consecutive: int = 0
    cumulative: int = 0

    def restart(self) -> None:
        """A new stage, or a breach acted on: the evidence starts again."""
        self.consecutive = self.cumulative = self.since_eval = 0
        self.window.clear()
        self.judged.clear()
        self.tests, self.epoch = self.tests.fresh(), 0


class Watch:
    """Rolling evaluation of comparison records, per task."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self._tasks: dict[str, _TaskWatch] = {}
        #: comparison records taken
        self.records = 0
        #: windows evaluated (each task's every ``watch_step`` pairs)
        self.evaluations = 0

    @property
    def tasks(self) -> int:
        """How many tasks the records were of."""
        return len(self._tasks)

    def feed(self, record: dict[str, Any]) -> Breach | None:
        """Take one record; a Breach when this record tips its task over."""
        if record.get("event") != "shim.comparison" or record.get("schema") != 1:
            return None
        task = f"{record.get('product')}.{record.get('task')}"
        gates = self.policy.for_task(task)
        try:  # read first: a record that is not one leaves the stage as it is
            pair = StageTests.read_pair(record)
            routing = bool((record.get("model") or {}).get("routing_error"))
        except (KeyError, TypeError, AttributeError):
            return None
        state = self._state(task, str(record.get("stage")), gates)
        costs = self.policy.costs(record["legacy"], record["candidate"], gates)
        state.tests.add(**pair, legacy_cost=costs[0], candidate_cost=costs[1])
        state.window.append(routing)
        verdict = _judged(record.get("judge"))
        if verdict is not None:
            state.judged.append(verdict)
        self.records += 1
        state.since_eval += 1
        return self._evaluate(task, state, gates)

    def feed_gains(self, task: str, stage: str, gains: Gains) -> Breach | None:
        """Take what a task's stage gained across replicas (``shim watch --prometheus``:
        :class:`~shim.ops.prom_evidence.Gains`); a Breach when it tips the task over.
        The same tests as :meth:`feed`, evaluated at the end of a read once
        ``watch_step`` pairs came since the last evaluation (a read is one look,
        however many pairs it brought)."""
        gates = self.policy.for_task(task)
        if not gains.n and not gains.buckets:
            return None
        state = self._state(task, stage, gates)
        gains.into(state.tests)
        state.window.extend(gains.routing_window())
        state.judged.extend((winner, None) for winner in gains.verdicts())
        self.records += gains.n
        state.since_eval += gains.n
        return self._evaluate(task, state, gates)

    def _state(self, task: str, stage: str, gates: Gates) -> _TaskWatch:
        """The task's watch, started again when its stage changed."""
        state = self._tasks.get(task)
        if state is None:
            state = self._tasks[task] = _TaskWatch(
                deque(maxlen=gates.watch_window), deque(maxlen=gates.watch_window)
            )
        if stage != state.stage:  # a new stage starts a new count
            state.restart()
            state.stage = stage
        return state

    def _evaluate(self, task: str, state: _TaskWatch, gates: Gates) -> Breach | None:
        """Evaluate the task once ``watch_step`` pairs came since the last time."""
        if state.since_eval < gates.watch_step or len(state.window) < gates.watch_step:
            return None
        state.since_eval = 0
        self.evaluations += 1
        # alpha spent over epochs (6 / pi^2 / k^2 of it on the k-th): a stage watched
        # for ever rolls back for nothing at most alpha of the time, and a regression
        # late in a long stage is weighed against one epoch's pairs, not all before it
        crossed = state.tests.breaches(
            error_increase=gates.rollback_error_increase,
            mismatch=gates.rollback_mismatch,
            min_quality=gates.min_quality,
            latency_ratio=gates.max_latency_ratio_p50,
            p95_ratio=gates.max_latency_ratio_p95,
            cost_ratio=gates.max_cost_ratio,
            alpha=ALPHA * 6 / (math.pi**2 * (state.epoch + 1) ** 2),
        )
        if not crossed and state.tests.errors.n >= EPOCH_PAIRS:
            state.tests, state.epoch = state.tests.fresh(), state.epoch + 1
        reasons = crossed + self._failing(state, gates)
        if not reasons:
            state.consecutive = 0
            return None
        state.consecutive += 1
        state.cumulative += 1
        if (
            crossed  # an always-valid bound: once is enough
            or state.consecutive >= gates.watch_consecutive
            or state.cumulative >= gates.watch_cumulative
        ):
            pairs = state.tests.errors.n if crossed else len(state.window)
            breach = Breach(
                task, state.stage, tuple(reasons), state.consecutive, state.cumulative, pairs
            )
            state.restart()
            return breach
        return None

    @staticmethod
    def _failing(state: _TaskWatch, gates: Gates) -> list[str]:
        """What the last window crosses: routing errors, judge verdicts."""
        reasons = list(
            gates.rollback_reasons(  # errors and mismatches: the always-valid tests'
                pairs=0,
                legacy_errors=0,
                candidate_errors=0,
                compared=0,
                mismatches=0,
                routing_errors=sum(state.window),
            )
        )
        if gates.max_judge_loss is not None:
            found = judge_gate(judge_summary(_judge_counts(list(state.judged))), gates)
            if found is not None and found[0] == "rollback":
                reasons.append(f"{found[1]} (the last {len(state.judged)} verdicts)")
        return reasons


def _judged(part: Any) -> tuple[str, int | None] | None:
    """A record's judge verdict: the winner, and for a pair judged in both orders +1
    (the first answer picked both times), -1 (the second both times) or 0."""
    if not isinstance(part, dict) or part.get("winner") not in ("legacy", "candidate", "tie"):
        return None
    orders = part.get("orders")
    position = None
    if isinstance(orders, dict) and "candidate_first" in orders:
        both = (str(orders.get("legacy_first")), str(orders.get("candidate_first")))
        position = {("legacy", "candidate"): 1, ("candidate", "legacy"): -1}.get(both, 0)
    return str(part["winner"]), position


def _judge_counts(judged: list[tuple[str, int | None]]) -> dict[str, int]:
    """The counts :func:`~shim.analysis.report_judge.judge_summary` reads, as the
    report's query makes them."""
    positions = [p for _, p in judged if p is not None]
    return {
        "judge_n": len(judged),
        "judge_wins": sum(w == "candidate" for w, _ in judged),
        "judge_losses": sum(w == "legacy" for w, _ in judged),
        "judge_both": len(positions),
        "judge_first": positions.count(1),
        "judge_second": positions.count(-1),
    }


def auto_rollback(breach: Breach, store: FlagStore, log: Path | None) -> Change | None:
    """Serve 0 % for the breaching task (shadow kept), read, changed and recorded in
    ``log`` (``shim.rollback``, ``automatic: true``) under the store's lock, with the
    setting it actually replaced; None, and no record, when it already serves 0 %."""
    from shim.ops.promote import rollback

    changes = rollback(
        store,
        [breach.task],
        [breach.task],  # seen in the log, so known, whatever assignments.yaml says
        log=log,
        reason=breach.describe(),
        extra={
            "automatic": True,
            "consecutive": breach.consecutive,
            "cumulative": breach.cumulative,
            "pairs": breach.pairs,
        },
    )
    return changes[0] if changes else None


def wait_for_log(
    path: Path,
    *,
    timeout: float | None = None,
    poll: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until ``path`` is a file: True when it is, False when ``timeout`` seconds
    (None: no limit) passed first, or ``stop`` said so."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not path.is_file():
        if stop() or (deadline is not None and time.monotonic() >= deadline):
            return False
        pause = poll if deadline is None else min(poll, max(deadline - time.monotonic(), 0))
        time.sleep(pause)
    return True


def follow(
    path: Path,
    *,
    from_start: bool = False,
    poll: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
    once: bool = False,
) -> Iterator[dict[str, Any]]:
    """Records appended to ``path``, as they come; reopens the path when it is rotated
    or truncated. With ``once``, stops at the current end instead of waiting. A line
    longer than :data:`~shim.analysis.log_lines.MAX_LINE_BYTES` is skipped: what was
    read of it is let go once it passes the limit, and the rest is discarded as it
    comes, up to its newline."""
    handle = None
    identity: tuple[int, int] | None = None
    partial = bytearray()  # the start of a line whose newline is still to come
    skipping = False  # that line is over the limit: discard up to its newline
    while not stop():
        if handle is None:
            try:
                handle = open(path, "rb")  # noqa: SIM115 (kept open across the loop)
            except FileNotFoundError:
                if once:
                    return
                time.sleep(poll)
                continue
            st = os.fstat(handle.fileno())
            identity = (st.st_dev, st.st_ino)
            if not from_start:
                handle.seek(0, os.SEEK_END)
            from_start = True  # a rotated-in file is always read from its start
        chunk = handle.read(1 << 20)
        if chunk:
            lines = chunk.split(b"\n")
            tail = lines.pop()
            if lines:  # the line in progress ends in this chunk
                first = bytes(partial) + lines[0]
                lines[0] = b"" if skipping else first
                partial, skipping = bytearray(), False
            if not skipping:
                partial += tail
                if len(partial) > MAX_LINE_BYTES:
                    partial, skipping = bytearray(), True
            for line in lines:
                if line.strip() and len(line) <= MAX_LINE_BYTES:
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue
            continue
        if once:
            handle.close()
            return
        try:
            st = os.stat(path)
            moved = (st.st_dev, st.st_ino) != identity or st.st_size < handle.tell()
        except FileNotFoundError:
            moved = False
        if moved:
            handle.close()
            handle, partial, skipping = None, bytearray(), False
            continue
        time.sleep(poll)
    if handle is not None:
        handle.close()
