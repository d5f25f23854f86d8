"""What a shadowed call costs the app's CPU, not only its caller: the whole process.

    python bench/cpu.py            # 500 and 1,000 calls/s, 6 s per run (~8 minutes)
    python bench/cpu.py --quick    # 1,000 calls/s, 1.5 s per run, the meal plan, for CI

One caller thread calls a call site at a steady pace (as a service's request thread
does) against a stand-in coordinator in its own process that answers at once, so the
figures are the shim's work and not waiting. For each output kind (a 2 KB JSON meal
plan as text, 4 KB of sectioned recipe text, a receipt dict; the recipe and receipt
also with their content scored: kiwi's KIWI_RECIPE and KIWI_RECEIPT) and each rate it
runs, in turn, the undecorated call site, then the decorated one at off, shadow 100 % and canary
(10 % served, all compared), and reports the process's CPU per call (all threads:
``time.process_time``), what the shim adds to the undecorated loop, per-thread CPU
(caller, workers, pump, recorder; from ``/proc/self/task/*/schedstat``), and every call
accounted for (compared, or a counted drop). Each run's window ends once the shim has
written every record of its calls, so background work that lags the calls is in it.

Beside them, ``floor``: a lean hand-written shadow of the same call (``bench/floor.py``:
one thread, a kept-alive socket, the reply parsed, the same comparator, a short JSON
line), so the shim's figure can be read against what the work itself costs here.

Targets (at 1,000 calls/s, shadow): <= 150 us of process CPU per call above the
undecorated loop for the JSON meal plan with no drops, <= 250 us for the recipe text
(its structure compared, as the target was set; the scored kinds say what content
scores add).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_outputs import KINDS, Kind
from floor import FloorShadow
from load import accounted, schedule

from shim import Limits, Shim, TaskRequest, flags

TARGETS_US = {("meal_plan", 1000): 150.0, ("recipe", 1000): 250.0}
STAGES = {"off": "{serve: 0, shadow: 0}", "shadow": "{serve: 0, shadow: 100}"}
STAGES["canary"] = "{serve: 10, shadow: 100}"


# -- the stand-in coordinator (its own process) ------------------------------------------


def serve_coordinator(latency_ms: float = 0.0) -> None:
    """Answer ``POST /api/inference/task`` with the task's output, keep-alive: at once,
    or ``latency_ms`` after the request (each connection one request at a time)."""
    rng = random.Random(7)
    answers = {}
    for kind in KINDS:
        body = json.dumps({"output": kind.make(rng), "model": "qwen2.5-3b-instruct"}).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        answers[kind.task] = head.encode() + b"\r\n\r\n" + body

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                if latency_ms:
                    await asyncio.sleep(latency_ms / 1000)
                writer.write(answers[json.loads(body)["task"]])
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(client, "127.0.0.1", 0)
        print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    asyncio.run(main())


@contextmanager
def coordinator(latency_ms: float = 0.0) -> Iterator[str]:
    cmd = [sys.executable, __file__, "--coordinator", "--latency-ms", str(latency_ms)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        try:
            yield proc.stdout.readline().strip()
        finally:
            proc.terminate()
            proc.wait(10)


# -- measuring ---------------------------------------------------------------------------


def thread_cpu_ns() -> dict[int, int]:
    """CPU time of each of this process's threads, in ns, by native thread id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except OSError:  # the thread ended meanwhile
            pass
    return out


def role(name: str) -> str:
    if name.startswith(("shim-worker", "floor-worker")):
        return "workers"
    if name in ("shim-pump", "shim-recorder"):
        return name.removeprefix("shim-")
    return "other"


def paced(fn: Callable[[int], Any], rate: float, seconds: float) -> int:
    """Call ``fn`` ``rate`` times a second for ``seconds``, sleeping in between (as
    ``bench/load.py`` paces its callers); returns how many calls were made."""
    calls = 0
    for calls, wait in enumerate(schedule(rate, seconds), 1):
        time.sleep(wait)
        fn(calls)
    return calls


def measure(
    fn: Callable[[int], Any], rate: float, seconds: float, flush: Callable[[], Any] | None
) -> dict:
    """Process and per-thread CPU per call over ``seconds`` of paced calls, as the
    median of three windows (one that the machine's other work slowed does not decide
    the figure); ``calls`` counts all three, ``windows_us`` gives each window's CPU."""
    windows = [_window(fn, rate, seconds / 3, flush) for _ in range(3)]
    middle = sorted(windows, key=lambda w: w["cpu_us_per_call"])[1]
    return {
        **middle,
        "calls": sum(w["calls"] for w in windows),
        "windows_us": [round(w["cpu_us_per_call"], 1) for w in windows],
        "behind_s": max(w["behind_s"] for w in windows),  # calls fewer than the pace
    }


