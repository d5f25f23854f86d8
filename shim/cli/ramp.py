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
    guard,
    load_policy,
    log_path,
    open_store,
    say,
)

if TYPE_CHECKING:
    from shim.ops.evidence import Evidence
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
            help="Comparison logs (files, globs, .gz); serving more needs the task's "
            "verdict over its current stage's comparisons to be PROMOTE, soaked for the "
            "policy's min_soak. Repeatable.",
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
    the comparisons --evidence holds for the task's current stage, since its last
    change, must be PROMOTE, and span the policy's min_soak (10 min by default); or
    --force (which the shim.promote record says). The flags are read, changed and
    recorded under one lock.
    """
    from shim.ops.promote import check_request, known_tasks
    from shim.ops.promote import promote as promote_task

    try:
        rungs = [int(r) for r in ramp.split(",")]
        if not rungs or any(not 0 < r <= 100 for r in rungs) or rungs != sorted(rungs):
            raise ValueError
    except ValueError:
        say(f"--ramp must be rising percentages from 1 to 100, got {ramp!r}", error=True)
        raise typer.Exit(2) from None
    guard(check_request, [task], serve, shadow)
    store = open_store(flags)
    path = log_path(log)
    # The gate may run more than once (the task moved before the lock was taken); the
    # last evidence read is the one the applied change was judged on.
    judged: list[Evidence] = []

    def gate(change: Change) -> dict[str, Any]:
        return _evidence(change, evidence, policy, force, path, judged)

    change, _ = guard(
        promote_task,
        store,
        task,
        known_tasks(assignments),
        serve=serve,
        shadow=shadow,
        ramp=rungs,
        gate=gate,
        log=path,
        dry_run=dry_run,
    )
    if change is None:
        say(f"{task} is already live (serve 100 %); nothing to promote")
        raise typer.Exit(1)
    if change.before == change.after:
        say(
            f"{task} is already at serve {change.after.serve} %, shadow "
            f"{change.after.shadow} %; nothing to change",
        )
        return
    _show("shim.promote", [change], dry_run, path)
    if judged:
        say(f"evidence: {judged[-1].window()}")


def rollback(
    task: Annotated[str | None, typer.Argument(help="product.task; or --all")] = None,
    all_tasks: Annotated[bool, typer.Option("--all", help="Every task that serves.")] = False,
    flags: FlagsOpt = None,
    log: LogOpt = None,
    assignments: AssignmentsOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Serve 0 % at once (shadow kept), for TASK or --all; read, changed and recorded
    under one lock, so it is never undone by a change that read the flags before it."""
    from shim.ops.promote import check_request, known_tasks
    from shim.ops.promote import rollback as roll_back

    if (task is None) == (not all_tasks):
        say("name one task or pass --all", error=True)
        raise typer.Exit(2)
    if task is not None:
        guard(check_request, [task])
    store = open_store(flags)
    path = log_path(log)
    tasks = [task] if task else None
    changes = guard(roll_back, store, tasks, known_tasks(assignments), log=path, dry_run=dry_run)
    if not changes:
        say("nothing serves from the task path; nothing to roll back")
        return
    _show("shim.rollback", changes, dry_run, path)


def _evidence(
    change: Change,
    logs: list[str] | None,
    policy: Path | None,
    force: bool,
    changes: Path | None,
    judged: list[Evidence],
) -> dict[str, Any]:
    """The current stage's evidence for ``change`` (appended to ``judged``); exits 1
    unless it promotes, or ``force``. What the shim.promote record adds."""
    from shim.ops.evidence import stage_evidence

    task, stage = change.task, change.before.stage
    if not logs:
        if not force:
            say(
                f"serving more of {task} needs evidence: pass --evidence LOG (the "
                "comparison log) or, to skip the gate, --force",
                error=True,
            )
            raise typer.Exit(1)
        return {"forced": True, "evidence": None}
    found = guard(stage_evidence, task, stage, logs, load_policy(policy), changes_log=changes)
    judged.append(found)
    # Said whatever the decision: a verdict on part of the logs is still a verdict, but
    # whoever promotes should know which part (the shim.promote record keeps them too).
    for problem in found.problems:
        say(f"evidence: not all read: {problem.describe()}", error=True)
    refusals = found.refusals()
    if refusals:
        if not found.dated:
            why = f"nothing says when stage {stage} started at this rung"
        elif found.verdict != "PROMOTE":
            why = f"the evidence from stage {stage} says {found.verdict}"
        else:
            why = f"stage {stage} has not soaked long enough"
        if not force:
            say(f"refusing to promote {task}: {why}", error=True)
            for reason in refusals:
                say(f"  - {reason}", error=True)
            raise typer.Exit(1)
        say(f"forced past it ({why}); the record says so", error=True)
    return {"forced": force and bool(refusals), "evidence": found.summary()}


# event -> (what a dry run would do, what was done)
_WORDS = {"shim.promote": ("promote", "promoted"), "shim.rollback": ("roll back", "rolled back")}


def _show(event: str, changes: list[Change], dry_run: bool, log: Path | None) -> None:
    """Say what was done (recorded as ``event``), or, with ``dry_run``, would be."""
    verb, done = _WORDS[event]
    for c in changes:
        say(
            f"{'would ' + verb if dry_run else done} {c.task}: "
            f"{c.before.stage} (serve {c.before.serve} %, shadow {c.before.shadow} %) "
            f"-> {c.after.stage} (serve {c.after.serve} %, shadow {c.after.shadow} %)",
        )
    if not dry_run and log is None:
        say(f"note: no --log or SHIM_LOG, so no {event} record was written", error=True)
