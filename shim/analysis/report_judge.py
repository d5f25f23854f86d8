"""Judge verdicts per task for ``shim report``: wins, losses and ties of the candidate,
the judge's position bias, and the ``max_judge_loss`` gate.

Each judged pair counts +1 when the judge preferred legacy (a loss), -1 when it
preferred the candidate (a win), 0 for a tie; the loss margin is their mean, (losses -
wins) / n, with a normal interval from their variance. A pair judged in both orders
whose two verdicts disagree is a tie already (the record says so). Position bias comes
from those pairs: the share where the judge picked the first answer both times, minus
the share where it picked the second both times (0: no lean; 1: it always picks the
first, whatever it reads), with its 95 % interval; a judge is said to lean, and passes
nothing, only when that whole interval is past 0.2 over at least 10 such pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shim.analysis.policy import Gates
from shim.analysis.stats import Z95, Z_ONE_SIDED_95

__all__ = ["MIN_JUDGED", "judge_gate", "judge_summary"]

#: Judged pairs enough to decide on: fewer hold, whatever they say.
MIN_JUDGED = 30
#: A position bias past this is said beside the gate's line: the verdicts lean.
BIAS_WARNING = 0.2
#: Pairs judged in both orders enough to say a judge leans: fewer say too little.
MIN_BOTH_ORDERS = 10


def judge_summary(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"n", "wins", "losses", "ties", "position_bias", "both_orders", "loss_margin":
    {"mean", "low", "high"}, "skipped": {reason: n}, "failure": str | None}`` for a
    task's aggregate row (``low``/``high``: one-sided 95 % bounds; ``failure``: the
    first error of a failing judge); None when nothing was judged or skipped."""
    n = int(row.get("judge_n") or 0)
    skipped: dict[str, int] = {}
    failure = None
    for entry in row.get("judge_skips") or []:
        reason = str(entry.get("reason"))
        skipped[reason] = skipped.get(reason, 0) + int(entry.get("count") or 0)
        if reason == "failed" and failure is None and entry.get("error"):
            failure = str(entry["error"])
    if not n and not skipped:
        return None
    wins, losses = int(row.get("judge_wins") or 0), int(row.get("judge_losses") or 0)
    both = int(row.get("judge_both") or 0)
    bias = bias_bounds = None
    if both:
        first, second = int(row.get("judge_first") or 0), int(row.get("judge_second") or 0)
        bias = (first - second) / both
        if both > 1:  # each pair +1 (first both times), -1 (second) or 0
            variance = max(0.0, (first + second) / both - bias * bias) * both / (both - 1)
            half = Z95 * math.sqrt(variance / both)
            bias_bounds = [max(-1.0, bias - half), min(1.0, bias + half)]
    margin = None
    if n:
        mean = (losses - wins) / n
        # The spread with one more win and one more loss: 30 ties are not certainty
        # that the next 30 will be (a spread of 0 would give bounds of no width).
        w, lo, m = wins + 1, losses + 1, n + 2
        variance = max(0.0, (lo + w) / m - ((lo - w) / m) ** 2) * m / (m - 1)
        half = Z_ONE_SIDED_95 * math.sqrt(variance / n)
        margin = {"mean": mean, "low": max(-1.0, mean - half), "high": min(1.0, mean + half)}
    return {
        "n": n,
        "wins": wins,
        "losses": losses,
        "ties": n - wins - losses,
        "position_bias": bias,
        "position_bias_ci95": bias_bounds,
        "both_orders": both,
        "loss_margin": margin,
        "skipped": skipped,
        "failure": failure,
    }


def judge_gate(judge: dict[str, Any] | None, gates: Gates) -> tuple[str, str] | None:
    """The ``max_judge_loss`` gate: ``("rollback" | "hold" | "pass", line)``; None when
    the policy sets none. ROLLBACK when even the lower bound of the loss margin is over
    ``max_judge_loss`` (the judge prefers legacy by more than allowed); it passes when
    the upper bound is within it; either needs :data:`MIN_JUDGED` judged pairs, and
    holds otherwise. A judge that leans to a position (:func:`_leans`) never passes:
    its single-order verdicts are partly coin flips that dilute a real loss."""
    limit = gates.max_judge_loss
    if limit is None:
        return None
    if judge is None:
        return "hold", (
            f"judge: no judged pairs; max_judge_loss {limit:.3f} needs a Judge on the Shim "
            "(Shim(judge=Judge(...)) or SHIM_JUDGE)"
        )
    if not judge["n"]:  # a judge is there, and judged nothing
        skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(judge["skipped"].items()))
        why = f"; the judge failed: {judge['failure']}" if judge["failure"] else ""
        return "hold", f"judge: no verdicts yet (skipped: {skipped}){why}"
    margin = judge["loss_margin"]
    line = (
        f"judge: candidate {judge['wins']} wins, {judge['losses']} losses, {judge['ties']} "
        f"ties; loss margin {margin['mean']:+.3f} (one-sided 95 % bounds "
        f"{margin['low']:+.3f} to {margin['high']:+.3f}) vs max_judge_loss {limit:.3f}"
    )
    leans = _leans(judge)
    if leans:
        bias = judge["position_bias"]
        line += (
            f"; the judge leans to the {'first' if bias > 0 else 'second'} answer "
            f"({bias:+.2f} over {judge['both_orders']} pairs judged both ways), so it passes "
            "nothing: mend the rubric or the judge's model"
        )
    if judge["n"] < MIN_JUDGED:
        return "hold", line + f"; {judge['n']} judged pairs, needs {MIN_JUDGED - judge['n']} more"
    if margin["low"] > limit:
        return "rollback", line
    return ("pass" if margin["high"] <= limit and not leans else "hold"), line


def _leans(judge: dict[str, Any]) -> bool:
    """The judge leans to a position: over :data:`MIN_BOTH_ORDERS` pairs judged both
    ways, the whole 95 % interval of its position bias is past :data:`BIAS_WARNING`."""
    bounds = judge.get("position_bias_ci95")
    if bounds is None or judge["both_orders"] < MIN_BOTH_ORDERS:
        return False
    low, high = float(bounds[0]), float(bounds[1])
    return low > BIAS_WARNING or high < -BIAS_WARNING
