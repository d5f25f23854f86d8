"""What the shim adds to a streaming call site on the caller's path, side by side.

    python bench/streams.py            # full run (~50 s)
    python bench/streams.py --quick    # smoke run for CI (~8 s)

A legacy generator yields 64 text chunks; the caller times each ``next()`` with
``perf_counter_ns``: the stream's start (the call and its first chunk) and every chunk
after it. Variants, in alternating blocks with the undecorated generator so both see
the same machine: off (the task's flags 0/0: legacy's own generator comes back) and
shadow 100 % (the chunks relayed, the stream compared with the simulator's answer in
the background; the simulator runs in its own process). Streams start 200 a second, the
caller sleeping in between, as a service waiting on its clients does. The async
variant does the same with an async generator on one event loop.

Beside them, ``floor``: a hand-written relay that keeps the chunks and hands the stream
to a queue at its end, and does nothing else (``bench/floor.py``): what relaying a
stream costs on this machine before any flag, admission or record.

Targets (shadow): <= 2 us median added per chunk; <= 15 us median added at the start.
Beside them: the second chunk (a compared stream's first chunk waits on nothing but
legacy; the relay notes it, and makes what it notes chunks with, as the caller asks for
the second) and the end (the ``next()`` that finds the stream over, where a compared
stream is handed to the comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import afloor_relay, floor_relay
from overhead import make_shim, pct, simulator

from shim import Shim, TaskRequest
from shim.comparators import TextOutput

TARGET_CHUNK_US, TARGET_START_US = 2.0, 15.0
CHUNKS = [f"word{i} " for i in range(64)]
PACE_S = 1 / 200


def legacy(q: int) -> Iterator[str]:
    yield from CHUNKS


async def alegacy(q: int) -> AsyncIterator[str]:
    for chunk in CHUNKS:
        yield chunk


def wrapped(shim: Shim, fn: Callable[..., Any]) -> Callable[..., Any]:
    return shim.shadow(
        product="kiwi",
        task="recipe_generation",
        request=lambda q: TaskRequest(prompt=f"stream {q}"),
        response=lambda r: r.text,
        output=TextOutput(),
    )(fn)


Timings = tuple[list[int], list[int], list[int], list[int]]


def timed(fn: Callable[[int], Iterator[str]], streams: int) -> Timings:
    """Stream-start, per-chunk, second-chunk and stream-end durations (ns) over
    ``streams`` paced streams (the end: the ``next()`` that finds the stream over, where
    a compared stream is handed to the comparison)."""
    starts: list[int] = []
    chunks: list[int] = []
    ends: list[int] = []
    clock = time.perf_counter_ns
    next_at = time.perf_counter()
    for i in range(streams):
        next_at += PACE_S
        if (wait := next_at - time.perf_counter()) > 0:
            time.sleep(wait)
        t0 = clock()
        stream = fn(i)
        next(stream)
        t1 = clock()
        starts.append(t1 - t0)
        for _ in range(len(CHUNKS) - 1):
            t0 = clock()
            next(stream)
            chunks.append(clock() - t0)
        t0 = clock()
        for _ in stream:  # the end: StopIteration, and the hand-off
            pass
        ends.append(clock() - t0)
    return starts, chunks, chunks[:: len(CHUNKS) - 1], ends


async def atimed(fn: Callable[[int], AsyncIterator[str]], streams: int) -> Timings:
    starts: list[int] = []
    chunks: list[int] = []
    ends: list[int] = []
    clock = time.perf_counter_ns
    next_at = time.perf_counter()
    for i in range(streams):
        next_at += PACE_S
        if (wait := next_at - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        t0 = clock()
        stream = fn(i)
        await anext(stream)
        t1 = clock()
        starts.append(t1 - t0)
        for _ in range(len(CHUNKS) - 1):
            t0 = clock()
            await anext(stream)
            chunks.append(clock() - t0)
        t0 = clock()
        async for _ in stream:
            pass
        ends.append(clock() - t0)
    return starts, chunks, chunks[:: len(CHUNKS) - 1], ends


def compare(base: Timings, other: Timings) -> dict[str, Any]:
    (b_start, b_chunk, b_second, b_end), (o_start, o_chunk, o_second, o_end) = base, other
    return {
        "streams": len(o_start),
        "chunks": len(o_chunk),
        "bare_start_us": pct(b_start, 50),
        "bare_chunk_us": pct(b_chunk, 50),
        "start_added_us": pct(o_start, 50) - pct(b_start, 50),
        "start_p99_added_us": pct(o_start, 99) - pct(b_start, 99),
        "chunk_added_us": pct(o_chunk, 50) - pct(b_chunk, 50),
        "chunk_p99_added_us": pct(o_chunk, 99) - pct(b_chunk, 99),
        "second_added_us": pct(o_second, 50) - pct(b_second, 50),
        "end_added_us": pct(o_end, 50) - pct(b_end, 50),
    }


def side_by_side(
    fn: Callable[[int], Any], bare: Callable[[int], Any], streams: int, blocks: int, is_async: bool
) -> dict[str, Any]:
    base: Timings = ([], [], [], [])
    other: Timings = ([], [], [], [])
    per = max(1, streams // blocks)
    for _ in range(blocks):
        for acc, f in ((base, bare), (other, fn)):
            got = asyncio.run(atimed(f, per)) if is_async else timed(f, per)
            for kept, new in zip(acc, got, strict=True):
                kept.extend(new)
    return compare(base, other)


def run(quick: bool) -> dict[str, Any]:
    streams, blocks = (160, 4) if quick else (1200, 6)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmpdir, simulator(latency_ms=20) as url:
        tmp = Path(tmpdir)
        for stage, flag in (
            ("off", "{serve: 0, shadow: 0}"),
            ("shadow", "{serve: 0, shadow: 100}"),
        ):
            for kind, bare in (("sync", legacy), ("async", alegacy)):
                name = f"{stage}-{kind}"
                shim = make_shim(url, tmp, f"kiwi.recipe_generation: {flag}\n", name)
                row = side_by_side(wrapped(shim, bare), bare, streams, blocks, kind == "async")
                shim.flush(timeout=30)
                stats = shim.stats()
                shim.close(timeout=30)
                log = tmp / f"{name}.jsonl"
                lines = (
                    [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
                )
                row["compared"] = sum(r["event"] == "shim.comparison" for r in lines)
                row["dropped"] = sum(
                    r.get("count", 0) for r in lines if r["event"] == "shim.dropped"
                )
                row["records_lost"] = stats["records_lost"]
                results[name] = row
        for kind, bare, floor in (("sync", legacy, floor_relay), ("async", alegacy, afloor_relay)):
            row = side_by_side(floor(bare), bare, streams, blocks, kind == "async")
            results[f"floor-{kind}"] = {**row, "compared": 0, "dropped": 0, "records_lost": 0}
    return results


def report(results: dict[str, Any]) -> bool:
    ok = True
    head = ("variant", "streams", "start added", "2nd added", "chunk added", "chunk p99")
    print(
        f"{head[0]:<14}{head[1]:>8}{head[2]:>14}{head[3]:>12}{head[4]:>14}{head[5]:>12}"
        "   end added  compared/dropped"
    )
    for name, r in results.items():
        verdict = ""
        if name.startswith("shadow"):
            good = r["chunk_added_us"] <= TARGET_CHUNK_US and r["start_added_us"] <= TARGET_START_US
            ok &= good
            verdict = "PASS" if good else "FAIL"
        print(
            f"{name:<14}{r['streams']:>8}{r['start_added_us']:>11.2f} us"
            f"{r['second_added_us']:>9.2f} us"
            f"{r['chunk_added_us']:>11.2f} us{r['chunk_p99_added_us']:>9.2f} us"
            f"{r['end_added_us']:>9.1f} us"
            f"  {r['compared']:>8}/{r['dropped']:<8} {verdict}"
        )
    bare = results["off-sync"]
    print(
        f"undecorated: start {bare['bare_start_us']:.2f} us, chunk "
        f"{bare['bare_chunk_us']:.2f} us (median); targets (shadow): chunk <= "
        f"{TARGET_CHUNK_US:g} us, start <= {TARGET_START_US:g} us"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = run(args.quick)
    ok = report(results)
    if args.json:
        args.json.write_text(
            json.dumps(
                {**results, "targets_us": {"chunk": TARGET_CHUNK_US, "start": TARGET_START_US}},
                indent=2,
            )
        )
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
