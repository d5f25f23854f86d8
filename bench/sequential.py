"""How often rollback tests that are checked again and again roll back for nothing.

    python bench/sequential.py            # full run: 200 seeded runs of 10,000 pairs
    python bench/sequential.py --quick    # smoke run for CI: 30 runs of 3,000 pairs

Simulated traffic, no I/O: each pair's legacy and task path fail with the same chance
(5 %), take log-normal times from the same distribution and cost the same (200 to 800
tokens; A/A: no difference). The rollback lines sit where the difference starts (an
error increase over 0; a typical latency ratio, a p95 ratio and a cost ratio over 1),
the hardest place to keep false rollbacks down, and each test is checked after every 50
pairs, to the end of the run:

- ``sequential``: the always-valid bounds of :mod:`shim.analysis.sequential`, over
  every pair of the stage; rolls back the first time a bound crosses its line;
- ``fixed watcher``: the rule ``shim watch`` used before it took the always-valid
  bounds, on the same pairs (one-sided 95 % bounds over its last 200 pairs, a breach
  after three failing checks in a row or five in the stage), on the error gate (it had
  no latency gate).

A false rollback is a run that rolled back at all. With a planted regression the
median pairs to rollback is reported, over the same number of seeded runs: the task
path failing 2 points more often (7 % against 5 %); every task-path time 1.5 times
legacy's (against a 1.10 typical-ratio line); only the slowest tenth of task-path times
1.5 times as long, so its p95 is 1.5 times legacy's and its median the same (against a
1.25 p95 line); every task-path call costing 1.5 times as much (a 1.25 cost line).
Target: the sequential false-rollback rate at most 5 % (the stated alpha), the upper
end of its 95 % interval reported.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections import deque
from pathlib import Path
from typing import Any

from shim.analysis.policy import Gates
from shim.analysis.sequential import ALPHA
from shim.analysis.stage_tests import StageTests
from shim.analysis.stats import wilson

STEP = 50
BASE_ERROR = 0.05


#: the task path's times over this (its p90) are the tail a tail regression slows
P90_MS = 100 * math.exp(1.2816 * 0.4)
#: the lines of no difference (A/A), and the built-in lines a regression is held to
AA_LINES = {"error_increase": 0.0, "latency_ratio": 1.0, "p95_ratio": 1.0, "cost_ratio": 1.0}
LINES = {"error_increase": 0.0, "latency_ratio": 1.10, "p95_ratio": 1.25, "cost_ratio": 1.25}


def pairs(
    rng: random.Random,
    n: int,
    error: float = BASE_ERROR,
    slower: float = 1.0,
    tail: float = 1.0,
    dearer: float = 1.0,
) -> list[tuple[Any, ...]]:
    """``n`` pairs: (legacy ok, task ok, legacy ms, task ms, legacy cost, task cost)."""
    out = []
    for _ in range(n):
        legacy_ms = 100 * rng.lognormvariate(0, 0.4)
        task_ms = 100 * rng.lognormvariate(0, 0.4) * slower
        if task_ms > P90_MS:
            task_ms *= tail
        costs = rng.randint(200, 800) * 1e-6, rng.randint(200, 800) * 1e-6 * dearer
        ok = rng.random() >= BASE_ERROR, rng.random() >= error
        out.append((*ok, legacy_ms, task_ms, *costs))
    return out


def sequential_rollback(run: list[tuple[Any, ...]], lines: dict[str, float]) -> int | None:
    """The pairs after which the always-valid tests roll back; None if they never do."""
    tests = StageTests()
    for i, (legacy_ok, task_ok, *measured) in enumerate(run, 1):
        tests.add(legacy_ok, task_ok, None, None, *measured)
        if i % STEP == 0 and tests.breaches(mismatch=None, **lines):
            return i
    return None


_FIXED = Gates(rollback_error_increase=0.0, rollback_mismatch=1.0, watch_step=STEP)


def watcher_rollback(run: list[tuple[Any, ...]]) -> int | None:
    """The pairs after which the fixed-bound rule ``shim watch`` used before rolls
    back (one-sided 95 % bounds over its last ``watch_window`` pairs, checked every
    ``watch_step``; a breach after ``watch_consecutive`` failing checks in a row or
    ``watch_cumulative`` in the stage); None if never."""
    gates = _FIXED
    window: deque[tuple[bool, bool]] = deque(maxlen=gates.watch_window)
    consecutive = cumulative = 0
    for i, (legacy_ok, task_ok, *_) in enumerate(run, 1):
        window.append((legacy_ok, task_ok))
        if i % gates.watch_step:
            continue
        failing = gates.rollback_reasons(
            pairs=len(window),
            legacy_errors=sum(not legacy for legacy, _ in window),
            candidate_errors=sum(not task for _, task in window),
            compared=0,
            mismatches=0,
            routing_errors=0,
        )
        consecutive = consecutive + 1 if failing else 0
        cumulative += bool(failing)
        if consecutive >= gates.watch_consecutive or cumulative >= gates.watch_cumulative:
            return i
    return None


def rate(hits: int, runs: int) -> dict[str, float]:
    found = wilson(hits, runs)
    assert found is not None
    return {"rate": found[0], "low": found[1], "high": found[2], "runs": runs, "hits": hits}


def median_pairs(found: list[int | None]) -> float | None:
    done = [n for n in found if n is not None]
    return statistics.median(done) if done else None


def run(quick: bool) -> dict[str, Any]:
    runs, n = (30, 3000) if quick else (200, 10_000)
    aa_seq, aa_watch, error_watch = [], [], []
    planted: dict[str, list[int | None]] = {name: [] for name in REGRESSIONS}
    for seed in range(runs):
        aa = pairs(random.Random(seed), n)
        aa_seq.append(sequential_rollback(aa, AA_LINES))
        aa_watch.append(watcher_rollback(aa))
        for k, (name, (planting, lines)) in enumerate(REGRESSIONS.items(), 1):
            worse = pairs(random.Random(10_000 * k + seed), n, **planting)
            planted[name].append(sequential_rollback(worse, lines))
            if name == "error_regression":
                error_watch.append(watcher_rollback(worse))
    found: dict[str, Any] = {
        "runs": runs,
        "pairs": n,
        "step": STEP,
        "alpha": ALPHA,
        "aa_sequential": rate(sum(x is not None for x in aa_seq), runs),
        "aa_fixed_watcher": rate(sum(x is not None for x in aa_watch), runs),
    }
    for name, caught in planted.items():
        found[name] = {
            "sequential_median_pairs": median_pairs(caught),
            "sequential_caught": sum(x is not None for x in caught),
        }
    found["error_regression"] |= {
        "watcher_median_pairs": median_pairs(error_watch),
        "watcher_caught": sum(x is not None for x in error_watch),
    }
    return found


#: each planted regression: how the pairs are made, and the lines it is held to
REGRESSIONS: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "error_regression": ({"error": BASE_ERROR + 0.02}, {"error_increase": 0.0}),
    "latency_regression": ({"slower": 1.5}, LINES),
    "p95_regression": ({"tail": 1.5}, LINES),
    "cost_regression": ({"dearer": 1.5}, LINES),
}


def report(r: dict[str, Any]) -> bool:
    seq, fixed = r["aa_sequential"], r["aa_fixed_watcher"]
    print(f"A/A, {r['runs']} runs of {r['pairs']:,} pairs, checked every {r['step']} pairs:")
    for name, found in (("sequential", seq), ("fixed watcher", fixed)):
        print(
            f"  {name:<14} false rollbacks {found['hits']:>3}/{found['runs']} = "
            f"{found['rate']:.1%} (95 % CI {found['low']:.1%} to {found['high']:.1%})"
        )
    err = r["error_regression"]
    print(
        f"error rate +2 points: sequential caught {err['sequential_caught']}/{r['runs']}, "
        f"median {err['sequential_median_pairs']} pairs; fixed watcher caught "
        f"{err['watcher_caught']}/{r['runs']}, median {err['watcher_median_pairs']} pairs"
    )
    for name, what in (
        ("latency_regression", "every time x1.5 (typical-ratio line 1.10)"),
        ("p95_regression", "slowest tenth x1.5, p95 x1.5 (p95 line 1.25)"),
        ("cost_regression", "cost per call x1.5 (cost line 1.25)"),
    ):
        found = r[name]
        print(
            f"{what}: sequential caught {found['sequential_caught']}/{r['runs']}, "
            f"median {found['sequential_median_pairs']} pairs"
        )
    ok = seq["rate"] <= r["alpha"]
    print(f"target: sequential false-rollback rate <= {r['alpha']:.0%}: {'PASS' if ok else 'FAIL'}")
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
