"""Promotion evidence: what the comparisons of a task's CURRENT stage say, and for how
long they have been coming.

Serving more of a task needs the report's verdict to be PROMOTE over the comparisons
made in the stage the task is in now, since it last changed setting (the last
``shim.promote``, ``shim.rollback`` or ``shim.rollout`` record for it in the logs), and
those comparisons must span the policy's ``min_soak`` seconds, first to last. Evidence
from an earlier stage, or from before the last change, says nothing about this one.

Without such a record the stage has no known start. A shadow stage is one rung, so all
its comparisons are its evidence (and the output says so); a serving stage is several
(canary 1 %, 5 %, 25 %, 50 %), whose comparisons all say ``canary``: evidence from an
earlier rung would pass for this one, so it is refused until the log that ``shim
promote --log`` writes to is given (or ``--force``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from shim.analysis.log_lines import MAX_LINE_BYTES
from shim.analysis.policy import Policy
from shim.analysis.report_files import FileProblem, LogFiles
from shim.analysis.report_filters import parse_time
from shim.base.errors import ShimError

__all__ = ["CHANGE_EVENTS", "RUNG_STAGES", "Evidence", "EvidenceError", "stage_evidence"]

#: The records that say a task changed setting.
CHANGE_EVENTS = ("shim.promote", "shim.rollback", "shim.rollout")

#: Stages made of several rungs whose comparisons carry the same ``stage``: only a
#: change record tells one rung's evidence from another's.
RUNG_STAGES = ("canary", "live")


class EvidenceError(ShimError):
    """The evidence logs cannot be read (exit 2)."""


@dataclass(frozen=True, slots=True)
class Evidence:
    """The current stage's evidence for one task, against its gates."""

    task: str
    stage: str
    #: ts of the task's last change in the logs (None: the logs hold none)
    since: str | None
    verdict: str
    reasons: tuple[str, ...]
    n: int
    #: seconds from the first to the last comparison of the stage since ``since``
    soak_s: float
    min_soak: float
    min_pairs: int
    #: ts of the first and the last comparison in the window (None: there is none)
    first: str | None = None
    last: str | None = None
    #: what was left out of the logs, or not counted (a truncated ``.gz``, a line over
    #: the limit, a file that could not be read): the verdict is on the rest
    problems: tuple[FileProblem, ...] = ()

    @property
    def soaked(self) -> bool:
        """The comparisons span ``min_soak`` (always, when it is 0)."""
        return self.soak_s >= self.min_soak

    @property
    def dated(self) -> bool:
        """The window is this stage's own: it starts at the task's last change, or the
        stage is a single rung (shadow), whose every comparison is its own."""
        return self.since is not None or self.stage not in RUNG_STAGES

    @property
    def ok(self) -> bool:
        """PROMOTE, soaked, from a window known to be this stage's."""
        return self.dated and self.verdict == "PROMOTE" and self.soaked

    def window(self) -> str:
        """Which comparisons were the evidence, for people: one line."""
        if self.since is not None:
            where = f"in stage {self.stage} since {self.since} (its last change)"
        else:
            where = (
                f"in stage {self.stage}, every one in the logs (no change record for {self.task})"
            )
        span = f", {self.first} to {self.last}" if self.first and self.last else ""
        return f"{self.n} pairs {where}{span}"

    def refusals(self) -> list[str]:
        """Why this evidence does not promote, one line each (empty when it does)."""
        if not self.dated:
            return [
                f"no shim.promote, shim.rollback or shim.rollout record for {self.task} in "
                f"the evidence or the change log, so its stage {self.stage} comparisons "
                "cannot be told apart by rung (1 % from 5 %): pass the log that `shim "
                "promote --log` writes to (as --evidence or --log, or SHIM_LOG), or --force"
            ]
        since = f"since {self.since} (its last change)" if self.since else "in the evidence"
        if not self.n:
            return [
                f"no comparisons of this task in stage {self.stage} {since}: it needs "
                f"{self.min_pairs} pairs compared in this stage over at least "
                f"{_whole(self.min_soak)}"
            ]
        lines = [] if self.verdict == "PROMOTE" else list(self.reasons)
        if not self.soaked:
            line = (
                f"soaked {_span(self.soak_s)} of {_whole(self.min_soak)} in stage "
                f"{self.stage}, first to last comparison {since}: soak "
                f"{_more(self.min_soak - self.soak_s)} more"
            )
            if self.n < self.min_pairs:
                line += f", and compare {self.min_pairs - self.n} more pairs ({self.n} so far)"
            lines.append(line)
        return lines

    def summary(self) -> dict[str, Any]:
        """What the ``shim.promote`` record says of its evidence."""
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "n": self.n,
            "stage": self.stage,
            "since": self.since,
            "first": self.first,
            "last": self.last,
            "soak_s": round(self.soak_s, 3),
            "min_soak": self.min_soak,
            "problems": [problem.as_dict() for problem in self.problems],
        }


