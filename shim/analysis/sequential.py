"""Always-valid bounds for rollback decisions that are checked again and again.

A fixed 95 % bound is valid once. Tested after every batch of pairs, it is wrong far
more often than 5 % of the time over a stage: each look is a new chance for noise to
cross the line. A *confidence sequence* holds at every sample size at once: the chance
that the true value ever leaves it, however often it is looked at and whenever the
looking stops, is at most ``alpha``. Rolling back when a confidence sequence lies
wholly past a rollback line therefore keeps false rollbacks at ``alpha`` under
continuous monitoring.

The sequence used is the asymptotic normal-mixture confidence sequence of
Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory
and asymptotic confidence sequences" (Annals of Statistics, 2024), Theorem 2.2: for
independent observations with running mean ``m`` and variance ``v`` after ``n`` of
them,

    m +- sqrt( 2 (n rho^2 v + 1) / (n^2 rho^2) * log( sqrt(n rho^2 v + 1) / alpha ) )

``rho`` sets the sample size the bounds are tightest at (``tuned_for``):
``rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / tuned_for``. The two-sided form is
used for one-sided decisions too (at most ``alpha`` to leave on either side), which
errs on the side of not rolling back.

Two tests are built on it. *A quantile* (the p95 latency) gets bounds from order
statistics, as Howard and Ramdas build them ("Sequential estimation of quantiles with
applications to A/B-testing and best-arm identification", Bernoulli 28(3), 2022): the
share of observations at or under the true ``q``-quantile is a running mean of
Bernoulli(``q``) draws, so a confidence sequence for that share around ``q`` turns into a
low and a high order statistic that hold the quantile at every sample size. The share's
sequence is theirs too: where a beta-binomial mixture of likelihood ratios stays under
``1 / alpha``, which holds at every sample size, not only asymptotically.

*A ratio of means* (cost per call) is a mean too: the task path costs over ``ratio``
times legacy's when the pairs' ``task - ratio * legacy`` has a mean over 0, read in
units of the first legacy cost of the stage so that the bounds do not depend on the
currency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["ALPHA", "TUNED_FOR", "Paired", "Running", "Sample", "sequence_bounds"]

#: The chance of a false rollback over a whole stage, however often it is checked.
ALPHA = 0.05
#: The number of observations the bounds are tightest at.
TUNED_FOR = 500


@dataclass(slots=True)
class Running:
    """A running count, mean and variance (Welford), one observation at a time;
    ``spread``: the variance its bounds are tuned for (a fixed guess, see
    :func:`sequence_bounds`)."""

    n: int = 0
    mean: float = 0.0
    _m2: float = 0.0
    spread: float = 1.0

    def add(self, x: float) -> None:
        """Take one observation."""
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)

    def add_many(self, x: float, count: int) -> None:
        """Take ``count`` observations of ``x`` at once (Chan et al.'s merge)."""
        if count <= 0:
            return
        n = self.n + count
        delta = x - self.mean
        self.mean += delta * count / n
        self._m2 += delta * delta * self.n * count / n
        self.n = n

    @property
    def variance(self) -> float:
        """The sample variance (0 under two observations)."""
        return self._m2 / (self.n - 1) if self.n > 1 else 0.0


def sequence_bounds(
    run: Running, alpha: float = ALPHA, tuned_for: int = TUNED_FOR, floor: float = 0.0
) -> tuple[float, float] | None:
    """The confidence sequence's (low, high) for the mean after ``run.n``
    observations; None before the first. The bounds are tightest at ``tuned_for``
    observations when the variance is about ``run.spread``; any fixed guess keeps them
    valid (one read from the data would not), a good one makes them narrower.
    ``floor``: the least variance taken, whatever the sample's: a share ``p`` tested
    against a line has at least ``line (1 - line)`` there, and a rare event's sample
    variance (0 before the first) would make the bound far too narrow."""
    if run.n == 0:
        return None
    radius = _radius(run.n, max(run.variance, floor), alpha, tuned_for, run.spread)
    return run.mean - radius, run.mean + radius


def _radius(n: int, variance: float, alpha: float, tuned_for: int, expected: float = 1.0) -> float:
    """The half-width after ``n`` observations of this variance; ``expected`` is the
    variance ``rho`` is tuned for (1: a unit, when nothing better is known)."""
    log_alpha = -2.0 * math.log(alpha)
    rho2 = (log_alpha + math.log(log_alpha + 1.0)) / (tuned_for * expected)
    spread = n * rho2 * variance + 1.0
    return math.sqrt(2.0 * spread / (n * n * rho2) * math.log(math.sqrt(spread) / alpha))


@dataclass(slots=True)
class Sample:
    """Positive observations (latencies), counted in buckets 1 % wide, for always-valid
    bounds on a quantile in memory that does not grow with their number: a bound is
    the edge of its order statistic's bucket on the safe side (the low edge for a low
    bound, the high edge for a high one), so it is at most 1 % wider."""

    counts: dict[int, int] = field(default_factory=dict)
    n: int = 0

    def add(self, x: float, count: int = 1) -> None:
        """Take one observation (positive and finite), or ``count`` of them."""
        bucket = math.floor(math.log(x) / _LOG_STEP)
        self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.n += count

    def quantile_bounds(self, q: float, alpha: float = ALPHA) -> tuple[float, float] | None:
        """(low, high) holding the ``q``-quantile at every sample size with chance
        ``1 - alpha`` (0 or inf where too few observations reach that far); None before
        the first."""
        n = self.n
        if n == 0:
            return None
        at_least, at_most = _share_counts(n, q, alpha)
        # at least ``at_least`` observations lie at or under the quantile, and at most
        # ``at_most`` under it: those order statistics (from 1) bound it
        low_k, high_k = at_least, at_most + 1
        low, high = 0.0, math.inf
        seen = 0
        for bucket in sorted(self.counts):
            before, seen = seen, seen + self.counts[bucket]
            if before < low_k <= seen:
                low = math.exp(bucket * _LOG_STEP)
            if before < high_k <= seen:
                high = math.exp((bucket + 1) * _LOG_STEP)
                break
        return low, high


def _share_counts(n: int, q: float, alpha: float) -> tuple[int, int]:
    """The counts a Bernoulli(``q``) sum of ``n`` draws stays within at every ``n`` with
    chance ``1 - alpha``: where the beta-binomial mixture of likelihood ratios (a
    martingale, mean ``q``, :data:`_PRIOR_WEIGHT` draws' worth of prior) stays under
    ``1 / alpha`` (Ville). It is convex in the count: a binary search on each side of
    its low point finds the ends."""
    a, b = q * _PRIOR_WEIGHT, (1.0 - q) * _PRIOR_WEIGHT
    base = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) - math.lgamma(a + b + n)
    log_q, log_p = math.log(q), math.log(1.0 - q)
    line = math.log(1.0 / alpha)

    def inside(s: int) -> bool:
        mixture = math.lgamma(a + s) + math.lgamma(b + n - s) + base
        return mixture - s * log_q - (n - s) * log_p < line

    middle = min(n, max(0, round(n * q)))
    low, high = 0, middle
    while low < high:  # the least count inside
        mid = (low + high) // 2
        low, high = (low, mid) if inside(mid) else (mid + 1, high)
    least = low
    low, high = middle, n
    while low < high:  # the greatest count inside
        mid = (low + high + 1) // 2
        low, high = (mid, high) if inside(mid) else (low, mid - 1)
    return least, low


