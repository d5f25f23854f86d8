"""A circuit breaker per task: stop calling a task path that keeps failing."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BreakerPolicy", "CircuitBreaker", "Transition"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When to open: ``failures`` in a row, or a failure share of at least ``ratio``
    over the last ``window`` calls (once ``min_calls`` are in it). After ``cooldown``
    seconds one probe call is let through: success closes, failure reopens."""

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
    """One task's breaker. ``allow()`` before calling the task path; then exactly one
    of ``success()`` / ``failure()``. Thread-safe; ``allow()`` takes no lock while
    closed. ``on_transition(task, from, to, details)`` hears every change of state."""

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
        self._on_transition = on_transition
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[bool] = deque(maxlen=policy.window)
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_since: float | None = None

    def allow(self) -> bool:
        """May the task path be called now? In half-open state, True once (the probe)."""
        if self.state is CLOSED:
            return True
        with self._lock:
            now = self._clock()
            if self.state == OPEN:
                if now - self._opened_at < self.policy.cooldown:
                    return False
                self._move(HALF_OPEN, "cooldown over; probing")
            # One probe at a time; a probe that never reported back is replaced after
            # another cooldown, so a lost probe cannot wedge the breaker half-open.
            if self._probe_since is not None and now - self._probe_since < self.policy.cooldown:
                return False
            self._probe_since = now
            return True

    def may_probe(self) -> bool:
        """Lock-free hint for callers: could :meth:`allow` say yes now?"""
        if self.state == HALF_OPEN:
            return self._probe_since is None
        return self.state == CLOSED or self._clock() - self._opened_at >= self.policy.cooldown

    def success(self) -> None:
        """The task path answered."""
        with self._lock:
            self._consecutive = 0
            self._recent.append(True)
            if self.state != CLOSED:
                self._probe_since = None
                self._recent.clear()
                self._move(CLOSED, "probe succeeded")

    def failure(self) -> None:
        """The task path failed."""
        with self._lock:
            self._consecutive += 1
            self._recent.append(False)
            if self.state == HALF_OPEN:
                self._probe_since = None
                self._open("probe failed")
                return
            if self.state == OPEN:
                return
            failed = self._recent.count(False)
            if self._consecutive >= self.policy.failures:
                self._open(f"{self._consecutive} consecutive failures")
            elif (
                len(self._recent) >= self.policy.min_calls
                and failed / len(self._recent) >= self.policy.ratio
            ):
                self._open(f"{failed} of the last {len(self._recent)} calls failed")

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._move(OPEN, reason)

    def _move(self, to: str, reason: str) -> None:
        before, self.state = self.state, to
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
