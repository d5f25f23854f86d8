"""How fast ``shim report`` reads a big log, beside a plain Python reader, in one run.

    python bench/report.py            # 1,000,000 records
    python bench/report.py --quick    # 100,000 records, for CI

The headline is the command a user runs, ``shim report LOG --format json``, each time in
a fresh process (the console script next to this interpreter, else ``python -m
shim``), timed end to end: start-up, reading, statistics and the JSON written to a
pipe. Beside it, ``build_report`` in this process (the reading and statistics alone,
DuckDB and numpy already imported), and the command on a one-record log (what start-up
costs). The baseline is what one would write without DuckDB: ``json.loads`` per line
and ``statistics`` for percentiles and the bootstrap, computing the same figures per
task; the run checks that the command, ``build_report`` and the baseline agree. The
command's runs sit on both sides of the baseline's, so that a slow spell of a shared
machine weighs on both readers alike.

Target: the command on 1,000,000 records in <= 1.5 s, start-up included, and >= 10x
faster than the baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from shim.analysis.report import build_report
from shim.analysis.stats import newcombe_difference, wilson

#: The target for 1,000,000 records (scaled to the records read), and the speed-up.
TARGET_S = 1.5
TARGET_SPEEDUP = 10.0

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


def command() -> list[str]:
    """``shim`` as a user runs it: the console script next to this interpreter when there
    is one, else ``python -m shim``."""
    script = Path(sys.executable).with_name("shim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shim"]


def run_cli(path: Path, cwd: str, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """``shim report PATH --format json`` in a new process: its wall time, start to
    exit, and the report it wrote to the pipe."""
    argv = [*command(), "report", str(path), "--format", "json"]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, check=False)
    took = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1 is a ROLLBACK verdict, a report all the same
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}")
    return took, json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 records")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    n = 100_000 if args.quick else 1_000_000
    # Fresh processes as an installed package starts them: no PYTHON* settings (such
    # as PYTHONDONTWRITEBYTECODE) from whoever runs the benchmark.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "comparisons.jsonl"
        write_log(path, n)
        small = Path(tmp) / "one.jsonl"
        write_log(small, 1)
        os.sync()  # the fresh logs are flushed before any reader starts
        size = path.stat().st_size
        run_cli(path, tmp, env)  # warm-up: the file cache, .pyc files
        small_runs = [run_cli(small, tmp, env)[0] for _ in range(5)]
        cli_runs: list[float] = []

        def cli(count: int) -> dict[str, Any]:
            for _ in range(count):
                took, report = run_cli(path, tmp, env)
                cli_runs.append(took)
            return report

        cli(3)
        started = time.perf_counter()
        base = baseline(path)
        theirs = time.perf_counter() - started
        from_cli = cli(2)
        runs: list[float] = []
        for _ in range(3):
            started = time.perf_counter()
            report = build_report([str(path)])
            runs.append(time.perf_counter() - started)
    _agree(report, base)
    _agree(from_cli, base)
    ours, cli_s = statistics.median(runs), statistics.median(cli_runs)
    limit = TARGET_S * n / 1_000_000
    print(f"{n:,} records ({size / 1e6:,.0f} MB)")
    print(
        f"shim report --format json (new process): {cli_s:6.2f} s  "
        f"({min(cli_runs):.2f}-{max(cli_runs):.2f} s over {len(cli_runs)} runs)"
    )
    print(
        f"build_report in process:                 {ours:6.2f} s  "
        f"({min(runs):.2f}-{max(runs):.2f} s)"
    )
    print(f"shim report on a one-record log:         {min(small_runs):6.2f} s  (best of 5)")
    rate = f"{n / theirs:,.0f} records/s"
    print(f"json.loads + statistics:                 {theirs:6.2f} s  ({rate})")
    print(f"speed-up: {theirs / cli_s:.1f}x (the command), {theirs / ours:.1f}x (in process)")
    ok = cli_s <= limit and theirs / cli_s >= TARGET_SPEEDUP
    if args.json:
        figures = {
            "records": n,
            "megabytes": round(size / 1e6),
            "cli_s": round(cli_s, 3),
            "cli_runs_s": [round(r, 3) for r in cli_runs],
            "cli_speedup": round(theirs / cli_s, 2),
            "cli_one_record_s": round(min(small_runs), 3),
            "report_s": round(ours, 3),
            "report_runs_s": [round(r, 3) for r in runs],
            "baseline_s": round(theirs, 3),
            "speedup": round(theirs / ours, 2),
            "target_s": limit,
            "target_speedup": TARGET_SPEEDUP,
            "pass": ok,
        }
        args.json.write_text(json.dumps(figures, indent=2))
    print(
        f"target: shim report on {n:,} records <= {limit:.2f} s, start-up included, and "
        f">= {TARGET_SPEEDUP:.0f}x the baseline: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
