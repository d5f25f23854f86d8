"""The breaker and the back-off under concurrent calls: only a probe sent after the
cooldown (or the pause) ends them, and what a call admitted before a change of state
reports counts for nothing. Transitions are asserted on as recorded: the breaker's
``on_transition`` hook, the pauses and resumptions :class:`Spend` reports, and the
``shim.breaker`` / ``shim.backoff`` records of a whole Shim."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim import Backoff, BreakerPolicy, Limits, TaskFailed, TaskRequest
from shim.core.breaker import CircuitBreaker
from shim.core.spend import Spend
from shim.core.ticket import Ticket
from shim.testing import TestShim

# -- harness -------------------------------------------------------------------------


class Traced:
    """A clock that remembers, per thread, the last time it gave: the breaker's hook
    runs under its lock right after the read that decided the transition, and a probe
    is let through on the read just before it returns, so both are known exactly."""

    def __init__(self, source: Callable[[], float]) -> None:
        self._source = source
        self._local = threading.local()

    def __call__(self) -> float:
        now = self._source()
        self._local.last = now
        return now

    @property
    def last(self) -> float:
        return float(self._local.last)


class Manual:
    """A clock moved by hand (the property tests)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Probes:
    """Probes in flight. A probe is counted from just after it is let through to just
    before its result is reported, a window inside the one the breaker (or spend)
    knows of: two counted at once means two were out at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._out: dict[int, tuple[float, float]] = {}  # id(ticket) -> (sent at, replaceable after)

    def out(self, ticket: Ticket, at: float, replaceable_after: float) -> None:
        with self._lock:
            for sent, after in self._out.values():
                # Another probe only once the one out has had its cooldown (or pause): a
                # lost probe must not wedge it, and nothing else may add a second.
                assert at - sent >= after, (at, sent, after)
            self._out[id(ticket)] = (at, replaceable_after)

    def back(self, ticket: Ticket) -> None:
        with self._lock:
            self._out.pop(id(ticket), None)


@dataclass(frozen=True)
class Move:
    """One breaker transition: when (the clock read that decided it), and which call
    did it: ``allow`` (no ticket), or the ``success``/``failure`` of a ticket."""

    before: str
    after: str
    at: float
    by: str
    ticket: Ticket | None
    reason: str


class BreakerRun:
    """A breaker, every transition it makes, and calls against it from any thread."""

    def __init__(self, policy: BreakerPolicy, source: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = Traced(source)
        self.moves: list[Move] = []
        self.probes = Probes()
        self._doing = threading.local()
        self.breaker = CircuitBreaker(
            "kiwi.ocr", policy, clock=self.clock, on_transition=self._moved
        )

    def _moved(self, task: str, before: str, after: str, details: dict[str, Any]) -> None:
        by, ticket = getattr(self._doing, "what", ("allow", None))
        self.moves.append(Move(before, after, self.clock.last, by, ticket, details["reason"]))

    def send(self) -> Ticket | None:
        """Ask to call the task path: the ticket, or None (refused)."""
        self._doing.what = ("allow", None)
        ticket = self.breaker.allow()
        if ticket is not None and ticket.probe:
            self.probes.out(ticket, self.clock.last, self.policy.cooldown)
        return ticket

    def report(self, ticket: Ticket, ok: bool) -> None:
        """The call sent with ``ticket`` answered (``ok``) or failed."""
        self.probes.back(ticket)
        self._doing.what = ("success" if ok else "failure", ticket)
        try:
            (self.breaker.success if ok else self.breaker.failure)(ticket)
        finally:
            self._doing.what = ("allow", None)

    def check(self) -> Counter[tuple[str, str]]:
        """Every transition in order is one the rules allow; counted by kind."""
        state, generation, opened_at = "closed", 0, 0.0
        for move in self.moves:
            assert move.before == state, move
            ticket = move.ticket
            if move.before == "open":
                # Out of OPEN only to HALF_OPEN, only on a call asking after the cooldown.
                assert (move.after, move.by) == ("half_open", "allow"), move
                assert move.at - opened_at >= self.policy.cooldown, (move, opened_at)
            else:
                # Everything else is a call's result, and only one sent in the state the
                # breaker is in now counts: in HALF_OPEN, only the probe's.
                assert ticket is not None and ticket.generation == generation, (move, generation)
                assert ticket.probe == (move.before == "half_open"), move
                if move.after == "closed":
                    assert (move.before, move.by) == ("half_open", "success"), move
                else:
                    assert (move.after, move.by) == ("open", "failure"), move
            if move.after == "open":
                opened_at = move.at
            state, generation = move.after, generation + 1
        assert self.breaker.generation == generation
        return Counter((m.before, m.after) for m in self.moves)


def hammer(
    call: Callable[[random.Random], None], *, threads: int, seconds: float, seed: int
) -> None:
    """``call(rng)`` in a loop on ``threads`` threads for ``seconds``."""
    deadline = time.monotonic() + seconds
    failed: list[BaseException] = []

    def loop(rng: random.Random) -> None:
        try:
            while time.monotonic() < deadline:
                call(rng)
        except BaseException as exc:  # an assertion on a worker thread fails the test
            failed.append(exc)

    workers = [
        threading.Thread(target=loop, args=(random.Random(seed * 100 + i),)) for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failed:
        raise failed[0]


def latency(rng: random.Random) -> None:
    """A task-path call's own time (up to 0.3 ms), so calls overlap transitions."""
    time.sleep(rng.random() * 0.0003)


