"""The ``count`` of a ``shim.dropped`` or ``shim.error`` record, checked: a whole number
from 0 to :data:`MAX_COUNT` written as a plain JSON integer, or the record is a bad
line. A negative count would lower a total; a string, a fraction, a boolean, a list or
a number past the cap would be coerced or overflow: each is refused, counted, and the
file it is in named (``negative_count``, ``bad_count``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shim.analysis.report_files import FileProblem

__all__ = ["BY_FILE", "CHECKED", "MAX_COUNT", "count_problems", "refused_counts"]

#: The largest count a record may carry. A process writes one drop record per task and
#: reason every second or so; 10**12 is far past any real one, and sums of such counts
#: stay exact in a DOUBLE and far from a BIGINT's overflow.
MAX_COUNT = 10**12

# ``count`` is read as JSON text, so nothing is coerced on the way ("12", 1.5 and true
# would all become numbers as BIGINT; 1e400 a NULL). ``count_fault`` is NULL for a
# count that is absent or fine, else what is wrong with it; ``count`` becomes the
# number, NULL when it is not one.
CHECKED = (
    """(
  SELECT * REPLACE (CASE WHEN count_fault IS NULL
           THEN TRY_CAST(count::VARCHAR AS BIGINT) END AS count)
  FROM (SELECT *, CASE
          WHEN count IS NULL THEN NULL
          WHEN starts_with(count::VARCHAR, '-') THEN 'negative'
          WHEN regexp_full_match(count::VARCHAR, '[0-9]+') AND length(count::VARCHAR) <= 13
            AND TRY_CAST(count::VARCHAR AS BIGINT) <= """
    + str(MAX_COUNT)
    + """ THEN NULL
          ELSE 'bad' END AS count_fault
        FROM {relation})
)"""
)

#: The records refused for their count, by file: (file, negative, bad). Run only when
#: the aggregate found some (``filename`` costs the main pass nothing then).
BY_FILE = """
SELECT filename, count(*) FILTER (negative), count(*) FILTER (bad_count)
FROM {source} WHERE negative OR bad_count GROUP BY filename ORDER BY filename
"""


def count_problems(
    found: Iterable[tuple[str | None, int, int]], names: Mapping[str, str]
) -> list[FileProblem]:
    """The problems of ``found`` (file as DuckDB read it, negative, bad), each file
    named as given (``names``: as read -> as given)."""
    problems = []
    for path, negative, bad in found:
        name = names.get(path, path) if path is not None else None
        if negative:
            problems.append(
                FileProblem(
                    name,
                    "negative_count",
                    negative,
                    f"{negative} record(s) with a negative count, counted as bad lines "
                    "(a count never lowers a total)",
                )
            )
        if bad:
            problems.append(
                FileProblem(
                    name,
                    "bad_count",
                    bad,
                    f"{bad} record(s) whose count is not a whole number from 0 to "
                    f"{MAX_COUNT:,} (a string, a fraction, a boolean, a list, or too "
                    "large), counted as bad lines",
                )
            )
    return problems


def refused_counts(
    con: Any,
    source: str,
    files: Sequence[tuple[str, str]],
    rows: Sequence[Mapping[str, Any]],
) -> list[FileProblem]:
    """The records refused for their count, by file: one more pass over ``source``
    (the report's, read tolerantly with ``filename``), run only when the aggregate
    ``rows`` found some. ``files`` are (as given, as read). Should the pass fail, they
    are named for the logs as a whole."""
    import duckdb

    try:
        by_file = con.execute(BY_FILE.format(source=source)).fetchall()
    except duckdb.Error:
        negative = sum(int(r["negative_counts"]) for r in rows)
        by_file = [(None, negative, sum(int(r["bad_counts"]) for r in rows))]
    return count_problems(by_file, {path: name for name, path in files})
