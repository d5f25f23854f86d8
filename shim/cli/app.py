"""The ``shim`` command line. Exit codes: 0 ok, 1 check or gate failure, 2 usage or input."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from shim.base.errors import ConfigError
from shim.base.orch import OrchConfig, default_config_path

app = typer.Typer(
    name="shim",
    help="Move LLM call sites onto cf-orch's task endpoint: shadow, compare, ramp, roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output has no terminal width to fit; 160 columns keep table rows on one line.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

AssignmentsOpt = Annotated[
    Path | None,
    typer.Option(
        "--assignments",
        help="assignments.yaml [env SHIM_ASSIGNMENTS; default: kiwi's]",
        dir_okay=False,
    ),
]
RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="model_registry.yaml [env SHIM_REGISTRY; default: kiwi's]",
        dir_okay=False,
    ),
]


def main() -> None:
    """Entry point of the ``shim`` console script."""
    app()


def _fail(error: ConfigError, code: int = 2) -> NoReturn:
    for problem in error.problems:
        err.print(str(problem), markup=False)
    raise typer.Exit(code)


def _config_paths(assignments: Path | None, registry: Path | None) -> tuple[Path, Path]:
    def pick(given: Path | None, env: str, name: str) -> Path:
        if given is not None:
            return given
        if os.environ.get(env):
            return Path(os.environ[env])
        return default_config_path(name)

    return (
        pick(assignments, "SHIM_ASSIGNMENTS", "assignments.yaml"),
        pick(registry, "SHIM_REGISTRY", "model_registry.yaml"),
    )


def _load_config(assignments: Path | None, registry: Path | None) -> OrchConfig:
    try:
        return OrchConfig(*_config_paths(assignments, registry))
    except ConfigError as exc:
        _fail(exc)


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.", min=0, max=65535)] = 8700,
    assignments: AssignmentsOpt = None,
    registry: RegistryOpt = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="Profile YAML: seed, knobs for defaults / legacy / tasks, nodes.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for repeatable runs.")] = None,
    require_key: Annotated[
        str | None,
        typer.Option(
            "--require-key", help="Answer 401 unless requests carry 'Bearer KEY'.", metavar="KEY"
        ),
    ] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Median latency.")] = None,
    latency_p99_ms: Annotated[float | None, typer.Option(help="99th percentile.")] = None,
    cold_start_ms: Annotated[
        float | None, typer.Option(help="Extra delay on a model's first request per node.")
    ] = None,
    error_rate: Annotated[float | None, typer.Option(help="Share of requests that fail.")] = None,
    error_status: Annotated[int | None, typer.Option(help="Their HTTP status.")] = None,
    hang_rate: Annotated[
        float | None, typer.Option(help="Share of requests that hang (see hang_s).")
    ] = None,
    malformed_rate: Annotated[
        float | None, typer.Option(help="Share of replies cut off mid-JSON.")
    ] = None,
    drift_rate: Annotated[
        float | None, typer.Option(help="Share of task-path outputs whose structure drifts.")
    ] = None,
    drift_kinds: Annotated[
        str | None,
        typer.Option(help="Comma list of fence, prose, missing_key, renamed_key, type_change."),
    ] = None,
    knob: Annotated[
        list[str] | None,
        typer.Option(
            help="[SCOPE:]NAME=VALUE, SCOPE a task or 'legacy'; repeatable. "
            "Example: --knob kiwi.ocr:drift_rate=0.3",
            metavar="[SCOPE:]NAME=VALUE",
        ),
    ] = None,
    omit_service: Annotated[
        bool,
        typer.Option(
            "--omit-service",
            help="Leave 'service' out of task allocations, as coordinators before cf-orch#63.",
        ),
    ] = False,
    allocate_only: Annotated[
        bool,
        typer.Option(
            "--allocate-only",
            help="Answer every task request with an allocation, as the real coordinator does "
            "(no output answers, this project's extension).",
        ),
    ] = False,
    task_ttl_s: Annotated[
        float | None,
        typer.Option(help="Lifetime of a task-path allocation nobody releases [120]."),
    ] = None,
    max_streams: Annotated[
        int | None,
        typer.Option(help="Recipe streams held at once before /proxy/authorize answers 429 [4]."),
    ] = None,
    product_key: Annotated[
        str | None,
        typer.Option(
            "--product-key",
            help="The only product_key /proxy/authorize accepts (default: any non-empty one).",
            metavar="KEY",
        ),
    ] = None,
) -> None:
    """Run the cf-orch simulator (first line: 'listening on http://HOST:PORT')."""
    from shim.sim import Profile, parse_knob, serve

    config = _load_config(assignments, registry)
    try:
        prof = Profile.load(profile) if profile else Profile()
        if seed is not None:
            prof = prof.model_copy(update={"seed": seed})
        flags: dict[str, Any] = {
            "latency_ms": latency_ms,
            "latency_p99_ms": latency_p99_ms,
            "cold_start_ms": cold_start_ms,
            "error_rate": error_rate,
            "error_status": error_status,
            "hang_rate": hang_rate,
            "malformed_rate": malformed_rate,
            "drift_rate": drift_rate,
            "drift_kinds": drift_kinds.split(",") if drift_kinds else None,
        }
        for name, value in flags.items():
            if value is not None:
                prof = prof.with_knob("defaults", name, value)
        for spec in knob or []:
            prof = prof.with_knob(*parse_knob(spec))
        options: dict[str, Any] = {"task_ttl_s": task_ttl_s, "max_streams": max_streams}
        if omit_service:
            options["omit_service"] = True
        if allocate_only:
            options["allocate_only"] = True
        prof = prof.with_options(**{k: v for k, v in options.items() if v is not None})
    except ConfigError as exc:
        _fail(exc)
    for problem in config.problems():
        err.print(f"warning: {problem}", markup=False)

    def announce(line: str) -> None:
        print(line, flush=True)

    try:
        serve(
            config,
            prof,
            host=host,
            port=port,
            require_key=require_key,
            product_key=product_key,
            announce=announce,
        )
    except OSError as exc:
        err.print(f"cannot listen on {host}:{port}: {exc.strerror or exc}", markup=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


@app.command()
def check(
    assignments: AssignmentsOpt = None,
    registry: RegistryOpt = None,
    flags: Annotated[
        Path | None,
        typer.Option(
            "--flags",
            help="flags.yaml to check too [env SHIM_FLAGS when it is a path]",
            dir_okay=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Validate assignments, registry and flags; 'file:line: message' for each problem."""
    from shim.ops.check import run_check

    a_path, r_path = _config_paths(assignments, registry)
    if flags is None and os.environ.get("SHIM_FLAGS", "unleash") != "unleash":
        flags = Path(os.environ["SHIM_FLAGS"])
    for given in (a_path, r_path, flags):
        if given is not None and not given.is_file():
            err.print(f"{given}: no such file", markup=False)
            raise typer.Exit(2)
    report = run_check(a_path, r_path, flags)
    if as_json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "files": report.files,
                    "problems": [
                        {"path": p.path, "line": p.line, "field": p.field, "message": p.message}
                        for p in report.problems
                    ],
                    "tasks": report.rows(),
                },
                indent=2,
            )
        )
        raise typer.Exit(0 if report.ok else 1)
    if not report.ok:
        for problem in report.problems:
            out.print(str(problem), markup=False, soft_wrap=True)
        err.print(f"{len(report.problems)} problem(s) in {', '.join(report.files)}", markup=False)
        raise typer.Exit(1)
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
        table.add_row(*cells)
    out.print(table)
    assert report.config is not None
    out.print(
        f"ok: {len(report.config.tasks)} tasks, {len(report.config.registry.models)} "
        f"models ({', '.join(report.files)})",
        markup=False,
        soft_wrap=True,
    )


