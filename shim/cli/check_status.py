"""``shim check`` (are the config files sound?) and ``shim status`` (where is each task?)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from shim.base.text import printable, strict_json

from .options import (
    AssignmentsOpt,
    FlagsOpt,
    JsonOpt,
    LogOpt,
    RegistryOpt,
    config_paths,
    emit,
    guard,
    log_path,
    open_store,
    out,
    say,
)

if TYPE_CHECKING:
    from shim.ops.check import CheckReport

__all__ = ["check", "status"]


def check(
    assignments: AssignmentsOpt = None,
    registry: RegistryOpt = None,
    flags: FlagsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate assignments, registry and flags; 'file:line: message' for each problem."""
    from shim.ops.check import run_check

    a_path, r_path = config_paths(assignments, registry)
    if flags is None and os.environ.get("SHIM_FLAGS", "unleash") != "unleash":
        flags = Path(os.environ["SHIM_FLAGS"])
    for given in (a_path, r_path, flags):
        if given is not None and not given.is_file():
            say(f"{given}: no such file", error=True)
            raise typer.Exit(2)
    report = run_check(a_path, r_path, flags)
    if as_json:
        problems = [
            {"path": p.path, "line": p.line, "field": p.field, "message": p.message}
            for p in report.problems
        ]
        document = {
            "ok": report.ok,
            "files": report.files,
            "problems": problems,
            "tasks": report.rows(),
        }
        emit(strict_json(document, indent=2))
        raise typer.Exit(0 if report.ok else 1)
    if not report.ok:
        for problem in report.problems:
            say(str(problem), soft_wrap=True)
        where = sorted({problem.path for problem in report.problems})
        say(f"{len(report.problems)} problem(s) in {', '.join(where)}", error=True)
        raise typer.Exit(1)
    _registrations(report)


def _registrations(report: CheckReport) -> None:
    """The table of a sound configuration: one row per task, with its flags if given.
    Names come from the files: each cell is text, never markup."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="cf-orch task registrations", title_justify="left")
    for column in ("task", "model", "service", "VRAM MB", "aliases"):
        table.add_column(
            column,
            justify="right" if column in ("VRAM MB", "aliases") else "left",
            no_wrap=column != "model",
        )
    if report.flags is not None:
        for column in ("stage", "serve %", "shadow %"):
            table.add_column(column, justify="left" if column == "stage" else "right", no_wrap=True)
    for row in report.rows():
        cells = [
            row["task"],
            row["model"],
            row["service_type"],
            f"{row['vram_mb']:,}",
            str(len(row["aliases"])),
        ]
        if report.flags is not None:
            cells += [row["stage"] or "off", str(row["serve"] or 0), str(row["shadow"] or 0)]
        table.add_row(*(Text(printable(cell)) for cell in cells))
    out.print(table)
    assert report.config is not None
    say(
        f"ok: {len(report.config.tasks)} tasks, {len(report.config.registry.models)} "
        f"models ({', '.join(report.files)})",
        soft_wrap=True,
    )


def status(flags: FlagsOpt = None, log: LogOpt = None, as_json: JsonOpt = False) -> None:
    """Stage, serve %, shadow % and breaker state of every task."""
    from rich.table import Table
    from rich.text import Text

    from shim.ops.status import breaker_states, status_rows

    store = open_store(flags)
    state = guard(store.read)
    log = log_path(log)
    breakers = breaker_states(log) if log is not None and log.is_file() else None
    rows = status_rows(state, breakers)
    if as_json:
        document = {"flags": store.description, "kill": state.kill, "tasks": rows}
        emit(strict_json(document, indent=2))
        return
    # The description names a path or a URL, the breaker states come from the log:
    # every cell is text, styled, never markup.
    title = Text(f"flags: {printable(store.description)}")
    if state.kill:
        title.append("  shim.kill is ON: every task is legacy", style="bold red")
    table = Table(title=title, title_justify="left")
    for column in ("task", "stage", "serve %", "shadow %", "stickiness", "budget", "breaker"):
        table.add_column(column, justify="right" if "%" in column else "left", no_wrap=True)
    colours = {"live": "green", "canary": "yellow", "shadow": "cyan", "off": "dim"}
    for row in rows:
        breaker = row["breaker"] or "unknown (no log)"
        table.add_row(
            Text(printable(row["task"])),
            Text(row["stage"], style=colours.get(row["stage"], "")),
            str(row["serve"]),
            str(row["shadow"]),
            Text(printable(row["stickiness"])),
            _budget_text(row),
            Text(printable(breaker), style="red" if breaker in ("open", "half_open") else ""),
        )
    out.print(table)


def _budget_text(row: dict[str, Any]) -> str:
    """``5/s, 200,000 tokens/h``; ``-`` for none in the flags."""
    parts = []
    if row["shadow_rate"] is not None:
        parts.append(f"{row['shadow_rate']:g}/s")
    if row["shadow_tokens_per_hour"] is not None:
        parts.append(f"{row['shadow_tokens_per_hour']:,} tokens/h")
    return ", ".join(parts) or "-"
