"""``shim report``: comparison logs in, a verdict per task out, statistics written out.

Logs are read with DuckDB (files, globs, ``.gz``); every line that is not a schema-1
record (corrupt, truncated, another schema) is counted in ``bad_lines``.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shim.analysis.policy import Gates, Policy, Price
from shim.analysis.stats import Z_ONE_SIDED_95, newcombe_difference, wilson
from shim.base.errors import ShimError

__all__ = ["ReportError", "build_report"]

_USAGE = "STRUCT(input_tokens BIGINT, output_tokens BIGINT, gpu_s DOUBLE)"
_COLUMNS = {
    "event": "VARCHAR",
    "schema": "INTEGER",
    "ts": "VARCHAR",
    "product": "VARCHAR",
    "task": "VARCHAR",
    "stage": "VARCHAR",
    "served_by": "VARCHAR",
    "reason": "VARCHAR",
    "count": "BIGINT",
    "legacy": f"STRUCT(ok BOOLEAN, latency_ms DOUBLE, model VARCHAR, usage {_USAGE})",
    "candidate": f"STRUCT(ok BOOLEAN, latency_ms DOUBLE, model VARCHAR, usage {_USAGE})",
    "model": "STRUCT(verdict VARCHAR, routing_error BOOLEAN)",
    "structure": "STRUCT(match BOOLEAN, legacy_valid BOOLEAN, candidate_valid BOOLEAN, "
    "diff VARCHAR[], noise_paths VARCHAR[])",
}


class ReportError(ShimError):
    """The logs cannot be read (exit 2)."""


def _files(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Paths to read, and temporary files to delete afterwards (stdin)."""
    files: list[str] = []
    temps: list[str] = []
    for item in inputs:
        if item == "-":
            fd, tmp = tempfile.mkstemp(suffix=".jsonl")
            with os.fdopen(fd, "wb") as out:
                out.write(sys.stdin.buffer.read())
            files.append(tmp)
            temps.append(tmp)
            continue
        matched = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        if not matched:
            raise ReportError(f"{item}: no log matches")
        for path in matched:
            if not Path(path).is_file():
                raise ReportError(f"{path}: no such log file")
        files += matched
    return files, temps


def _ends_whole(path: str, window: int = 1 << 16) -> bool:
    """The log ends with a complete JSON object on a line of its own (a process that
    died mid-write leaves a torn last line). Compressed logs cannot be checked cheaply."""
    if path.endswith(".gz"):
        return False
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - window))
        tail = handle.read()
    if not tail.endswith(b"\n"):
        return size == 0
    last = tail.rstrip(b"\n").rpartition(b"\n")[2]
    try:
        return isinstance(json.loads(last), dict) if last.strip() else True
    except ValueError:
        return False


