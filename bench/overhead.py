"""What the shim adds to a call on the caller's path, side by side in one run.

    python bench/overhead.py            # full run (~40 s)
    python bench/overhead.py --quick    # smoke run for CI (~8 s)

Every variant wraps the same bare function and is timed per call with
``perf_counter_ns``; "added" is the variant's percentile minus the bare function's,
measured in alternating blocks so both see the same machine. Variants:

- off: the task's flags are 0/0 (the decorator's fast path);
- shadow: shadow 100 % with a task path that takes 50 ms on the simulator (its own
  process), 400 calls/s so comparisons run in the background while the caller is
  timed; the caller sleeps between calls, as an I/O-bound service does;
- shadow_cpu_bound: the same, with a caller that spins in Python between calls and so
  never releases the interpreter lock; background work can only preempt it. Reported as
  the worst case, not held to the target;
- laboratory: ``laboratory.Experiment`` with the same 50 ms candidate (it runs the
  candidate inline, as most experiment libraries do);
- unleash: ``UnleashClient.is_enabled`` alone, offline, as the cost of asking a flag SDK.

Targets: off <= 1 us median added; shadow <= 15 us median and <= 60 us p99 added.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shim import Limits, Shim, TaskClient, TaskRequest, flags

TARGETS = {"off": (1.0, None), "shadow": (15.0, 60.0)}


def bare(x: int) -> int:
    return x


def timings(fn: Callable[[int], Any], n: int, pace_s: float = 0.0, spin: bool = False) -> list[int]:
    """Per-call durations in ns; with ``pace_s`` calls start that far apart, the caller
    sleeping in between (an I/O-bound service) or, with ``spin``, busy in Python."""
    out = [0] * n
    clock = time.perf_counter_ns
    next_at = time.perf_counter()
    for i in range(n):
        if pace_s:
            next_at += pace_s
            if spin:
                while time.perf_counter() < next_at:
                    pass
            elif (wait := next_at - time.perf_counter()) > 0:
                time.sleep(wait)
        t0 = clock()
        fn(i)
        out[i] = clock() - t0
    return out


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] / 1000.0  # us


def side_by_side(
    fn: Callable[[int], Any], n: int, blocks: int, pace_s: float = 0.0, spin: bool = False
) -> dict[str, float]:
    """Alternate blocks of bare and wrapped calls; percentiles of each in us."""
    base: list[int] = []
    wrapped: list[int] = []
    per_block = max(1, n // blocks)
    for _ in range(blocks):
        base += timings(bare, per_block, pace_s, spin)
        wrapped += timings(fn, per_block, pace_s, spin)
    return {
        "samples": len(wrapped),
        "bare_median_us": pct(base, 50),
        "bare_p99_us": pct(base, 99),
        "median_us": pct(wrapped, 50),
        "p99_us": pct(wrapped, 99),
        "median_added_us": pct(wrapped, 50) - pct(base, 50),
        "p99_added_us": pct(wrapped, 99) - pct(base, 99),
    }


def make_shim(url: str, tmp: Path, flag_text: str, name: str) -> Shim:
    path = tmp / f"{name}.yaml"
    path.write_text(flag_text)
    return Shim(
        url,
        flags=flags.FileFlags(path),
        log_path=tmp / f"{name}.jsonl",
        limits=Limits(workers=32, queue_size=2000),
    )


def unleash_client(tmp: Path) -> Any:
    from UnleashClient import UnleashClient
    from UnleashClient.cache import FileCache
    from UnleashClient.utils import InstanceAllowType

    cache = FileCache("task-shim-bench", directory=str(tmp))
    cache.bootstrap_from_dict(
        {
            "version": 1,
            "features": [
                {
                    "name": "kiwi.meal_plan.shadow",
                    "enabled": True,
                    "type": "release",
                    "strategies": [
                        {
                            "name": "flexibleRollout",
                            "parameters": {
                                "rollout": "100",
                                "stickiness": "default",
                                "groupId": "kiwi.meal_plan.shadow",
                            },
                        }
                    ],
                }
            ],
        }
    )
    client = UnleashClient(
        url="http://127.0.0.1:9",
        app_name="task-shim-bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
    client.initialize_client(fetch_toggles=False)
    return client


@contextmanager
def simulator(latency_ms: float = 50, extra: Sequence[str] = ()) -> Iterator[str]:
    """The simulator in its own process, as a coordinator is: its work must not share
    this process's interpreter lock with the calls being timed."""
    cmd = [sys.executable, "-m", "shim", "sim", "--port", "0", "--seed", "1"]
    cmd += ["--latency-ms", str(latency_ms), "--latency-p99-ms", str(latency_ms), *extra]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        try:
            yield line.removeprefix("listening on ")
        finally:
            proc.terminate()
            proc.wait(10)


