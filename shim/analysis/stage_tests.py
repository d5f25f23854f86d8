"""The rollback and promotion tests of one task's stage, on always-valid bounds
(:mod:`shim.analysis.sequential`): what ``shim watch`` and ``shim rollout`` decide on.

Each test holds its ``alpha`` however often it is looked at: the error increase, the
mismatch rate, the content score (relative to legacy's own noise where noise runs
say what that is), the typical latency ratio (the mean of log ratios), the p95
latency ratio (order statistics of each path) and the cost per call (a ratio of
means). Each bound is tuned to be tightest near :data:`~shim.analysis.sequential.TUNED_FOR`
observations for the spread its metric has in kiwi's traffic: a fixed guess, so the
guarantee holds whatever the traffic is; a good guess only narrows the bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from shim.analysis.report_quality import MIN_SCORES
from shim.analysis.sequential import ALPHA, Paired, Running, Sample, sequence_bounds

__all__ = ["MIN_NOISE_RUNS", "StageTests", "score_of"]

#: Noise runs enough for the content score to be read relative to legacy's own noise
#: (as ``shim report`` reads it).
MIN_NOISE_RUNS = MIN_SCORES


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
    #: legacy scored against a second answer of its own (noise runs)
    noise: Running = field(default_factory=lambda: Running(spread=0.02))
    latency: Running = field(default_factory=lambda: Running(spread=0.25))
    legacy_ms: Sample = field(default_factory=Sample)
    candidate_ms: Sample = field(default_factory=Sample)
    #: (task path's cost, legacy's) per pair both answered
    cost: Paired = field(default_factory=Paired)
    #: the promotion tests' own pairs, where they are read otherwise than the rollback
    #: tests' (from histogram buckets, at the edges worse for a promotion); None: these
    promotion: StageTests | None = None

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
        noise: float | None = None,
    ) -> None:
        """Take one pair (latencies as a record has them: what is not a positive,
        finite number of milliseconds is left out; a cost is left out where either
        path's is None; ``noise``: a noise run's score, where the pair had one)."""
        self.errors.add(float(not candidate_ok) - float(not legacy_ok))
        if match is not None:
            self.mismatches.add(0.0 if match else 1.0)
        if score is not None:
            self.quality.add(min(1.0, max(0.0, score)))
        if noise is not None:
            self.noise.add(min(1.0, max(0.0, noise)))
        legacy, candidate = _ms(legacy_ms), _ms(candidate_ms)
        if not (legacy_ok and candidate_ok):
            return
        ratio = candidate / legacy if legacy is not None and candidate is not None else 0.0
        if 0.0 < ratio < math.inf:  # 5e-324 ms is positive, and its ratio is not finite
            assert legacy is not None and candidate is not None
            self.latency.add(math.log(ratio))
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
        """Why the stage crosses a rollback line, each by an always-valid bound;
        empty when none does. A line given as None is not tested; ``alpha`` is shared
        out evenly over the lines given, so that the chance of any false rollback over
        the stage is at most ``alpha`` however many are."""
        lines = (error_increase, mismatch, min_quality, latency_ratio, p95_ratio, cost_ratio)
        alpha /= max(1, sum(line is not None for line in lines))
        reasons = []
        pct, level = _pct, f"{(1 - alpha) * 100:.1f} %"
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
        scored = self.quality_bounds(alpha)
        if min_quality is not None and scored and scored[1] < min_quality:
            what = "relative to legacy's own noise, " if scored[2] else ""
            reasons.append(
                f"quality {self.quality.mean:.3f} ({what}at most {scored[1]:.3f}, always-valid "
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
            reasons += self._p95(p95_ratio, alpha)
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
        given as None, or a test with nothing in it yet, is left out). Read from
        :attr:`promotion` where there is one."""
        if self.promotion is not None:
            return self.promotion.shortfalls(
                error_increase=error_increase,
                mismatch=mismatch,
                latency_ratio=latency_ratio,
                min_quality=min_quality,
                alpha=alpha,
            )
        short = []
        level = f"always-valid {(1 - alpha) * 100:.0f} %"
        log_line = None if latency_ratio is None else math.log(latency_ratio)
        for name, run, line, upper in (
            ("error increase", self.errors, error_increase, True),
            ("mismatch rate", self.mismatches, mismatch, True),
            ("typical latency ratio", self.latency, log_line, True),
            ("quality", self.quality, min_quality, False),
        ):
            rate = run is self.errors or run is self.mismatches
            bounds = sequence_bounds(run, alpha, floor=_rate_floor(line) if rate else 0.0)
            if run is self.quality and line is not None and bounds is not None:
                scored = self.quality_bounds(alpha)
                if scored is None:
                    short.append(f"quality: {self.noise.n} of {MIN_NOISE_RUNS} noise runs")
                    continue
                bounds = scored[:2]
            if line is None or bounds is None:
                continue
            bound = bounds[1] if upper else bounds[0]
            if (bound > line) if upper else (bound < line):
                if run is self.latency:
                    bound, line = math.exp(bound), math.exp(line)
                side = "upper" if upper else "lower"
                short.append(f"{name}: {side} bound {bound:.4f} vs {line:.4f} ({level})")
        return short

    def quality_bounds(self, alpha: float = ALPHA) -> tuple[float, float, bool] | None:
        """Bounds on the content score: with :data:`MIN_NOISE_RUNS` noise runs or more
        (and a noise score bounded above 0), on the score *relative* to legacy's own
        noise, capped at 1 (the score's low bound over the noise's high, and the other
        way round, each at ``alpha / 2``; True last); with none at all, on the score
        itself; None while noise runs come but are fewer (legacy's noise is not known
        yet: reading the score itself would roll back an equal candidate of a noisy
        task). Noise runs measure legacy alone, so they are kept from step to step and
        epoch to epoch (see :meth:`fresh`)."""
        if self.noise.n >= MIN_NOISE_RUNS:
            score = sequence_bounds(self.quality, alpha / 2)
            noise = sequence_bounds(self.noise, alpha / 2)
            if score is not None and noise is not None and noise[0] > 0:
                return min(1.0, score[0] / noise[1]), min(1.0, score[1] / noise[0]), True
        if self.noise.n:
            return None
        found = sequence_bounds(self.quality, alpha)
        return None if found is None else (found[0], found[1], False)

    def fresh(self) -> StageTests:
        """Tests for a new step or epoch: nothing of this one's pairs, but legacy's
        noise runs, which say what legacy is whatever the task path does."""
        twin = None if self.promotion is None else self.promotion.fresh()
        return StageTests(noise=self.noise, promotion=twin)

    @staticmethod
    def read_pair(rec: dict[str, Any]) -> dict[str, Any]:
        """A ``shim.comparison`` record's pair, as :meth:`add` takes it (KeyError,
        TypeError or AttributeError when the record is not one)."""
        legacy, candidate = rec["legacy"], rec["candidate"]
        structure = rec.get("structure") or {}
        match = structure.get("match")
        return {
            "legacy_ok": bool(legacy["ok"]),
            "candidate_ok": bool(candidate["ok"]),
            "match": match if isinstance(match, bool) else None,
            "score": score_of(rec.get("quality")),
            "legacy_ms": legacy.get("latency_ms"),
            "candidate_ms": candidate.get("latency_ms"),
            "noise": score_of(structure.get("noise")),
        }

    def summary(
        self,
        alpha: float = ALPHA,
        error_increase: float | None = None,
        mismatch: float | None = None,
    ) -> dict[str, Any]:
        """The tests' figures, for records: per mean its count, mean and bounds (a
        rate's as :meth:`shortfalls` reads it against ``error_increase`` and
        ``mismatch``, given); the p95s' bounds per path; the cost ratio and its pairs."""
        found: dict[str, Any] = {}
        for name, run, line in (
            ("error_increase", self.errors, error_increase),
            ("mismatch_rate", self.mismatches, mismatch),
            ("log_latency_ratio", self.latency, None),
            ("quality", self.quality, None),
        ):
            bounds = sequence_bounds(run, alpha, floor=_rate_floor(line))
            if bounds is not None:
                found[name] = {
                    "n": run.n,
                    "mean": _finite(run.mean, 6),
                    "bounds": [_finite(b, 6) for b in bounds],
                }
        scored = self.quality_bounds(alpha)
        if "quality" in found:  # the bounds the gates read: relative to noise, or not
            found["quality"]["relative"] = scored is not None and scored[2]
            if scored is not None:
                found["quality"]["bounds"] = [_finite(b, 6) for b in scored[:2]]
            found["quality"]["noise_runs"] = self.noise.n
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

    def _p95(self, ratio: float, alpha: float) -> list[str]:
        """The p95 test: the task path's low bound past ``ratio`` times legacy's high."""
        task = self.candidate_ms.quantile_bounds(0.95, alpha / 2)
        legacy = self.legacy_ms.quantile_bounds(0.95, alpha / 2)
        if task is None or legacy is None or not task[0] > ratio * legacy[1]:
            return []
        return [
            f"task path slower in the tail: p95 at least {task[0]:.0f} ms against legacy's "
            f"at most {legacy[1]:.0f} ms (ratio at least {task[0] / legacy[1]:.2f}, "
            f"always-valid {(1 - alpha) * 100:.1f} % over {self.candidate_ms.n:,} pairs), over the "
            f"{ratio:.2f} line"
        ]


def _rate_floor(line: float | None) -> float:
    """The least variance a rate's bound takes against ``line``: a rate at its line
    varies at least as a Bernoulli there does, and a rare event's sample variance (0
    before the first) would pass the line too soon."""
    return line * (1 - line) if line is not None and 0 < line < 1 else 0.0


def score_of(part: Any) -> float | None:
    """A record's ``quality.score`` (or ``structure.noise.score``) in [0, 1], if any."""
    score = part.get("score") if isinstance(part, dict) else None
    if isinstance(score, bool) or not isinstance(score, int | float) or score != score:
        return None
    try:
        return min(1.0, max(0.0, float(score)))
    except OverflowError:  # an integer of hundreds of digits: past either end
        return 1.0 if score > 0 else 0.0


def _finite(x: float, digits: int = 3) -> float | None:
    """A figure for JSON: None where it is not finite (a bound too few observations
    reach yet)."""
    return round(x, digits) if math.isfinite(x) else None


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
