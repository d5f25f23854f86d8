"""``shim promote`` (the next rung, with evidence) and ``shim rollback`` (serve 0 % now)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .options import (
    AssignmentsOpt,
    DryRunOpt,
    FlagsOpt,
    LogOpt,
    PolicyOpt,
    err,
    guard,
    load_policy,
    log_path,
    open_store,
    out,
)

if TYPE_CHECKING:
    from shim.flags.store import FlagStore
    from shim.ops.promote import Change

__all__ = ["promote", "rollback"]


def promote(
    task: Annotated[str, typer.Argument(help="product.task, e.g. kiwi.meal_plan")],
    serve: Annotated[int | None, typer.Option(help="Set serve % instead of the next rung.")] = None,
    shadow: Annotated[int | None, typer.Option(help="Set shadow % as well.")] = None,
    ramp: Annotated[str, typer.Option(help="Serve rungs after shadow 100 %.")] = "1,5,25,50,100",
    flags: FlagsOpt = None,
    log: LogOpt = None,
    assignments: AssignmentsOpt = None,
    evidence: Annotated[
        list[str] | None,
        typer.Option(
            "--evidence",
            help="Comparison logs (files, globs, .gz); serving more needs the "
            "task's verdict over them to be PROMOTE. Repeatable.",
        ),
    ] = None,
    policy: PolicyOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote without passing evidence (recorded as forced).")
    ] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Move TASK to the next rung: shadow 100 %, then serve 1, 5, 25, 50, 100 %.

    Shadowing needs no evidence; serving more does: the verdict of `shim report` over
    --evidence must be PROMOTE, or --force (which the shim.promote record says).
    """
    from shim.ops.promote import check_request, known_tasks, plan_promote

    try:
        rungs = [int(r) for r in ramp.split(",")]
        if not rungs or any(not 0 < r <= 100 for r in rungs) or rungs != sorted(rungs):
            raise ValueError
    except ValueError:
        err.print(f"--ramp must be rising percentages from 1 to 100, got {ramp!r}", markup=False)
        raise typer.Exit(2) from None
    guard(check_request, [task], serve, shadow)
    store = open_store(flags)
    state = guard(store.read)
    change = guard(
        plan_promote, state, task, known_tasks(assignments), serve=serve, shadow=shadow, ramp=rungs
    )
    if change is None:
        out.print(f"{task} is already live (serve 100 %); nothing to promote", markup=False)
        raise typer.Exit(1)
    extra: dict[str, Any] = {}
    if change.after.serve > change.before.serve:
        extra = _evidence(task, evidence, policy, force)
    _change("shim.promote", [change], store, log, dry_run, extra)


def rollback(
    task: Annotated[str | None, typer.Argument(help="product.task; or --all")] = None,
    all_tasks: Annotated[bool, typer.Option("--all", help="Every task that serves.")] = False,
    flags: FlagsOpt = None,
    log: LogOpt = None,
    assignments: AssignmentsOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Serve 0 % at once (shadow kept), for TASK or --all."""
    from shim.ops.promote import check_request, known_tasks, plan_rollback

    if (task is None) == (not all_tasks):
        err.print("name one task or pass --all", markup=False)
        raise typer.Exit(2)
    if task is not None:
        guard(check_request, [task])
    store = open_store(flags)
    state = guard(store.read)
    tasks = [task] if task else [t for t, f in state.tasks.items() if f.serve]
    changes = guard(plan_rollback, state, tasks, known_tasks(assignments))
    if not changes:
        out.print("nothing serves from the task path; nothing to roll back", markup=False)
        return
    _change("shim.rollback", changes, store, log, dry_run)


def _evidence(
    task: str, logs: list[str] | None, policy: Path | None, force: bool
) -> dict[str, Any]:
    """The report's verdict on ``task``; exits 1 unless it is PROMOTE or ``force``."""
    from shim.analysis.report import build_report

    if not logs:
        if not force:
            err.print(
                f"serving more of {task} needs evidence: pass --evidence LOG (the "
                "comparison log) or, to skip the gate, --force",
                markup=False,
            )
            raise typer.Exit(1)
        return {"forced": True, "evidence": None}
    report = guard(build_report, logs, policy=load_policy(policy), task=task)
    found = next(iter(report["tasks"]), None)
    verdict = found["verdict"] if found else "HOLD"
    reasons = found["reasons"] if found else ["no comparisons of this task in the evidence"]
    summary = {"verdict": verdict, "reasons": reasons, "n": found["n"] if found else 0}
    if verdict != "PROMOTE":
        if not force:
            err.print(f"refusing to promote {task}: the evidence says {verdict}", markup=False)
            for reason in reasons:
                err.print(f"  - {reason}", markup=False)
            raise typer.Exit(1)
        err.print(f"forced past a {verdict} verdict; the record says so", markup=False)
    return {"forced": force and verdict != "PROMOTE", "evidence": summary}


# event -> (what a dry run would do, what was done)
_WORDS = {"shim.promote": ("promote", "promoted"), "shim.rollback": ("roll back", "rolled back")}


def _change(
    event: str,
    changes: list[Change],
    store: FlagStore,
    log: Path | None,
    dry_run: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """Show ``changes``; unless ``dry_run``, apply them and record them as ``event``."""
    from shim.ops.promote import apply, record

    verb, done = _WORDS[event]
    for c in changes:
        out.print(
            f"{'would ' + verb if dry_run else done} {c.task}: "
            f"{c.before.stage} (serve {c.before.serve} %, shadow {c.before.shadow} %) "
            f"-> {c.after.stage} (serve {c.after.serve} %, shadow {c.after.shadow} %)",
            markup=False,
        )
    if dry_run:
        return
    guard(apply, store, changes)
    path = log_path(log)
    record(event, changes, store, path, extra=extra)
    if path is None:
        err.print(f"note: no --log or SHIM_LOG, so no {event} record was written", markup=False)
