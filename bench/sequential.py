"""How often rollback tests that are checked again and again roll back for nothing.

    python bench/sequential.py            # full run: 200 seeded runs of 10,000 pairs
    python bench/sequential.py --quick    # smoke run for CI: 30 runs of 3,000 pairs

Simulated traffic, no I/O: each pair's legacy and task path fail with the same chance
(5 %) and take log-normal times from the same distribution (A/A: no difference). The
rollback lines sit where the difference starts (an error increase over 0; a latency
ratio over 1), the hardest place to keep false rollbacks down, and each test is checked
after every 50 pairs, to the end of the run:

- ``sequential``: the always-valid bounds of :mod:`shim.analysis.sequential`, over
  every pair of the stage; rolls back the first time a bound crosses its line;
- ``fixed watcher``: the rule ``shim watch`` used before it took the always-valid
  bounds, on the same pairs (one-sided 95 % bounds over its last 200 pairs, a breach
  after three failing checks in a row or five in the stage), on the error gate (it had
  no latency gate).

A false rollback is a run that rolled back at all. With a planted regression (the
task path failing 2 points more often: 7 % against 5 %; or every task-path time 1.5
times legacy's, so its p95 too, against a 1.25 line) the median pairs to rollback is
reported, over the same number of seeded runs. Target: the sequential false-rollback
rate at most 5 % (the stated alpha), the upper end of its 95 % interval reported.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections import deque
from pathlib import Path
from typing import Any

from shim.analysis.policy import Gates
from shim.analysis.sequential import ALPHA, StageTests
from shim.analysis.stats import wilson

STEP = 50
BASE_ERROR = 0.05


def pairs(rng: random.Random, n: int, error: float, slower: float) -> list[tuple[Any, ...]]:
    """``n`` pairs: (legacy ok, task ok, legacy ms, task ms)."""
    out = []
    for _ in range(n):
        legacy_ms = 100 * rng.lognormvariate(0, 0.4)
        task_ms = 100 * rng.lognormvariate(0, 0.4) * slower
        out.append((rng.random() >= BASE_ERROR, rng.random() >= error, legacy_ms, task_ms))
    return out


def sequential_rollback(run: list[tuple[Any, ...]], latency_line: float) -> int | None:
    """The pairs after which the always-valid tests roll back; None if they never do."""
    tests = StageTests()
    for i, (legacy_ok, task_ok, legacy_ms, task_ms) in enumerate(run, 1):
        tests.add(legacy_ok, task_ok, None, None, legacy_ms, task_ms)
        if i % STEP == 0 and tests.breaches(
            error_increase=0.0, mismatch=None, latency_ratio=latency_line
        ):
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
    for i, (legacy_ok, task_ok, _, _) in enumerate(run, 1):
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
    aa_seq, aa_watch = [], []
    error_seq, error_watch, slow_seq = [], [], []
    for seed in range(runs):
        aa = pairs(random.Random(seed), n, BASE_ERROR, 1.0)
        aa_seq.append(sequential_rollback(aa, 1.0))
        aa_watch.append(watcher_rollback(aa))
        worse = pairs(random.Random(10_000 + seed), n, BASE_ERROR + 0.02, 1.0)
        error_seq.append(sequential_rollback(worse, 1.0))
        error_watch.append(watcher_rollback(worse))
        slow = pairs(random.Random(20_000 + seed), n, BASE_ERROR, 1.5)
        slow_seq.append(sequential_rollback(slow, 1.25))
    return {
        "runs": runs,
        "pairs": n,
        "step": STEP,
        "alpha": ALPHA,
        "aa_sequential": rate(sum(x is not None for x in aa_seq), runs),
        "aa_fixed_watcher": rate(sum(x is not None for x in aa_watch), runs),
        "error_regression": {
            "sequential_median_pairs": median_pairs(error_seq),
            "sequential_caught": sum(x is not None for x in error_seq),
            "watcher_median_pairs": median_pairs(error_watch),
            "watcher_caught": sum(x is not None for x in error_watch),
        },
        "latency_regression": {
            "sequential_median_pairs": median_pairs(slow_seq),
            "sequential_caught": sum(x is not None for x in slow_seq),
        },
    }


def report(r: dict[str, Any]) -> bool:
    seq, fixed = r["aa_sequential"], r["aa_fixed_watcher"]
    print(f"A/A, {r['runs']} runs of {r['pairs']:,} pairs, checked every {r['step']} pairs:")
    for name, found in (("sequential", seq), ("fixed watcher", fixed)):
        print(
            f"  {name:<14} false rollbacks {found['hits']:>3}/{found['runs']} = "
            f"{found['rate']:.1%} (95 % CI {found['low']:.1%} to {found['high']:.1%})"
        )
    err, slow = r["error_regression"], r["latency_regression"]
    print(
        f"error rate +2 points: sequential caught {err['sequential_caught']}/{r['runs']}, "
        f"median {err['sequential_median_pairs']} pairs; fixed watcher caught "
        f"{err['watcher_caught']}/{r['runs']}, median {err['watcher_median_pairs']} pairs"
    )
    print(
        f"latency x1.5 (line 1.25): sequential caught {slow['sequential_caught']}/{r['runs']}, "
        f"median {slow['sequential_median_pairs']} pairs"
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
