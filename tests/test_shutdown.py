"""Shutdown: close drains within its deadline and counts what it could not finish; the
interpreter never hangs at exit."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from shim import Limits, Shim, TaskRequest, Timeouts
from shim.core import lifecycle
from shim.flags import FileFlags
from shim.sim import Profile, Simulator

from .shimkit import dropped, make_shim, records, wait_for


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


SLOW_COMPARATOR = """
import time
from shim.comparators import TextOutput

class SlowText(TextOutput):
    '''2 ms per pair: a costly content scorer (asleep, so the workers keep their pace).'''

    def compare(self, legacy, candidate):
        time.sleep(0.002)
        return super().compare(legacy, candidate)
"""


def test_close_counts_the_comparisons_the_recorder_could_not_make_in_time(
    sim: Simulator, tmp_path: Path
) -> None:
    """Pairs handed to the recorder faster than its comparator takes them: close keeps
    its deadline, and every call is written or counted (``shutdown``), with nothing
    left unwritten or lost behind the counts."""
    namespace: dict[str, object] = {}
    exec(SLOW_COMPARATOR, namespace)
    s = make_shim(
        sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n", limits=Limits(queue_size=5000)
    )
    wrapped = s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda i: TaskRequest(prompt=str(i)),
        output=namespace["SlowText"](),  # type: ignore[operator]
    )(lambda i: "soup")
    for i in range(600):
        wrapped(i)
    wait_for(lambda: s.stats()["pending"] < 500, timeout=10)  # the workers are done
    started = time.monotonic()
    s.close(timeout=0.3)
    assert time.monotonic() - started < 1.5
    stats = s.stats()
    assert (stats["records_unwritten"], stats["records_lost"]) == (0, 0)
    log = tmp_path / "log.jsonl"
    written, counted = len(records(log)), dropped(log)
    assert written + counted == 600, f"each call written or counted: {written} + {counted}"
    assert counted == dropped(log, "shutdown") > 0
    time.sleep(0.3)
    assert len(records(log)) == written, "nothing is written once close has returned"


EXIT_SLOW_SCRIPT = """
import sys, time
from shim import Limits, Shim, TaskRequest, flags
from shim.comparators import TextOutput

class SlowText(TextOutput):
    def compare(self, legacy, candidate):
        time.sleep(float(sys.argv[5]))
        return super().compare(legacy, candidate)

shims, n = int(sys.argv[4]), int(sys.argv[6])
wrapped = []
for k in range(shims):
    s = Shim(sys.argv[1], flags=flags.FileFlags(sys.argv[2]), log_path=f"{sys.argv[3]}.{k}",
             limits=Limits(queue_size=5000))
    wrapped.append(s.shadow(product="kiwi", task="meal_plan", output=SlowText(),
                            request=lambda i: TaskRequest(prompt=str(i)))(lambda i: "soup"))
for i in range(n):
    for w in wrapped:
        w(i)
time.sleep(0.5)  # the task path answered them all: the comparing is left
"""


@pytest.mark.parametrize(
    ("shims", "seconds", "calls"),
    [(1, 0.002, 2000), (3, 0.05, 300), (1, 0.45, 50)],
    ids=["many-quick-pairs", "three-shims", "a-comparator-slower-than-the-margin"],
)
def test_at_exit_every_comparison_handed_to_a_recorder_is_written_or_counted(
    sim: Simulator, tmp_path: Path, shims: int, seconds: float, calls: int
) -> None:
    """More comparing left than the exit's deadline allows, for one Shim or several
    closed together, with quick or slow comparators: none vanish, and the
    interpreter exits within the deadline."""
    flag_file = tmp_path / "flags.yaml"
    flag_file.write_text("kiwi.meal_plan: {shadow: 100}\n")
    log = tmp_path / "log.jsonl"
    argv = [sim.url, str(flag_file), str(log), str(shims), str(seconds), str(calls)]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SLOW_SCRIPT, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 15
    for k in range(shims):
        shim_log = Path(f"{log}.{k}")
        written, counted = len(records(shim_log)), dropped(shim_log)
        assert written + counted == calls, (k, written, counted, done.stderr)
        assert counted == dropped(shim_log, "shutdown") > 0


def test_a_shim_held_only_by_its_wrapped_functions_is_closed_at_exit_and_collected_after(
    tmp_path: Path,
) -> None:
    """The wrapped function keeps its Shim open (closed at exit, above: three-shims
    holds none of its Shims); once the function is gone too, so is the Shim."""
    flag_file = tmp_path / "flags.yaml"
    flag_file.write_text("kiwi.meal_plan: {shadow: 100}\n")
    s = Shim("http://127.0.0.1:9", flags=FileFlags(flag_file), log_path=tmp_path / "x.jsonl")
    wrapped = s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest())(lambda: "x")
    closer = weakref.ref(s._closer)
    del s
    gc.collect()
    assert closer() is not None and closer() in lifecycle._open
    del wrapped
    gc.collect()
    assert closer() is None
