"""What shadow traffic may spend: a budget per task, and back-off when cf-orch is full.

Every compared call runs a second inference on the GPUs that serve production. A
:class:`ShadowBudget` caps it per task (comparisons per second, a token bucket; task-path
tokens per hour), and :class:`Backoff` stops shadowing a task for a growing, jittered
interval when the coordinator answers 429 or 503 (no capacity). Serving calls are not
governed here: they have the breaker and the fallback.
"""

from __future__ import annotations

import math
import numbers
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shim.core.lifecycle import renew_in_child
from shim.core.ticket import Ticket

__all__ = ["REPLICAS_EVERY", "Backoff", "Replicas", "ShadowBudget"]

#: Coordinator answers that mean "no capacity now", not "broken".
BUSY = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class ShadowBudget:
    """A task's shadow allowance. ``per_second``: comparisons per second, evenly spread
    (``burst`` lets that many go at once after a quiet spell; default 1);
    ``tokens_per_hour``: input plus output tokens the task path may spend on
    comparisons, refilled evenly over the hour.

    ``replicas``: the allowance is the fleet's, shared by this many processes (a whole
    number, or a function that tells the live count, asked at most every
    :data:`REPLICAS_EVERY` seconds); each process takes its share of the rate and the
    tokens (the burst stays each process's own)."""

    per_second: float | None = None
    burst: float | None = None
    tokens_per_hour: int | None = None
    replicas: int | Callable[[], int] | None = None

    def __post_init__(self) -> None:
        for name in ("per_second", "burst", "tokens_per_hour"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"ShadowBudget.{name} must be positive, got {value!r}")
        if self.replicas is not None and not (
            _whole_count(self.replicas) or callable(self.replicas)
        ):
            raise ValueError(
                f"ShadowBudget.replicas must be a whole number of 1 or more (or a function "
                f"returning one), got {self.replicas!r}"
            )

    def share(self, replicas: int) -> ShadowBudget:
        """One process's part of a fleet's allowance shared by ``replicas``."""
        tokens = self.tokens_per_hour
        return ShadowBudget(
            per_second=None if self.per_second is None else self.per_second / replicas,
            burst=self.burst,
            tokens_per_hour=None if tokens is None else max(1, tokens // replicas),
        )


#: How often a fleet budget asks its ``replicas`` function for the live count (s).
REPLICAS_EVERY = 10.0


def _whole_count(value: object) -> bool:
    """A whole number of 1 or more: 3, 3.0 (a count read from Prometheus), numpy's ints."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    number = float(value)
    return math.isfinite(number) and number >= 1 and number.is_integer()


class Replicas:
    """The live replica count of a fleet budget: its ``replicas`` as given, or what its
    function said last. The function is asked at most every :data:`REPLICAS_EVERY`
    seconds, on a thread of its own (never on a caller's, which gets the last count at
    once), one call at a time. One that raises, or says something that is not a whole
    number of 1 or more, leaves the last count in force, and ``on_error`` hears of it.
    Until a function first answers, :meth:`count` is None: the fleet's share is not
    known, and no comparison is admitted (a budget is a cap)."""

    def __init__(
        self,
        source: int | Callable[[], int],
        on_error: Callable[[BaseException], None],
        clock: Callable[[], float] = time.monotonic,
        run: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self._source = source
        self._on_error = on_error
        self._clock = clock
        self._run = run or _in_thread
        self._count: int | None = int(source) if not callable(source) else None
        self._next = -math.inf
        self._lock = threading.Lock()
        renew_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: a lock the parent's thread may hold, and the count asked
        again (the child's fleet may differ)."""
        self._lock = threading.Lock()
        self._next = -math.inf

    def count(self) -> int | None:
        """The count in force now (None: a function that has not answered yet)."""
        if callable(self._source) and self._clock() >= self._next:
            with self._lock:
                due = self._clock() >= self._next
                if due:  # whoever takes it asks; the others go on with the last count
                    self._next = self._clock() + REPLICAS_EVERY
            if due:
                self._run(self._ask)
        return self._count

    def _ask(self) -> None:
        assert callable(self._source)
        try:
            found = self._source()
            if not _whole_count(found):
                raise ValueError(f"replicas() returned {found!r}, not a whole number >= 1")
            self._count = int(found)
        except Exception as exc:
            self._on_error(exc)


def _in_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="shim-replicas", daemon=True).start()


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long shadowing pauses after a 429 or 503: ``initial`` seconds, doubled on
    each busy answer in a row up to ``maximum``, each drawn from [50 %, 100 %] of that
    (jitter, so many processes do not come back at once). One probe call then goes
    through: a good answer to it ends the back-off, a 429 or 503 pauses again, for
    longer. Only the probe's answer counts: answers to calls sent before the pause
    began neither end it nor make it longer."""

    initial: float = 1.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"Backoff needs 0 < initial <= maximum, got {self}")


class Spend:
    """One task's shadow spend: its buckets and its back-off. Thread-safe.

    A call about to go to the task path takes a :class:`~shim.core.ticket.Ticket`:
    ``current`` while not backing off (read without a lock), else :meth:`probe` (one
    call at a time, once the pause is over); it hands the ticket back with the answer
    (:meth:`busy`, :meth:`answered`). Each pause and each resumption counts
    ``generation`` one up and retires the tickets handed out before it."""

    __slots__ = (
        "__weakref__",
        "_calls",
        "_calls_at",
        "_lock",
        "_probe",
        "_probe_sent",
        "_random",
        "_tokens",
        "_tokens_at",
        "backoff",
        "busy_streak",
        "clock",
        "current",
        "generation",
        "pause",
        "probe_at",
        "until",
    )

    def __init__(
        self,
        backoff: Backoff,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.backoff = backoff
        self.clock = clock
        self._random = (rng or random.Random()).random
        self._lock = threading.Lock()
        self.until = 0.0  # no comparisons before this (clock time); 0: not backing off
        self.pause = 0.0  # the current pause, in seconds
        self.probe_at = 0.0  # when a caller last let a probe in (admit)
        self.busy_streak = 0
        self.generation = 0
        #: The ticket of a call sent while not backing off; None while backing off.
        self.current: Ticket | None = Ticket(0)
        self._probe: Ticket | None = None  # the probe in flight, backing off only
        self._probe_sent = 0.0
        self._calls: float | None = None  # tokens in the rate bucket; None: full
        self._calls_at = 0.0
        self._tokens: float | None = None  # LLM tokens left this hour; None: full
        self._tokens_at = 0.0
        renew_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: the parent's probe never answers here (the next call
        after the pause probes), and the lock is a new one."""
        self._lock = threading.Lock()
        self._probe = None
        self.probe_at = 0.0

    def admit(self, budget: ShadowBudget | None) -> str | None:
        """May one more call be compared now? None if so, else the drop reason. While
        backing off, one call per pause once it is over (the probe to be: it still takes
        its ticket from :meth:`probe` when it goes out)."""
        if self.until:
            now = self.clock()
            with self._lock:
                if self.until and (
                    now < self.until
                    or (self.probe_at >= self.until and now - self.probe_at < self.pause)
                ):
                    return "backoff"
                if self.until:
                    # This call is the probe; no other until it answers (or, if it never
                    # does, until another pause has passed).
                    self.probe_at = now
        if budget is None:
            return None
        with self._lock:
            now = self.clock()
            if budget.tokens_per_hour is not None:
                left = self._refill_tokens(budget.tokens_per_hour, now)
                if left <= 0:
                    return "budget"
            if budget.per_second is not None:
                burst = budget.burst or 1.0
                calls = self._calls if self._calls is not None else burst
                calls = min(burst, calls + (now - self._calls_at) * budget.per_second)
                self._calls_at = now
                if calls < 1:
                    self._calls = calls
                    return "budget"
                self._calls = calls - 1
        return None

    def charge(self, budget: ShadowBudget | None, tokens: int) -> None:
        """Count the tokens a compared call spent on the task path."""
        if budget is None or budget.tokens_per_hour is None or tokens <= 0:
            return
        with self._lock:
            left = self._refill_tokens(budget.tokens_per_hour, self.clock())
            self._tokens = left - tokens

    def _refill_tokens(self, per_hour: int, now: float) -> float:
        left = self._tokens if self._tokens is not None else float(per_hour)
        left = min(float(per_hour), left + (now - self._tokens_at) * per_hour / 3600)
        self._tokens, self._tokens_at = left, now
        return left

    def paused(self) -> bool:
        """In a pause now: work queued before it began should not go out."""
        return bool(self.until) and self.clock() < self.until

    def probe(self) -> Ticket | None:
        """Backing off: the probe's ticket if this call may go out as the probe (the
        pause is over, and no other probe is out, or it has been out for a whole pause
        without an answer); else None. Not backing off (any more): ``current``."""
        with self._lock:
            if self.current is not None:
                return self.current
            now = self.clock()
            if now < self.until:
                return None
            if self._probe is not None and now - self._probe_sent < self.pause:
                return None
            # A probe lost on the way is replaced: the one it replaces is stale from now.
            self._probe = Ticket(self.generation, probe=True)
            self._probe_sent = now
            return self._probe

    def cancel(self, ticket: Ticket) -> None:
        """The call sent with ``ticket`` was not made, or failed otherwise than busy: if
        it was the probe, the next call may probe."""
        if ticket.probe:
            with self._lock:
                if ticket is self._probe:
                    self._probe = None

    def busy(self, ticket: Ticket | None) -> float:
        """The coordinator had no capacity for the call sent with ``ticket``: pause
        (again, for longer, if it was the probe). The pause in seconds; 0 if the answer
        is stale (the call was sent before the last pause began or ended; None: sent
        while backing off, but not as the probe)."""
        if ticket is None:
            return 0.0
        with self._lock:
            if ticket is not self.current and ticket is not self._probe:
                return 0.0
            now = self.clock()
            self.busy_streak += 1
            self.pause = self._interval()
            self.until = now + self.pause
            self.generation += 1
            self.current = self._probe = None
            return self.pause

    def answered(self, ticket: Ticket | None) -> bool:
        """A good answer to the call sent with ``ticket``: if it was the probe, the
        back-off is over. True if one was."""
        if ticket is None or ticket is self.current:
            return False
        with self._lock:
            if ticket is not self._probe:
                return False
            self.until, self.busy_streak, self.pause = 0.0, 0, 0.0
            self.generation += 1
            self._probe = None
            self.current = Ticket(self.generation)
            return True

    def _interval(self) -> float:
        base = self.backoff.initial * 2 ** max(0, self.busy_streak - 1)
        return float(min(self.backoff.maximum, base) * (0.5 + 0.5 * self._random()))