# -- the breaker ---------------------------------------------------------------------


def test_a_call_in_flight_when_the_breaker_opened_cannot_close_it() -> None:
    """The reproduced bug: 1-30 ms after opening, a success admitted before closed it."""
    run = BreakerRun(BreakerPolicy(failures=1, cooldown=30), Manual())
    early, late = run.send(), run.send()
    assert early is not None and late is not None
    run.report(early, ok=False)
    run.report(late, ok=True)  # sent while closed, answered once open: stale
    assert run.breaker.state == "open"
    assert run.send() is None
    assert run.check() == {("closed", "open"): 1}


def test_a_stale_failure_neither_reopens_nor_extends() -> None:
    """A failure sent before the breaker closed again says nothing about now."""
    clock = Manual()
    run = BreakerRun(BreakerPolicy(failures=1, cooldown=10), clock)
    first, stale = run.send(), run.send()
    assert first is not None and stale is not None
    run.report(first, ok=False)
    clock.now += 10
    probe = run.send()
    assert probe is not None and probe.probe
    run.report(probe, ok=True)
    run.report(stale, ok=False)  # answered after the probe closed the breaker
    assert run.breaker.state == "closed"
    run.check()


def test_breaker_with_8_threads_and_70_percent_errors_opens_and_closes_by_the_rules() -> None:
    """40 runs in a row: no transition out of OPEN before the cooldown, every close by
    the probe, one probe in flight at a time, no stale result counted."""
    cooldown = 0.004
    seen: Counter[tuple[str, str]] = Counter()
    for attempt in range(40):
        run = BreakerRun(BreakerPolicy(cooldown=cooldown), time.monotonic)

        def call(rng: random.Random, run: BreakerRun = run) -> None:
            ticket = run.send()
            latency(rng)  # the task path's call, or legacy's when refused
            if ticket is not None:
                run.report(ticket, ok=rng.random() >= 0.7)

        hammer(call, threads=8, seconds=0.04, seed=attempt)
        seen += run.check()
    # It did cycle, often: opened, probed after each cooldown, and closed by a probe.
    assert seen[("closed", "open")] >= 40, seen
    assert seen[("open", "half_open")] >= 80, seen
    assert seen[("half_open", "closed")] >= 10, seen
    assert set(seen) <= {
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("half_open", "open"),
    }


