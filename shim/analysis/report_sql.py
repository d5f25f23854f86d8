"""The SQL of ``shim report``'s read: the columns taken from each record, the one
streaming aggregate per task, and the smaller queries beside it. Text only; running it
is :mod:`shim.analysis.report_logs`'s."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shim.analysis.log_lines import MAX_LINE_BYTES, PARQUET_SUFFIX
from shim.analysis.report_counts import CHECKED

if TYPE_CHECKING:  # the policy (pydantic) loads while the logs are read: report._preload
    from shim.analysis.policy import Price

__all__ = [
    "AGGREGATE",
    "MODELS",
    "PROBE",
    "SOURCE",
    "VERDICTS",
    "literal",
    "relation",
    "scope_sql",
    "sql_list",
    "transform_structure",
    "usage_sql",
]

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
    "count": "JSON",  # checked, then a BIGINT: see report_counts.CHECKED
    # shim.error: what failed, the error, and for the call site's own callables which
    # call site and which callable (``call_site.key``, ``call_site.request``, ...)
    "operation": "VARCHAR",
    "error": "VARCHAR",
    "call_site": "VARCHAR",
    "callable": "VARCHAR",
    "legacy": f"STRUCT(ok BOOLEAN, latency_ms DOUBLE, model VARCHAR, usage {_USAGE}, "
    "ttft_ms DOUBLE)",
    "candidate": f"STRUCT(ok BOOLEAN, latency_ms DOUBLE, model VARCHAR, usage {_USAGE}, "
    "ttft_ms DOUBLE)",
    "model": "STRUCT(verdict VARCHAR, routing_error BOOLEAN)",
    "structure": "STRUCT(match BOOLEAN, legacy_valid BOOLEAN, candidate_valid BOOLEAN, "
    "diff VARCHAR[], noise_paths VARCHAR[], error VARCHAR, "
    "noise STRUCT(score DOUBLE, match BOOLEAN, diff VARCHAR[]))",
    "quality": "STRUCT(score DOUBLE, detail STRUCT(worst JSON))",
    "judge": "STRUCT(winner VARCHAR, orders STRUCT(legacy_first VARCHAR, candidate_first VARCHAR))",
}


def sql_list(files: Sequence[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def scope_sql(*, task: str | None, since: str | None, until: str | None, stage: str | None) -> str:
    """The condition a record meets to be within a report's filters (checked ones:
    :func:`~shim.analysis.report_filters.check_filters`)."""
    scope = ["true"]
    if task:
        scope.append(f"product || '.' || task = {literal(task)}")
    if since:
        scope.append(f"ts >= {literal(since)}")
    if until:
        scope.append(f"ts < {literal(until)}")
    if stage:
        scope.append(f"(stage = {literal(stage)} OR event <> 'shim.comparison')")
    return " AND ".join(scope)


# One streaming pass computes everything per task; materialising the parsed log in a
# table first costs more than parsing it (measured: 1.5-1.9 s against 0.6 s per GB).
# Nothing in it is DISTINCT or a histogram: either makes DuckDB fan the scan out to a
# second aggregate, about 0.3 s of CPU per GB. Verdicts are counted one by one, and a
# task's candidate models are read as min and max; only a task that saw more than one
# model needs the second, smaller pass (MODELS). Conditions are count_if, and CASE
# inside min, max and quantile_cont, not FILTER: each FILTER slices the rows once more
# (measured: the aggregate over 1M parsed records 0.22 against 0.13 s). The lists keep
# FILTER: few rows pass it.
VERDICTS = ("same", "alias", "different", "unknown")

SOURCE = (
    """(
  SELECT *, good AND {scope} AS scoped, good AND {scope} AND event = 'shim.comparison' AS cmp
  FROM (SELECT *, coalesce(event IS NOT NULL AND schema = 1 AND count_fault = 'negative',
          false) AS negative,
        coalesce(event IS NOT NULL AND schema = 1 AND count_fault = 'bad', false) AS bad_count,
        -- a line that does not parse comes back as a row of NULLs: a bad line; so is a
        -- record whose count is negative or not a plain whole number
        coalesce(event IS NOT NULL AND schema = 1 AND count_fault IS NULL, false) AS good
        FROM """
    + CHECKED.replace(
        "{relation}",
        "{relation}",
    )
    + """)
)"""
)

AGGREGATE = (
    """
