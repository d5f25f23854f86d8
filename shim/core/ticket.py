"""What a call admitted to the task path carries back with its result."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Ticket"]


@dataclass(frozen=True, slots=True, eq=False)
class Ticket:
    """Handed out when a call is let through to the task path, and handed back with
    its result. It names the state it was handed out in (``generation``: the breaker,
    or the back-off, counts one up on each change of state), and ``probe`` marks the
    one call let through to test whether that state may end. A result whose ticket is
    not the current one is stale: the call was admitted before the state changed, and
    says nothing about now. Compared by identity."""

    generation: int
    probe: bool = False
