"""Latency: per-call ratio and delta, and the aggregates a report needs."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

__all__ = ["latency_delta", "latency_ratio", "percentile", "ratio_interval"]


def latency_ratio(legacy_ms: float | None, candidate_ms: float | None) -> float | None:
    """Candidate over legacy; None when either is missing or legacy took no time."""
    if legacy_ms is None or candidate_ms is None or legacy_ms <= 0:
        return None
    return candidate_ms / legacy_ms


def latency_delta(legacy_ms: float | None, candidate_ms: float | None) -> float | None:
    """Candidate minus legacy, in ms."""
    if legacy_ms is None or candidate_ms is None:
        return None
    return candidate_ms - legacy_ms


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), linear between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio_interval(
    legacy: Sequence[float],
    candidate: Sequence[float],
    q: float = 50,
    *,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float] | None:
    """The ratio of the ``q``-th percentiles (candidate / legacy) with a paired
    bootstrap interval: (estimate, low, high). Pairs are (legacy[i], candidate[i])."""
    pairs = [(a, b) for a, b in zip(legacy, candidate, strict=True) if a > 0]
    if len(pairs) < 2:
        return None

    def ratio(sample: Sequence[tuple[float, float]]) -> float:
        low = percentile([a for a, _ in sample], q) or 0.0
        high = percentile([b for _, b in sample], q) or 0.0
        return high / low if low else math.inf

    rng = random.Random(seed)
    n = len(pairs)
    boots = sorted(ratio([pairs[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    tail = (1 - level) / 2
    return (
        ratio(pairs),
        boots[int(tail * resamples)],
        boots[min(resamples - 1, int((1 - tail) * resamples))],
    )
