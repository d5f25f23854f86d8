"""A hanging coordinator while the task path serves: callers fall back, in bounded number."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from shim import BreakerPolicy, Limits, TaskRequest, Timeouts
from shim.sim import Simulator

from .conftest import QUIET
from .shimkit import make_shim, records

NO_BREAKER = BreakerPolicy(failures=10**6, ratio=1.0, min_calls=10**6)


def test_ten_thousand_calls_never_hold_more_than_max_serving(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.set_profile(QUIET.with_knob("defaults", "hang_rate", 1.0))
    s = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 100}\n",
        timeouts=Timeouts(serve=0.3),
        limits=Limits(max_serving=20),
        breaker=NO_BREAKER,
    )

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda i: TaskRequest(prompt=str(i)),
        response=lambda r: "task",
    )
    async def plan(i: int) -> str:
        return f"legacy {i}"

    async def main() -> list[str]:
        results = await asyncio.gather(*(plan(i) for i in range(10_000)))
        await s.aclose(timeout=10)
        return list(results)

    started = time.monotonic()
    results = asyncio.run(main())
    took = time.monotonic() - started
    assert results == [f"legacy {i}" for i in range(10_000)], "every caller got legacy"
    assert s._engine.serving.peak <= 20
    assert took < 30
    log = tmp_path / "log.jsonl"
    fallbacks = records(log)
    turned_away = sum(
        r["count"] for r in records(log, "shim.dropped") if r["reason"] == "serve_full"
    )
    assert len(fallbacks) + turned_away == 10_000, "each call is a fallback record or counted"
    assert all(r["served_by"] == "legacy_fallback" for r in fallbacks)
    assert all("no answer within 0.3 s" in r["candidate"]["error"] for r in fallbacks)


def test_threads_return_to_baseline_after_close(sim: Simulator, tmp_path: Path) -> None:
    before = threading.active_count()
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n", limits=Limits(workers=4))
    wrapped = s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest())(lambda: 1)
    for _ in range(20):
        wrapped()
    s.close(timeout=10)
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before
