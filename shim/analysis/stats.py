"""Interval statistics for the report: proportions and their differences. No I/O."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["Z95", "Z_ONE_SIDED_95", "newcombe_difference", "pairs_needed", "wilson"]

#: Two-sided 95 % intervals (what reports show).
Z95 = 1.959963984540054
#: One-sided 95 % bounds (what non-inferiority gates test): a two-sided 90 % interval.
Z_ONE_SIDED_95 = 1.6448536269514722


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float, float] | None:
    """Wilson score interval: (rate, low, high) of ``successes`` out of ``n``."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return p, low, high


def newcombe_difference(
    k1: int, n1: int, k2: int, n2: int, z: float = Z95
) -> tuple[float, float, float] | None:
    """Newcombe's hybrid score interval for p1 - p2: (difference, low, high)."""
    a, b = wilson(k1, n1, z), wilson(k2, n2, z)
    if a is None or b is None:
        return None
    (p1, l1, u1), (p2, l2, u2) = a, b
    d = p1 - p2
    return (
        d,
        d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def pairs_needed(
    upper: Callable[[int], float], n: int, limit: float, *, cap: int = 10_000_000
) -> int | None:
    """The smallest number of pairs, from ``n`` on, at which ``upper`` (a gate's upper
    bound at so many pairs) is at most ``limit``; None if not even ``cap`` pairs do.

    Doubling finds a count that passes, then bisection the smallest: about 50 calls of
    ``upper`` at most, cheap enough for every HOLD reason. ``upper`` should fall with
    the count (a bound at fixed rates does, up to the rounding of its counts)."""
    if upper(n) <= limit:
        return n
    low, high = n, max(1, n)
    while upper(high) > limit:
        if high >= cap:
            return None
        low, high = high, min(cap, high * 2)
    while high - low > 1:  # upper(low) > limit >= upper(high)
        middle = (low + high) // 2
        low, high = (low, middle) if upper(middle) <= limit else (middle, high)
    return high
