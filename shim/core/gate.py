"""The serving limit: at most so many task-path calls serving at once."""

from __future__ import annotations

import threading

from shim.core.lifecycle import renew_in_child

__all__ = ["Gate"]


class Gate:
    """At most ``limit`` callers inside at once, across threads and event loops; the
    rest are turned away at once (never made to wait). ``peak`` is the most ever in.
    A forked child starts with an empty gate: the callers inside are the parent's
    (the one that forked, if inside, leaves it empty)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.peak = 0
        self.after_fork()
        renew_in_child(self)

    def after_fork(self) -> None:
        """Nobody inside, and a lock of its own (the parent's may be held by a thread
        the child does not have)."""
        self.inside = 0
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
        """Make room for the next caller. Never below empty: in a forked child, the
        thread that forked from inside the gate leaves a gate it never entered."""
        with self._lock:
            if self.inside > 0:
                self.inside -= 1
