"""One event loop per job (``asyncio.run(job())`` for each, as task queues and CLI
tools do): every compared call becomes a record without ``aflush``, the loop's end
waits for its background legacy runs within the shadow timeout, and what cannot be
kept is counted and said, never lost in silence."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from shim import Shim, TaskRequest, Timeouts
from shim.sim import Simulator

from .shimkit import dropped, make_shim, records


def _wrap(s: Shim, legacy_s: float = 0.02) -> Any:
    """An async call site whose legacy takes ``legacy_s`` seconds, so it is still
    running, in the background, when a served call's job returns."""

    async def plan(i: int) -> str:
        await asyncio.sleep(legacy_s)
        return f"legacy {i}"

    return s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda i: TaskRequest(prompt=f"plan {i}"),
        response=lambda result: "task",
    )(plan)


@pytest.mark.parametrize(
    "flags", ["{serve: 100, shadow: 100}", "{serve: 50, shadow: 100}", "{shadow: 100}"]
)
def test_one_loop_per_job_keeps_every_comparison_without_aflush(
    sim: Simulator, tmp_path: Path, flags: str
) -> None:
    """20 jobs, each ``asyncio.run(job())`` with no aflush, then ``s.close()``: 20
    comparison records, each legacy run finished (not cancelled), nothing dropped."""
    s = make_shim(sim.url, tmp_path, f"kiwi.meal_plan: {flags}\n")
    plan = _wrap(s)

    async def job(i: int) -> str:
        return str(await plan(i))

    for i in range(20):
        assert asyncio.run(job(i)) in ("task", f"legacy {i}")
    s.close()
    log = tmp_path / "log.jsonl"
    rows = records(log)
    assert len(rows) == 20, f"{len(rows)} records, {dropped(log)} dropped"
    assert dropped(log) == 0
    assert all(r["legacy"]["ok"] and r["candidate"]["ok"] for r in rows)
    if "serve: 100" in flags:
        assert {r["served_by"] for r in rows} == {"task"}
    if "serve" not in flags:
        assert {r["served_by"] for r in rows} == {"legacy"}


def test_the_loops_end_waits_only_as_long_as_the_background_run_needs(
    sim: Simulator, tmp_path: Path
) -> None:
    """The loop's end waits for its background legacy run and no longer: a job whose
    legacy takes 0.2 s ends in about that, not in the shadow timeout."""
    s = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 100, shadow: 100}\n",
        timeouts=Timeouts(shadow=10),
    )
    plan = _wrap(s, legacy_s=0.2)
    started = time.monotonic()
    assert asyncio.run(plan(1)) == "task"
    took = time.monotonic() - started
    s.close()
    assert 0.2 <= took < 2.0, took
    [row] = records(tmp_path / "log.jsonl")
    assert row["legacy"]["ok"] and row["legacy"]["latency_ms"] >= 200


def test_a_background_run_past_the_shadow_timeout_is_recorded_as_timed_out(
    sim: Simulator, tmp_path: Path
) -> None:
    """Legacy hangs in the background when the job ends: the loop's end waits no
    longer than the shadow timeout, and the record says legacy timed out (as it would
    on a loop that keeps running)."""
    s = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 100, shadow: 100}\n",
        timeouts=Timeouts(shadow=0.3),
    )
    plan = _wrap(s, legacy_s=30)
    started = time.monotonic()
    assert asyncio.run(plan(1)) == "task"
    assert time.monotonic() - started < 2.0, "the loop's end is bounded by the shadow timeout"
    s.close()
    log = tmp_path / "log.jsonl"
    [row] = records(log)
    assert row["legacy"]["ok"] is False
    assert row["legacy"]["error"].startswith("TimeoutError")
    assert dropped(log) == 0


def test_legacy_timeouts_of_its_own_still_fire_in_the_background(
    sim: Simulator, tmp_path: Path
) -> None:
    """Keeping a background run alive at the loop's end does not swallow the
    cancellations legacy makes for itself (its own ``asyncio.timeout``)."""
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100, shadow: 100}\n")

    async def plan(i: int) -> str:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            return "legacy gave up"
        return "legacy"

    wrapped = s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda i: TaskRequest(prompt=str(i)),
        response=lambda result: "task",
    )(plan)
    started = time.monotonic()
    for i in range(3):
        assert asyncio.run(wrapped(i)) == "task"
    assert time.monotonic() - started < 2.0
    s.close()
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 3
    assert all(r["legacy"]["ok"] for r in rows)


