"""A circuit breaker per task: stop calling a task path that keeps failing."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shim.core.lifecycle import renew_in_child
from shim.core.ticket import Ticket

__all__ = ["BreakerPolicy", "CircuitBreaker", "Transition"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When to open: ``failures`` in a row, or a failure share of at least ``ratio``
    over the last ``window`` calls, counted once ``min_calls`` are in it (by default:
    5 in a row, or half of the last 20 once 10 are in). After ``cooldown`` seconds one
    probe call is let through: its success closes, its failure reopens for another
    cooldown. Only the probe decides: results of calls let through before the breaker
    last changed state count for nothing."""

    failures: int = 5
    window: int = 20
    ratio: float = 0.5
    min_calls: int = 10
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if self.failures < 1 or self.window < 1 or self.min_calls < 1:
            raise ValueError("failures, window and min_calls must be at least 1")
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.cooldown < 0:
            raise ValueError(f"cooldown must not be negative, got {self.cooldown}")


Transition = Callable[[str, str, str, dict[str, Any]], None]


class CircuitBreaker:
    """One task's breaker. ``allow()`` before calling the task path: a
    :class:`~shim.core.ticket.Ticket`, or None (do not call); then exactly one of
    ``success(ticket)`` / ``failure(ticket)`` (or ``cancel(ticket)``: not called after
    all). Thread-safe; ``allow()`` takes no lock while closed.
    ``on_transition(task, from, to, details)`` hears every change of state, under the
    breaker's lock (so in order).

    Each change of state counts ``generation`` one up and retires the tickets handed
    out before it: a call in flight when the breaker opened cannot close it, nor can
    a call sent before it closed again reopen it. Only the probe, let through after the
    cooldown, ends the open state."""

    def __init__(
        self,
        task: str,
        policy: BreakerPolicy,
        *,
        on_transition: Transition | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.task = task
        self.policy = policy
        self.state = CLOSED
        self.generation = 0
        self._on_transition = on_transition
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[bool] = deque(maxlen=policy.window)
        self._consecutive = 0
        self._opened_at = 0.0
        # The closed state's ticket, None unless closed: one read decides allow() while
        # closed, with no lock and nothing allocated per call.
        self._closed: Ticket | None = Ticket(0)
        self._probe: Ticket | None = None  # the probe in flight, half open only
        self._probe_since = 0.0
        renew_in_child(self)

    def after_fork(self) -> None:
        """In a forked child: the parent's probe never answers here (the next call
        probes at once), and the lock is a new one (a parent's thread may hold it)."""
        self._lock = threading.Lock()
        self._probe = None

    def allow(self) -> Ticket | None:
        """May the task path be called now? Its ticket if so: the closed state's, or,
        after the cooldown, the probe's (one at a time). None if not."""
        ticket = self._closed
        if ticket is not None:
            return ticket
        with self._lock:
            now = self._clock()
            if self.state == CLOSED:  # closed again since the read above
                return self._closed
            if self.state == OPEN:
                if now - self._opened_at < self.policy.cooldown:
                    return None
                self._move(HALF_OPEN, "cooldown over; probing")
            # One probe at a time; a probe that never reported back is replaced after
            # another cooldown, so a lost probe cannot wedge the breaker half-open. The
            # one it replaces is stale from then on.
            elif self._probe is not None and now - self._probe_since < self.policy.cooldown:
                return None
            self._probe = Ticket(self.generation, probe=True)
            self._probe_since = now
            return self._probe

    def may_probe(self) -> bool:
        """Lock-free hint for callers: could :meth:`allow` say yes now?"""
        if self._closed is not None:
            return True
        if self.state == OPEN:
            return self._clock() - self._opened_at >= self.policy.cooldown
        return self._probe is None or self._clock() - self._probe_since >= self.policy.cooldown

    def success(self, ticket: Ticket) -> None:
        """The call let through with ``ticket`` answered."""
        with self._lock:
            if ticket is self._closed:
                self._consecutive = 0
                self._recent.append(True)
            elif ticket is self._probe:
                self._move(CLOSED, "probe succeeded")

    def failure(self, ticket: Ticket) -> None:
        """The call let through with ``ticket`` failed."""
        with self._lock:
            if ticket is self._probe:
                self._open("probe failed")
                return
            if ticket is not self._closed:
                return  # sent before the breaker last changed state
            self._consecutive += 1
            self._recent.append(False)
            failed, seen = self._recent.count(False), len(self._recent)
            policy = self.policy
            if self._consecutive >= policy.failures:
                self._open(f"{self._consecutive} consecutive failures")
            elif seen >= policy.min_calls and failed / seen >= policy.ratio:
                self._open(
                    f"{failed} of the last {seen} calls failed (opens at {policy.ratio * 100:g} %"
                    f" of the last {policy.window} once {policy.min_calls} are in)"
                )

    def cancel(self, ticket: Ticket) -> None:
        """The call let through with ``ticket`` was not made, or its result says nothing
        about the task path (no capacity, while shadowing): a probe's turn goes to the
        next call."""
        if ticket.probe:
            with self._lock:
                if ticket is self._probe:
                    self._probe = None

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._move(OPEN, reason)

    def _move(self, to: str, reason: str) -> None:
        """Change state (under the lock), retiring every ticket handed out so far."""
        before, self.state = self.state, to
        self.generation += 1
        self._probe = None
        if to == CLOSED:
            self._consecutive = 0
            self._recent.clear()
            self._closed = Ticket(self.generation)
        else:
            self._closed = None
        if self._on_transition is not None:
            failed = self._recent.count(False)
            self._on_transition(
                self.task,
                before,
                to,
                {
                    "reason": reason,
                    "consecutive_failures": self._consecutive,
                    "failure_ratio": round(failed / len(self._recent), 3) if self._recent else 0.0,
                    "cooldown_s": self.policy.cooldown,
                },
            )