def _sql_list(files: Sequence[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


@dataclass
class _Task:
    name: str
    row: dict[str, Any]
    verdicts: dict[str, int] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)
    dropped: dict[str, int] = field(default_factory=dict)
    pairs: list[tuple[float, float]] = field(default_factory=list)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# One streaming pass computes everything per task; materialising the parsed log in a
# table first costs more than parsing it (measured: 1.5-1.9 s against 0.6 s per GB).
# Nothing in it is DISTINCT or a histogram: either makes DuckDB fan the scan out to a
# second aggregate, about 0.3 s of CPU per GB. Verdicts are counted one by one, and a
# task's candidate models are read as min and max; only a task that saw more than one
# model needs the second, smaller pass (_MODELS).
_VERDICTS = ("same", "alias", "different", "unknown")

_SOURCE = """(
  SELECT *, good AND {scope} AS scoped, good AND {scope} AND event = 'shim.comparison' AS cmp
  FROM (SELECT *, coalesce(event IS NOT NULL AND schema = 1, false) AS good
        -- a line that does not parse comes back as a row of NULLs: a bad line
        FROM read_ndjson({files}, ignore_errors={tolerant}, columns={columns}))
)"""

_AGGREGATE = (
    """
SELECT product, task,
  count(*) AS all_rows,
  count(*) FILTER (good) AS all_records,
  count(*) FILTER (cmp) AS n,
  count(*) FILTER (cmp AND served_by = 'legacy') AS served_legacy,
  count(*) FILTER (cmp AND served_by = 'task') AS served_task,
  count(*) FILTER (cmp AND served_by = 'legacy_fallback') AS served_fallback,
  count(*) FILTER (cmp AND NOT legacy.ok) AS legacy_errors,
  count(*) FILTER (cmp AND NOT candidate.ok) AS candidate_errors,
  count(*) FILTER (cmp AND structure.match IS NOT NULL) AS compared,
  count(*) FILTER (cmp AND structure.match) AS matches,
  count(*) FILTER (cmp AND structure.match = false AND NOT (
      coalesce(len(structure.noise_paths), 0) > 0 AND len(list_filter(structure.diff,
      lambda x: NOT list_contains(structure.noise_paths, x))) = 0)) AS real_mismatches,
  count(*) FILTER (cmp AND structure.candidate_valid IS NOT NULL) AS validated,
  count(*) FILTER (cmp AND structure.legacy_valid) AS legacy_valid,
  count(*) FILTER (cmp AND structure.candidate_valid) AS candidate_valid,
  count(*) FILTER (cmp AND model.routing_error) AS routing_errors,
  quantile_cont(legacy.latency_ms, [0.5, 0.95, 0.99]) FILTER (cmp AND legacy.ok) AS legacy_q,
  quantile_cont(candidate.latency_ms, [0.5, 0.95, 0.99]) FILTER (cmp AND candidate.ok)
    AS candidate_q,
"""
    + "".join(
        f"  count(*) FILTER (cmp AND model.verdict = '{v}') AS verdict_{v},\n" for v in _VERDICTS
    )
    + """  list(model.verdict) FILTER (cmp AND model.verdict NOT IN {known}) AS verdict_other,
  min(candidate.model) FILTER (cmp) AS model_min,
  max(candidate.model) FILTER (cmp) AS model_max,
  list({{'reason': reason, 'count': count}}) FILTER (scoped AND event = 'shim.dropped')
    AS drops,
{usage}
  list({{'legacy': legacy.latency_ms, 'task': candidate.latency_ms}}) FILTER (
    cmp AND legacy.ok AND candidate.ok AND legacy.latency_ms > 0
    AND candidate.latency_ms IS NOT NULL AND hash(legacy.latency_ms) % {every} = 0) AS pairs
FROM {source}
GROUP BY ALL ORDER BY product, task
"""
)


def _usage_sql(prices: Mapping[str, Price]) -> str:
    """Per path: calls that reported usage, tokens in and out, GPU-seconds (reported, or
    the call's latency where not), and the cost at ``prices`` (None without prices).
    CASE inside the aggregate, not FILTER: about 7 % less for the whole query."""
    parts = []
    for path in ("legacy", "candidate"):
        u, ok = f"{path}.usage", f"cmp AND {path}.ok"
        gpu = f"coalesce({u}.gpu_s, {path}.latency_ms / 1000)"
        parts += [
            f"  count(CASE WHEN {ok} THEN {u}.input_tokens END) AS {path}_usage_calls,",
            f"  sum(CASE WHEN {ok} THEN {u}.input_tokens END) AS {path}_input_tokens,",
            f"  sum(CASE WHEN {ok} THEN {u}.output_tokens END) AS {path}_output_tokens,",
            f"  sum(CASE WHEN {ok} THEN {gpu} END) AS {path}_gpu_s,",
            f"  count(CASE WHEN {ok} THEN {u}.gpu_s END) AS {path}_gpu_reported,",
        ]
        if prices:

            def price(field: str, path: str = path) -> str:
                entries = ", ".join(
                    f"{_literal(model)}: {float(getattr(p, field))!r}"
                    for model, p in prices.items()
                )
                return f"coalesce(MAP {{{entries}}}[{path}.model], 0)"

            cost = (
                f"coalesce({u}.input_tokens, 0) * {price('input_per_1k')} / 1000"
                f" + coalesce({u}.output_tokens, 0) * {price('output_per_1k')} / 1000"
                f" + {gpu} * {price('gpu_hour')} / 3600"
            )
            parts.append(f"  sum(CASE WHEN {ok} THEN {cost} END) AS {path}_cost,")
        else:
            parts.append(f"  NULL AS {path}_cost,")
    return "\n".join(parts)


_MODELS = """
SELECT product, task, list(DISTINCT candidate.model) FILTER (candidate.model IS NOT NULL)
FROM {source} WHERE cmp AND product || '.' || task IN {tasks}
GROUP BY ALL
"""


def build_report(
    inputs: Sequence[str],
    *,
    policy: Policy | None = None,
    task: str | None = None,
    since: str | None = None,
    until: str | None = None,
    stage: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The report as ``shim report --format json`` prints it."""
    import duckdb

    policy = policy or Policy()
    files, temps = _files(inputs)
    scope = ["true"]
    if task:
        scope.append(f"product || '.' || task = {_literal(task)}")
    if since:
        scope.append(f"ts >= {_literal(since)}")
    if until:
        scope.append(f"ts < {_literal(until)}")
    if stage:
        scope.append(f"(stage = {_literal(stage)} OR event <> 'shim.comparison')")
    # Latency pairs for the bootstrap: a deterministic sample of about 20,000 per log.
    every = max(1, sum(Path(f).stat().st_size for f in files) // 700 // 20_000)
    try:
        con = duckdb.connect()
        # The result is ordered by task at the end; rows need not keep the logs' order
        # on the way (measured: about 0.1 s less per GB).
        con.execute("SET preserve_insertion_order = false")
        columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in _COLUMNS.items()) + "}"
        # A strict read is about 13 % faster than one that tolerates bad lines. Logs
        # whose last line is whole are read strictly first; a bad line anywhere makes
        # DuckDB stop, and the logs are read again, tolerantly, counting bad lines.
        strict = all(_ends_whole(f) for f in files)
        for tolerant in (False, True)[0 if strict else 1 :]:
            source = _SOURCE.format(
                scope=" AND ".join(scope),
                files=_sql_list(files),
                columns=columns,
                tolerant=str(tolerant).lower(),
            )
            query = _AGGREGATE.format(
                source=source,
                every=every,
                known=repr(_VERDICTS),
                usage=_usage_sql(policy.prices),
            )
            try:
                cursor = con.execute(query)
                break
            except duckdb.InvalidInputException:
                if tolerant:
                    raise
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
        several = [f"{r['product']}.{r['task']}" for r in rows if r["model_min"] != r["model_max"]]
        models: dict[str, list[str]] = {}
        if several:
            listed = "(" + ", ".join(_literal(name) for name in several) + ")"
            query = _MODELS.format(source=source, tasks=listed)
            models = {f"{p}.{t}": found for p, t, found in con.execute(query).fetchall()}
    except duckdb.Error as exc:
        raise ReportError(f"cannot read the logs: {exc}") from None
    finally:
        for tmp in temps:
            os.unlink(tmp)
    total_lines = sum(int(r["all_rows"]) for r in rows)
    records = sum(int(r["all_records"]) for r in rows)
    tasks = []
    for row in rows:
        if row["product"] is None or row["task"] is None or not (row["n"] or row["drops"]):
            continue  # bad lines, or only records outside the filters
        entry = _Task(f"{row['product']}.{row['task']}", row)
        for verdict in _VERDICTS:
            if row[f"verdict_{verdict}"]:
                entry.verdicts[verdict] = int(row[f"verdict_{verdict}"])
        for verdict in row["verdict_other"] or ():
            if verdict is not None:
                entry.verdicts[str(verdict)] = entry.verdicts.get(str(verdict), 0) + 1
        found = models.get(entry.name) or (row["model_min"], row["model_max"])
        entry.models = {str(m) for m in found if m is not None}
        for drop in row["drops"] or ():
            reason = str(drop["reason"])
            entry.dropped[reason] = entry.dropped.get(reason, 0) + int(drop["count"] or 0)
        entry.pairs = [(p["legacy"], p["task"]) for p in row["pairs"] or ()]
        tasks.append(entry)
    return {
        "schema": 1,
        "records": records,
        "bad_lines": max(0, total_lines - records),
        "tasks": _task_reports(tasks, policy, seed),
    }


def _task_reports(tasks: list[_Task], policy: Policy, seed: int) -> list[dict[str, Any]]:
    """Each task's report; the bootstraps on two threads, as numpy lets go of the GIL
    while it partitions (measured: 44 against 77 ms for four tasks)."""
    if len(tasks) < 2:
        return [_task_report(t, policy.for_task(t.name), seed) for t in tasks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2, thread_name_prefix="shim-report") as pool:
        return list(pool.map(lambda t: _task_report(t, policy.for_task(t.name), seed), tasks))


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
    with np.errstate(divide="ignore"):
        estimate = ratios(legacy.copy(), task.copy())
        boots = ratios(legacy[draws], task[draws])
    low, high = np.quantile(boots, [0.025, 0.975], axis=-1, method="inverted_cdf")
    return {
        f"p{q}": {"ratio": float(estimate[i]), "low": float(low[i]), "high": float(high[i])}
        for i, q in enumerate(_QUANTILES)
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


def _pct(x: float) -> str:
    return f"{x * 100:.2f} %"


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


def _task_report(t: _Task, gates: Gates, seed: int) -> dict[str, Any]:
    r = t.row
    n = int(r.get("n") or 0)
    legacy_q = r.get("legacy_q") or [None, None, None]
    candidate_q = r.get("candidate_q") or [None, None, None]
    ratios = _ratios(t.pairs, seed)
    cand_err, legacy_err = int(r.get("candidate_errors") or 0), int(r.get("legacy_errors") or 0)
    errors = newcombe_difference(cand_err, n, legacy_err, n)
    compared = int(r.get("compared") or 0)
    real_mismatches = int(r.get("real_mismatches") or 0)
    mismatch = _rate(real_mismatches, compared)
    # The gates are one-sided tests at 95 %: a 90 % two-sided interval's bounds.
    gate_errors = newcombe_difference(cand_err, n, legacy_err, n, z=Z_ONE_SIDED_95)
    gate_mismatch = wilson(real_mismatches, compared, z=Z_ONE_SIDED_95)
    report: dict[str, Any] = {
        "task": t.name,
        "n": n,
        "served": {
            "legacy": r.get("served_legacy", 0),
            "task": r.get("served_task", 0),
            "legacy_fallback": r.get("served_fallback", 0),
        },
        "legacy_error_rate": (r["legacy_errors"] / n) if n else None,
        "candidate_error_rate": (r["candidate_errors"] / n) if n else None,
        "structure_match_rate": (r["matches"] / compared) if compared else None,
        "model_verdicts": dict(sorted(t.verdicts.items())),
        "dropped": sum(t.dropped.values()),
        "dropped_by_reason": t.dropped,
        "latency_ms": {
            "legacy": dict(zip(("p50", "p95", "p99"), legacy_q, strict=True)),
            "candidate": dict(zip(("p50", "p95", "p99"), candidate_q, strict=True)),
        },
        "intervals": {
            "legacy_error_rate": _rate(int(r.get("legacy_errors") or 0), n),
            "candidate_error_rate": _rate(int(r.get("candidate_errors") or 0), n),
            "error_rate_difference": None
            if errors is None
            else dict(zip(("difference", "low", "high"), errors, strict=True)),
            "mismatch_rate": mismatch,
            "legacy_schema_valid": _rate(
                int(r.get("legacy_valid") or 0), int(r.get("validated") or 0)
            ),
            "candidate_schema_valid": _rate(
                int(r.get("candidate_valid") or 0), int(r.get("validated") or 0)
            ),
        },
        "mismatch_rate_noise_adjusted": mismatch["rate"] if mismatch else None,
        "latency_ratio": ratios,
        "routing_errors": int(r.get("routing_errors") or 0),
        "candidate_models": sorted(t.models),
        "latency_histogram": _histogram(t.pairs),
        "usage": _usage(r),
    }
    counts = {
        "pairs": n,
        "legacy_errors": legacy_err,
        "candidate_errors": cand_err,
        "compared": compared,
        "mismatches": real_mismatches,
        "routing_errors": report["routing_errors"],
    }
    report["verdict"], report["reasons"] = _verdict(
        report, gates, counts, gate_errors, gate_mismatch
    )
    return report


def _verdict(
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
