"""The verdict of ``shim report`` for one task: PROMOTE, HOLD or ROLLBACK, and why."""

from __future__ import annotations

from typing import Any

from shim.analysis.policy import Gates

__all__ = ["verdict"]


def _pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def verdict(
    report: dict[str, Any],
    gates: Gates,
    counts: dict[str, int],
    errors: tuple[float, float, float] | None,
    mismatch: tuple[float, float, float] | None,
) -> tuple[str, list[str]]:
    """PROMOTE, HOLD or ROLLBACK, with one-sided 95 % bounds against the policy."""
    n = counts["pairs"]
    if n == 0:
        return "HOLD", ["no comparisons yet"]
    rollback = gates.rollback_reasons(**counts)
    if gates.allowed_models is not None:
        outside = sorted(set(report["candidate_models"]) - set(gates.allowed_models))
        if outside:
            rollback.append(f"model(s) outside the allow-list: {', '.join(outside)}")
    if rollback:
        return "ROLLBACK", rollback
    if n < gates.min_pairs:
        return "HOLD", [f"{n} pairs; at least {gates.min_pairs} are needed to decide"]
    hold: list[str] = []
    passed: list[str] = []
    if errors is not None:
        line = (
            f"error rate difference upper bound {_pct(errors[2])} vs "
            f"{_pct(gates.max_error_increase)} allowed"
        )
        (passed if errors[2] <= gates.max_error_increase else hold).append(line)
    if mismatch is not None:
        line = f"mismatch upper bound {_pct(mismatch[2])} vs {_pct(gates.max_mismatch)} allowed"
        (passed if mismatch[2] <= gates.max_mismatch else hold).append(line)
    limits = {
        "p50": gates.max_latency_ratio_p50,
        "p95": gates.max_latency_ratio_p95,
        "p99": gates.max_latency_ratio_p99,
    }
    for q, limit in limits.items():
        found = report["latency_ratio"].get(q)
        if found is None:
            continue
        line = f"latency {q} ratio {found['ratio']:.2f} vs {limit:.2f} allowed"
        if q == "p99" and n < gates.p99_min_pairs:
            passed.append(line + f" (advisory below {gates.p99_min_pairs} pairs)")
        else:
            (passed if found["ratio"] <= limit else hold).append(line)
    if hold:
        return "HOLD", hold
    return "PROMOTE", passed