def stage_evidence(
    task: str,
    stage: str,
    logs: Sequence[str],
    policy: Policy,
    *,
    changes_log: Path | None = None,
) -> Evidence:
    """The evidence in ``logs`` for ``task`` in ``stage``. The task's last change is
    looked for in ``logs`` and in ``changes_log`` (where promote and rollback write
    their records, when that is another file)."""
    from shim.analysis.report import build_report

    gates = policy.for_task(task)
    extra = [str(changes_log)] if changes_log is not None and changes_log.is_file() else []
    # The files as DuckDB can read them (a name with "[" in it, a truncated .gz, a line
    # over the limit: see shim.analysis.report_files); the report reads the same ones.
    with (
        LogFiles(logs, what="evidence log", error=EvidenceError) as files,
        LogFiles(extra, what="change log", error=EvidenceError) as changes,
    ):
        since, first, last = _window(task, stage, files, changes)
        if since is not None:
            try:
                parse_time(since, option="ts")
            except ShimError:
                raise EvidenceError(
                    f"the last shim.promote, shim.rollback or shim.rollout record of {task} "
                    f"has ts {since!r}, which is not a time, so its stage has no known "
                    "start: mend or remove that record"
                ) from None
        report = build_report(files.paths, policy=policy, task=task, since=since, stage=stage)
        problems = _problems(report, files, changes)
    found = next((t for t in report["tasks"] if t["task"] == task), None)
    soak = 0.0
    if first is not None and last is not None:
        try:
            soak = (_parse(last) - _parse(first)).total_seconds()
        except ValueError:  # a ts that is not ISO 8601: no soak can be shown
            soak = 0.0
    return Evidence(
        task=task,
        stage=stage,
        since=since,
        verdict=found["verdict"] if found else "HOLD",
        reasons=tuple(found["reasons"]) if found else (),
        n=int(found["n"]) if found else 0,
        soak_s=soak,
        min_soak=gates.min_soak,
        min_pairs=gates.min_pairs,
        first=first,
        last=last,
        problems=problems,
    )


def _problems(report: dict[str, Any], *logs: LogFiles) -> tuple[FileProblem, ...]:
    """What ``logs`` left out on the way to DuckDB, and what the report over them left
    out or did not count, each file named as given (the report read some through
    temporary copies)."""
    names = {path: name for files in logs for name, path in files.files}
    found = [problem for files in logs for problem in files.problems]
    for item in report.get("problems") or ():
        problem = FileProblem(item["file"], item["kind"], item["lines"], item["message"])
        if problem.file is not None:
            problem = replace(problem, file=names.get(problem.file, problem.file))
        found.append(problem)
    return tuple(dict.fromkeys(found))


_COLUMNS = "{'event': 'VARCHAR', 'schema': 'INTEGER', 'ts': 'VARCHAR', 'product': 'VARCHAR', 'task': 'VARCHAR', 'stage': 'VARCHAR'}"  # noqa: E501


def _window(
    task: str, stage: str, evidence: LogFiles, changes: LogFiles
) -> tuple[str | None, str | None, str | None]:
    """(the task's last change, its first and last comparison in ``stage`` after it).
    Two narrow DuckDB scans, a few columns each: cheap next to the report's own. When
    DuckDB cannot read a file as it is, it reads the clean copies the report reads."""
    import duckdb

    try:
        return _scan(task, stage, evidence.paths, sorted({*evidence.paths, *changes.paths}))
    except duckdb.Error:
        # Both, whichever failed (``|``, not ``or``): the scans read both.
        if not (evidence.clean_rest() | changes.clean_rest()):
            raise EvidenceError("cannot read the evidence: retrying did not help") from None
    try:
        return _scan(task, stage, evidence.paths, sorted({*evidence.paths, *changes.paths}))
    except duckdb.Error as exc:
        raise EvidenceError(f"cannot read the evidence: {exc}") from None


def _scan(
    task: str, stage: str, evidence: Sequence[str], everything: Sequence[str]
) -> tuple[str | None, str | None, str | None]:
    import duckdb

    product, _, name = task.partition(".")
    source = (
        "SELECT event, ts, stage FROM read_ndjson(?, ignore_errors=true, "
        f"columns={_COLUMNS}, maximum_object_size={MAX_LINE_BYTES}) "
        "WHERE schema = 1 AND product = ? AND task = ?"
    )
    events = "(" + ", ".join(f"'{e}'" for e in CHANGE_EVENTS) + ")"
    con = duckdb.connect()
    row = con.execute(
        f"SELECT max(ts) FROM ({source}) WHERE event IN {events}",
        [list(everything), product, name],
    ).fetchone()
    since = row[0] if row else None
    row = con.execute(
        f"SELECT min(ts), max(ts) FROM ({source}) WHERE event = 'shim.comparison' "
        "AND stage = ? AND (?::VARCHAR IS NULL OR ts > ?)",
        [list(evidence), product, name, stage, since, since],
    ).fetchone()
    first, last = (row[0], row[1]) if row else (None, None)
    return since, first, last


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def _span(seconds: float) -> str:
    whole = int(max(seconds, 0))
    return f"{whole // 60} min {whole % 60} s" if whole >= 60 else f"{whole} s"


def _whole(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else _span(seconds)


def _more(seconds: float) -> str:
    return f"{math.ceil(seconds / 60)} min" if seconds >= 60 else f"{math.ceil(seconds)} s"