def run(quick: bool) -> dict[str, Any]:
    n_fast, n_shadow, n_lab = (20_000, 1_500, 20) if quick else (200_000, 12_000, 100)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmpdir, simulator() as url:
        sim = SimpleNamespace(url=url)
        tmp = Path(tmpdir)
        gc.collect()

        off = make_shim(sim.url, tmp, "kiwi.meal_plan: {serve: 0, shadow: 0}\n", "off")
        wrapped_off = off.shadow(
            product="kiwi", task="meal_plan", request=lambda x: TaskRequest(prompt=str(x))
        )(bare)
        results["off"] = side_by_side(wrapped_off, n_fast, blocks=20)
        off.close()

        shadow = make_shim(sim.url, tmp, "kiwi.meal_plan: {serve: 0, shadow: 100}\n", "shadow")
        wrapped_shadow = shadow.shadow(
            product="kiwi", task="meal_plan", request=lambda x: TaskRequest(prompt=str(x))
        )(bare)
        # 400 calls/s keep ~20 comparisons in flight: background work runs while we time.
        # The caller sleeps between calls, as a service waiting on I/O does.
        results["shadow"] = side_by_side(wrapped_shadow, n_shadow, blocks=10, pace_s=0.0025)
        shadow.flush(timeout=30)
        # Worst case: a caller that never lets go of the interpreter lock between calls.
        results["shadow_cpu_bound"] = side_by_side(
            wrapped_shadow, n_shadow, blocks=10, pace_s=0.0025, spin=True
        )
        shadow.close(timeout=30)
        log = tmp / "shadow.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        results["shadow"]["compared"] = sum(r["event"] == "shim.comparison" for r in rows)
        results["shadow"]["dropped"] = sum(
            r.get("count", 0) for r in rows if r["event"] == "shim.dropped"
        )

        client = TaskClient(sim.url, api_key="")

        def experiment(x: int) -> int:
            import laboratory

            exp = laboratory.Experiment(name="meal_plan")
            exp.control(bare, args=[x])
            exp.candidate(
                lambda: client.infer("kiwi", "meal_plan", TaskRequest(prompt=str(x))).output
            )
            return int(exp.conduct())

        results["laboratory"] = side_by_side(experiment, n_lab, blocks=2)
        client.close()

        unleash = unleash_client(tmp)
        context = {"userId": "user-1"}

        def ask(x: int) -> bool:
            return bool(unleash.is_enabled("kiwi.meal_plan.shadow", context))

        results["unleash"] = side_by_side(ask, n_fast // 4, blocks=10)
        unleash.destroy()
    return results


def report(results: dict[str, Any]) -> bool:
    ok = True
    print(f"{'variant':<18}{'samples':>9}{'median added':>15}{'p99 added':>12}  target")
    for name, r in results.items():
        target = TARGETS.get(name)
        verdict = ""
        if target:
            med_ok = r["median_added_us"] <= target[0]
            p99_ok = target[1] is None or r["p99_added_us"] <= target[1]
            ok &= med_ok and p99_ok
            verdict = (
                f"median <= {target[0]:g} us"
                + (f", p99 <= {target[1]:g} us" if target[1] else "")
                + ("  PASS" if med_ok and p99_ok else "  FAIL")
            )
        print(
            f"{name:<18}{r['samples']:>9}{r['median_added_us']:>12.2f} us"
            f"{r['p99_added_us']:>9.2f} us  {verdict}"
        )
    shadow = results["shadow"]
    print(
        f"\nshadow rows: {shadow['compared']} comparisons written, {shadow['dropped']} dropped"
        " (a caller that never yields starves the workers; every drop is counted)"
    )
    print(
        f"bare call: median {results['off']['bare_median_us']:.2f} us, "
        f"p99 {results['off']['bare_p99_us']:.2f} us"
    )
    for other in ("laboratory", "unleash"):
        ratio = results[other]["median_added_us"] / max(shadow["median_added_us"], 0.01)
        print(f"{other} adds {ratio:,.0f}x the shim's shadow-stage median")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = run(args.quick)
    ok = report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
