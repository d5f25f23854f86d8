"""Interval statistics for the report: proportions and their differences. No I/O."""

from __future__ import annotations

import math

__all__ = ["Z95", "Z_ONE_SIDED_95", "newcombe_difference", "wilson"]

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