def test_a_long_lived_loop_still_cancels_on_aclose(sim: Simulator, tmp_path: Path) -> None:
    """aclose on a loop that keeps running cancels what is late, as before, and counts
    it (``shutdown``): the loop-end rule only applies when the loop itself ends."""
    s = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 100, shadow: 100}\n",
        timeouts=Timeouts(shadow=30),
    )
    plan = _wrap(s, legacy_s=30)

    async def main() -> None:
        assert await plan(1) == "task"
        started = time.monotonic()
        await s.aclose(timeout=0.2)
        assert time.monotonic() - started < 3.0

    asyncio.run(main())
    log = tmp_path / "log.jsonl"
    assert records(log) == []
    assert dropped(log, "shutdown") == 1


def test_forty_jobs_in_a_row_lose_nothing(sim: Simulator, tmp_path: Path) -> None:
    """The loop-end hand-over, 40 times in a row, with two served calls per job: every
    compared call is a record."""
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100, shadow: 100}\n")
    plan = _wrap(s, legacy_s=0.005)

    async def job(i: int) -> None:
        await asyncio.gather(plan(2 * i), plan(2 * i + 1))

    for i in range(40):
        asyncio.run(job(i))
    s.close()
    log = tmp_path / "log.jsonl"
    assert len(records(log)) == 80
    assert dropped(log) == 0


def test_what_the_loops_end_cannot_keep_is_counted_and_said(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Legacy runs part of its work in a task of its own, which the loop's end cancels
    with every other task: that comparison cannot be kept. It is counted as dropped,
    and one warning per loop names ``aflush``."""
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100, shadow: 100}\n")

    async def plan(i: int) -> str:
        inner = asyncio.create_task(asyncio.sleep(0.2))  # legacy's own task
        await inner
        return "legacy"

    wrapped = s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda i: TaskRequest(prompt=str(i)),
        response=lambda result: "task",
    )(plan)

    async def job() -> None:
        await asyncio.gather(wrapped(1), wrapped(2))

    with caplog.at_level(logging.WARNING, logger="shim"):
        asyncio.run(job())
        asyncio.run(job())
    s.close()
    log = tmp_path / "log.jsonl"
    assert records(log) == []
    assert dropped(log) == 4
    warned = [r.getMessage() for r in caplog.records if "aflush" in r.getMessage()]
    assert len(warned) == 2, warned  # once per loop, not per comparison


def test_noise_runs_of_an_ended_loop_fail_fast_and_are_counted(
    sim: Simulator, tmp_path: Path
) -> None:
    """Noise sampling runs legacy again on the caller's loop; once that loop has ended
    (one loop per job) it cannot: the comparison is still written, the missed noise
    run is counted (``noise``), no worker waits out the shadow timeout, and no
    coroutine is left never awaited."""
    import gc

    s = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {shadow: 100}\n",
        noise_sample=1.0,
        timeouts=Timeouts(shadow=20),
    )

    async def plan(i: int) -> str:
        return f"legacy {i}"

    wrapped = s.shadow(
        product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=str(i))
    )(plan)
    for i in range(5):
        assert asyncio.run(wrapped(i)) == f"legacy {i}"
    started = time.monotonic()
    s.close(timeout=15)
    assert time.monotonic() - started < 5.0, "no worker held for the shadow timeout"
    gc.collect()
    log = tmp_path / "log.jsonl"
    assert len(records(log)) == 5
    assert dropped(log) == 0
    errors = s.stats()["internal_errors"]
    assert set(errors) <= {"noise"}, errors


def test_a_task_the_loops_end_cancels_is_counted_as_loop_closed() -> None:
    """Given a drop hook, background work the loop's end took is counted with reason
    ``loop_closed`` (and said once per loop through the error hook, naming aflush);
    a cancellation while the loop runs on (aclose) stays ``on_cancelled``'s."""
    from shim.core.loopdispatch import LoopDispatcher

    dropped_: list[tuple[str, str, str]] = []
    cancelled: list[str] = []
    errors: list[tuple[str, str]] = []

    def make() -> LoopDispatcher:
        return LoopDispatcher(
            capacity=8,
            on_error=lambda op, exc: errors.append((op, str(exc))),
            on_cancelled=cancelled.append,
            on_dropped=lambda product, task, reason: dropped_.append((product, task, reason)),
        )

    async def job() -> None:
        dispatch = make()
        for _ in range(2):
            assert dispatch.try_reserve()
            dispatch.spawn("kiwi.meal_plan", asyncio.sleep(30))

    asyncio.run(job())
    assert dropped_ == [("kiwi", "meal_plan", "loop_closed")] * 2
    assert [op for op, _ in errors] == ["loop_closed"]
    assert "aflush" in errors[0][1]
    assert cancelled == []

    async def drained() -> None:
        dispatch = make()
        assert dispatch.try_reserve()
        dispatch.spawn("kiwi.ocr", asyncio.sleep(30))
        await dispatch.drain(0.01)

    asyncio.run(drained())
    assert cancelled == ["kiwi.ocr"]
    assert len(dropped_) == 2
