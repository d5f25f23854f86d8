"""``shim rollout``: the rollout controller at the command line, and its approvals."""

from __future__ import annotations

import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shim.base.errors import ShimError

from .console import console, emit, say
from .options import FlagsOpt, PolicyOpt, guard, load_policy

if TYPE_CHECKING:
    from shim.ops.prom_evidence import PromEvidence
    from shim.ops.rollout import Decision, Rollout

__all__ = ["rollout"]


def rollout(
    task: Annotated[
        str,
        typer.Argument(
            help="The task (product.task); or `approve`, then the task, to approve a step.",
            show_default=False,
            metavar="TASK",
        ),
    ],
    approved: Annotated[
        str | None,
        typer.Argument(
            help="With `approve`: the task whose step is approved.",
            show_default=False,
            metavar="[APPROVED_TASK]",
        ),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option("--plan", help="The rollout plan (YAML): steps, on_breach, confirm, webhook."),
    ] = None,
    log: Annotated[
        list[Path] | None,
        typer.Option(
            "--log",
            help="The comparison log(s) to read evidence from; decisions are appended to "
            "the first.",
            metavar="LOG",
        ),
    ] = None,
    flags: FlagsOpt = None,
    policy: PolicyOpt = None,
    step: Annotated[
        int | None, typer.Option("--step", help="With `approve`: the step approved.", min=0)
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between looks at the evidence.", min=0.05)
    ] = 5.0,
    once: Annotated[
        bool,
        typer.Option("--once", help="Read the logs, decide once, and exit (for a scheduler)."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON line per decision, for machines.")
    ] = False,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Start the plan again though the log says the last rollout of the task "
            "ended (rolled back, stopped or complete).",
        ),
    ] = False,
    prometheus: Annotated[
        str | None,
        typer.Option(
            "--prometheus",
            metavar="URL",
            help="Take the comparisons from a Prometheus server that scrapes every "
            "replica's shim.metrics; the first --log holds the rollout's own records "
            "(made if missing).",
        ),
    ] = None,
) -> None:
    """Walk TASK through a plan's steps on its own: advance when every gate passes on
    evidence from the current step (always-valid bounds, so looking often is safe),
    roll back on a breach, stop if someone else changes the task's flags. Exit 0 when
    the plan completes, 1 when it rolled back or stopped, 2 on bad input. `shim
    rollout approve TASK --step N --log LOG` approves step N of a `confirm: true` plan."""
    from shim.ops.promote import check_request, check_task, known_tasks, open_store

    logs = list(log or [])
    if not logs:
        say("--log is needed: the evidence, and where decisions are written", error=True)
        raise typer.Exit(2)
    if prometheus is not None and not logs[0].exists():
        # the evidence is Prometheus's: the log holds only the controller's own records
        try:
            logs[0].touch()
        except OSError as exc:
            say(f"{logs[0]}: cannot write the rollout's records: {exc.strerror}", error=True)
            raise typer.Exit(2) from None
    missing = [path for path in logs if not path.is_file()]
    if missing:  # a typo would read no evidence, and never roll back
        say(
            f"{missing[0]}: no such log (check the path: the app's comparison log, "
            "SHIM_LOG, which it creates at its first record)",
            error=True,
        )
        raise typer.Exit(2)
    name = approved if task == "approve" else task
    if name is not None:  # the name, said as the command line's, before any flags
        guard(check_request, [name])
    store = guard(open_store, flags)
    if task == "approve":
        if approved is None or step is None:
            say("approve needs the task and --step: shim rollout approve TASK --step N", error=True)
            raise typer.Exit(2)
        from shim.ops.rollout_guard import approve

        guard(approve, approved, step, store, logs[0])
        say(f"approved step {step} of {approved}'s rollout")
        return
    if plan is None:
        say("--plan is needed: the steps to walk (see `shim rollout --help`)", error=True)
        raise typer.Exit(2)
    from shim.ops.logtail import LogTail
    from shim.ops.rollout import Rollout
    from shim.ops.rollout_guard import controller_lock
    from shim.ops.rollout_plan import Plan

    the_plan, the_policy = guard(Plan.load, plan), load_policy(policy)
    guard(check_task, task, guard(store.read, [task]), known_tasks(None))
    controller = Rollout(task, the_plan, store, logs[0], policy=the_policy, fresh=fresh)
    with ExitStack() as held:
        guard(held.enter_context, controller_lock(task, logs[0]))
        evidence = None
        if prometheus is not None:
            from shim.ops.prom_evidence import PromEvidence

            evidence = held.enter_context(closing(PromEvidence(prometheus)))
            controller.log_evidence = False
        decided = _run(controller, LogTail(logs), interval, once, as_json, evidence)
    if decided is not None and decided.done and decided.action != "complete":
        raise typer.Exit(1)


