"""The verdict of ``shim report`` for one task: PROMOTE, HOLD or ROLLBACK, and why.

PROMOTE needs evidence for every gate it passes: ``min_pairs`` pairs where both paths
ran (the error gate), ``min_pairs`` pairs with a structure verdict (the mismatch gate)
and ``min_pairs`` pairs with both latencies (the latency gates). Short of any of them
the task HOLDs, and the reasons say how many more of which kind are needed. Nor may
the comparator have failed on more than ``max_unjudged`` of the pairs both paths
answered: the pairs it judged would be a biased sample. A gate that misses only for
want of pairs says about how many more would do, at the rates observed. ROLLBACK needs
no minimum: its lines are lower bounds, which few pairs keep low.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from shim.analysis.policy import Gates
from shim.analysis.report_judge import judge_gate
from shim.analysis.report_quality import quality_gate
from shim.analysis.report_ttft import ttft_gate
from shim.analysis.stats import Z_ONE_SIDED_95, newcombe_difference, pairs_needed, wilson

__all__ = [
    "abandoned_line",
    "dropped_line",
    "held_line",
    "shim_error_line",
    "untasked_line",
    "verdict",
]


def _pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def shim_error_line(
    count: int, by_operation: dict[str, dict[str, Any]], what: str = "shim.error record(s)"
) -> str:
    """``50 shim.error record(s): call_site.key 50 (KeyError: ...)``: what the shim
    could not do, by operation (most first), with the first error of each."""
    parts = [
        f"{op} {e['count']}" + (f" ({e['example']})" if e.get("example") else "")
        for op, e in sorted(by_operation.items(), key=lambda item: -item[1]["count"])
    ]
    return f"{count} {what}: " + "; ".join(parts)


def untasked_line(report: dict[str, Any]) -> str | None:
    """The report's ``shim.error`` records tied to no task, as one line; None if none."""
    found = report.get("shim_errors_without_task") or {}
    if not found.get("count"):
        return None
    return shim_error_line(
        found["count"], found["by_operation"], "shim.error records tied to no task"
    )


def held_line(task: dict[str, Any]) -> str | None:
    """The calls of ``task`` legacy served because the call site declares side effects
    or streams (compared all the same, so not dropped), as one line; None if none."""
    side, stream = task.get("side_effects_held") or 0, task.get("stream_held") or 0
    if not side and not stream:
        return None
    why = ["side_effects=True"] * bool(side) + ["a streaming call site"] * bool(stream)
    return (
        f"{task['task']}: {side + stream:,} calls the flags sent to the task path were served "
        f"by legacy ({'; '.join(why)})"
    )


def abandoned_line(task: dict[str, Any]) -> str | None:
    """The streams of ``task`` the caller left early, by who served them, as one line;
    None if none."""
    left = task.get("abandoned") or {}
    legacy, served = left.get("legacy") or 0, left.get("task") or 0
    if not legacy and not served:
        return None
    n = legacy + served
    return (
        f"{task['task']}: {n:,} stream{'s' * (n != 1)} left early by the caller "
        f"({legacy:,} served by legacy, {served:,} by the task path; not compared)"
    )


#: What a drop's reason means for whoever sizes the shim, where there is something to do.
_DROPS = {
    "queue_full": "the workers could not keep up: each comparison holds a worker for the "
    "task path's latency{latency}, so give Limits(workers=...) about shadowed calls/s x "
    "that latency, or shadow fewer calls (the share, or shadow_rate)",
    "recorder_full": "the recorder's thread (comparing and writing) fell behind: a slow "
    "log, or costly comparators",
    "breaker_open": "the task path kept failing, and the breaker stopped calling it",
    "backoff": "the coordinator said it was full, and the shim backed off",
    "budget": "past the task's shadow budget (shadow_rate, shadow_tokens_per_hour)",
    "serve_full": "Limits.max_serving task-path calls were serving already; legacy served",
    "shutdown": "unfinished when the Shim closed",
    "abandoned": "streams the caller left early (below)",
}


