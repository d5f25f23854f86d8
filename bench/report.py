"""How fast ``shim report`` reads a big log, beside a plain Python reader, in one run.

    python bench/report.py            # 1,000,000 records
    python bench/report.py --quick    # 100,000 records, for CI

The baseline is what one would write without DuckDB: ``json.loads`` per line and
``statistics`` for percentiles and the bootstrap, computing the same figures per task
(the run checks that both agree).

Target: 1,000,000 records in <= 5 s, >= 10x faster than the baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from shim.analysis.report import build_report
from shim.analysis.stats import newcombe_difference, wilson

TASKS = ("kiwi.meal_plan", "kiwi.recipe_generation", "kiwi.ocr", "kiwi.barcode_scan")


def write_log(path: Path, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    template = {
        "event": "shim.comparison",
        "schema": 1,
        "ts": "2026-11-26T12:00:00.000000Z",
        "call_site": "shim.demo.kiwi.callsites:plan_week",
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


def baseline(path: Path, seed: int = 0) -> dict[str, Any]:
    """The figures ``shim report`` gives per task, with json.loads and statistics:
    counts and served split, error and match rates with Wilson intervals, the error
    difference, p50/p95/p99 of each path, verdicts, models, drops, and the paired
    bootstrap of the latency ratios (same sample size and resamples as the report)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    latencies: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    verdicts: dict[str, Counter[str]] = defaultdict(Counter)
    models: dict[str, set[str]] = defaultdict(set)
    drops: dict[str, Counter[str]] = defaultdict(Counter)
    bad_lines = 0
    with path.open() as handle:
        for line in handle:
            try:
                r = json.loads(line)
            except ValueError:
                bad_lines += 1
                continue
            if not isinstance(r, dict) or r.get("schema") != 1:
                bad_lines += 1
                continue
            name = f"{r['product']}.{r['task']}"
            if r.get("event") == "shim.dropped":
                drops[name][r["reason"]] += r.get("count", 1)
                continue
            if r.get("event") != "shim.comparison":
                continue
            c = counts[name]
            legacy, candidate, structure = r["legacy"], r["candidate"], r["structure"]
            c["n"] += 1
            c["served_" + r["served_by"]] += 1
            c["legacy_errors"] += not legacy["ok"]
            c["candidate_errors"] += not candidate["ok"]
            if structure.get("match") is not None:
                c["compared"] += 1
                c["matches"] += structure["match"]
                noise = set(structure.get("noise_paths") or ())
                c["mismatches"] += not structure["match"] and not (
                    noise and noise.issuperset(structure.get("diff") or ())
                )
            if structure.get("candidate_valid") is not None:
                c["validated"] += 1
                c["legacy_valid"] += bool(structure.get("legacy_valid"))
                c["candidate_valid"] += bool(structure["candidate_valid"])
            c["routing_errors"] += bool(r["model"].get("routing_error"))
            verdicts[name][r["model"]["verdict"]] += 1
            if candidate.get("model"):
                models[name].add(candidate["model"])
            if legacy["ok"]:
                latencies[name]["legacy"].append(legacy["latency_ms"])
            if candidate["ok"]:
                latencies[name]["candidate"].append(candidate["latency_ms"])
            if legacy["ok"] and candidate["ok"]:
                pairs[name].append((legacy["latency_ms"], candidate["latency_ms"]))
    out: dict[str, Any] = {"bad_lines": bad_lines}
    for name, c in counts.items():
        n = c["n"]
        q = {
            side: statistics.quantiles(values, n=100, method="inclusive")
            for side, values in latencies[name].items()
        }
        out[name] = {
            **c,
            "intervals": {
                "legacy_error_rate": wilson(c["legacy_errors"], n),
                "candidate_error_rate": wilson(c["candidate_errors"], n),
                "error_rate_difference": newcombe_difference(
                    c["candidate_errors"], n, c["legacy_errors"], n
                ),
                "mismatch_rate": wilson(c["mismatches"], c["compared"]),
                "candidate_schema_valid": wilson(c["candidate_valid"], c["validated"]),
            },
            "latency_ms": {s: (v[49], v[94], v[98]) for s, v in q.items()},
            "latency_ratio": _bootstrap(pairs[name], seed),
            "verdicts": dict(verdicts[name]),
            "models": sorted(models[name]),
            "dropped": dict(drops[name]),
        }
    return out