SELECT product, task,
  count(*) AS all_rows,
  count_if(good) AS all_records,
  count_if(negative) AS negative_counts,
  count_if(bad_count) AS bad_counts,
  count_if(cmp) AS n,
  -- the evidence each gate has: pairs where both paths ran (error gate), pairs with
  -- a structure verdict (mismatch gate, below), pairs with both latencies (latency)
  count_if(cmp AND legacy.ok IS NOT NULL AND candidate.ok IS NOT NULL) AS ran,
  count_if(cmp AND legacy.ok AND candidate.ok AND legacy.latency_ms > 0
    AND candidate.latency_ms IS NOT NULL) AS latency_pairs,
  -- both paths answered and still no structure verdict: the comparator failed
  count_if(cmp AND legacy.ok AND candidate.ok AND structure.match IS NULL)
    AS comparator_errors,
  min(CASE WHEN cmp AND structure.match IS NULL THEN structure.error END) AS comparator_error,
  count_if(cmp AND served_by = 'legacy') AS served_legacy,
  count_if(cmp AND served_by = 'task') AS served_task,
  count_if(cmp AND served_by = 'legacy_fallback') AS served_fallback,
  count_if(cmp AND NOT legacy.ok) AS legacy_errors,
  count_if(cmp AND NOT candidate.ok) AS candidate_errors,
  count_if(cmp AND structure.match IS NOT NULL) AS compared,
  count_if(cmp AND structure.match) AS matches,
  count_if(cmp AND structure.match = false AND NOT (
      coalesce(len(structure.noise_paths), 0) > 0 AND len(list_filter(structure.diff,
      lambda x: NOT list_contains(structure.noise_paths, x))) = 0)) AS real_mismatches,
  count_if(cmp AND structure.candidate_valid IS NOT NULL) AS validated,
  count_if(cmp AND structure.legacy_valid) AS legacy_valid,
  count_if(cmp AND structure.candidate_valid) AS candidate_valid,
  count_if(cmp AND model.routing_error) AS routing_errors,
  -- how often each path differs (once per pair), in the pairs and in legacy's noise
  -- runs: counted per task after the aggregate, from the few rows that differ
  list_aggregate(flatten(list(list_distinct(list_transform(structure.diff,
      lambda x: split_part(x, ': ', 1)))) FILTER (cmp AND structure.match = false)),
    'histogram') AS diff_paths,
  -- and where their content differs: the paths a content score found worst in a pair
  -- (a JSON field, a recipe's section), from the few rows that scored under 1
  list_aggregate(flatten(list(json_keys(quality.detail.worst))
      FILTER (cmp AND quality.score < 1)), 'histogram') AS value_paths,
  count_if(cmp AND structure.noise.match IS NOT NULL) AS noise_runs,
  list_aggregate(flatten(list(list_distinct(list_transform(structure.noise.diff,
      lambda x: split_part(x, ': ', 1)))) FILTER (cmp AND structure.noise.match = false)),
    'histogram') AS noise_diff_paths,
  -- content scores (quality.score) and legacy against itself (structure.noise.score)
  count(CASE WHEN cmp THEN quality.score END) AS quality_n,
  sum(CASE WHEN cmp THEN least(1.0, greatest(0.0, quality.score)) END) AS quality_sum,
  sum(CASE WHEN cmp THEN least(1.0, greatest(0.0, quality.score)) ** 2 END) AS quality_sumsq,
  count(CASE WHEN cmp THEN structure.noise.score END) AS noise_n,
  sum(CASE WHEN cmp THEN least(1.0, greatest(0.0, structure.noise.score)) END) AS noise_sum,
  sum(CASE WHEN cmp THEN least(1.0, greatest(0.0, structure.noise.score)) ** 2 END)
    AS noise_sumsq,
  -- judge verdicts; both orders: the first answer picked both times, or the second
  count_if(cmp AND judge.winner IN ('legacy', 'candidate', 'tie')) AS judge_n,
  count_if(cmp AND judge.winner = 'candidate') AS judge_wins,
  count_if(cmp AND judge.winner = 'legacy') AS judge_losses,
  count_if(cmp AND judge.orders.candidate_first IS NOT NULL) AS judge_both,
  count_if(cmp AND judge.orders.legacy_first = 'legacy'
    AND judge.orders.candidate_first = 'candidate') AS judge_first,
  count_if(cmp AND judge.orders.legacy_first = 'candidate'
    AND judge.orders.candidate_first = 'legacy') AS judge_second,
  list({{'reason': reason, 'count': count, 'error': error}}) FILTER (
    scoped AND event = 'shim.judge_skipped') AS judge_skips,
  quantile_cont(CASE WHEN cmp AND legacy.ok THEN legacy.latency_ms END, [0.5, 0.95, 0.99])
    AS legacy_q,
  quantile_cont(CASE WHEN cmp AND candidate.ok THEN candidate.latency_ms END,
    [0.5, 0.95, 0.99]) AS candidate_q,
"""
    + "".join(f"  count_if(cmp AND model.verdict = '{v}') AS verdict_{v},\n" for v in VERDICTS)
    + """  list(model.verdict) FILTER (cmp AND model.verdict NOT IN {known}) AS verdict_other,
  min(CASE WHEN cmp THEN candidate.model END) AS model_min,
  max(CASE WHEN cmp THEN candidate.model END) AS model_max,
  -- side_effects, stream: legacy served what the flags gave the task path (the call
  -- site has side effects, or streams), and the call was compared all the same: not a
  -- lost comparison
  list({{'reason': reason, 'count': count}}) FILTER (scoped AND event = 'shim.dropped'
    AND coalesce(reason NOT IN ('side_effects', 'stream'), true)) AS drops,
  sum(count) FILTER (scoped AND event = 'shim.dropped' AND reason = 'side_effects')
    AS side_effects_held,
  sum(count) FILTER (scoped AND event = 'shim.dropped' AND reason = 'stream')
    AS stream_held,
  -- streams the caller left early, by who served them (what was seen is in the record)
  count_if(scoped AND event = 'shim.abandoned' AND served_by <> 'task') AS abandoned_legacy,
  count_if(scoped AND event = 'shim.abandoned' AND served_by = 'task') AS abandoned_task,
  list({{'operation': operation, 'error': error, 'call_site': call_site,
    'callable': callable, 'count': count}}) FILTER (scoped AND event = 'shim.error')
    AS shim_errors,
{usage}
  list({{'legacy': legacy.latency_ms, 'task': candidate.latency_ms}}) FILTER (
    cmp AND legacy.ok AND candidate.ok AND legacy.latency_ms > 0
    AND candidate.latency_ms IS NOT NULL AND hash(legacy.latency_ms) % {every} = 0) AS pairs,
  -- streams: each path's time to first chunk, where both streamed (a sample, as above)
  count_if(cmp AND legacy.ok AND candidate.ok AND legacy.ttft_ms > 0
    AND candidate.ttft_ms >= 0) AS ttft_n,
  list({{'legacy': legacy.ttft_ms, 'task': candidate.ttft_ms}}) FILTER (
    cmp AND legacy.ok AND candidate.ok AND legacy.ttft_ms > 0
    AND candidate.ttft_ms >= 0 AND hash(legacy.latency_ms) % {every} = 0) AS ttft_pairs
FROM {source}
GROUP BY ALL ORDER BY product, task
"""
)


def usage_sql(prices: Mapping[str, Price]) -> str:
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
                    f"{literal(model)}: {float(getattr(p, field))!r}" for model, p in prices.items()
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


MODELS = """
SELECT product, task, list(DISTINCT candidate.model) FILTER (candidate.model IS NOT NULL)
FROM {source} WHERE cmp AND product || '.' || task IN {tasks}
GROUP BY ALL
"""


_READ_COLUMNS = "{" + ", ".join(f"'{k}': '{v}'" for k, v in _COLUMNS.items()) + "}"


def relation(files: Sequence[str], *, tolerant: bool, filename: bool = False) -> str:
    """The records of ``files`` as rows of the report's columns: JSON lines (plain or
    ``.gz``) read by ``read_ndjson``, Parquet logs by ``read_parquet``, one relation.
    ``tolerant`` reads a bad line as a row of NULLs (JSON lines); ``filename`` adds
    each row's file."""
    lines = [f for f in files if not f.endswith(PARQUET_SUFFIX)]
    parquet = [f for f in files if f.endswith(PARQUET_SUFFIX)]
    named = ", filename=true" if filename else ""
    ndjson = (
        f"read_ndjson({sql_list(lines)}, ignore_errors={str(tolerant).lower()}, "
        f"columns={_READ_COLUMNS}, maximum_object_size={MAX_LINE_BYTES}{named})"
    )
    if not parquet:
        return ndjson
    # an archive's records are read from their whole text, as a log's are: the typed
    # columns beside them are for other tools, and an archive written when the report
    # read fewer (or other) fields reads the same
    archived = (
        f"SELECT unnest(json_transform(record, {literal(transform_structure())}))"
        + (", filename" if filename else "")
        + f" FROM read_parquet({sql_list(parquet)}, union_by_name=true{named})"
    )
    if not lines:
        return f"({archived})"
    return f"(SELECT * FROM {ndjson} UNION ALL BY NAME {archived})"


def transform_structure() -> str:
    """The report's columns as a ``json_transform`` structure (JSON text): how the
    export reads a record's fields beside its whole text."""
    return json.dumps({name: _structure(kind) for name, kind in _COLUMNS.items()})


def _structure(kind: str) -> Any:
    """A DuckDB type (``STRUCT(a INTEGER, b VARCHAR[])``) as ``json_transform`` takes it."""
    if kind.endswith("[]"):
        return [_structure(kind[:-2])]
    if not kind.startswith("STRUCT("):
        return kind
    fields, depth, start, body = {}, 0, 0, kind[len("STRUCT(") : -1]
    for i, char in enumerate(body + ","):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            name, _, inner = body[start:i].strip().partition(" ")
            fields[name] = _structure(inner.strip())
            start = i + 1
    return fields


PROBE = "SELECT count(*) FROM {relation}"
