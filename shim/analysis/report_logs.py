"""Reading comparison logs for ``shim report``: one streaming DuckDB pass over files,
globs or ``.gz`` logs, giving each task's counts, latency sample, spend, drops and the
shim's own errors (``shim.error``).

Every line that is not a schema-1 record (corrupt, truncated, another schema, a
``count`` that is negative or not a plain whole number: :mod:`shim.analysis.report_counts`)
is counted as a bad line. What cannot be read at all (a line over the limit,
a truncated ``.gz``) is left out and named (:mod:`shim.analysis.report_files`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shim.analysis.log_lines import MAX_LINE_BYTES, ends_whole
from shim.analysis.report_counts import CHECKED, refused_counts
from shim.analysis.report_files import FileProblem, LogFiles, ReportError

if TYPE_CHECKING:  # the policy (pydantic) loads while the logs are read: report._preload
    from shim.analysis.policy import Price

__all__ = ["Logs", "ReportError", "TaskRows", "read_logs"]

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
    "legacy": f"STRUCT(ok BOOLEAN, latency_ms DOUBLE, model VARCHAR, usage {_USAGE})",
    "candidate": f"STRUCT(ok BOOLEAN, latency_ms DOUBLE, model VARCHAR, usage {_USAGE})",
    "model": "STRUCT(verdict VARCHAR, routing_error BOOLEAN)",
    "structure": "STRUCT(match BOOLEAN, legacy_valid BOOLEAN, candidate_valid BOOLEAN, "
    "diff VARCHAR[], noise_paths VARCHAR[], error VARCHAR, noise STRUCT(score DOUBLE))",
    "quality": "STRUCT(score DOUBLE)",
}


def _sql_list(files: Sequence[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


@dataclass
class TaskRows:
    """What the logs say of one task: its aggregate row (as the query names its
    columns), model verdicts, candidate models, drops by reason (lost comparisons),
    calls legacy served for side effects, its ``shim.error`` errors by operation and a
    sample of (legacy, task) latency pairs."""

    name: str
    row: dict[str, Any]
    verdicts: dict[str, int] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)
    dropped: dict[str, int] = field(default_factory=dict)
    side_effects_held: int = 0
    shim_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Logs:
    """The logs read: how many records, how many bad lines, each task in the filters,
    every task the logs name at all (filters aside), the ``shim.error`` records tied
    to no task, by operation, and what was left out of the count (by file)."""

    records: int
    bad_lines: int
    tasks: list[TaskRows]
    named: list[str] = field(default_factory=list)
    untasked_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what was left out or not counted, by file
    problems: list[FileProblem] = field(default_factory=list)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# One streaming pass computes everything per task; materialising the parsed log in a
# table first costs more than parsing it (measured: 1.5-1.9 s against 0.6 s per GB).
# Nothing in it is DISTINCT or a histogram: either makes DuckDB fan the scan out to a
# second aggregate, about 0.3 s of CPU per GB. Verdicts are counted one by one, and a
# task's candidate models are read as min and max; only a task that saw more than one
# model needs the second, smaller pass (_MODELS). Conditions are count_if, and CASE
# inside min, max and quantile_cont, not FILTER: each FILTER slices the rows once more
# (measured: the aggregate over 1M parsed records 0.22 against 0.13 s). The lists keep
# FILTER: few rows pass it.
_VERDICTS = ("same", "alias", "different", "unknown")

_SOURCE = (
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
        "read_ndjson({files}, ignore_errors={tolerant}, columns={columns}, "
        "maximum_object_size={max_line}{filename})",
    )
    + """)
)"""
)

_AGGREGATE = (
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
  -- content scores (quality.score) and legacy against itself (structure.noise.score)
  count(CASE WHEN cmp THEN quality.score END) AS quality_n,
  sum(CASE WHEN cmp THEN least(1.0, greatest(0.0, quality.score)) END) AS quality_sum,
  sum(CASE WHEN cmp THEN least(1.0, greatest(0.0, quality.score)) ** 2 END) AS quality_sumsq,
  count(CASE WHEN cmp THEN structure.noise.score END) AS noise_n,
  sum(CASE WHEN cmp THEN least(1.0, greatest(0.0, structure.noise.score)) END) AS noise_sum,
  quantile_cont(CASE WHEN cmp AND legacy.ok THEN legacy.latency_ms END, [0.5, 0.95, 0.99])
    AS legacy_q,
  quantile_cont(CASE WHEN cmp AND candidate.ok THEN candidate.latency_ms END,
    [0.5, 0.95, 0.99]) AS candidate_q,
"""
    + "".join(f"  count_if(cmp AND model.verdict = '{v}') AS verdict_{v},\n" for v in _VERDICTS)
    + """  list(model.verdict) FILTER (cmp AND model.verdict NOT IN {known}) AS verdict_other,
  min(CASE WHEN cmp THEN candidate.model END) AS model_min,
  max(CASE WHEN cmp THEN candidate.model END) AS model_max,
  -- side_effects: legacy served what the flags gave the task path (the call site has
  -- side effects), and the call was compared all the same: not a lost comparison
  list({{'reason': reason, 'count': count}}) FILTER (scoped AND event = 'shim.dropped'
    AND reason IS DISTINCT FROM 'side_effects') AS drops,
  sum(count) FILTER (scoped AND event = 'shim.dropped' AND reason = 'side_effects')
    AS side_effects_held,
  list({{'operation': operation, 'error': error, 'call_site': call_site,
    'callable': callable, 'count': count}}) FILTER (scoped AND event = 'shim.error')
    AS shim_errors,
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


def read_logs(
    inputs: Sequence[str],
    *,
    prices: Mapping[str, Price],
    task: str | None = None,
    since: str | None = None,
    until: str | None = None,
    stage: str | None = None,
    reading: Callable[[], None] | None = None,
) -> Logs:
    """The logs at ``inputs`` (paths, globs, ``-`` for stdin), within the filters;
    ReportError when they cannot be read. A file, or a line, that cannot be read is
    left out and named in :attr:`Logs.problems`, never a failure of the whole.
    ``reading`` is called once the files are found and DuckDB is about to read them
    (what may run beside the read starts there, not sooner: see report._preload)."""
    import duckdb

    scope = ["true"]
    if task:
        scope.append(f"product || '.' || task = {_literal(task)}")
    if since:
        scope.append(f"ts >= {_literal(since)}")
    if until:
        scope.append(f"ts < {_literal(until)}")
    if stage:
        scope.append(f"(stage = {_literal(stage)} OR event <> 'shim.comparison')")
    with LogFiles(inputs) as found:
        try:
            con = duckdb.connect()
            # The result is ordered by task at the end; rows need not keep the logs'
            # order on the way (measured: about 0.1 s less per GB).
            con.execute("SET preserve_insertion_order = false")
            if reading is not None:
                reading()
            rows, models = _read(con, found, " AND ".join(scope), prices)
        except duckdb.Error as exc:
            raise ReportError(f"cannot read the logs: {exc}") from None
        problems = list(found.problems)
        if any(r["negative_counts"] or r["bad_counts"] for r in rows):
            source = _SOURCE.format(
                scope="true",
                files=_sql_list(found.paths),
                tolerant="true",
                filename=", filename=true",
                **_READ,
            )
            problems += refused_counts(con, source, found.files, rows)
    total_lines = sum(int(r["all_rows"]) for r in rows)
    records = sum(int(r["all_records"]) for r in rows)
    tasked = [r for r in rows if r["product"] is not None and r["task"] is not None]
    tasks = [
        _task_rows(row, models)
        for row in tasked
        # only records outside the filters, or none that say anything of the task
        if row["n"] or row["drops"] or row["side_effects_held"] or row["shim_errors"]
    ]
    untasked: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["product"] is None or row["task"] is None:
            _count_errors(untasked, row["shim_errors"])
    named = [f"{r['product']}.{r['task']}" for r in tasked if r["all_records"]]
    return Logs(records, max(0, total_lines - records), tasks, named, untasked, problems)


_Rows = tuple[list[dict[str, Any]], dict[str, list[str]]]


def _read(con: Any, found: LogFiles, scope: str, prices: Mapping[str, Price]) -> _Rows:
    """The aggregate rows and the models of tasks that saw several. When DuckDB cannot
    read the files as they are (a truncated or corrupt ``.gz``, a line it cannot hold)
    they are read again, the faulty ones as clean copies; a file that fails even so is
    left out."""
    import duckdb

    try:
        return _query(con, found.paths, scope, prices, strict=all(map(ends_whole, found.paths)))
    except duckdb.Error:
        pass
    if found.clean_rest():  # only the files with a fault are copied
        try:
            return _query(con, found.paths, scope, prices, strict=False)
        except duckdb.Error:
            pass
    for path in found.paths:
        try:
            con.execute(_PROBE.format(files=_sql_list([path]), **_READ))
        except duckdb.Error as exc:
            found.drop(path, str(exc).splitlines()[0])
    return _query(con, found.paths, scope, prices, strict=False) if found.paths else ([], {})


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


_READ = {
    "columns": "{" + ", ".join(f"'{k}': '{v}'" for k, v in _COLUMNS.items()) + "}",
    "max_line": str(MAX_LINE_BYTES),
}
_PROBE = """SELECT count(*) FROM read_ndjson({files}, ignore_errors=true, columns={columns},
  maximum_object_size={max_line})"""


def _query(
    con: Any, files: Sequence[str], scope: str, prices: Mapping[str, Price], *, strict: bool
) -> _Rows:
    """One pass over ``files``; with ``strict``, a strict read first (about 13 % faster
    than one that tolerates bad lines): logs whose last line is whole are read
    strictly, and a bad line anywhere makes DuckDB stop and the logs be read again,
    tolerantly, counting bad lines."""
    import duckdb

    # Latency pairs for the bootstrap: a deterministic sample of about 20,000 per log.
    every = max(1, sum(map(_size, files)) // 700 // 20_000)
    for tolerant in (False, True)[0 if strict else 1 :]:
        source = _SOURCE.format(
            scope=scope,
            files=_sql_list(files),
            tolerant=str(tolerant).lower(),
            filename="",
            **_READ,
        )
        query = _AGGREGATE.format(
            source=source, every=every, known=repr(_VERDICTS), usage=_usage_sql(prices)
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
    return rows, models


def _count_errors(
    into: dict[str, dict[str, Any]], found: Sequence[Mapping[str, Any]] | None
) -> None:
    """``shim.error`` errors by operation: how many, and the first one's error (with
    the call site and callable that raised, when the record names them). A record's
    ``count`` says how many identical errors it stands for (1 without one)."""
    for entry in found or ():
        operation = str(entry["operation"] or "unknown")
        slot = into.setdefault(operation, {"count": 0, "example": None})
        slot["count"] += 1 if entry["count"] is None else int(entry["count"])
        if slot["example"] is None and entry["error"]:
            where = [str(entry[k]) for k in ("callable", "call_site") if entry[k]]
            by = f"{where[0]}= of {where[1]}" if len(where) == 2 else ", ".join(where)
            slot["example"] = str(entry["error"]) + (f", from {by}" if by else "")


def _task_rows(row: dict[str, Any], models: Mapping[str, list[str]]) -> TaskRows:
    entry = TaskRows(f"{row['product']}.{row['task']}", row)
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
    entry.side_effects_held = int(row["side_effects_held"] or 0)
    _count_errors(entry.shim_errors, row["shim_errors"])
    # Sorted: DuckDB's threads list the pairs in whatever order they finish, and the
    # bootstrap draws by position; unsorted, its intervals moved from run to run.
    entry.pairs = sorted((p["legacy"], p["task"]) for p in row["pairs"] or ())
    return entry