def _bootstrap(
    pairs: list[tuple[float, float]], seed: int, resamples: int = 200, cap: int = 2000
) -> list[tuple[float, float, float]]:
    rng = random.Random(seed)
    sample = rng.sample(pairs, min(cap, len(pairs)))

    def ratios(draw: list[tuple[float, float]]) -> list[float]:
        legacy = statistics.quantiles([a for a, _ in draw], n=100, method="inclusive")
        task = statistics.quantiles([b for _, b in draw], n=100, method="inclusive")
        return [task[i] / legacy[i] for i in (49, 94, 98)]

    boots = [ratios(rng.choices(sample, k=len(sample))) for _ in range(resamples)]
    tail = int(resamples * 0.025)
    out = []
    for i, estimate in enumerate(ratios(sample)):
        values = sorted(b[i] for b in boots)
        out.append((estimate, values[tail], values[resamples - 1 - tail]))
    return out


def _agree(report: dict[str, Any], base: dict[str, Any]) -> None:
    """Both readers found the same figures (quantiles to rounding)."""
    assert report["bad_lines"] == base["bad_lines"]
    assert len(report["tasks"]) == len(base) - 1 == len(TASKS)
    for task in report["tasks"]:
        theirs = base[task["task"]]
        assert task["n"] == theirs["n"]
        assert task["served"]["legacy"] == theirs["served_legacy"]
        assert task["candidate_error_rate"] * task["n"] == theirs["candidate_errors"]
        assert task["model_verdicts"] == theirs["verdicts"]
        for side in ("legacy", "candidate"):
            ours = tuple(task["latency_ms"][side].values())
            assert all(
                math.isclose(a, b, rel_tol=1e-9)
                for a, b in zip(ours, theirs["latency_ms"][side], strict=True)
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 records")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    n = 100_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "comparisons.jsonl"
        write_log(path, n)
        os.sync()  # the fresh log is flushed before either reader starts
        size = path.stat().st_size
        started = time.perf_counter()
        import duckdb  # noqa: F401  (paid once per `shim report`, not per record)
        import numpy  # noqa: F401

        imports = time.perf_counter() - started
        runs: list[float] = []

        def report_runs(count: int) -> dict[str, Any]:
            for _ in range(count):
                started = time.perf_counter()
                report = build_report([str(path)])
                runs.append(time.perf_counter() - started)
            return report

        # The report's runs sit on both sides of the baseline's, so a slow spell of
        # a shared machine weighs on both readers alike.
        report_runs(3)
        started = time.perf_counter()
        base = baseline(path)
        theirs = time.perf_counter() - started
        report = report_runs(2)
        ours = statistics.median(runs)
    _agree(report, base)
    print(f"{n:,} records ({size / 1e6:,.0f} MB); importing duckdb and numpy: {imports:.2f} s")
    spread = f"{min(runs):.2f}-{max(runs):.2f}"
    print(f"shim report (DuckDB):        {ours:6.2f} s  ({n / ours:,.0f} records/s; {spread} s)")
    print(f"json.loads + statistics:     {theirs:6.2f} s  ({n / theirs:,.0f} records/s)")
    print(f"speed-up: {theirs / ours:.1f}x")
    ok = ours <= 5.0 * n / 1_000_000 and theirs / ours >= 10
    if args.json:
        figures = {
            "records": n,
            "megabytes": round(size / 1e6),
            "report_s": round(ours, 3),
            "report_runs_s": [round(r, 3) for r in runs],
            "baseline_s": round(theirs, 3),
            "speedup": round(theirs / ours, 2),
        }
        args.json.write_text(json.dumps(figures, indent=2))
    print(f"target: 1,000,000 records <= 5 s and >= 10x the baseline: {'PASS' if ok else 'FAIL'}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