def _run(
    controller: Rollout,
    tail: Any,
    interval: float,
    once: bool,
    as_json: bool,
    evidence: PromEvidence | None = None,
) -> Decision | None:
    """Look, decide, show; until the rollout ends (or once). With ``evidence``, the
    comparisons are what the fleet gained since the step began."""
    from rich.live import Live

    out = console()
    # not redirected: the console writes to whatever sys.stdout is when it writes, and
    # a redirected sys.stdout writes back to the console
    live = (
        None
        if (as_json or not out.is_terminal)
        else Live(console=out, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
    )
    view = _View(controller, live, as_json)
    decided: Decision | None = None
    try:
        if live is not None:
            live.start()
        based: tuple[float | None] | None = None  # the step the evidence counts from
        looked = False  # Prometheus answered once: a failure after that is said, not fatal
        while True:
            for rec in tail.poll():
                controller.take(rec)
            if evidence is not None:
                try:
                    if based != (controller.since,):
                        evidence.rebase(controller.since)
                        based = (controller.since,)
                    gains = evidence.poll()
                    looked = True
                except ShimError as exc:
                    if once or not looked:  # at start: say so and stop (exit 2)
                        guard(_raise, exc)
                    say(f"{controller.task}: {exc}; looking again in {interval:g} s", error=True)
                    time.sleep(interval)
                    continue
                for (name, stage), found in gains.items():
                    if name == controller.task:
                        controller.take_gains(stage, found)
            if once:
                decided = guard(controller.decide)
            else:
                try:
                    decided = controller.decide()
                except ShimError as exc:  # a flag service that did not answer: next look
                    say(f"{controller.task}: could not decide this time: {exc}", error=True)
                    time.sleep(interval)
                    continue
            view.show(decided)
            if decided.done or once:
                return decided
            time.sleep(interval)
    except KeyboardInterrupt:
        return decided
    finally:
        if live is not None:
            live.stop()


def _raise(exc: ShimError) -> None:
    raise exc


class _View:
    """Where decisions are shown: the live table (a terminal), a JSON line per
    decision (``--json``), or a line whenever what is said changes."""

    #: a hold that waits for the same things is said again after this many seconds
    EVERY = 60.0

    def __init__(self, controller: Rollout, live: Any, as_json: bool) -> None:
        self.controller, self.live, self.as_json = controller, live, as_json
        self.last: tuple[Any, ...] | None = None
        self.said_at = 0.0

    def show(self, decided: Decision) -> None:
        import json

        controller = self.controller
        if self.live is not None:
            self.live.update(_table(controller, decided), refresh=True)
            return
        # a hold is said when what it waits for changes (or once a minute), not each
        # time its figures move
        gist = (decided.action, decided.step, *map(_waits_for, decided.reasons))
        now = time.monotonic()
        if decided.action == "hold" and gist == self.last and now - self.said_at < self.EVERY:
            return
        self.last, self.said_at = gist, now
        line = _line(controller, decided)
        if not self.as_json:
            say(line, soft_wrap=True)  # a line a decision, whatever the width
            return
        from datetime import UTC, datetime

        row = {
            "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "task": controller.task,
            "action": decided.action,
            "step": decided.step,
            "reasons": list(decided.reasons),
            # what the decision rested on (after a move, the new step has no pairs yet)
            "evidence": decided.evidence or controller.evidence(),
        }
        emit(json.dumps(row))


def _waits_for(reason: str) -> str:
    """What a hold's reason waits for, without its figures: "pairs", "error increase"."""
    import re

    return reason.partition(":")[0] if ":" in reason else re.sub(r"[\d.,]+ ", "", reason)


def _line(controller: Rollout, decided: Decision) -> str:
    steps = len(controller.plan.steps)
    where = "off the plan" if decided.step is None else f"step {decided.step} of {steps - 1}"
    return f"{controller.task}: {decided.action} ({where}): " + "; ".join(decided.reasons)


def _table(controller: Rollout, decided: Decision) -> Any:
    """The live view: the step, its soak and pairs, each gate's bound against its line."""
    import math

    from rich.table import Table

    plan, gates, evidence = controller.plan, controller.gates, controller.evidence()
    index = decided.step
    step = plan.steps[index] if index is not None else None
    table = Table(title=f"shim rollout {controller.task}", show_header=True)
    table.add_column("what")
    table.add_column("now", justify="right")
    table.add_column("needs")
    if step is not None:
        table.add_row(
            "step",
            f"{index} of {len(plan.steps) - 1}",
            f"serve {step.serve} %, shadow {step.shadow} %",
        )
        left = max(0.0, step.soak - evidence["seconds"])
        table.add_row("soaked", f"{evidence['seconds']:.0f} s", f"{step.soak:.0f} s")
        table.add_row("time left", f"{left:.0f} s", "")
        table.add_row("pairs", f"{evidence['pairs']:,}", f"{step.min_pairs:,}")
    lines = (
        ("error increase (upper)", "error_increase", 1, gates.max_error_increase, False),
        ("mismatch rate (upper)", "mismatch_rate", 1, gates.max_mismatch, False),
        (
            "typical latency ratio (upper)",
            "log_latency_ratio",
            1,
            gates.max_latency_ratio_p50,
            True,
        ),
        ("quality (lower)", "quality", 0, gates.min_quality, False),
    )
    for name, key, side, line, logged in lines:
        found = evidence.get(key)
        if found is None or line is None:
            continue
        bound = found["bounds"][side]
        if bound is None:
            continue
        if key == "quality" and found.get("relative"):
            name = "quality, relative to legacy's noise (lower)"
        table.add_row(name, f"{math.exp(bound) if logged else bound:.4f}", f"{line:.4f}")
    p95 = evidence.get("p95_ms")
    if p95 is not None:  # "-" until there are pairs enough to bound a p95
        low, high = p95["candidate"][0], p95["legacy"][1]
        now = "-" if low is None or high is None else f"{low / high:.2f}"
        over = f"rolls back over {gates.max_latency_ratio_p95:.2f}"
        table.add_row("p95 latency ratio (lower)", now, over)
    cost = evidence.get("cost_ratio")
    if cost is not None and gates.max_cost_ratio is not None:
        over = f"rolls back over {gates.max_cost_ratio:.2f}"
        table.add_row("cost per call ratio", f"{cost['ratio']:.2f}", over)
    table.add_row("decision", decided.action, "; ".join(decided.reasons)[:120])
    return table
