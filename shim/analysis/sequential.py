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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["ALPHA", "TUNED_FOR", "Running", "StageTests", "sequence_bounds"]

#: The chance of a false rollback over a whole stage, however often it is checked.
ALPHA = 0.05
#: The number of observations the bounds are tightest at.
TUNED_FOR = 500


@dataclass(slots=True)
class Running:
    """A running count, mean and variance (Welford), one observation at a time."""

    n: int = 0
    mean: float = 0.0
    _m2: float = 0.0

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
    observations; None before the first."""
    n = run.n
    if n == 0:
        return None
    log_alpha = -2.0 * math.log(alpha)
    rho2 = (log_alpha + math.log(log_alpha + 1.0)) / tuned_for
    spread = n * rho2 * run.variance + 1.0
    radius = math.sqrt(2.0 * spread / (n * n * rho2) * math.log(math.sqrt(spread) / alpha))
    return run.mean - radius, run.mean + radius


@dataclass(slots=True)
class StageTests:
    """The rollback tests of one task over its current stage, on every pair since the
    stage began (not a window: a confidence sequence may be checked at any time).

    Per pair both paths ran: the candidate's error less legacy's (-1, 0 or 1), and,
    where both answered, log(task latency / legacy latency); per structurally compared
    pair, a mismatch (0 or 1); per scored pair, the content score."""

    errors: Running = field(default_factory=Running)
    mismatches: Running = field(default_factory=Running)
    quality: Running = field(default_factory=Running)
    latency: Running = field(default_factory=Running)

    def add(
        self,
        legacy_ok: bool,
        candidate_ok: bool,
        match: bool | None = None,
        score: float | None = None,
        legacy_ms: object = None,
        candidate_ms: object = None,
    ) -> None:
        """Take one pair (latencies as a record has them: what is not a positive,
        finite number of milliseconds is left out)."""
        self.errors.add(float(not candidate_ok) - float(not legacy_ok))
        if match is not None:
            self.mismatches.add(0.0 if match else 1.0)
        if score is not None:
            self.quality.add(min(1.0, max(0.0, score)))
        legacy, candidate = _ms(legacy_ms), _ms(candidate_ms)
        if legacy_ok and candidate_ok and legacy is not None and candidate is not None:
            self.latency.add(math.log(candidate / legacy))

    def breaches(
        self,
        *,
        error_increase: float | None,
        mismatch: float | None,
        min_quality: float | None = None,
        latency_ratio: float | None = None,
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
        return reasons


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