#: Calls sent and answered (in any order, well or not) more often than time passes.
SEND = st.just(("send", 0, False))
REPORT = st.tuples(st.just("report"), st.integers(0, 30), st.booleans())
TICK = st.tuples(st.just("tick"), st.integers(1, 8), st.just(False))
OPS = st.lists(st.one_of(SEND, SEND, REPORT, REPORT, TICK), min_size=10, max_size=150)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_breaker_property_any_interleaving_follows_the_rules(
    ops: list[tuple[str, int, bool]],
) -> None:
    """Calls sent, answered in any order, with time passing in between: every
    transition is one the rules allow (see :meth:`BreakerRun.check`), and what opens
    the breaker counted the results of calls sent while closed, and only those."""
    policy = BreakerPolicy(failures=2, window=4, min_calls=3, cooldown=0.3)
    clock = Manual()
    run = BreakerRun(policy, clock)
    out: list[Ticket] = []
    # What the closed breaker should have counted: its own calls' results, in order.
    streak, recent = 0, deque[bool](maxlen=policy.window)
    for op, n, ok in ops:
        if op == "send":
            ticket = run.send()
            if ticket is not None:
                # Admitted while closed, or as the probe when half open: never while open.
                assert ticket.generation == run.breaker.generation
                assert ticket.probe == (run.breaker.state == "half_open")
                out.append(ticket)
        elif op == "report" and out:
            ticket = out.pop(n % len(out))
            counted = run.breaker.state == "closed" and ticket.generation == run.breaker.generation
            if counted:
                streak = 0 if ok else streak + 1
                recent.append(ok)
            moves = len(run.moves)
            run.report(ticket, ok)
            for move in run.moves[moves:]:
                if move.before == "closed":
                    failed = recent.count(False)
                    assert move.reason in (
                        f"{streak} consecutive failures",
                        f"{failed} of the last {len(recent)} calls failed (opens at 50 % of"
                        f" the last {policy.window} once {policy.min_calls} are in)",
                    ), (move, streak, list(recent))
                else:
                    streak = 0
                    recent.clear()
        elif op == "tick":
            clock.now += n / 10
    run.check()


# -- the back-off --------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A pause (``until``: no probe before) or a resumption, caused by a call that was
    sent with ``ticket``."""

    kind: str
    ticket: Ticket
    until: float


class SpendRun:
    """A task's spend, its pauses and resumptions, and calls from any thread."""

    def __init__(self, backoff: Backoff, source: Callable[[], float]) -> None:
        self.clock = Traced(source)
        self.spend = Spend(backoff, clock=self.clock, rng=random.Random(1))
        self.changes: list[Change] = []
        self.probes = Probes()
        self.probe_sent: dict[int, tuple[Ticket, float]] = {}
        self._lock = threading.Lock()

    def send(self) -> Ticket | None:
        """A comparison about to call the task path: its ticket, or None (backing off)."""
        if self.spend.admit(None) is not None:
            return None  # the caller's side: counted as dropped, never queued
        ticket = self.spend.current
        if ticket is None:
            ticket = self.spend.probe()
            if ticket is not None:
                at = self.clock.last
                self.probes.out(ticket, at, self.spend.pause)
                with self._lock:
                    self.probe_sent[id(ticket)] = (ticket, at)
        return ticket

    def report(self, ticket: Ticket, busy: bool) -> None:
        """The call answered 429 (``busy``) or well."""
        self.probes.back(ticket)
        if busy:
            pause = self.spend.busy(ticket)
            if pause:
                with self._lock:
                    self.changes.append(Change("paused", ticket, self.clock.last + pause))
        elif self.spend.answered(ticket):
            with self._lock:
                self.changes.append(Change("resumed", ticket, 0.0))

    def check(self) -> Counter[str]:
        """Each generation of the spend ends once, by a call sent in it; a pause ends
        only by its probe, sent after the pause."""
        changes = sorted(self.changes, key=lambda c: c.ticket.generation)
        paused, until = False, 0.0
        for generation, change in enumerate(changes):
            ticket = change.ticket
            assert ticket.generation == generation, (change, generation)
            # While paused, only the probe's answer counts; while not, only a call's.
            assert ticket.probe == paused, change
            if paused:
                _, sent = self.probe_sent[id(ticket)]
                assert sent >= until, (change, sent, until)
            paused = change.kind == "paused"
            until = change.until
        for ticket, sent in self.probe_sent.values():
            # Every probe went out after its pause, stale or not.
            starting = [c for c in changes if c.ticket.generation == ticket.generation - 1]
            if starting:
                assert sent >= starting[0].until, (ticket, sent, starting[0])
        assert self.spend.generation == len(changes)
        return Counter(c.kind for c in changes)