def dropped_line(task: dict[str, Any]) -> str | None:
    """The drops of ``task`` (``shim.dropped``: comparisons, and task-path calls that
    did not serve), by reason (most first), beside its pairs, with what the reasons
    that call for it say to do, as one line; None if none."""
    dropped = {k: v for k, v in (task.get("dropped_by_reason") or {}).items() if v > 0}
    if not dropped:
        return None
    p95 = ((task.get("latency_ms") or {}).get("candidate") or {}).get("p95")
    latency = ""
    if isinstance(p95, int | float) and math.isfinite(p95):
        latency = f" ({p95:,.0f} ms at p95 here)" if p95 >= 10 else f" ({p95:.2g} ms at p95 here)"
    parts = []
    for reason, count in sorted(dropped.items(), key=lambda item: (-item[1], item[0])):
        why = _DROPS.get(reason)
        parts.append(f"{reason} {count:,}" + (f": {why.format(latency=latency)}" if why else ""))
    n = task.get("n") or 0
    return (
        f"{task['task']}: {sum(dropped.values()):,} dropped beside {n:,} "
        f"pair{'s' * (n != 1)}; " + "; ".join(parts)
    )


def _shortfalls(report: dict[str, Any], gates: Gates) -> list[str]:
    """Why the evidence cannot decide yet: one line per kind of pair that is short."""
    n, need = report["n"], gates.min_pairs
    evidence = report["evidence"]
    lines = []
    if n < need:
        lines.append(f"{n} pairs; at least {need} are needed to decide: needs {need - n} more")
    # A kind short only because all pairs are few is said by the line above.
    ran = evidence["ran"]
    if ran < need and ran < n:
        lines.append(
            f"both paths ran on {ran} of {n} pairs: needs {need - ran} more pairs where "
            "both paths ran (the error gate)"
        )
    compared = evidence["compared"]
    if compared < need and compared < n:
        why = []
        if report["comparator_errors"]:
            example = report.get("comparator_error_example")
            why.append(
                f"the comparator failed on {report['comparator_errors']}"
                + (f": {example}" if example else "")
            )
        failed = n - compared - report["comparator_errors"]
        if failed > 0:
            why.append(f"a path failed on {failed}, so there was nothing to compare")
        lines.append(
            f"structure compared on {compared} of {n} pairs: needs {need - compared} more "
            "structurally compared pairs" + (f" ({'; '.join(why)})" if why else "")
        )
    timed = evidence["latency_pairs"]
    if timed < need and timed < n:
        lines.append(
            f"latency measured on both paths for {timed} of {n} pairs: needs {need - timed} "
            "more pairs where both paths answered with a latency"
        )
    return lines


def _mismatch_line(report: dict[str, Any], bound: float, gates: Gates) -> str:
    raw, adjusted = report["mismatch_rate"], report["mismatch_rate_adjusted"]
    noise = report["noise_explained"]
    how = (
        f"raw {_pct(raw)} less {noise} pair(s) legacy's own noise explains"
        if noise
        else "equal to the raw rate"
    )
    return (
        f"mismatch upper bound {_pct(bound)} vs {_pct(gates.max_mismatch)} allowed "
        f"(on mismatch_rate_adjusted {_pct(adjusted)}, {how})"
    )


#: where the search for "how many more pairs" gives up
_SEARCH_CAP = 10_000_000


def _about(count: int) -> str:
    """``count`` rounded up to two significant digits (an estimate, not a promise)."""
    step = 10 ** max(0, len(str(count)) - 2)
    return f"{math.ceil(count / step) * step:,}"


def _more(upper: Callable[[int], float], n: int, limit: float, kind: str) -> str:
    """``; about 240 more pairs at the observed rates would bring it under``: how many
    more pairs of ``kind`` the gate's ``upper`` bound needs to reach ``limit``."""
    needed = pairs_needed(upper, n, limit, cap=_SEARCH_CAP)
    if needed is None:
        return f"; not even {_SEARCH_CAP:,} {kind} at the observed rates would bring it under"
    if needed <= n:
        return ""
    return f"; about {_about(needed - n)} more {kind} at the observed rates would bring it under"


def _error_more(counts: dict[str, int], limit: float) -> str:
    """What more pairs would do for the error gate, its counts scaled to more pairs."""
    n = counts["pairs"]
    task, legacy = counts["candidate_errors"] / n, counts["legacy_errors"] / n
    if task - legacy >= limit:
        return (
            f"; the observed difference {_pct(task - legacy)} is at or over the limit: "
            "more pairs will not help"
        )

    def upper(pairs: int) -> float:
        found = newcombe_difference(
            round(task * pairs), pairs, round(legacy * pairs), pairs, z=Z_ONE_SIDED_95
        )
        return 1.0 if found is None else found[2]

    return _more(upper, n, limit, "pairs")


