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

from ._errors import ConfigError
from ._orch import OrchConfig, default_config_path

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
) -> None:
    """Run the cf-orch simulator (first line: 'listening on http://HOST:PORT')."""
    from .sim import Profile, parse_knob, serve

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
    except ConfigError as exc:
        _fail(exc)
    for problem in config.problems():
        err.print(f"warning: {problem}", markup=False)

    def announce(line: str) -> None:
        print(line, flush=True)

    try:
        serve(config, prof, host=host, port=port, require_key=require_key, announce=announce)
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
    from ._check import run_check

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


def _flags_path(given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get("SHIM_FLAGS", "")
    if env and env != "unleash":
        return Path(env)
    err.print("no flags file: pass --flags PATH or set SHIM_FLAGS", markup=False)
    raise typer.Exit(2)


@app.command()
def status(
    flags: FlagsOpt = None,
    log: Annotated[
        Path | None,
        typer.Option(
            "--log",
            help="Comparison log to read breaker states from [env SHIM_LOG]",
            dir_okay=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
) -> None:
    """Stage, serve %, shadow % and breaker state of every task."""
    from flags import load_flags_file

    from ._status import breaker_states, status_rows

    path = _flags_path(flags)
    try:
        state = load_flags_file(path)
    except ConfigError as exc:
        _fail(exc)
    if log is None and os.environ.get("SHIM_LOG", "-") != "-":
        log = Path(os.environ["SHIM_LOG"])
    breakers = breaker_states(log) if log is not None and log.is_file() else None
    rows = status_rows(state, breakers)
    if as_json:
        print(json.dumps({"flags": str(path), "kill": state.kill, "tasks": rows}, indent=2))
        return
    table = Table(
        title=f"flags: {path}" + ("  [bold red]shim.kill is ON[/]" if state.kill else ""),
        title_justify="left",
    )
    for column in ("task", "stage", "serve %", "shadow %", "stickiness", "breaker"):
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
            f"[red]{breaker}[/]" if breaker in ("open", "half_open") else breaker,
        )
    out.print(table)


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed for the simulator and the traffic.")] = 7,
    calls: Annotated[int, typer.Option(help="Calls to make across kiwi's tasks.", min=1)] = 1000,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where flags.yaml and the log go.", file_okay=False)
    ] = Path("shim-demo"),
) -> None:
    """Shadow kiwi's call sites on the simulator and summarise the comparison log."""
    from ._demo import run_demo

    run_demo(seed=seed, calls=calls, out=out_dir, console=out)


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
