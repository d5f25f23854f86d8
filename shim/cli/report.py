"""``shim report``'s body, and its arguments read without the command-line framework.

The verb (:func:`shim.cli.logs.report`) and the plain path both run :func:`run_report`.
A report of a big log is mostly DuckDB's read; what came before it was mostly start-up:
typer builds a validator per parameter before the verb runs, about 0.3 s with its
imports (measured: ``bench/report.py``). So :func:`shim.cli.main` hands ``shim report``
arguments to :func:`parse_plain` first: arguments it reads without doubt (the known
options once each, as ``--opt VALUE`` or ``--opt=VALUE``, paths the options accept)
run the report without typer, rich or the other verbs; anything else (``--help``, an
unknown or repeated option, no log, a ``--policy`` that is not a readable file) goes
to typer, which says what is wrong as it always has.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shim.base.errors import ShimError

from .console import console, emit, say, say_failure

__all__ = ["FORMATS", "OPTIONS", "ReportArgs", "parse_plain", "run_report"]

#: ``--format`` values.
FORMATS = ("table", "json", "markdown", "html")

#: The options of ``shim report``, each taking one value, by the field they fill.
OPTIONS = {
    "--format": "fmt",
    "--out": "out_file",
    "--task": "task",
    "--since": "since",
    "--until": "until",
    "--stage": "stage",
    "--policy": "policy",
}


@dataclass(frozen=True, slots=True)
class ReportArgs:
    """What ``shim report`` was asked: the logs, the format, where ``--format html``
    writes, the filters, and the policy file (None: the built-in policy)."""

    logs: tuple[str, ...]
    fmt: str = "table"
    out_file: Path | None = None
    task: str | None = None
    since: str | None = None
    until: str | None = None
    stage: str | None = None
    policy: Path | None = None
    #: ``--export parquet PATH``: (the format, where)
    export: tuple[str, Path] | None = None


def parse_plain(args: Sequence[str]) -> ReportArgs | None:
    """The arguments after ``report`` when they are plain (see the module); None when
    typer should read them."""
    logs: list[str] = []
    values: dict[str, str] = {}
    rest = iter(args)
    for arg in rest:
        if arg == "--":  # everything after is a log
            logs.extend(rest)
            break
        if arg == "-" or not arg.startswith("-"):
            logs.append(arg)
            continue
        name, equals, value = arg.partition("=")
        if name not in OPTIONS or name in values:
            return None
        if not equals:
            value = next(rest, "-")
            if value.startswith("-"):  # a missing value, or one typer should judge
                return None
        values[name] = value
    if not logs:
        return None
    out_file, policy = values.pop("--out", None), values.pop("--policy", None)
    if out_file is not None and not _accepted(out_file, must_exist=False):
        return None
    if policy is not None and not _accepted(policy, must_exist=True):
        return None
    return ReportArgs(
        tuple(logs),
        fmt=values.get("--format", "table"),
        out_file=None if out_file is None else Path(out_file),
        task=values.get("--task"),
        since=values.get("--since"),
        until=values.get("--until"),
        stage=values.get("--stage"),
        policy=None if policy is None else Path(policy),
    )


def _accepted(path: str, *, must_exist: bool) -> bool:
    """Whether typer takes ``path`` for an option that names a file (``dir_okay=False``,
    readable when it exists)."""
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return not must_exist
    return not stat.S_ISDIR(found.st_mode) and os.access(path, os.R_OK)


def run_report(args: ReportArgs) -> int:
    """Print the report ``args`` ask for; the exit code: 1 on a ROLLBACK verdict, 2 when
    the logs cannot be read or hold nothing within the filters, or the arguments are
    wrong (said on stderr), else 0."""
    if args.fmt not in FORMATS:
        say(f"--format must be table, json, markdown or html, got {args.fmt!r}", error=True)
        return 2
    if args.fmt == "html" and args.out_file is None:
        say("--format html needs --out FILE", error=True)
        return 2
    if args.export is not None and args.export[0] != "parquet":
        say(f"--export takes parquet and a path, got {args.export[0]!r}", error=True)
        return 2
    from shim.analysis.report import build_report

    try:
        policy = None  # the built-in one, made while the logs are read
        if args.policy is not None:
            from shim.analysis.policy import Policy

            policy = Policy.load(args.policy)
        logs, since, until, problems = args.logs, args.since, args.until, []
        if args.export is not None:
            from shim.analysis.report_export import export_parquet

            exported = export_parquet(
                logs, args.export[1], task=args.task, since=since, until=until, stage=args.stage
            )
            say(exported.describe(), error=True)
            # the report is the archive's: the logs are read once (standard input too),
            # and the times are the export's
            logs, since, until = (str(exported.path),), None, None
            problems = [p.as_dict() for p in exported.problems]
        result = build_report(
            logs,
            policy=policy,
            task=args.task,
            since=since,
            until=until,
            stage=args.stage,
            require_records=True,
        )
        result["problems"] = problems + result["problems"]
    except ShimError as exc:
        say_failure(exc)
        return 2
    if args.fmt == "html":
        from shim.analysis.report_html import render_html
        from shim.base.secrets import env_redactor

        assert args.out_file is not None
        args.out_file.write_text(env_redactor()(render_html(result)), encoding="utf-8")
        say(f"wrote {args.out_file}")
    elif args.fmt == "json":
        from shim.base.text import strict_json

        emit(strict_json(result, indent=2))
    elif args.fmt == "markdown":
        from shim.analysis.report_format import markdown

        emit(markdown(result), end="")
    else:
        from shim.analysis.report_format import table

        console().print(table(result))
    return 1 if any(t["verdict"] == "ROLLBACK" for t in result["tasks"]) else 0
