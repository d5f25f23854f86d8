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
statistics: the share of observations at or under the true ``q``-quantile is a running
mean of Bernoulli(``q``) draws, so a confidence sequence for that share around ``q``
(variance ``q (1 - q)``, known) turns into a low and a high order statistic that hold
the quantile at every sample size (the construction of Howard and Ramdas, "Sequential
estimation of quantiles with applications to A/B-testing and best-arm identification",
Bernoulli 28(3), 2022). The task path's p95 is over ``ratio`` times legacy's when the
low bound of the one lies past ``ratio`` times the high bound of the other, each at
``alpha / 2``. *A ratio of means* (cost per call) is a mean too: the task path costs
over ``ratio`` times legacy's when the pairs' ``task - ratio * legacy`` has a mean
over 0, read in units of the first legacy cost of the stage so that the bounds do not
depend on the currency.
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

    @property
    def variance(self) -> float:
        """The sample variance (0 under two observations)."""
        return self._m2 / (self.n - 1) if self.n > 1 else 0.0


def sequence_bounds(
    run: Running, alpha: float = ALPHA, tuned_for: int = TUNED_FOR
) -> tuple[float, float] | None:
    """The confidence sequence's (low, high) for the mean after ``run.n``
    observations; None before the first. The bounds are tightest at ``tuned_for``
    observations when the variance is about ``run.spread``; any fixed guess keeps them
    valid (one read from the data would not), a good one makes them narrower."""
    if run.n == 0:
        return None
    radius = _radius(run.n, run.variance, alpha, tuned_for, run.spread)
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
    """Every observation kept, for always-valid bounds on a quantile."""

    values: list[float] = field(default_factory=list)
    _sorted: bool = True

    @property
    def n(self) -> int:
        return len(self.values)

    def add(self, x: float) -> None:
        """Take one observation."""
        self.values.append(x)
        self._sorted = False

    def quantile_bounds(
        self, q: float, alpha: float = ALPHA, tuned_for: int = TUNED_FOR
    ) -> tuple[float, float] | None:
        """(low, high) holding the ``q``-quantile at every sample size with chance
        ``1 - alpha`` (-inf or inf where too few observations reach that far); None
        before the first."""
        n = len(self.values)
        if n == 0:
            return None
        if not self._sorted:
            self.values.sort()
            self._sorted = True
        variance = q * (1.0 - q)
        radius = _radius(n, variance, alpha, tuned_for, expected=variance)
        # at least ceil(n (q - r)) observations lie at or under the quantile, and at
        # most floor(n (q + r)) under it: those order statistics (from 1) bound it
        low_k = math.ceil(n * (q - radius))
        high_k = math.floor(n * (q + radius)) + 1
        low = self.values[low_k - 1] if low_k >= 1 else -math.inf
        high = self.values[high_k - 1] if high_k <= n else math.inf
        return low, high


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
        """Take one pair."""
        if self.unit is None:
            if y <= 0:
                return  # nothing to measure by yet: a stage's first costs may be 0
            self.unit = y
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
