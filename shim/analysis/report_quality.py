"""Content quality per task for ``shim report``: the mean of the records' ``quality.score``
with its interval, legacy's own noise, and the ``min_quality`` gate.

Scores are in [0, 1] (1: the candidate's content equivalent to legacy's). The mean's
interval is the normal one from the scores' variance (``n`` is in the hundreds by the
time a gate decides). Legacy is not always equal to itself: a noise run scores legacy
against a second legacy answer, and the mean of those scores, pooled over every noise
run of the task, is the score an equally good candidate gets. The gate therefore reads
the *relative* quality, the candidate's mean over the noise mean (capped at 1), with
the noise mean taken as known; without noise runs, the mean itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shim.analysis.policy import Gates
from shim.analysis.stats import Z95, Z_ONE_SIDED_95

__all__ = ["quality_gate", "quality_summary"]

#: The normal interval needs scores enough to stand for their spread: fewer than this
#: many scored pairs never roll back (two equal scores would give a zero-width interval).
_MIN_ROLLBACK = 30


def _bounds(mean: float, sd: float, n: int, z: float) -> tuple[float, float]:
    if n < 2:
        return 0.0, 1.0
    half = z * sd / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)


def quality_summary(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"n", "mean", "ci95": [lo, hi], "noise": {"n", "mean"} | None, "relative":
    {"mean", "low", "high"}}`` (``low``/``high``: one-sided 95 % bounds, what the gate
    reads) for a task's aggregate row; None when no record of it was scored."""
    n = int(row.get("quality_n") or 0)
    if n == 0:
        return None
    total, squares = float(row.get("quality_sum") or 0.0), float(row.get("quality_sumsq") or 0.0)
    mean = total / n
    variance = max(0.0, (squares - total * total / n) / (n - 1)) if n > 1 else 0.0
    sd = math.sqrt(variance)
    noise_n = int(row.get("noise_n") or 0)
    noise_mean = float(row.get("noise_sum") or 0.0) / noise_n if noise_n else None
    scale = 1.0 / noise_mean if noise_mean else 1.0
    low, high = _bounds(mean, sd, n, Z_ONE_SIDED_95)
    return {
        "n": n,
        "mean": mean,
        "ci95": list(_bounds(mean, sd, n, Z95)),
        "noise": None if noise_mean is None else {"n": noise_n, "mean": noise_mean},
        "relative": {
            "mean": min(1.0, mean * scale),
            "low": min(1.0, low * scale),
            "high": min(1.0, high * scale),
        },
    }


def quality_gate(quality: dict[str, Any] | None, gates: Gates) -> tuple[str, str] | None:
    """The ``min_quality`` gate: ``("rollback" | "hold" | "pass", line)``; None when the
    policy sets no ``min_quality``. ROLLBACK when even the upper bound of the relative
    quality is under ``min_quality`` over at least 30 scored pairs (the content is
    worse: more pairs will not mend it); HOLD while the interval straddles it or the
    scored pairs are fewer than ``min_pairs``; it passes when the lower bound reaches
    it."""
    limit = gates.min_quality
    if limit is None:
        return None
    if quality is None:
        return "hold", (
            f"quality: no scored pairs; min_quality {limit:.3f} needs a comparator with a "
            "scorer (JsonOutput(quality=FieldRules()), TextOutput(quality=TextSimilarity()))"
        )
    relative = quality["relative"]
    how = "relative to legacy's own noise" if quality["noise"] else "no noise runs"
    line = (
        f"quality {relative['mean']:.3f} (one-sided 95 % bounds {relative['low']:.3f}"
        f"-{relative['high']:.3f}, {how}) vs min_quality {limit:.3f}"
    )
    if relative["high"] < limit and quality["n"] >= _MIN_ROLLBACK:
        return "rollback", line
    if quality["n"] < gates.min_pairs:
        need = gates.min_pairs - quality["n"]
        return "hold", line + f"; {quality['n']} scored pairs, needs {need} more"
    return ("pass" if relative["low"] >= limit else "hold"), line