def test_a_call_in_flight_when_the_pause_began_cannot_end_it() -> None:
    """The reproduced bug: a good answer to a call admitted before the pause resumed it."""
    clock = Manual()
    run = SpendRun(Backoff(initial=1.0, maximum=8.0), clock)
    early, late = run.send(), run.send()
    assert early is not None and late is not None
    run.report(early, busy=True)
    run.report(late, busy=False)  # sent before the pause, answered during it: stale
    assert run.spend.paused() and run.send() is None
    clock.now += run.spend.pause
    probe = run.send()
    assert probe is not None and probe.probe
    run.report(probe, busy=False)
    assert not run.spend.paused()
    assert [c.kind for c in run.changes] == ["paused", "resumed"]
    run.check()


def test_a_stale_busy_answer_does_not_extend_the_pause() -> None:
    """Only the probe's 429 makes the pause longer; a stale one is ignored."""
    clock = Manual()
    run = SpendRun(Backoff(initial=1.0, maximum=8.0), clock)
    first, stale = run.send(), run.send()
    assert first is not None and stale is not None
    run.report(first, busy=True)
    clock.now += run.spend.pause
    run.report(stale, busy=True)  # answered after the pause ended, sent before it began
    assert run.spend.busy_streak == 1 and len(run.changes) == 1
    probe = run.send()
    assert probe is not None and probe.probe
    run.report(probe, busy=True)
    assert run.spend.busy_streak == 2 and len(run.changes) == 2
    run.check()


def test_backoff_with_8_threads_and_70_percent_busy_pauses_and_resumes_by_the_rules() -> None:
    """40 runs in a row: no resumption before the pause is over, every one by the
    probe, one probe in flight at a time, no stale answer counted."""
    seen: Counter[str] = Counter()
    for attempt in range(40):
        run = SpendRun(Backoff(initial=0.002, maximum=0.008), time.monotonic)

        def call(rng: random.Random, run: SpendRun = run) -> None:
            ticket = run.send()
            latency(rng)  # the task path's call, or legacy's when refused
            if ticket is not None:
                run.report(ticket, busy=rng.random() < 0.7)

        hammer(call, threads=8, seconds=0.04, seed=attempt)
        seen += run.check()
    assert seen["paused"] >= 80 and seen["resumed"] >= 10, seen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_backoff_property_any_interleaving_follows_the_rules(
    ops: list[tuple[str, int, bool]],
) -> None:
    """Calls sent, answered busy or well in any order, time passing: every pause and
    resumption is one the rules allow (see :meth:`SpendRun.check`)."""
    clock = Manual()
    run = SpendRun(Backoff(initial=1.0, maximum=4.0), clock)
    out: list[Ticket] = []
    for op, n, busy in ops:
        if op == "send":
            ticket = run.send()
            if ticket is not None:
                assert ticket.generation == run.spend.generation
                assert ticket.probe == bool(run.spend.until)
                out.append(ticket)
        elif op == "report" and out:
            run.report(out.pop(n % len(out)), busy)
        elif op == "tick":
            clock.now += n / 10
    run.check()


