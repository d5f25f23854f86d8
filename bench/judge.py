"""Judges off the recorder's path: a 50 ms judge at 20 % sampling under 200 calls/s.

    python bench/judge.py            # 20 s of traffic
    python bench/judge.py --quick    # 4 s, for CI

The simulator runs in its own process (``shim sim``): the meal plan answers at once
(every answer drifts in its values, so that no judged pair is equal, which the judge is
not asked about), the judge task ``kiwi.judge`` takes 50 ms.
A paced loop calls a shadowed meal-plan call site 200 times a second; a Judge samples
20 % of the pairs (10 % of those in both orders) with two threads and a budget of
``budget`` calls a minute. The same traffic runs without a judge, side by side.

Measured: records written per second with and without the judge, comparisons dropped
(``recorder_full`` and any other reason: targets 0), judge calls made against the
budget, pairs judged and skipped by reason, and the caller's p50/p99 call time.
Targets: no comparison dropped, every pair recorded, judge calls within the budget,
and the calls no slower with the judge (p50 within 1.5x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from shim import Judge, Shim, TaskRequest, flags

HERE = Path(__file__).resolve().parent
KIWI = HERE.parent / "examples" / "kiwi" / "orch"
RATE = 200
JUDGE_MS = 50
SAMPLE = 0.2


@contextmanager
def simulator() -> Iterator[str]:
    """``shim sim`` in its own process; its URL."""
    cmd = [sys.executable, "-m", "shim", "sim", "--port", "0", "--seed", "7"]
    cmd += ["--latency-ms", "0", "--latency-p99-ms", "0"]
    cmd += ["--knob", f"kiwi.judge:latency_ms={JUDGE_MS}"]
    cmd += ["--knob", f"kiwi.judge:latency_p99_ms={JUDGE_MS}"]
    cmd += [
        "--knob",
        "kiwi.meal_plan:drift_rate=1",
        "--knob",
        "kiwi.meal_plan:drift_kinds=values",
    ]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stdout is not None
        try:
            yield proc.stdout.readline().split()[-1]
        finally:
            proc.terminate()
            proc.wait(10)


def run(url: str, log: Path, seconds: float, judge: Judge | None) -> dict[str, Any]:
    flag_file = log.with_suffix(".flags.yaml")
    flag_file.write_text("kiwi.meal_plan:\n  shadow: 100\n")
    source = flags.FileFlags(flag_file)
    shim = Shim(
        url,
        flags=source,
        log_path=log,
        registry=KIWI / "model_registry.yaml",
        assignments=KIWI / "assignments.yaml",
        judge=judge,
    )
    http = httpx.Client(timeout=10)

    @shim.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda week: TaskRequest(prompt=f"plan week {week}"),
        response=lambda r: json.loads(r.text),
    )
    def plan(week: int) -> Any:
        body = {"model": "qwen2.5-3b-instruct", "prompt": f"plan week {week}"}
        return json.loads(http.post(f"{url}/api/inference", json=body).json()["output"])

    calls = int(seconds * RATE)
    times = []
    started = time.perf_counter()
    for i in range(calls):
        due = started + i / RATE
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        t0 = time.perf_counter()
        plan(i)
        times.append(time.perf_counter() - t0)
    sent = time.perf_counter() - started
    shim.flush(30)
    stats = shim.stats()
    shim.close()
    source.close()
    http.close()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    comparisons = [r for r in rows if r["event"] == "shim.comparison"]
    drops = Counter[str]()
    for r in rows:
        if r["event"] == "shim.dropped":
            drops[r["reason"]] += r["count"]
    times.sort()
    return {
        "calls": calls,
        "seconds": round(sent, 2),
        "records": len(comparisons),
        "records_per_s": round(len(comparisons) / sent),
        "dropped": dict(drops),
        "judged": sum("judge" in r for r in comparisons),
        "judge": stats["judge"],
        "call_p50_us": round(statistics.median(times) * 1e6),
        "call_p99_us": round(times[int(len(times) * 0.99)] * 1e6),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s of traffic")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else 20.0
    # The budget: 80 % of what 20 % sampling would ask, so that it binds and is seen to.
    asked = seconds * RATE * SAMPLE * 1.1
    budget = int(asked * 0.8)
    judge = Judge(sample=SAMPLE, both_orders=0.1, budget=budget, per=60.0, threads=2, queue=64)
    with simulator() as url, tempfile.TemporaryDirectory() as tmp:
        plain = run(url, Path(tmp) / "plain.jsonl", seconds, None)
        judged = run(url, Path(tmp) / "judged.jsonl", seconds, judge)
    j = judged["judge"]
    print(
        f"{plain['calls']:,} calls at {RATE}/s; judge {JUDGE_MS} ms, {SAMPLE:.0%} sampled, "
        f"budget {budget}/min"
    )
    for name, r in (("without a judge", plain), ("with the judge", judged)):
        print(
            f"{name:16} {r['records']:,} records ({r['records_per_s']:,}/s), dropped "
            f"{sum(r['dropped'].values())}, call p50 {r['call_p50_us']} us "
            f"p99 {r['call_p99_us']} us"
        )
    print(
        f"judge: {j['calls']} calls (budget {budget}), {judged['judged']} pairs judged, "
        f"skipped {j['skipped']}"
    )
    checks = {
        "every pair recorded": judged["records"] == judged["calls"],
        "no comparison dropped": not judged["dropped"] and not plain["dropped"],
        "judge calls within the budget": j["calls"] <= budget,
        "the budget counted": j["skipped"].get("budget", 0) > 0,
        "calls no slower (p50 within 1.5x)": judged["call_p50_us"]
        <= 1.5 * plain["call_p50_us"] + 50,
    }
    for name, ok in checks.items():
        print(f"  {name}: {'PASS' if ok else 'FAIL'}")
    if args.json:
        figures = {
            "rate": RATE,
            "judge_ms": JUDGE_MS,
            "sample": SAMPLE,
            "budget_per_min": budget,
            "plain": plain,
            "judged": judged,
            "checks": checks,
        }
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
