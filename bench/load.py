"""Sustained shadow traffic: 1,000 calls per second against the simulator in its own
process, from a sync call site (8 caller threads) and from an async one, side by side
with the same call site undecorated.

    python bench/load.py            # 60 s per call-site kind
    python bench/load.py --quick    # 3 s per kind, for CI

For each kind: every call accounted for (a comparison record or a counted drop), the
drop rate, RSS after warm-up and at the end, and what the decorator adds on the
caller's path (median and p99 of the wrapped call minus the bare one, measured in the
same run). Targets: drops < 0.1 %, RSS growth < 20 MB after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import pct, simulator

from shim import Limits, Shim, TaskRequest, Timeouts, flags

RATE = 1000  # calls per second, all callers together
THREADS = 8


def rss_mb() -> float:
    """Resident set size now, in MB (from /proc: ru_maxrss is only the peak)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def legacy(i: int) -> list[dict[str, Any]]:
    """A week's meal plan, shaped as the simulator's task path answers (so the pairs
    match, as they mostly do in a rollout; a mismatch costs a deepdiff)."""
    return [
        {"day": d, "meal_type": m, "recipe_id": i + d, "suggestion": "lentil soup"}
        for d in range(1, 8)
        for m in ("breakfast", "lunch", "dinner")
    ]


async def alegacy(i: int) -> list[dict[str, Any]]:
    return legacy(i)


def make(url: str, tmp: Path, name: str) -> Shim:
    (tmp / f"{name}.yaml").write_text("kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    return Shim(
        url,
        flags=flags.FileFlags(tmp / f"{name}.yaml"),
        log_path=tmp / f"{name}.jsonl",
        limits=Limits(workers=16, queue_size=2000, concurrency=256),
    )


def wrap(shim: Shim, fn: Any) -> Any:
    return shim.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda i: TaskRequest(prompt=f"plan {i}"),
        response=lambda result: result.output,
        legacy_model="qwen2.5-3b-instruct",
    )(fn)


def schedule(rate: float, seconds: float) -> Iterator[float]:
    """For each call that keeps ``rate`` calls/s for ``seconds``: how long to wait first."""
    stop_at = time.perf_counter() + seconds
    next_at = time.perf_counter()
    while (now := time.perf_counter()) < stop_at:
        next_at += 1 / rate
        yield max(0.0, next_at - now)


def drive_sync(fn: Any, seconds: float, samples: list[int]) -> int:
    """THREADS callers, RATE calls/s in all, each call timed; returns calls made."""
    counts = [0] * THREADS

    def caller(k: int) -> None:
        local: list[int] = []
        for n, wait in enumerate(schedule(RATE / THREADS, seconds)):
            time.sleep(wait)
            t0 = time.perf_counter_ns()
            fn(k + n * THREADS)
            local.append(time.perf_counter_ns() - t0)
        counts[k] = len(local)
        samples.extend(local)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


async def drive_async(fn: Any, seconds: float, samples: list[int]) -> int:
    """One event loop, RATE calls/s, each awaited call timed; returns calls made."""
    calls = 0
    for calls, wait in enumerate(schedule(RATE, seconds), 1):
        await asyncio.sleep(wait)
        t0 = time.perf_counter_ns()
        await fn(calls)
        samples.append(time.perf_counter_ns() - t0)
    return calls


def accounted(log: Path) -> tuple[int, Counter[str]]:
    compared, drops = 0, Counter[str]()
    for line in log.read_text().splitlines():
        row = json.loads(line)
        if row["event"] == "shim.comparison":
            compared += 1
        elif row["event"] == "shim.dropped":
            drops[row["reason"]] += row["count"]
    return compared, drops


def run_kind(kind: str, url: str, tmp: Path, seconds: float) -> dict[str, Any]:
    shim = make(url, tmp, kind)
    warm = min(10.0, seconds / 3)
    bare: list[int] = []
    wrapped: list[int] = []
    if kind == "sync":
        fn = wrap(shim, legacy)
        drive_sync(fn, warm, [])  # warm-up: pools, connections, first allocations
        rss_warm = rss_mb()
        calls = drive_sync(fn, seconds, wrapped)
        drive_sync(legacy, min(5.0, seconds), bare)
        shim.close(timeout=30)
    else:

        async def main() -> tuple[int, float]:
            fn = wrap(shim, alegacy)
            await drive_async(fn, warm, [])
            rss = rss_mb()
            made = await drive_async(fn, seconds, wrapped)
            await drive_async(alegacy, min(5.0, seconds), bare)
            await shim.aclose(timeout=30)
            return made, rss

        calls, rss_warm = asyncio.run(main())
    rss_end = rss_mb()
    compared, drops = accounted(tmp / f"{kind}.jsonl")
    total = compared + sum(drops.values())
    return {
        "calls_timed": calls,
        "calls_total": total,
        "compared": compared,
        "drops": dict(drops),
        "drop_rate": sum(drops.values()) / total if total else 0.0,
        "rss_warm_mb": round(rss_warm, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_warm, 1),
        "added_p50_us": round(pct(wrapped, 50) - pct(bare, 50), 1),
        "added_p99_us": round(pct(wrapped, 99) - pct(bare, 99), 1),
        "rate_per_s": round(calls / seconds),
    }


