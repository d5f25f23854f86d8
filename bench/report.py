"""How fast ``shim report`` reads a big log, beside a plain Python reader, in one run.

    python bench/report.py            # 1,000,000 records
    python bench/report.py --quick    # 100,000 records, for CI

The baseline is what one would write without DuckDB: ``json.loads`` per line and
``statistics`` for rates and percentiles, the same figures per task.

Target: 1,000,000 records in <= 5 s, >= 10x faster than the baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from shim._report import build_report

TASKS = ("kiwi.meal_plan", "kiwi.recipe_generation", "kiwi.ocr", "kiwi.barcode_scan")


def write_log(path: Path, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    template = {
        "event": "shim.comparison",
        "schema": 1,
        "ts": "2026-11-26T12:00:00.000000Z",
        "call_site": "examples.kiwi.callsites:plan_week",
        "call_id": "0" * 32,
        "stage": "shadow",
        "served_by": "legacy",
        "legacy": {
            "ok": True,
            "latency_ms": 0.0,
            "model": "qwen2.5-3b-instruct",
            "error": None,
            "output_sha256": "a" * 64,
            "output_bytes": 1234,
        },
        "candidate": {
            "ok": True,
            "latency_ms": 0.0,
            "model": "qwen2.5-3b-instruct",
            "service_type": "cf-text",
            "node_id": "node-a",
            "status": 200,
            "error": None,
            "output_sha256": "b" * 64,
            "output_bytes": 1180,
        },
        "model": {
            "verdict": "same",
            "expected": "qwen2.5-3b-instruct",
            "routing_error": False,
            "reason": None,
        },
        "structure": {"match": True, "legacy_valid": True, "candidate_valid": True, "diff": None},
        "latency_ratio": 0.8,
    }
    with path.open("w") as out:
        for _ in range(n):
            product, _, task = rng.choice(TASKS).partition(".")
            legacy_ms = 800 * math.exp(rng.gauss(0, 0.4))
            template["product"], template["task"] = product, task
            template["legacy"]["latency_ms"] = round(legacy_ms, 3)
            template["candidate"]["latency_ms"] = round(legacy_ms * 0.8, 3)
            template["candidate"]["ok"] = rng.random() > 0.003
            template["structure"]["match"] = rng.random() > 0.002
            out.write(json.dumps(template) + "\n")


def baseline(path: Path) -> dict[str, Any]:
    """The same per-task figures with json.loads and statistics."""
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with path.open() as handle:
        for line in handle:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("event") != "shim.comparison":
                continue
            name = f"{r['product']}.{r['task']}"
            c = counts[name]
            c["n"] += 1
            c["legacy_errors"] += not r["legacy"]["ok"]
            c["candidate_errors"] += not r["candidate"]["ok"]
            c["matches"] += bool(r["structure"]["match"])
            if r["legacy"]["ok"]:
                by[name]["legacy"].append(r["legacy"]["latency_ms"])
            if r["candidate"]["ok"]:
                by[name]["candidate"].append(r["candidate"]["latency_ms"])
    out = {}
    for name, c in counts.items():
        q = {side: statistics.quantiles(values, n=100) for side, values in by[name].items()}
        out[name] = {
            **c,
            "p50": {s: v[49] for s, v in q.items()},
            "p99": {s: v[98] for s, v in q.items()},
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 records")
    args = parser.parse_args()
    n = 100_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "comparisons.jsonl"
        write_log(path, n)
        size = path.stat().st_size
        started = time.perf_counter()
        report = build_report([str(path)])
        ours = time.perf_counter() - started
        started = time.perf_counter()
        base = baseline(path)
        theirs = time.perf_counter() - started
    assert report["records"] == n and len(base) == len(TASKS)
    print(f"{n:,} records ({size / 1e6:,.0f} MB)")
    print(f"shim report (DuckDB):        {ours:6.2f} s  ({n / ours:,.0f} records/s)")
    print(f"json.loads + statistics:     {theirs:6.2f} s  ({n / theirs:,.0f} records/s)")
    print(f"speed-up: {theirs / ours:.1f}x")
    ok = ours <= 5.0 * n / 1_000_000 and theirs / ours >= 10
    print(f"target: 1,000,000 records <= 5 s and >= 10x the baseline: {'PASS' if ok else 'FAIL'}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
