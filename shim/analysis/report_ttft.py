"""Streams in ``shim report``: each path's time to first chunk (``ttft_ms`` in the
records of streaming call sites), their ratio with a paired bootstrap interval, and
the policy's ``ttft_p95_ratio`` gate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shim.analysis.policy import Gates

__all__ = ["MIN_TTFT_PAIRS", "ttft_gate", "ttft_text"]

#: Stream pairs (both paths streamed and answered) the gate needs to decide.
MIN_TTFT_PAIRS = 30


def ttft_gate(ttft: dict[str, Any] | None, gates: Gates) -> tuple[str, str] | None:
    """``("pass" | "hold" | "rollback", line)`` for the time to first chunk's p95
    ratio against ``ttft_p95_ratio``; None for a task without streams (or no limit).
    Rolled back when even the interval's lower bound is over the limit."""
    limit = gates.ttft_p95_ratio
    if not ttft or limit is None:
        return None
    found = ttft["ratio"].get("p95")
    if ttft["n"] < MIN_TTFT_PAIRS or not found:
        return "hold", (
            f"time to first chunk: {ttft['n']:,} stream pairs; {MIN_TTFT_PAIRS} are needed to "
            "judge its p95 ratio"
        )
    line = (
        f"time to first chunk p95 ratio {found['ratio']:.2f} ({found['low']:.2f} to "
        f"{found['high']:.2f}) vs {limit:.2f} allowed"
    )
    if found["low"] > limit:
        return "rollback", line + ": the task path starts its streams later, beyond the interval"
    return ("pass" if found["ratio"] <= limit else "hold"), line


def ttft_text(task: dict[str, Any]) -> str:
    """``p50 120 / 180 ms, p95 200 / 390 ms (legacy / task path); p95 ratio 1.95 (1.80 to
    2.10) over 400 streams``; ``-`` for a task without streams."""
    found = task.get("ttft")
    if not found:
        return "-"
    legacy, candidate = found["legacy_ms"], found["candidate_ms"]
    text = (
        ", ".join(f"{q} {_ms(legacy[q])} / {_ms(candidate[q])} ms" for q in ("p50", "p95"))
        + " (legacy / task path)"
    )
    ratio = found["ratio"].get("p95")
    if ratio:
        text += f"; p95 ratio {ratio['ratio']:.2f} ({ratio['low']:.2f} to {ratio['high']:.2f})"
    return text + f" over {found['n']:,} streams"


def _ms(value: float) -> str:
    """Whole milliseconds, or two significant digits under 10 ms: a stream made in
    process starts in microseconds, which "0" would hide beside its ratio."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
