"""Content quality per task for ``shim report``: the mean of the records' ``quality.score``
with its interval, legacy's own noise, and the ``min_quality`` gate.

Scores are in [0, 1] (1: the candidate's content equivalent to legacy's). A mean's
interval is the normal one from the scores' variance; the gate decides only on enough
pairs (``min_pairs`` to pass, 30 to roll back). Legacy is not always equal to itself:
a noise run scores legacy against a second legacy answer, and the mean of those
scores, pooled over every noise run of the task, is the score an equally good
candidate gets. With at least 30 noise runs the gate reads the *relative* quality, the
candidate's mean over the noise mean (capped at 1), with bounds that take both
intervals (the candidate's lower bound over the noise's upper bound, and the other
way round); with fewer, the mean itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shim.analysis.policy import Gates
from shim.analysis.stats import Z95, Z_ONE_SIDED_95

__all__ = ["diff_paths", "quality_gate", "quality_summary"]

#: Scores enough to stand for their spread: fewer scored pairs never roll back (two
#: equal scores give an interval of no width), fewer noise runs are not relied on.
MIN_SCORES = 30


def _bounds(mean: float, sd: float, n: int, z: float) -> tuple[float, float]:
    if n < 2:
        return 0.0, 1.0
    half = z * sd / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)


def _scores(row: Mapping[str, Any], prefix: str) -> tuple[int, float, float]:
    """(n, mean, standard deviation) of the scores the row sums under ``prefix``."""
    n = int(row.get(f"{prefix}_n") or 0)
    if n == 0:
        return 0, 0.0, 0.0
    total, squares = (
        float(row.get(f"{prefix}_sum") or 0.0),
        float(row.get(f"{prefix}_sumsq") or 0.0),
    )
    variance = max(0.0, (squares - total * total / n) / (n - 1)) if n > 1 else 0.0
    return n, total / n, math.sqrt(variance)


def quality_summary(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"n", "mean", "ci95": [lo, hi], "noise": {"n", "mean", "ci95"} | None,
    "relative": {"mean", "low", "high", "against_noise"}}`` (``low``/``high``: one-sided
    95 % bounds, what the gate reads) for a task's aggregate row; None when no record of
    it was scored."""
    n, mean, sd = _scores(row, "quality")
    if n == 0:
        return None
    low, high = _bounds(mean, sd, n, Z_ONE_SIDED_95)
    noise_n, noise_mean, noise_sd = _scores(row, "noise")
    noise = None
    relative = {"mean": mean, "low": low, "high": high, "against_noise": False}
    if noise_n:
        noise = {
            "n": noise_n,
            "mean": noise_mean,
            "ci95": list(_bounds(noise_mean, noise_sd, noise_n, Z95)),
        }
        noise_low, noise_high = _bounds(noise_mean, noise_sd, noise_n, Z_ONE_SIDED_95)
        if noise_n >= MIN_SCORES and noise_low > 0:
            relative = {
                "mean": min(1.0, mean / noise_mean),
                "low": min(1.0, low / noise_high),
                "high": min(1.0, high / noise_low),
                "against_noise": True,
            }
    return {
        "n": n,
        "mean": mean,
        "ci95": list(_bounds(mean, sd, n, Z95)),
        "noise": noise,
        "relative": relative,
    }


def quality_gate(quality: dict[str, Any] | None, gates: Gates) -> tuple[str, str] | None:
    """The ``min_quality`` gate: ``("rollback" | "hold" | "pass", line)``; None when the
    policy sets no ``min_quality``. ROLLBACK when even the upper bound of the relative
    quality is under ``min_quality`` over at least MIN_SCORES scored pairs (the content is
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
    relative, noise = quality["relative"], quality["noise"]
    if relative["against_noise"]:
        how = f"relative to legacy's own noise, {noise['n']} runs"
    elif noise and noise["n"] >= MIN_SCORES:
        how = (
            f"legacy scores {noise['mean']:.3f} against itself over {noise['n']} noise runs: "
            "too near 0 to read the candidate against; not relied on"
        )
    elif noise:
        how = f"only {noise['n']} noise runs: not relied on"
    else:
        how = "no noise runs"
    line = (
        f"quality {relative['mean']:.3f} (one-sided 95 % bounds {relative['low']:.3f}"
        f"-{relative['high']:.3f}, {how}) vs min_quality {limit:.3f}"
    )
    # Too few noise runs to rely on is not the same as none: legacy may be as far from
    # itself as the candidate is from it, so the raw mean rolls nothing back then.
    unsure = noise is not None and not relative["against_noise"]
    if relative["high"] < limit and quality["n"] >= MIN_SCORES and not unsure:
        return "rollback", line
    if quality["n"] < gates.min_pairs:
        need = gates.min_pairs - quality["n"]
        return "hold", line + f"; {quality['n']} scored pairs, needs {need} more"
    return ("pass" if relative["low"] >= limit else "hold"), line


#: How many recurring diff paths a task's report lists.
TOP_PATHS = 10


def diff_paths(row: Mapping[str, Any], compared: int) -> list[dict[str, Any]]:
    """``[{"path", "rate", "noise_rate", "kind"}]``: the paths that differ most often
    beyond legacy's own noise (rate minus noise rate, top :data:`TOP_PATHS`). ``kind``
    ``structure``: the path's shape differs (``rate`` over the structurally compared
    pairs, ``noise_rate`` over the noise runs, null without any); ``value``: the same
    shape, but a content score found the path among a pair's worst (its rate over the
    same pairs; no noise rate: noise runs keep only their score). A path is counted
    once per pair, and one that differs both ways is listed as its structure; the ``...
    N more`` line of a capped diff is not a path."""
    found = row.get("diff_paths") or {}
    valued = row.get("value_paths") or {}
    if not compared or not (found or valued):
        return []
    runs = int(row.get("noise_runs") or 0)
    noise = row.get("noise_diff_paths") or {}
    ranked = []
    for path, count in found.items():
        if path is None or str(path).startswith("... "):
            continue
        rate = int(count) / compared
        noise_rate = int(noise.get(path, 0)) / runs if runs else None
        ranked.append((-(rate - (noise_rate or 0.0)), str(path), rate, noise_rate, "structure"))
    for path, count in valued.items():
        if path is None or path in found:
            continue
        rate = min(1.0, int(count) / compared)
        ranked.append((-rate, str(path), rate, None, "value"))
    ranked.sort(key=lambda r: r[:2])
    return [
        {"path": p, "rate": r, "noise_rate": n, "kind": k} for _, p, r, n, k in ranked[:TOP_PATHS]
    ]
