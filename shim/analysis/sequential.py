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
from typing import Any

__all__ = ["ALPHA", "TUNED_FOR", "Paired", "Running", "Sample", "StageTests", "sequence_bounds"]

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


@dataclass(slots=True)
class StageTests:
    """The rollback tests of one task over its current stage, on every pair since the
    stage began (not a window: a confidence sequence may be checked at any time).

    Per pair both paths ran: the candidate's error less legacy's (-1, 0 or 1), and,
    where both answered, log(task latency / legacy latency), each path's latency (for
    the p95s) and, given, each path's cost; per structurally compared pair, a mismatch
    (0 or 1); per scored pair, the content score."""

    # each tuned for the spread it has in kiwi's traffic: errors a few % on each path,
    # mismatches a few %, scores within a few hundredths, latencies within half again
    errors: Running = field(default_factory=lambda: Running(spread=0.1))
    mismatches: Running = field(default_factory=lambda: Running(spread=0.05))
    quality: Running = field(default_factory=lambda: Running(spread=0.02))
    latency: Running = field(default_factory=lambda: Running(spread=0.25))
    legacy_ms: Sample = field(default_factory=Sample)
    candidate_ms: Sample = field(default_factory=Sample)
    #: (task path's cost, legacy's) per pair both answered
    cost: Paired = field(default_factory=Paired)

    def add(
        self,
        legacy_ok: bool,
        candidate_ok: bool,
        match: bool | None = None,
        score: float | None = None,
        legacy_ms: object = None,
        candidate_ms: object = None,
        legacy_cost: float | None = None,
        candidate_cost: float | None = None,
    ) -> None:
        """Take one pair (latencies as a record has them: what is not a positive,
        finite number of milliseconds is left out; a cost is left out where either
        path's is None)."""
        self.errors.add(float(not candidate_ok) - float(not legacy_ok))
        if match is not None:
            self.mismatches.add(0.0 if match else 1.0)
        if score is not None:
            self.quality.add(min(1.0, max(0.0, score)))
        legacy, candidate = _ms(legacy_ms), _ms(candidate_ms)
        if not (legacy_ok and candidate_ok):
            return
        if legacy is not None and candidate is not None:
            self.latency.add(math.log(candidate / legacy))
            self.legacy_ms.add(legacy)
            self.candidate_ms.add(candidate)
        if legacy_cost is not None and candidate_cost is not None:
            self.cost.add(candidate_cost, legacy_cost)

    def breaches(
        self,
        *,
        error_increase: float | None,
        mismatch: float | None,
        min_quality: float | None = None,
        latency_ratio: float | None = None,
        p95_ratio: float | None = None,
        cost_ratio: float | None = None,
        alpha: float = ALPHA,
    ) -> list[str]:
        """Why the stage crosses a rollback line, each by an always-valid bound at
        ``alpha``; empty when none does. A line given as None is not tested."""
        reasons = []
        pct, level = _pct, f"{(1 - alpha) * 100:.0f} %"
        found = sequence_bounds(self.errors, alpha)
        if error_increase is not None and found and found[0] > error_increase:
            reasons.append(
                f"candidate error rate higher by {pct(self.errors.mean)} (at least "
                f"{pct(found[0])}, always-valid {level} over {self.errors.n:,} "
                f"pairs), over the {pct(error_increase)} rollback line"
            )
        found = sequence_bounds(self.mismatches, alpha)
        if mismatch is not None and found and found[0] > mismatch:
            reasons.append(
                f"mismatch rate {pct(self.mismatches.mean)} (at least {pct(found[0])}, "
                f"always-valid {level} over {self.mismatches.n:,} pairs), over the "
                f"{pct(mismatch)} rollback line"
            )
        found = sequence_bounds(self.quality, alpha)
        if min_quality is not None and found and found[1] < min_quality:
            reasons.append(
                f"quality {self.quality.mean:.3f} (at most {found[1]:.3f}, always-valid "
                f"{level} over {self.quality.n:,} scored pairs), under min_quality "
                f"{min_quality:.3f}"
            )
        found = sequence_bounds(self.latency, alpha)
        if latency_ratio is not None and found and found[0] > math.log(latency_ratio):
            reasons.append(
                f"task path slower: typical latency ratio {math.exp(self.latency.mean):.2f} "
                f"(at least {math.exp(found[0]):.2f}, always-valid {level} over "
                f"{self.latency.n:,} pairs), over the {latency_ratio:.2f} line"
            )
        if p95_ratio is not None:
            reasons += self._p95(p95_ratio, alpha, level)
        found = self.cost.excess(cost_ratio, alpha) if cost_ratio is not None else None
        if cost_ratio is not None and found and found[0] > 0:
            ratio = self.cost.mean_x / self.cost.mean_y if self.cost.mean_y > 0 else math.inf
            reasons.append(
                f"task path dearer: cost per call {ratio:.2f} times legacy's (more than "
                f"{cost_ratio:.2f} times by an always-valid {level} bound over "
                f"{self.cost.n:,} pairs), over the {cost_ratio:.2f} line"
            )
        return reasons

    def shortfalls(
        self,
        *,
        error_increase: float | None,
        mismatch: float | None,
        latency_ratio: float | None,
        min_quality: float | None,
        alpha: float = ALPHA,
    ) -> list[str]:
        """Why the stage cannot pass its promotion lines yet, each by an always-valid
        bound at ``alpha`` on the far side of its line; empty when all pass (a line
        given as None, or a test with nothing in it yet, is left out)."""
        short = []
        level = f"always-valid {(1 - alpha) * 100:.0f} %"
        log_line = None if latency_ratio is None else math.log(latency_ratio)
        for name, run, line, upper in (
            ("error increase", self.errors, error_increase, True),
            ("mismatch rate", self.mismatches, mismatch, True),
            ("typical latency ratio", self.latency, log_line, True),
            ("quality", self.quality, min_quality, False),
        ):
            bounds = sequence_bounds(run, alpha)
            if line is None or bounds is None:
                continue
            bound = bounds[1] if upper else bounds[0]
            if (bound > line) if upper else (bound < line):
                if run is self.latency:
                    bound, line = math.exp(bound), math.exp(line)
                side = "upper" if upper else "lower"
                short.append(f"{name}: {side} bound {bound:.4f} vs {line:.4f} ({level})")
        return short

    def summary(self, alpha: float = ALPHA) -> dict[str, Any]:
        """The tests' figures, for records: per mean its count, mean and bounds; the
        p95s' bounds per path; the cost ratio and its pairs."""
        found: dict[str, Any] = {}
        for name, run in (
            ("error_increase", self.errors),
            ("mismatch_rate", self.mismatches),
            ("log_latency_ratio", self.latency),
            ("quality", self.quality),
        ):
            bounds = sequence_bounds(run, alpha)
            if bounds is not None:
                found[name] = {
                    "n": run.n,
                    "mean": round(run.mean, 6),
                    "bounds": [round(b, 6) for b in bounds],
                }
        p95 = {
            path: sample.quantile_bounds(0.95, alpha / 2)
            for path, sample in (("legacy", self.legacy_ms), ("candidate", self.candidate_ms))
        }
        if p95["legacy"] is not None and p95["candidate"] is not None:
            found["p95_ms"] = {
                "n": self.candidate_ms.n,
                **{path: [_finite(b) for b in bounds] for path, bounds in p95.items() if bounds},
            }
        if self.cost.n and self.cost.mean_y > 0:
            found["cost_ratio"] = {
                "n": self.cost.n,
                "ratio": round(self.cost.mean_x / self.cost.mean_y, 6),
            }
        return found

    def _p95(self, ratio: float, alpha: float, level: str) -> list[str]:
        """The p95 test: the task path's low bound past ``ratio`` times legacy's high."""
        task = self.candidate_ms.quantile_bounds(0.95, alpha / 2)
        legacy = self.legacy_ms.quantile_bounds(0.95, alpha / 2)
        if task is None or legacy is None or not task[0] > ratio * legacy[1]:
            return []
        return [
            f"task path slower in the tail: p95 at least {task[0]:.0f} ms against legacy's "
            f"at most {legacy[1]:.0f} ms (ratio at least {task[0] / legacy[1]:.2f}, "
            f"always-valid {level} over {self.candidate_ms.n:,} pairs), over the "
            f"{ratio:.2f} line"
        ]


def _finite(x: float) -> float | None:
    """A bound for JSON: None where it is infinite (too few observations yet)."""
    return round(x, 3) if math.isfinite(x) else None


def _pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def _ms(value: object) -> float | None:
    """A latency in milliseconds, if it is a positive, finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        ms = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return ms if 0 < ms < math.inf else None