# -- a whole Shim, from its records --------------------------------------------------


def _at(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def _drive(fn: Callable[[int], Any], seconds: float) -> None:
    def call(rng: random.Random) -> None:
        fn(rng.randrange(1000))

    hammer(call, threads=8, seconds=seconds, seed=7)


#: Records are stamped just after the transition, on whichever thread made it, and on
#: the wall clock: a switch of threads (5 ms) may come in between, and a loaded machine.
SLACK = 0.02


def test_a_shim_under_8_threads_leaves_an_open_breaker_only_by_a_probe() -> None:
    """Serving with 70 % errors: the ``shim.breaker`` records go open -> half_open after
    the cooldown and half_open -> closed only on a probe, never open -> closed."""
    rng = random.Random(3)
    cooldown = 0.1

    def flaky(request: TaskRequest) -> str:
        time.sleep(rng.random() * 0.001)
        if rng.random() < 0.7:
            raise TaskFailed("kiwi.ocr: node crashed", product="kiwi", task="ocr", status=500)
        return "text"

    s = TestShim(
        {"kiwi.ocr": {"serve": 100}}, answer=flaky, breaker=BreakerPolicy(cooldown=cooldown)
    )
    with s:

        @s.shadow(product="kiwi", task="ocr", request=lambda i: TaskRequest(prompt=str(i)))
        def ocr(i: int) -> str:
            return "legacy"

        started = time.monotonic()
        _drive(ocr, 0.8)
        took = time.monotonic() - started
        moves = [r for r in s.records if r["event"] == "shim.breaker"]
    assert moves and moves[0]["from"] == "closed"
    for before, after in pairwise(moves):
        assert after["from"] == before["to"], (before, after)
        if before["to"] == "open":
            assert after["to"] == "half_open", after
            assert _at(after) - _at(before) >= cooldown - SLACK, (before, after)
        if after["to"] == "closed":
            assert (after["from"], after["reason"]) == ("half_open", "probe succeeded"), after
    opened = sum(m["to"] == "open" for m in moves)
    assert 1 <= opened <= took / cooldown + 1, (opened, took)


def test_a_shim_under_8_threads_resumes_shadowing_only_by_a_probe_after_the_pause() -> None:
    """Shadowing with 70 % 429s: each ``shim.backoff`` pause lasts its ``seconds``
    before the next record, and a resumption follows a pause (was: 94 a second)."""
    rng = random.Random(5)

    def full(request: TaskRequest) -> str:
        time.sleep(rng.random() * 0.001)
        if rng.random() < 0.7:
            raise TaskFailed("kiwi.ocr: no GPU", product="kiwi", task="ocr", status=429)
        return "text"

    s = TestShim(
        {"kiwi.ocr": {"shadow": 100}},
        answer=full,
        backoff=Backoff(initial=0.2, maximum=0.4),
        limits=Limits(workers=8),
    )
    with s:

        @s.shadow(product="kiwi", task="ocr", request=lambda i: TaskRequest(prompt=str(i)))
        def ocr(i: int) -> str:
            return "legacy"

        started = time.monotonic()
        _drive(ocr, 1.2)
        took = time.monotonic() - started
        changes = [r for r in s.records if r["event"] == "shim.backoff"]
        compared = len(s.comparisons)
    assert changes and changes[0]["state"] == "paused"
    for before, after in pairwise(changes):
        if before["state"] == "paused":
            assert _at(after) - _at(before) >= before["seconds"] - SLACK, (before, after)
        else:
            assert after["state"] == "paused", (before, after)  # resumed once, not twice
    resumed = sum(c["state"] == "resumed" for c in changes)
    assert resumed <= took / 0.1 + 1, (resumed, took)  # a pause is at least 100 ms
    assert compared > 0