def _mismatch_more(counts: dict[str, int], limit: float) -> str:
    """What more structurally compared pairs would do for the mismatch gate."""
    n = counts["compared"]
    rate = counts["mismatches"] / n
    if rate >= limit:
        return f"; the observed rate {_pct(rate)} is at or over the limit: more pairs will not help"

    def upper(pairs: int) -> float:
        found = wilson(round(rate * pairs), pairs, z=Z_ONE_SIDED_95)
        return 1.0 if found is None else found[2]

    return _more(upper, n, limit, "structurally compared pairs")


def _unjudged(report: dict[str, Any], gates: Gates) -> tuple[str, bool] | None:
    """The pairs both paths answered that the comparator could not judge, as a line,
    and whether they are over ``max_unjudged``; None when there are none."""
    failed = report["comparator_errors"]
    if not failed:
        return None
    answered = report["evidence"]["compared"] + failed
    share = failed / answered
    over = share > gates.max_unjudged
    line = (
        f"the comparator could not judge {failed} of {answered} pairs both paths answered "
        f"({_pct(share)}, {'over' if over else 'within'} the {_pct(gates.max_unjudged)} "
        "max_unjudged)"
    )
    if over:
        line += ": the judged pairs may be a biased sample; fix the comparator before promoting"
    example = report.get("comparator_error_example")
    return line + (f" (first error: {example})" if example else ""), over


def verdict(
    report: dict[str, Any],
    gates: Gates,
    counts: dict[str, int],
    errors: tuple[float, float, float] | None,
    mismatch: tuple[float, float, float] | None,
) -> tuple[str, list[str]]:
    """PROMOTE, HOLD or ROLLBACK, with one-sided 95 % bounds against the policy."""
    notes = []
    if report["shim_errors"]:
        notes.append(shim_error_line(report["shim_errors"], report["shim_errors_by_operation"]))
    if report["n"] == 0:
        return "HOLD", ["no comparisons yet", *notes]
    rollback = gates.rollback_reasons(
        **counts, mismatch_name="structure mismatch (mismatch_rate_adjusted)"
    )
    if gates.allowed_models is not None:
        outside = sorted(set(report["candidate_models"]) - set(gates.allowed_models))
        if outside:
            rollback.append(f"model(s) outside the allow-list: {', '.join(outside)}")
    content = [
        found
        for found in (
            quality_gate(report.get("quality"), gates),
            judge_gate(report.get("judge"), gates),
            ttft_gate(report.get("ttft"), gates),
        )
        if found is not None
    ]
    rollback += [line for verdict, line in content if verdict == "rollback"]
    unjudged = _unjudged(report, gates)
    if rollback:
        return "ROLLBACK", rollback + ([unjudged[0]] if unjudged else []) + notes
    short = _shortfalls(report, gates)
    if short:
        # Waiting for more pairs will not mend a comparator that fails, nor a judge
        # that leans or fails: say so now.
        content_holds = [line for verdict, line in content if verdict != "pass"]
        unjudged_line = [unjudged[0]] if unjudged and unjudged[1] else []
        return "HOLD", short + unjudged_line + content_holds + notes
    hold: list[str] = []
    passed: list[str] = []
    if errors is not None:
        line = (
            f"error rate difference upper bound {_pct(errors[2])} vs "
            f"{_pct(gates.max_error_increase)} allowed"
        )
        if errors[2] <= gates.max_error_increase:
            passed.append(line)
        else:
            hold.append(line + _error_more(counts, gates.max_error_increase))
    if mismatch is not None:
        line = _mismatch_line(report, mismatch[2], gates)
        if mismatch[2] <= gates.max_mismatch:
            passed.append(line)
        else:
            hold.append(line + _mismatch_more(counts, gates.max_mismatch))
    if unjudged:
        (hold if unjudged[1] else passed).append(unjudged[0])
    for verdict, line in content:
        (passed if verdict == "pass" else hold).append(line)
    limits = {
        "p50": gates.max_latency_ratio_p50,
        "p95": gates.max_latency_ratio_p95,
        "p99": gates.max_latency_ratio_p99,
    }
    timed = report["evidence"]["latency_pairs"]
    for q, limit in limits.items():
        found = report["latency_ratio"].get(q)
        if found is None:
            hold.append(f"latency {q} ratio: no latency sample to compare")
            continue
        line = f"latency {q} ratio {found['ratio']:.2f} vs {limit:.2f} allowed"
        if q == "p99" and timed < gates.p99_min_pairs:
            passed.append(line + f" (advisory below {gates.p99_min_pairs} pairs)")
        else:
            (passed if found["ratio"] <= limit else hold).append(line)
    if hold:
        return "HOLD", hold + notes
    return "PROMOTE", passed + notes