STUCK_RATE = 200  # calls per second against a candidate that cannot keep up


def run_stuck(url: str, tmp: Path, name: str, seconds: float) -> dict[str, Any]:
    """A sync call site at STUCK_RATE calls/s while every task-path call takes 2 s or
    never answers: how much work is in flight at most, what the caller pays, memory."""
    (tmp / f"{name}.yaml").write_text("kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    workers, queue = 16, 500
    shim = Shim(
        url,
        flags=flags.FileFlags(tmp / f"{name}.yaml"),
        log_path=tmp / f"{name}.jsonl",
        limits=Limits(workers=workers, queue_size=queue),
        timeouts=Timeouts(shadow=3.0),
    )
    fn = wrap(shim, legacy)
    wrapped: list[int] = []
    bare: list[int] = []
    peak = 0
    rss_start = rss_mb()
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.wait(0.01):
            peak = max(peak, shim.stats()["pending"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    i = 0
    for i, wait in enumerate(schedule(STUCK_RATE, seconds), 1):
        time.sleep(wait)
        t0 = time.perf_counter_ns()
        fn(i)
        wrapped.append(time.perf_counter_ns() - t0)
        t0 = time.perf_counter_ns()
        legacy(i)
        bare.append(time.perf_counter_ns() - t0)
    rss_end = rss_mb()
    stop.set()
    watcher.join()
    shim.close(timeout=5)
    compared, drops = accounted(tmp / f"{name}.jsonl")
    return {
        "calls": i,
        "compared": compared,
        "drops": dict(drops),
        "accounted": compared + sum(drops.values()) == i,
        "peak_in_flight": peak,
        "bound": workers + queue,
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "added_p50_us": round(pct(wrapped, 50) - pct(bare, 50), 1),
        "added_p99_us": round(pct(wrapped, 99) - pct(bare, 99), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per kind")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 60.0
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        with simulator(latency_ms=5) as url:
            for kind in ("sync", "async"):
                results[kind] = run_kind(kind, url, Path(tmpdir), seconds)
        stuck_s = 3.0 if args.quick else 20.0
        with simulator(latency_ms=2000) as url:
            results["slow_2s"] = run_stuck(url, Path(tmpdir), "slow", stuck_s)
        with simulator(latency_ms=5, extra=["--hang-rate", "1.0"]) as url:
            results["hanging"] = run_stuck(url, Path(tmpdir), "hanging", stuck_s)
    ok = True
    print(f"{RATE:,} shadowed calls/s for {seconds:.0f} s per kind, simulator in its own process")
    for kind in ("sync", "async"):
        r = results[kind]
        passed = r["drop_rate"] < 0.001 and r["rss_growth_mb"] < 20
        ok &= passed
        print(
            f"{kind:5s}: {r['calls_total']:,} calls, {r['compared']:,} compared, drops "
            f"{r['drop_rate'] * 100:.3f} % {r['drops'] or ''}; RSS {r['rss_warm_mb']} -> "
            f"{r['rss_end_mb']} MB ({r['rss_growth_mb']:+} MB); added on the caller's path "
            f"p50 {r['added_p50_us']} us, p99 {r['added_p99_us']} us; "
            f"{'PASS' if passed else 'FAIL'}"
        )
    for name in ("slow_2s", "hanging"):
        r = results[name]
        held = r["peak_in_flight"] <= r["bound"] and r["accounted"] and r["rss_growth_mb"] < 20
        ok &= held
        print(
            f"{name:8s}: {r['calls']:,} calls at {STUCK_RATE}/s; at most {r['peak_in_flight']} "
            f"in flight (bound {r['bound']}); {r['compared']:,} compared, drops {r['drops']}; "
            f"every call accounted: {r['accounted']}; RSS {r['rss_growth_mb']:+} MB; caller "
            f"added p50 {r['added_p50_us']} us, p99 {r['added_p99_us']} us; "
            f"{'PASS' if held else 'FAIL'}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"target: drops < 0.1 %, RSS growth < 20 MB, work bounded: {'PASS' if ok else 'FAIL'}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
