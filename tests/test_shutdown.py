"""Shutdown: close drains within its deadline and counts what it could not finish; the
interpreter never hangs at exit."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from shim import Limits, TaskRequest, Timeouts
from shim.sim import Profile, Simulator

from .shimkit import dropped, make_shim, records


def test_close_keeps_its_deadline_and_counts_the_unfinished(sim: Simulator, tmp_path: Path) -> None:
    sim.set_profile(Profile(seed=1, defaults={"latency_ms": 3000, "latency_p99_ms": 3000}))
    s = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {shadow: 100}\n",
        limits=Limits(workers=2),
        timeouts=Timeouts(shadow=10),
    )
    wrapped = s.shadow(
        product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=str(i))
    )(lambda i: i)
    for i in range(50):
        wrapped(i)
    started = time.monotonic()
    s.close(timeout=0.5)
    assert time.monotonic() - started < 3.0
    log = tmp_path / "log.jsonl"
    assert len(records(log)) + dropped(log, "shutdown") == 50, "each call written or counted"
    assert dropped(log, "shutdown") > 0


EXIT_SCRIPT = """
import sys
from shim import Shim, TaskRequest, Timeouts, flags
s = Shim(sys.argv[1], flags=flags.FileFlags(sys.argv[2]), log_path=sys.argv[3],
         timeouts=Timeouts(shadow=60))
wrapped = s.shadow(product="kiwi", task="meal_plan",
                   request=lambda: TaskRequest())(lambda: "legacy")
print(wrapped())
"""


def test_the_interpreter_exits_promptly_with_work_in_flight(sim: Simulator, tmp_path: Path) -> None:
    sim.set_profile(Profile(seed=1, defaults={"hang_rate": 1.0}))
    flag_file = tmp_path / "flags.yaml"
    flag_file.write_text("kiwi.meal_plan: {shadow: 100}\n")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, sim.url, str(flag_file), str(tmp_path / "log.jsonl")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "legacy"
    assert time.monotonic() - started < 10, "exit waits at most the close deadline"
    assert dropped(tmp_path / "log.jsonl", "shutdown") == 1, "the hanging comparison is counted"


def test_an_event_loop_that_ends_without_aclose_loses_nothing_silently(
    sim: Simulator, tmp_path: Path
) -> None:
    """asyncio.run per request, no aclose. Shadow comparisons run on the worker threads
    and outlive the loop; a served call's background legacy run, which lives on the
    loop, is finished before the loop ends (within the shadow timeout), so nothing is
    lost. The loop's HTTP client is closed at its end (no unclosed-socket warning)."""
    import asyncio
    import gc
    import warnings

    sim.set_profile(Profile(seed=1, defaults={"latency_ms": 200, "latency_p99_ms": 200}))
    s = make_shim(
        sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\nkiwi.ocr: {serve: 100, shadow: 100}\n"
    )

    async def plan(i: int) -> int:
        return i

    async def scan(i: int) -> int:
        await asyncio.sleep(0.2)  # legacy, re-run in the background to compare
        return i

    shadowed = s.shadow(
        product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=str(i))
    )(plan)
    served = s.shadow(
        product="kiwi",
        task="ocr",
        request=lambda i: TaskRequest(prompt=str(i)),
        response=lambda result: "task",
    )(scan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(3):
            assert asyncio.run(shadowed(i)) == i  # each loop ends, its comparison running
            assert asyncio.run(served(i)) == "task"
        gc.collect()
    s.close(timeout=10)
    log = tmp_path / "log.jsonl"
    assert len(records(log)) == 6, "shadow comparisons outlive their loops; served ones finish"
    assert dropped(log) == 0