FlagsOpt = Annotated[
    Path | None,
    typer.Option("--flags", help="flags.yaml [env SHIM_FLAGS when it is a path]", dir_okay=False),
]


LogOpt = Annotated[
    Path | None,
    typer.Option(
        "--log",
        help="Comparison log: breaker states are read from it, changes recorded in it "
        "[env SHIM_LOG]",
        dir_okay=False,
    ),
]


def _log_path(given: Path | None) -> Path | None:
    if given is not None:
        return given
    env = os.environ.get("SHIM_LOG", "")
    return Path(env) if env and env != "-" else None


def _store(flags: Path | None) -> Any:
    from shim.ops.promote import OpsError, open_store

    try:
        return open_store(flags)
    except OpsError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2) from None


@app.command()
def status(
    flags: FlagsOpt = None,
    log: LogOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
) -> None:
    """Stage, serve %, shadow % and breaker state of every task."""
    from shim.ops.status import breaker_states, status_rows

    store = _store(flags)
    state = _guard(store.read)
    log = _log_path(log)
    breakers = breaker_states(log) if log is not None and log.is_file() else None
    rows = status_rows(state, breakers)
    if as_json:
        print(json.dumps({"flags": store.description, "kill": state.kill, "tasks": rows}, indent=2))
        return
    title = f"flags: {store.description}"
    if state.kill:
        title += "  [bold red]shim.kill is ON: every task is legacy[/]"
    table = Table(title=title, title_justify="left")
    for column in ("task", "stage", "serve %", "shadow %", "stickiness", "budget", "breaker"):
        table.add_column(column, justify="right" if "%" in column else "left", no_wrap=True)
    colours = {"live": "green", "canary": "yellow", "shadow": "cyan", "off": "dim"}
    for row in rows:
        breaker = row["breaker"] or "unknown (no log)"
        table.add_row(
            row["task"],
            f"[{colours[row['stage']]}]{row['stage']}[/]",
            str(row["serve"]),
            str(row["shadow"]),
            row["stickiness"],
            _budget_text(row),
            f"[red]{breaker}[/]" if breaker in ("open", "half_open") else breaker,
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


def _guard(action: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a flag operation; its errors become a message and exit 2."""
    from shim.base.errors import ShimError

    try:
        return action(*args, **kwargs)
    except ShimError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2) from None


def _show(verb: str, done: str, changes: list[Any], dry_run: bool) -> None:
    for c in changes:
        out.print(
            f"{'would ' + verb if dry_run else done} {c.task}: "
            f"{c.before.stage} (serve {c.before.serve} %, shadow {c.before.shadow} %) "
            f"-> {c.after.stage} (serve {c.after.serve} %, shadow {c.after.shadow} %)",
            markup=False,
        )


def _evidence(
    task: str, logs: list[str] | None, policy: Path | None, force: bool
) -> dict[str, Any]:
    """The report's verdict on ``task``; exits 1 unless it is PROMOTE or ``force``."""
    from shim.analysis.policy import Policy
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
    try:
        gates = Policy.load(policy) if policy else Policy()
    except ConfigError as exc:
        _fail(exc)
    report = _guard(build_report, logs, policy=gates, task=task)
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


def _record(
    event: str,
    changes: list[Any],
    store: Any,
    log: Path | None,
    extra: dict[str, Any] | None = None,
) -> None:
    from shim.ops.promote import record

    path = _log_path(log)
    record(event, changes, store, path, extra=extra)
    if path is None:
        err.print(f"note: no --log or SHIM_LOG, so no {event} record was written", markup=False)


@app.command()
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
    policy: Annotated[
        Path | None,
        typer.Option(
            help="policy.yaml for the verdict [default: built-in]", exists=True, dir_okay=False
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote without passing evidence (recorded as forced).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the change only.")] = False,
) -> None:
    """Move TASK to the next rung: shadow 100 %, then serve 1, 5, 25, 50, 100 %.

    Shadowing needs no evidence; serving more does: the verdict of `shim report` over
    --evidence must be PROMOTE, or --force (which the shim.promote record says).
    """
    from shim.ops.promote import apply, check_request, known_tasks, plan_promote

    try:
        rungs = [int(r) for r in ramp.split(",")]
        if not rungs or any(not 0 < r <= 100 for r in rungs) or rungs != sorted(rungs):
            raise ValueError
    except ValueError:
        err.print(f"--ramp must be rising percentages from 1 to 100, got {ramp!r}", markup=False)
        raise typer.Exit(2) from None
    _guard(check_request, [task], serve, shadow)
    store = _store(flags)
    state = _guard(store.read)
    change = _guard(
        plan_promote, state, task, known_tasks(assignments), serve=serve, shadow=shadow, ramp=rungs
    )
    if change is None:
        out.print(f"{task} is already live (serve 100 %); nothing to promote", markup=False)
        raise typer.Exit(1)
    extra: dict[str, Any] = {}
    if change.after.serve > change.before.serve:
        extra = _evidence(task, evidence, policy, force)
    _show("promote", "promoted", [change], dry_run)
    if not dry_run:
        _guard(apply, store, [change])
        _record("shim.promote", [change], store, log, extra)


@app.command()
def rollback(
    task: Annotated[str | None, typer.Argument(help="product.task; or --all")] = None,
    all_tasks: Annotated[bool, typer.Option("--all", help="Every task that serves.")] = False,
    flags: FlagsOpt = None,
    log: LogOpt = None,
    assignments: AssignmentsOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the change only.")] = False,
) -> None:
    """Serve 0 % at once (shadow kept), for TASK or --all."""
    from shim.ops.promote import apply, check_request, known_tasks, plan_rollback

    if (task is None) == (not all_tasks):
        err.print("name one task or pass --all", markup=False)
        raise typer.Exit(2)
    if task is not None:
        _guard(check_request, [task])
    store = _store(flags)
    state = _guard(store.read)
    tasks = [task] if task else [t for t, f in state.tasks.items() if f.serve]
    changes = _guard(plan_rollback, state, tasks, known_tasks(assignments))
    if not changes:
        out.print("nothing serves from the task path; nothing to roll back", markup=False)
        return
    _show("roll back", "rolled back", changes, dry_run)
    if not dry_run:
        _guard(apply, store, changes)
        _record("shim.rollback", changes, store, log)


@app.command()
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
    policy: Annotated[
        Path | None,
        typer.Option(
            help="policy.yaml with the promotion gates [default: built-in]",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Per-task statistics and a verdict (PROMOTE, HOLD, ROLLBACK); exit 1 on ROLLBACK."""
    from shim.analysis.policy import Policy
    from shim.analysis.report import build_report
    from shim.analysis.report_format import markdown, table

    if fmt not in ("table", "json", "markdown", "html"):
        err.print(f"--format must be table, json, markdown or html, got {fmt!r}", markup=False)
        raise typer.Exit(2)
    if fmt == "html" and out_file is None:
        err.print("--format html needs --out FILE", markup=False)
        raise typer.Exit(2)
    try:
        gates = Policy.load(policy) if policy else Policy()
    except ConfigError as exc:
        _fail(exc)
    result = _guard(
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


@app.command()
def watch(
    log: Annotated[Path, typer.Argument(help="The comparison log to follow.", dir_okay=False)],
    auto_rollback: Annotated[
        bool, typer.Option("--auto-rollback", help="Roll a breaching task back (serve 0 %).")
    ] = False,
    flags: FlagsOpt = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="policy.yaml (rollback lines, watch_window, watch_step, watch_consecutive, "
            "watch_cumulative) [default: built-in]",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Read the log from its start, not its end.")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="Stop at the end of the log instead of following it.")
    ] = False,
) -> None:
    """Evaluate rolling windows of LOG as it grows; with --auto-rollback, act on a breach."""
    from shim.analysis.policy import Policy
    from shim.flags._store import Setting
    from shim.ops.promote import Change, apply, read_state, record
    from shim.ops.watch import Watch, follow

    try:
        gates = Policy.load(policy) if policy else Policy()
    except ConfigError as exc:
        _fail(exc)
    store = _store(flags) if auto_rollback else None
    watcher = Watch(gates)
    out.print(f"watching {log}" + (" (auto-rollback on)" if auto_rollback else ""), markup=False)
    breaches = 0
    try:
        for row in follow(log, from_start=from_start, once=once):
            breach = watcher.feed(row)
            if breach is None:
                continue
            breaches += 1
            err.print(f"BREACH {breach.describe()}", markup=False)
            if store is None:
                continue
            state = _guard(read_state, store)
            current = state.tasks.get(breach.task)
            if current is None or current.serve == 0:
                err.print(f"{breach.task} already serves 0 %; nothing to roll back", markup=False)
                continue
            change = Change(
                breach.task, Setting(current.serve, current.shadow), Setting(0, current.shadow)
            )
            _guard(apply, store, [change])
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
                f"rolled back {breach.task}: serve {current.serve} % -> 0 % "
                f"({'; '.join(breach.reasons)})",
                markup=False,
            )
    except KeyboardInterrupt:
        pass
    if once and breaches:
        raise typer.Exit(1)


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed for the simulator and the traffic.")] = 7,
    calls: Annotated[
        int, typer.Option(help="Calls across kiwi's tasks in the shadow act.", min=100)
    ] = 2000,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where flags.yaml and the log go.", file_okay=False)
    ] = Path("shim-demo"),
) -> None:
    """A whole rollout on the simulator: shadow, report, ramp to live, rollback drill."""
    from shim.demo.run import run_demo

    run_demo(seed=seed, calls=calls, out=out_dir, console=out)


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
