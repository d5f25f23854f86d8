"""``shim report``: comparison logs in, a verdict per task out, statistics written out.

The filters are checked first (:mod:`shim.analysis.report_filters`); logs are read with
DuckDB (:mod:`shim.analysis.report_logs`); each task's statistics
(:mod:`shim.analysis.report_tasks`) lead to its verdict
(:mod:`shim.analysis.report_verdict`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shim.analysis.report_filters import Filters, check_filters
from shim.analysis.report_logs import Logs, ReportError, TaskRows, read_logs
from shim.base.text import printable

if TYPE_CHECKING:
    from shim.analysis.policy import Policy

__all__ = ["ReportError", "build_report"]


def _preload() -> None:
    """Import what the statistics need after the read (the policy's pydantic models,
    numpy): on a thread of its own, while DuckDB reads with the GIL let go, this costs
    the report about half its time (measured: 0.15 s of imports). Should one fail, it
    fails again where it is imported, and says so there."""
    try:
        import numpy  # noqa: F401

        import shim.analysis.report_tasks  # noqa: F401  (the policy, the verdicts)
    except Exception:  # imported again where it is used, and raised there
        pass


def build_report(
    inputs: Sequence[str],
    *,
    policy: Policy | None = None,
    task: str | None = None,
    since: str | None = None,
    until: str | None = None,
    stage: str | None = None,
    seed: int = 0,
    require_records: bool = False,
) -> dict[str, Any]:
    """The report as ``shim report --format json`` prints it.

    ``since``/``until`` are ISO 8601 times (UTC without a zone) or durations back from
    now (``24h``); ``stage`` one of :data:`~shim.analysis.report_filters.STAGES`; else
    ReportError. With ``require_records``, logs that hold nothing of any task within
    the filters are a ReportError too, saying what they do hold (``shim report``);
    without, they make a report with no tasks (``shim promote --evidence`` says HOLD).
    """
    filters = check_filters(task=task, since=since, until=until, stage=stage)
    # The imports start once DuckDB is about to read (``reading``): two threads that
    # import take turns on the GIL, and DuckDB's own import and set-up come first.
    preload = threading.Thread(target=_preload, name="shim-report-imports", daemon=True)
    try:
        logs = read_logs(
            inputs,
            # the built-in policy has no prices (tests/test_report.py holds it to that)
            prices=policy.prices if policy is not None else {},
            task=filters.task,
            since=filters.since,
            until=filters.until,
            stage=filters.stage,
            reading=preload.start,
        )
    finally:
        if preload.ident is not None:  # started
            preload.join()
    if policy is None:
        from shim.analysis.policy import Policy

        policy = Policy()
    if require_records and not logs.tasks:
        raise ReportError(_nothing(inputs, filters, logs))
    untasked = dict(sorted(logs.untasked_errors.items()))
    return {
        "schema": 1,
        "records": logs.records,
        "bad_lines": logs.bad_lines,
        "tasks": _task_reports(logs.tasks, policy, seed),
        "shim_errors_without_task": {
            "count": sum(e["count"] for e in untasked.values()),
            "by_operation": untasked,
        },
        # What was left out of the count, by file: lines over the limit, a truncated or
        # corrupt .gz, records with a negative count (see report_files.FileProblem).
        "problems": [p.as_dict() for p in logs.problems],
    }


def _nothing(inputs: Sequence[str], filters: Filters, logs: Logs) -> str:
    """What to say of logs that hold no comparison (nor drop, nor error) of any task."""
    where = ", ".join(inputs)
    scope = f" for {filters.describe()}" if filters.describe() else ""
    message = f"no comparison records in {where}{scope}"
    if filters.task and filters.task not in logs.named and logs.named:
        message += f"; the logs have {', '.join(sorted(logs.named))}"
    elif logs.named:
        message += (
            f" (the logs have records of {', '.join(sorted(logs.named))} outside these filters)"
        )
    else:
        message += f" ({logs.records} records, {logs.bad_lines} bad lines, none of a task)"
    if logs.untasked_errors:
        from shim.analysis.report_verdict import shim_error_line

        count = sum(e["count"] for e in logs.untasked_errors.values())
        message += "; " + shim_error_line(
            count, logs.untasked_errors, "shim.error records tied to no task"
        )
    for problem in logs.problems:
        message += f"; {problem.describe()}"
    # One line, whatever the logs' names hold (a newline in one would forge another).
    return printable(message)


def _task_reports(tasks: list[TaskRows], policy: Policy, seed: int) -> list[dict[str, Any]]:
    """Each task's report; the bootstraps on two threads, as numpy lets go of the GIL
    while it partitions (measured: 44 against 77 ms for four tasks)."""
    from shim.analysis.report_tasks import task_report

    def one(t: TaskRows) -> dict[str, Any]:
        return task_report(t, policy.for_task(t.name), seed)

    if len(tasks) < 2:
        return [one(t) for t in tasks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2, thread_name_prefix="shim-report") as pool:
        return list(pool.map(one, tasks))
