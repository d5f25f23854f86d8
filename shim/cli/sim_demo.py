"""``shim sim`` (the cf-orch simulator) and ``shim demo`` (a whole rollout on it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import require
from .options import AssignmentsOpt, RegistryOpt, emit, guard, load_config, out, say

if TYPE_CHECKING:
    from shim.sim import Profile

__all__ = ["demo", "sim"]


# Help of `shim sim`'s own options, one table so the signature below stays one line each.
_HELP = {
    "host": "Address to bind.",
    "port": "Port; 0 picks a free one.",
    "profile": "Profile YAML: seed, knobs for defaults / legacy / tasks, nodes.",
    "seed": "Seed for repeatable runs.",
    "require_key": "Answer 401 unless requests carry 'Bearer KEY'.",
    "latency_ms": "Median latency.",
    "latency_p99_ms": "99th percentile.",
    "cold_start_ms": "Extra delay on a model's first request per node.",
    "error_rate": "Share of requests that fail.",
    "error_status": "Their HTTP status.",
    "hang_rate": "Share of requests that hang (see hang_s).",
    "malformed_rate": "Share of replies cut off mid-JSON.",
    "drift_rate": "Share of task-path outputs whose structure drifts.",
    "drift_kinds": "Comma list of fence, prose, missing_key, renamed_key, type_change "
    "(structural), values (content only).",
    "knob": "[SCOPE:]NAME=VALUE, SCOPE a task or 'legacy'; repeatable. "
    "Example: --knob kiwi.ocr:drift_rate=0.3; streams: ttft_ms, chunk_interval_ms",
    "omit_service": "Leave 'service' out of task allocations, as coordinators before cf-orch#63.",
    "allocate_only": "Answer every task request with an allocation, as the real coordinator "
    "does (no output answers, this project's extension).",
    "task_ttl_s": "Lifetime of a task-path allocation nobody releases [120].",
    "max_streams": "Recipe streams held at once before /proxy/authorize answers 429 [4].",
    "judge_bias": "Share of a judge task's verdicts that name the first answer whatever it "
    "reads (a judge leaning to a position) [0].",
    "product_key": "The only product_key /proxy/authorize accepts (default: any non-empty one).",
}
_KNOB = "[SCOPE:]NAME=VALUE"


def sim(
    host: Annotated[str, typer.Option(help=_HELP["host"])] = "127.0.0.1",
    port: Annotated[int, typer.Option(help=_HELP["port"], min=0, max=65535)] = 8700,
    assignments: AssignmentsOpt = None,
    registry: RegistryOpt = None,
    profile: Annotated[
        Path | None, typer.Option(help=_HELP["profile"], exists=True, dir_okay=False)
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_HELP["seed"])] = None,
    require_key: Annotated[
        str | None, typer.Option(help=_HELP["require_key"], metavar="KEY")
    ] = None,
    latency_ms: Annotated[float | None, typer.Option(help=_HELP["latency_ms"])] = None,
    latency_p99_ms: Annotated[float | None, typer.Option(help=_HELP["latency_p99_ms"])] = None,
    cold_start_ms: Annotated[float | None, typer.Option(help=_HELP["cold_start_ms"])] = None,
    error_rate: Annotated[float | None, typer.Option(help=_HELP["error_rate"])] = None,
    error_status: Annotated[int | None, typer.Option(help=_HELP["error_status"])] = None,
    hang_rate: Annotated[float | None, typer.Option(help=_HELP["hang_rate"])] = None,
    malformed_rate: Annotated[float | None, typer.Option(help=_HELP["malformed_rate"])] = None,
    drift_rate: Annotated[float | None, typer.Option(help=_HELP["drift_rate"])] = None,
    drift_kinds: Annotated[str | None, typer.Option(help=_HELP["drift_kinds"])] = None,
    knob: Annotated[list[str] | None, typer.Option(help=_HELP["knob"], metavar=_KNOB)] = None,
    omit_service: Annotated[
        bool, typer.Option("--omit-service", help=_HELP["omit_service"])
    ] = False,
    allocate_only: Annotated[
        bool, typer.Option("--allocate-only", help=_HELP["allocate_only"])
    ] = False,
    task_ttl_s: Annotated[float | None, typer.Option(help=_HELP["task_ttl_s"])] = None,
    max_streams: Annotated[int | None, typer.Option(help=_HELP["max_streams"])] = None,
    judge_bias: Annotated[
        float | None, typer.Option(help=_HELP["judge_bias"], min=0.0, max=1.0)
    ] = None,
    product_key: Annotated[
        str | None, typer.Option(help=_HELP["product_key"], metavar="KEY")
    ] = None,
) -> None:
    """Run the cf-orch simulator (first line: 'listening on http://HOST:PORT')."""
    require("sim", "shim sim")
    from shim.sim import serve

    config = load_config(assignments, registry)
    knobs: dict[str, Any] = {
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
    options: dict[str, Any] = {
        "task_ttl_s": task_ttl_s,
        "max_streams": max_streams,
        "omit_service": omit_service or None,
        "allocate_only": allocate_only or None,
        "judge_bias": judge_bias,
    }
    prof = guard(_profile, profile, seed, knobs, knob or [], options)
    for problem in config.problems():
        say(f"warning: {problem}", error=True)

    def announce(line: str) -> None:
        emit(line)

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
        say(f"cannot listen on {host}:{port}: {exc.strerror or exc}", error=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


def _profile(
    path: Path | None,
    seed: int | None,
    knobs: dict[str, Any],
    specs: list[str],
    options: dict[str, Any],
) -> Profile:
    """The simulator's profile: the file (or the defaults), then the command line's seed,
    default knobs, ``--knob`` specs and options, each only where given."""
    from shim.sim import Profile, parse_knob

    prof = Profile.load(path) if path else Profile()
    if seed is not None:
        prof = prof.model_copy(update={"seed": seed})
    for name, value in knobs.items():
        if value is not None:
            prof = prof.with_knob("defaults", name, value)
    for spec in specs:
        prof = prof.with_knob(*parse_knob(spec))
    return prof.with_options(**{k: v for k, v in options.items() if v is not None})


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
    require("sim", "shim demo")
    from shim.demo.run import run_demo

    run_demo(seed=seed, calls=calls, out=out_dir, console=out)
