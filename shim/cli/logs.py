"""``shim report`` (statistics and verdicts over logs) and ``shim watch`` (gates as a log
grows, with an automatic rollback on a breach)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .options import FlagsOpt, PolicyOpt, err, guard, load_policy, open_store, out

if TYPE_CHECKING:
    from shim.flags.store import FlagStore
    from shim.ops.watch import Breach

__all__ = ["report", "watch"]


def report(
    logs: Annotated[list[str], typer.Argument(help="Logs: files, globs, .gz, or - for stdin.")],
    fmt: Annotated[
        str, typer.Option("--format", help="table, json, markdown, or html (with --out).")
    ] = "table",
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Where --format html writes its page.", dir_okay=False),
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only this product.task.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time, exclusive.")] = None,
    stage: Annotated[str | None, typer.Option(help="Only comparisons in this stage.")] = None,
    policy: PolicyOpt = None,
) -> None:
    """Per-task statistics and a verdict (PROMOTE, HOLD, ROLLBACK); exit 1 on ROLLBACK."""
    from shim.analysis.report import build_report
    from shim.analysis.report_format import markdown, table

    if fmt not in ("table", "json", "markdown", "html"):
        err.print(f"--format must be table, json, markdown or html, got {fmt!r}", markup=False)
        raise typer.Exit(2)
    if fmt == "html" and out_file is None:
        err.print("--format html needs --out FILE", markup=False)
        raise typer.Exit(2)
    gates = load_policy(policy)
    result = guard(
        build_report, logs, policy=gates, task=task, since=since, until=until, stage=stage
    )
    if fmt == "html":
        from shim.analysis.report_html import render_html

        assert out_file is not None
        out_file.write_text(render_html(result), encoding="utf-8")
        out.print(f"wrote {out_file}", markup=False)
    elif fmt == "json":
        print(json.dumps(result, indent=2))
    elif fmt == "markdown":
        print(markdown(result), end="")
    else:
        out.print(table(result))
    if any(t["verdict"] == "ROLLBACK" for t in result["tasks"]):
        raise typer.Exit(1)


def watch(
    log: Annotated[Path, typer.Argument(help="The comparison log to follow.", dir_okay=False)],
    auto_rollback: Annotated[
        bool, typer.Option("--auto-rollback", help="Roll a breaching task back (serve 0 %).")
    ] = False,
    flags: FlagsOpt = None,
    policy: PolicyOpt = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Read the log from its start, not its end.")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="Stop at the end of the log instead of following it.")
    ] = False,
) -> None:
    """Evaluate rolling windows of LOG as it grows; with --auto-rollback, act on a breach."""
    from shim.ops.watch import Watch, follow

    watcher = Watch(load_policy(policy))
    store = open_store(flags) if auto_rollback else None
    out.print(f"watching {log}" + (" (auto-rollback on)" if auto_rollback else ""), markup=False)
    breaches = 0
    try:
        for row in follow(log, from_start=from_start, once=once):
            breach = watcher.feed(row)
            if breach is None:
                continue
            breaches += 1
            err.print(f"BREACH {breach.describe()}", markup=False)
            if store is not None:
                _roll_back(breach, store, log)
    except KeyboardInterrupt:
        pass
    if once and breaches:
        raise typer.Exit(1)


def _roll_back(breach: Breach, store: FlagStore, log: Path) -> None:
    """Serve 0 % for the breaching task (shadow kept), recorded as automatic in ``log``."""
    from shim.flags.store import Setting
    from shim.ops.promote import Change, apply, read_state, record

    state = guard(read_state, store)
    current = state.tasks.get(breach.task)
    if current is None or current.serve == 0:
        err.print(f"{breach.task} already serves 0 %; nothing to roll back", markup=False)
        return
    change = Change(breach.task, Setting(current.serve, current.shadow), Setting(0, current.shadow))
    guard(apply, store, [change])
    record(
        "shim.rollback",
        [change],
        store,
        log,
        reason=breach.describe(),
        extra={
            "automatic": True,
            "consecutive": breach.consecutive,
            "cumulative": breach.cumulative,
            "pairs": breach.pairs,
        },
    )
    out.print(
        f"rolled back {breach.task}: serve {current.serve} % -> 0 % ({'; '.join(breach.reasons)})",
        markup=False,
    )