def _window(
    fn: Callable[[int], Any], rate: float, seconds: float, flush: Callable[[], Any] | None
) -> dict:
    """Process and per-thread CPU per call over a paced run, up to its last record
    (``flush`` waits for it)."""
    if flush is not None:
        flush()  # the warm-up's comparisons do not spill into the window
    gc.collect()
    before, caller = thread_cpu_ns(), threading.get_native_id()
    cpu0 = time.process_time()
    calls = paced(fn, rate, seconds)
    late = time.perf_counter()
    if flush is not None:
        flush()
    cpu = time.process_time() - cpu0
    after, names = thread_cpu_ns(), {t.native_id: t.name for t in threading.enumerate()}
    threads: Counter[str] = Counter()
    for tid, ns in after.items():
        who = "caller" if tid == caller else role(names.get(tid, ""))
        threads[who] += ns - before.get(tid, 0)
    return {
        "calls": calls,
        "cpu_us_per_call": cpu / calls * 1e6,
        "threads_us_per_call": {k: v / 1e3 / calls for k, v in sorted(threads.items())},
        "behind_s": round(seconds - calls / rate, 3),  # the caller could not keep the pace
        "drain_s": round(time.perf_counter() - late, 3),
    }


def run_kind(
    kind: Kind, url: str, rate: int, seconds: float, tmp: Path, *, workers: int = 4
) -> dict[str, Any]:
    """The undecorated loop, each stage and (with the default workers) the floor, for
    one output kind at one rate; ``workers``: ``Limits.workers``."""
    rng = random.Random(1)
    outputs = [kind.make(rng) for _ in range(16)]
    encoded = [json.dumps(o) for o in outputs]
    if isinstance(outputs[0], str):

        def legacy(i: int) -> Any:
            return outputs[i % 16]
    else:

        def legacy(i: int) -> Any:  # a fresh dict each call, as an app parses one
            return json.loads(encoded[i % 16])

    warm = min(1.0, seconds / 2)
    out: dict[str, Any] = {}
    paced(legacy, rate, warm)
    bare = [measure(legacy, rate, seconds, None)]
    out["undecorated"] = bare[0]
    for stage, flag in STAGES.items():
        name = f"{kind.name}-{rate}-{workers}-{stage}"
        (tmp / f"{name}.yaml").write_text(f"kiwi.{kind.task}: {flag}\n")
        shim = Shim(
            url,
            flags=flags.FileFlags(tmp / f"{name}.yaml"),
            log_path=tmp / f"{name}.jsonl",
            limits=Limits(workers=workers),  # the default: 4
        )
        fn = shim.shadow(
            product="kiwi",
            task=kind.task,
            request=lambda i: TaskRequest(prompt=f"request {i}"),
            response=kind.response,
            output=kind.comparator,
            legacy_model="qwen2.5-3b-instruct",
        )(legacy)
        warmed = paced(fn, rate, warm)
        row = measure(fn, rate, seconds, functools.partial(shim.flush, timeout=60))
        shim.close(timeout=30)
        log = tmp / f"{name}.jsonl"
        compared, drops = accounted(log) if log.exists() else (0, Counter[str]())
        compared_calls = 0 if stage == "off" else row["calls"] + warmed  # every call
        row.update(compared=compared, expected=compared_calls, drops=dict(drops))
        out[stage] = row
    if workers == Limits().workers:  # the floor has one thread: beside the defaults only
        out["floor"] = run_floor(kind, url, legacy, rate, seconds, tmp)
    # The undecorated loop again, after the stages: what the shim adds is measured
    # against the mean of both, so a machine that got busier or quieter meanwhile
    # weighs on both sides alike.
    bare.append(measure(legacy, rate, seconds, None))
    base = (bare[0]["cpu_us_per_call"] + bare[1]["cpu_us_per_call"]) / 2
    out["undecorated"] = {
        **bare[0],
        "cpu_us_per_call": base,
        "runs_us": [round(b["cpu_us_per_call"], 1) for b in bare],
    }
    for stage in (*STAGES, "floor"):
        if stage in out:
            out[stage]["added_us"] = out[stage]["cpu_us_per_call"] - base
    return out


def run_floor(
    kind: Kind, url: str, legacy: Callable[[int], Any], rate: int, seconds: float, tmp: Path
) -> dict[str, Any]:
    log = tmp / f"{kind.name}-{rate}-floor.jsonl"
    floor = FloorShadow(url, kind.task, kind.comparator, log)
    warmed = paced(floor.wrap(legacy), rate, min(1.0, seconds / 2))
    row = measure(floor.wrap(legacy), rate, seconds, floor.flush)
    floor.close()
    with log.open() as lines:
        row.update(compared=sum(1 for _ in lines), expected=row["calls"] + warmed, drops={})
    return row


