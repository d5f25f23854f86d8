"""``shim report --export parquet PATH``: the logs' records in one Parquet file, to
archive them and to read them back (``shim report PATH``) or with any Parquet reader.

Each row is one line of the logs: the columns the report reads, typed (``event``,
``ts``, ``task``, ``legacy.latency_ms``, ...), and the record whole as JSON text in
``record``, so nothing a record said is lost. A line that is not JSON is a row of
nulls: the report counts it as a bad line from the archive as it did from the log.
The file is written beside ``PATH`` and renamed into place: never half-written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shim.analysis.log_lines import MAX_LINE_BYTES, PARQUET_SUFFIX
from shim.analysis.report_files import FileProblem, LogFiles, ReportError
from shim.analysis.report_filters import check_filters
from shim.analysis.report_sql import (
    literal,
    scope_sql,
    sql_list,
    transform_structure,
)

__all__ = ["Exported", "export_parquet"]


@dataclass(frozen=True)
class Exported:
    """What an export wrote: rows (records, and bad lines as rows of nulls), of which
    bad lines, from how many logs, and the file's size."""

    path: Path
    rows: int
    bad_lines: int
    logs: int
    bytes: int
    #: what was left out of the logs, as the report names it
    problems: list[FileProblem] = field(default_factory=list)

    def describe(self) -> str:
        """One line for people."""
        bad = f" and {self.bad_lines:,} not JSON (rows of nulls)" if self.bad_lines else ""
        return (
            f"archived {self.rows - self.bad_lines:,} JSON lines{bad} of {self.logs} log(s) "
            f"in {self.path} ({self.bytes / 1e6:.1f} MB)"
        )


def export_parquet(
    inputs: Sequence[str],
    path: str | Path,
    *,
    task: str | None = None,
    since: str | None = None,
    until: str | None = None,
    stage: str | None = None,
) -> Exported:
    """Write the records of ``inputs`` (files, globs, ``.gz``, ``.parquet``, ``-``)
    within the filters to a Parquet file at ``path`` (zstd). ReportError when the logs
    cannot be read or the file cannot be written."""
    import duckdb

    target = Path(path)
    if target.suffix != PARQUET_SUFFIX:
        raise ReportError(f"{target}: name the archive *{PARQUET_SUFFIX}, so reports read it back")
    if not target.parent.is_dir():
        raise ReportError(f"{target}: no such folder ({target.parent}); make it first")
    filters = check_filters(task=task, since=since, until=until, stage=stage)
    scope = scope_sql(
        task=filters.task, since=filters.since, until=filters.until, stage=filters.stage
    )
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with LogFiles(inputs) as found:
        try:
            con = duckdb.connect()
            written = _copy(con, found, scope, temporary)
            bad = con.execute(
                f"SELECT count(*) FROM read_parquet({literal(str(temporary))}) WHERE record IS NULL"
            ).fetchone()
            with open(temporary, "rb") as done:  # on disk before it takes the name
                os.fsync(done.fileno())
            os.replace(temporary, target)
        except duckdb.Error as exc:
            raise ReportError(f"cannot export to {target}: {exc}") from None
        except OSError as exc:
            raise ReportError(f"cannot export to {target}: {exc.strerror or exc}") from None
        finally:
            temporary.unlink(missing_ok=True)
        logs, problems = len(found.files), list(found.problems)
    return Exported(
        target, written, int(bad[0]) if bad else 0, logs, target.stat().st_size, problems
    )


def _copy(con: Any, found: LogFiles, scope: str, to: Path) -> int:
    """Copy the records within ``scope`` to ``to``; rows written. When DuckDB cannot
    read the files as they are (a truncated or corrupt ``.gz``, a line it cannot hold),
    the faulty ones are read as clean copies, and a file that fails even so is left
    out, named in ``found.problems``, as the report does."""
    import duckdb

    def copy() -> int:
        query = f"SELECT * FROM {_rows(found.paths)} WHERE event IS NULL OR ({scope})"
        done = con.execute(
            f"COPY ({query}) TO {literal(str(to))} (FORMAT PARQUET, COMPRESSION ZSTD)"
        ).fetchone()
        return int(done[0]) if done else 0

    try:
        return copy()
    except duckdb.Error:
        if found.clean_rest():
            try:
                return copy()
            except duckdb.Error:
                pass
    for path in found.paths:
        try:
            con.execute(f"SELECT count(*) FROM {_rows([path])}").fetchone()
        except duckdb.Error as exc:
            found.drop(path, str(exc).splitlines()[0])
    if not found.paths:
        raise ReportError(
            "no log could be read: " + "; ".join(p.describe() for p in found.problems)
        )
    return copy()


def _rows(files: Sequence[str]) -> str:
    """Each line of ``files`` as the report's columns plus ``record``."""
    lines = [f for f in files if not f.endswith(PARQUET_SUFFIX)]
    parquet = [f for f in files if f.endswith(PARQUET_SUFFIX)]
    parts = []
    if lines:
        parts.append(
            f"SELECT unnest(json_transform(json, {literal(transform_structure())})), "
            "json AS record "
            f"FROM read_ndjson({sql_list(lines)}, records=false, ignore_errors=true, "
            f"columns={{'json': 'JSON'}}, maximum_object_size={MAX_LINE_BYTES})"
        )
    if parquet:
        parts.append(f"SELECT * FROM read_parquet({sql_list(parquet)}, union_by_name=true)")
    return "(" + " UNION ALL BY NAME ".join(parts) + ")"
