"""How long the comparators take, side by side with parsing the same outputs.

    python bench/compare.py            # full run
    python bench/compare.py --quick    # smoke run for CI

Comparisons run off the caller's path (on the recorder thread), but they set how many
records per second the shim can assemble. Each figure is the median of many timed
calls; the anchor is ``json.loads`` of both outputs of the pair.

Target: comparing a 2 KB meal-plan JSON pair <= 200 us median.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from shim.comparators import KIWI_RECIPE, JsonOutput
from shim.sim import generate
from shim.sim._outputs import apply_drift

TARGET_US = 200.0


def median_us(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def plan(size: int, rng: random.Random) -> str:
    """A meal plan of about ``size`` bytes, as a text model writes it: weeks of the
    simulator's plans, one row at a time until the size is reached."""
    rows: list[Any] = []
    week: list[Any] = []
    while len(text := json.dumps(rows, indent=2)) < size:
        week = week or json.loads(generate("meal_plan", rng))
        rows.append(week.pop(0))
    return text


def pair(size: int, rng: random.Random) -> tuple[str, str]:
    """Two meal plans of about ``size`` bytes each."""
    return plan(size, rng), plan(size, rng)


def run(quick: bool) -> dict[str, dict[str, float]]:
    n = 500 if quick else 5000
    rng = random.Random(7)
    a, b = pair(2048, rng)
    drifted = apply_drift(b, "meal_plan", "type_change", random.Random(1))
    fenced = apply_drift(b, "meal_plan", "fence", random.Random(1))
    recipe_a, recipe_b = generate("recipe", rng), generate("recipe", rng)
    json_output = JsonOutput()
    cases: dict[str, Callable[[], Any]] = {
        "json.loads of both (anchor)": lambda: (json.loads(a), json.loads(b)),
        "meal plan, same shape": lambda: json_output.compare(a, b),
        "meal plan, fenced": lambda: json_output.compare(a, fenced),
        "meal plan, type change": lambda: json_output.compare(a, drifted),
        "recipe text sections": lambda: KIWI_RECIPE.compare(recipe_a, recipe_b),
    }
    results = {}
    for name, fn in cases.items():
        fn()  # warm caches and deepdiff's imports
        med, p99 = median_us(fn, n)
        results[name] = {"median_us": med, "p99_us": p99, "samples": n}
    results["_sizes"] = {"legacy_bytes": len(a), "candidate_bytes": len(b)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--json", type=argparse.FileType("w"), help="also write figures here")
    args = parser.parse_args()
    results = run(args.quick)
    sizes = results.pop("_sizes")
    anchor = results["json.loads of both (anchor)"]["median_us"]
    print(f"meal-plan pair: {sizes['legacy_bytes']:,} and {sizes['candidate_bytes']:,} bytes")
    print(f"{'comparison':<30}{'median':>11}{'p99':>11}{'x anchor':>10}")
    for name, r in results.items():
        print(
            f"{name:<30}{r['median_us']:>8.1f} us{r['p99_us']:>8.1f} us"
            f"{r['median_us'] / anchor:>9.1f}x"
        )
    ok = results["meal plan, same shape"]["median_us"] <= TARGET_US
    print(
        f"target: same-shape 2 KB meal-plan pair <= {TARGET_US:g} us median: "
        f"{'PASS' if ok else 'FAIL'}"
    )
    if args.json:
        json.dump(results, args.json, indent=2)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