#: What ``--quick`` runs (CI keeps the benchmark working): the targeted JSON pair, with
#: the floor beside it. Every kind goes through the same code; ``--kind`` picks others.
QUICK_KINDS = ("meal_plan",)


#: A coordinator that answers as real ones do, in tens of milliseconds (the full run
#: only): each shadowed call holds a worker that long, so the workers are sized to the
#: calls in flight (rate x latency, with room to spare), and each reply wakes a worker
#: that was waiting on it.
SLOW = {"kind": "meal_plan", "rate": 500, "latency_ms": 50.0, "workers": 32}


def run(quick: bool, kinds: tuple[str, ...] = ()) -> dict[str, Any]:
    rates, seconds = ((1000,), 1.5) if quick else ((500, 1000), 6.0)
    kinds = kinds or (QUICK_KINDS if quick else ())
    results: dict[str, Any] = {"seconds": seconds, "kinds": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        with coordinator() as url:
            for kind in KINDS:
                if kinds and kind.name not in kinds:
                    continue
                for rate in rates:
                    print(f"  {kind.name} at {rate} calls/s ...", flush=True)
                    row = run_kind(kind, url, rate, seconds, Path(tmpdir))
                    results["kinds"].setdefault(kind.name, {})[str(rate)] = row
        slow = next(k for k in KINDS if k.name == SLOW["kind"])
        if quick or (kinds and slow.name not in kinds):
            return results
        rate, workers = int(SLOW["rate"]), int(SLOW["workers"])
        print(f"  {slow.name} at {rate} calls/s, answered in {SLOW['latency_ms']:.0f} ms ...")
        with coordinator(SLOW["latency_ms"]) as url:
            row = run_kind(slow, url, rate, seconds, Path(tmpdir), workers=workers)
        results["slow"] = {**SLOW, "row": row}
    return results


def verdicts(results: dict[str, Any]) -> list[tuple[str, int, float, float, bool]]:
    """(kind, rate, added us, target us, ok) for each target; each shadow row that has
    a target gets ``target_us`` and ``pass`` too (``bench/results.py`` reads them)."""
    out = []
    for (kind, rate), target in TARGETS_US.items():
        row = results["kinds"].get(kind, {}).get(str(rate))
        if row is None:
            continue
        shadow = row["shadow"]
        ok = shadow["added_us"] <= target and shadow["compared"] == shadow["expected"]
        ok = ok and not shadow["drops"]
        shadow.update(target_us=target, **{"pass": ok})
        out.append((kind, rate, shadow["added_us"], target, ok))
    return out


def report(results: dict[str, Any]) -> bool:
    head = f"{'kind':10} {'rate':>5} {'stage':11} {'CPU/call':>9} {'added':>8}  "
    print(head + "per thread (us/call)                          compared / drops")
    for kind, rates in results["kinds"].items():
        for rate, row in rates.items():
            _print_row(kind, rate, row)
    if "slow" in results:
        slow = results["slow"]
        print(
            f"a coordinator answering in {slow['latency_ms']:.0f} ms, "
            f"Limits(workers={slow['workers']}):"
        )
        _print_row(slow["kind"], str(slow["rate"]), slow["row"])
    ok = True
    for kind, rate, added, target, passed in verdicts(results):
        ok &= passed
        verdict = "PASS" if passed else "FAIL"
        floor = results["kinds"][kind][str(rate)].get("floor")
        beside = "" if floor is None else f" (the floor adds {floor['added_us']:.0f} us)"
        print(
            f"target: {kind} shadow at {rate}/s adds {added:.0f} us <= {target:.0f} us, "
            f"no drops: {verdict}{beside}"
        )
    return ok


def _print_row(kind: str, rate: str, row: dict[str, Any]) -> None:
    for stage, r in row.items():
        threads = " ".join(f"{k} {v:.0f}" for k, v in r["threads_us_per_call"].items())
        added = f"{r['added_us']:+8.0f}" if "added_us" in r else " " * 8
        seen = f"{r['compared']}/{r['expected']} {r['drops'] or ''}" if "drops" in r else ""
        cpu = r["cpu_us_per_call"]
        print(f"{kind:10} {rate:>5} {stage:11} {cpu:7.0f}us {added}  {threads:45} {seen}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 calls/s, short runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    names = [k.name for k in KINDS]
    parser.add_argument("--kind", action="append", choices=names, help="only these kinds")
    parser.add_argument("--coordinator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--latency-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.coordinator:
        serve_coordinator(args.latency_ms)
        return 0
    results = run(args.quick, tuple(args.kind or ()))
    ok = report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
