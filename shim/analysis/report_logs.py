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

from shim.analysis.log_lines import PARQUET_SUFFIX, ends_whole
from shim.analysis.report_counts import refused_counts
from shim.analysis.report_files import FileProblem, LogFiles, ReportError
from shim.analysis.report_sql import (
    AGGREGATE,
    MODELS,
    PROBE,
    SOURCE,
    VERDICTS,
    literal,
    relation,
    scope_sql,
    sql_list,
    usage_sql,
)

if TYPE_CHECKING:  # the policy (pydantic) loads while the logs are read: report._preload
    from shim.analysis.policy import Price

__all__ = ["Logs", "ReportError", "TaskRows", "read_logs"]


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
    stream_held: int = 0
    abandoned: dict[str, int] = field(default_factory=dict)
    shim_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: list[tuple[float, float]] = field(default_factory=list)
    ttft_pairs: list[tuple[float, float]] = field(default_factory=list)


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

    scope = scope_sql(task=task, since=since, until=until, stage=stage)
    with LogFiles(inputs) as found:
        try:
            con = duckdb.connect()
            # The result is ordered by task at the end; rows need not keep the logs'
            # order on the way (measured: about 0.1 s less per GB).
            con.execute("SET preserve_insertion_order = false")
            if reading is not None:
                reading()
            rows, models = _read(con, found, scope, prices)
        except duckdb.Error as exc:
            raise ReportError(f"cannot read the logs: {exc}") from None
        problems = list(found.problems)
        if any(r["negative_counts"] or r["bad_counts"] for r in rows):
            source = SOURCE.format(
                scope="true", relation=relation(found.paths, tolerant=True, filename=True)
            )
            problems += refused_counts(con, source, found.files, rows)
    total_lines = sum(int(r["all_rows"]) for r in rows)
    records = sum(int(r["all_records"]) for r in rows)
    tasked = [r for r in rows if r["product"] is not None and r["task"] is not None]
    tasks = [
        _task_rows(row, models)
        for row in tasked
        # only records outside the filters, or none that say anything of the task
        if row["n"]
        or row["drops"]
        or row["side_effects_held"]
        or row["stream_held"]
        or row["abandoned_legacy"]
        or row["abandoned_task"]
        or row["shim_errors"]
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
        return _query(con, found.paths, scope, prices, strict=all(map(ends_whole, found.lines)))
    except duckdb.Error:
        pass
    if found.clean_rest():  # only the files with a fault are copied
        try:
            return _query(con, found.paths, scope, prices, strict=False)
        except duckdb.Error:
            pass
    for path in found.paths:
        try:
            con.execute(PROBE.format(relation=relation([path], tolerant=True)))
        except duckdb.Error as exc:
            found.drop(path, str(exc).splitlines()[0])
    return _query(con, found.paths, scope, prices, strict=False) if found.paths else ([], {})


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _query(
    con: Any, files: Sequence[str], scope: str, prices: Mapping[str, Price], *, strict: bool
) -> _Rows:
    """One pass over ``files``; with ``strict``, a strict read first (about 13 % faster
    than one that tolerates bad lines): logs whose last line is whole are read
    strictly, and a bad line anywhere makes DuckDB stop and the logs be read again,
    tolerantly, counting bad lines."""
    import duckdb

    # Latency pairs for the bootstrap: a deterministic sample of about 20,000 per log
    # (a record of a log is about 700 bytes; an archive says how many rows it holds)
    archives = [f for f in files if f.endswith(PARQUET_SUFFIX)]
    records = sum(_size(f) for f in files if f not in archives) // 700
    if archives:
        records += con.execute(
            f"SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata({sql_list(archives)})"
        ).fetchone()[0]
    every = max(1, records // 20_000)
    for tolerant in (False, True)[0 if strict else 1 :]:
        source = SOURCE.format(scope=scope, relation=relation(files, tolerant=tolerant))
        query = AGGREGATE.format(
            source=source, every=every, known=repr(VERDICTS), usage=usage_sql(prices)
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
        listed = "(" + ", ".join(literal(name) for name in several) + ")"
        query = MODELS.format(source=source, tasks=listed)
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
    for verdict in VERDICTS:
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
    entry.stream_held = int(row["stream_held"] or 0)
    entry.abandoned = {
        "legacy": int(row["abandoned_legacy"] or 0),
        "task": int(row["abandoned_task"] or 0),
    }
    _count_errors(entry.shim_errors, row["shim_errors"])
    # Sorted: DuckDB's threads list the pairs in whatever order they finish, and the
    # bootstrap draws by position; unsorted, its intervals moved from run to run.
    entry.pairs = sorted((p["legacy"], p["task"]) for p in row["pairs"] or ())
    entry.ttft_pairs = sorted((p["legacy"], p["task"]) for p in row["ttft_pairs"] or ())
    return entry