#: The beta-binomial mixture's prior, in draws: the bounds are tightest at a few
#: hundred to a few thousand observations.
_PRIOR_WEIGHT = 50.0
#: The width of a :class:`Sample`'s buckets, as a log: 1 %.
_LOG_STEP = math.log(1.01)


@dataclass(slots=True)
class Paired:
    """Paired observations (x, y), for always-valid bounds on ``mean x - ratio *
    mean y``: running means and (co)variances (Welford), in units of the first
    positive y, fixed then, so that the bounds do not depend on the unit."""

    n: int = 0
    mean_x: float = 0.0
    mean_y: float = 0.0
    _cxx: float = 0.0
    _cyy: float = 0.0
    _cxy: float = 0.0
    unit: float | None = None

    def add(self, x: float, y: float) -> None:
        """Take one pair; the first with a positive y sets the unit and is left out,
        so that the unit is fixed before the pairs the bounds rest on."""
        if self.unit is None:
            if y > 0:
                self.unit = y
            return
        x, y = x / self.unit, y / self.unit
        self.n += 1
        dx, dy = x - self.mean_x, y - self.mean_y
        self.mean_x += dx / self.n
        self.mean_y += dy / self.n
        self._cxx += dx * (x - self.mean_x)
        self._cyy += dy * (y - self.mean_y)
        self._cxy += dx * (y - self.mean_y)

    def excess(
        self, ratio: float, alpha: float = ALPHA, tuned_for: int = TUNED_FOR
    ) -> tuple[float, float] | None:
        """The bounds on ``mean x - ratio * mean y`` (in the unit); None under two pairs."""
        if self.n < 2:
            return None
        mean = self.mean_x - ratio * self.mean_y
        variance = max(
            0.0, (self._cxx + ratio * ratio * self._cyy - 2 * ratio * self._cxy) / (self.n - 1)
        )
        radius = _radius(self.n, variance, alpha, tuned_for)
        return mean - radius, mean + radius
