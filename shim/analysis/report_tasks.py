"""Statistics per task for ``shim report``: rates with intervals, latency ratios with a
paired bootstrap, a latency histogram, spend, and the verdict they lead to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shim.analysis.policy import Gates
from shim.analysis.report_judge import judge_summary
from shim.analysis.report_logs import TaskRows
from shim.analysis.report_quality import diff_paths, quality_summary
from shim.analysis.report_verdict import verdict
from shim.analysis.stats import Z_ONE_SIDED_95, newcombe_difference, wilson

__all__ = ["task_report"]


def _rate(k: int, n: int) -> dict[str, float] | None:
    interval = wilson(k, n)
    if interval is None:
        return None
    return {"rate": interval[0], "low": interval[1], "high": interval[2]}


_QUANTILES = (50, 95, 99)


def _ratios(
    pairs: list[tuple[float, float]], seed: int, *, resamples: int = 200, cap: int = 2000
) -> dict[str, Any]:
    """Candidate/legacy ratio of p50, p95, p99 with a paired bootstrap 95 % interval
    (resampling pairs, so both paths' draws stay matched)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sample = np.array(pairs, dtype=float).reshape(-1, 2)
    if len(sample) < 2:
        return {}
    if len(sample) > cap:
        sample = sample[rng.choice(len(sample), cap, replace=False)]
    qs = np.array(_QUANTILES) / 100

    def ratios(legacy: Any, task: Any) -> Any:
        # Both arrays are fresh copies, so the quantiles may partition them in place.
        return np.quantile(task, qs, axis=-1, overwrite_input=True) / np.quantile(
            legacy, qs, axis=-1, overwrite_input=True
        )

    draws = rng.integers(0, len(sample), (resamples, len(sample)))
    legacy, task = sample[:, 0].copy(), sample[:, 1].copy()
    # Latencies near the ends of the float range overflow the ratio to infinity: that
    # is its value (the JSON output writes it as null), not a warning on stderr.
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        estimate = ratios(legacy.copy(), task.copy())
        boots = ratios(legacy[draws], task[draws])
    low, high = np.quantile(boots, [0.025, 0.975], axis=-1, method="inverted_cdf")
    return {
        f"p{q}": {"ratio": float(estimate[i]), "low": float(low[i]), "high": float(high[i])}
        for i, q in enumerate(_QUANTILES)
    }


def _ttft(pairs: list[tuple[float, float]], n: int, seed: int) -> dict[str, Any] | None:
    """Streams: how many pairs streamed on both paths (``n``), each path's time to first
    chunk (p50, p95, p99 of the sample) and their ratio with a paired bootstrap
    interval; None for a task without streams."""
    if not pairs:
        return None
    import numpy as np

    legacy, candidate = np.quantile(np.array(pairs, dtype=float), [0.5, 0.95, 0.99], axis=0).T
    names = ("p50", "p95", "p99")
    return {
        "n": n,
        "legacy_ms": {q: round(float(v), 3) for q, v in zip(names, legacy, strict=True)},
        "candidate_ms": {q: round(float(v), 3) for q, v in zip(names, candidate, strict=True)},
        "ratio": _ratios(pairs, seed),
    }


def _histogram(pairs: list[tuple[float, float]], bins: int = 24) -> dict[str, Any] | None:
    """Counts of both paths' latencies in shared log-spaced bins (from the sample)."""
    import numpy as np

    values = np.array(pairs, dtype=float).reshape(-1, 2)
    positive = values[values > 0]
    if len(positive) < 2:
        return None
    low, high = np.log(positive.min()), np.log(positive.max())
    edges = np.exp(np.linspace(low, max(high, low + 1e-9), bins + 1))

    def counts(side: int) -> list[int]:
        column = values[:, side]
        return [int(c) for c in np.histogram(column[column > 0], edges)[0]]

    return {
        "edges_ms": [round(float(e), 3) for e in edges],
        "legacy": counts(0),
        "candidate": counts(1),
    }


def _usage(r: Mapping[str, Any]) -> dict[str, Any]:
    """Each path's spend over the compared calls, and the task path's minus legacy's."""
    paths: dict[str, dict[str, Any]] = {}
    for path in ("legacy", "candidate"):
        cost = r.get(f"{path}_cost")
        paths[path] = {
            "calls_with_usage": int(r.get(f"{path}_usage_calls") or 0),
            "input_tokens": int(r.get(f"{path}_input_tokens") or 0),
            "output_tokens": int(r.get(f"{path}_output_tokens") or 0),
            "gpu_s": round(float(r.get(f"{path}_gpu_s") or 0.0), 3),
            "gpu_s_reported_calls": int(r.get(f"{path}_gpu_reported") or 0),
            "cost": None if cost is None else round(float(cost), 6),
        }
    legacy, task = paths["legacy"], paths["candidate"]
    delta: dict[str, Any] = {
        key: round(task[key] - legacy[key], 6) if task[key] is not None else None
        for key in ("input_tokens", "output_tokens", "gpu_s", "cost")
    }
    return {"legacy": legacy, "candidate": task, "delta": delta}


def task_report(t: TaskRows, gates: Gates, seed: int) -> dict[str, Any]:
    """One task's statistics and verdict."""
    r = t.row
    n = int(r.get("n") or 0)
    # Rates are over the pairs where both paths ran (the contract); that is every pair
    # a Shim writes, but a record without a side's ``ok`` says nothing of errors.
    ran = int(r.get("ran") or 0)
    legacy_q = r.get("legacy_q") or [None, None, None]
    candidate_q = r.get("candidate_q") or [None, None, None]
    ratios = _ratios(t.pairs, seed)
    cand_err, legacy_err = int(r.get("candidate_errors") or 0), int(r.get("legacy_errors") or 0)
    errors = newcombe_difference(cand_err, ran, legacy_err, ran)
    compared = int(r.get("compared") or 0)
    matches = int(r.get("matches") or 0)
    real_mismatches = int(r.get("real_mismatches") or 0)
    mismatch = _rate(compared - matches, compared)
    adjusted = _rate(real_mismatches, compared)
    comparator_errors = int(r.get("comparator_errors") or 0)
    shim_errors = dict(sorted(t.shim_errors.items()))
    # The gates are one-sided tests at 95 %: a 90 % two-sided interval's bounds.
    gate_errors = newcombe_difference(cand_err, ran, legacy_err, ran, z=Z_ONE_SIDED_95)
    gate_mismatch = wilson(real_mismatches, compared, z=Z_ONE_SIDED_95)
    report: dict[str, Any] = {
        "task": t.name,
        "n": n,
        "served": {
            "legacy": r.get("served_legacy", 0),
            "task": r.get("served_task", 0),
            "legacy_fallback": r.get("served_fallback", 0),
        },
        "legacy_error_rate": (legacy_err / ran) if ran else None,
        "candidate_error_rate": (cand_err / ran) if ran else None,
        # Both over the structurally compared pairs: they add up to 1.
        "structure_match_rate": (matches / compared) if compared else None,
        "mismatch_rate": mismatch["rate"] if mismatch else None,
        # What the mismatch gates use: mismatches less those legacy's own noise explains.
        "mismatch_rate_adjusted": adjusted["rate"] if adjusted else None,
        "noise_explained": compared - matches - real_mismatches,
        "model_verdicts": dict(sorted(t.verdicts.items())),
        "dropped": sum(t.dropped.values()),
        "dropped_by_reason": t.dropped,
        # Served by legacy for declared side effects (or, in logs from before the task
        # path served streams, as streams), and compared: not in dropped.
        "side_effects_held": t.side_effects_held,
        "stream_held": t.stream_held,
        # Streams the caller left early, by who served them: not compared.
        "abandoned": t.abandoned or {"legacy": 0, "task": 0},
        "evidence": {
            "ran": ran,
            "compared": compared,
            "latency_pairs": int(r.get("latency_pairs") or 0),
        },
        "comparator_errors": comparator_errors,
        # The records' own structure.error, else the task's shim.error of the comparator
        # (logs from before comparison records said why).
        "comparator_error_example": (
            r.get("comparator_error") or t.shim_errors.get("compare", {}).get("example")
        )
        if comparator_errors
        else None,
        "shim_errors": sum(e["count"] for e in shim_errors.values()),
        "shim_errors_by_operation": shim_errors,
        "latency_ms": {
            "legacy": dict(zip(("p50", "p95", "p99"), legacy_q, strict=True)),
            "candidate": dict(zip(("p50", "p95", "p99"), candidate_q, strict=True)),
        },
        "intervals": {
            "legacy_error_rate": _rate(legacy_err, ran),
            "candidate_error_rate": _rate(cand_err, ran),
            "error_rate_difference": None
            if errors is None
            else dict(zip(("difference", "low", "high"), errors, strict=True)),
            "mismatch_rate": mismatch,
            "mismatch_rate_adjusted": adjusted,
            "legacy_schema_valid": _rate(
                int(r.get("legacy_valid") or 0), int(r.get("validated") or 0)
            ),
            "candidate_schema_valid": _rate(
                int(r.get("candidate_valid") or 0), int(r.get("validated") or 0)
            ),
        },
        # Deprecated: the name mismatch_rate_adjusted had before it had its own.
        "mismatch_rate_noise_adjusted": adjusted["rate"] if adjusted else None,
        "latency_ratio": ratios,
        "routing_errors": int(r.get("routing_errors") or 0),
        "candidate_models": sorted(t.models),
        "latency_histogram": _histogram(t.pairs),
        # streams: each path's time to first chunk, and their ratio
        "ttft": _ttft(t.ttft_pairs, int(r.get("ttft_n") or 0), seed),
        "usage": _usage(r),
        # content scores (records with quality.score): mean, interval, legacy's noise
        "quality": quality_summary(r),
        # judge verdicts (records with judge): wins, losses, ties, position bias, skips
        "judge": judge_summary(r),
        # the paths that differ most often beyond legacy's own noise
        "diff_paths": diff_paths(r, compared),
    }
    counts = {
        "pairs": ran,
        "legacy_errors": legacy_err,
        "candidate_errors": cand_err,
        "compared": compared,
        "mismatches": real_mismatches,
        "routing_errors": report["routing_errors"],
    }
    report["verdict"], report["reasons"] = verdict(
        report, gates, counts, gate_errors, gate_mismatch
    )
    return report
