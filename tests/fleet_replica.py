"""One replica of a kiwi-like app for the fleet tests: a Shim over the simulator with its
own log and Prometheus metrics on a port, making ``--calls`` meal-plan calls at
``--rate`` a second (every ``--mismatch-every``-th legacy answer shaped otherwise; with
``--fleet-rate``, under a fleet's shadow budget shared by ``--replicas``), then serving
its metrics until it is stopped. Prints ``done N in S s`` once its records are written.

    python tests/fleet_replica.py --orch URL --flags F --log L --port P --calls 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import prometheus_client

from shim import ShadowBudget, Shim, TaskRequest, flags
from shim.metrics import PrometheusMetrics

HERE = Path(__file__).resolve().parent
KIWI = HERE.parent / "examples" / "kiwi"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orch", required=True)
    parser.add_argument("--flags", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--mismatch-every", type=int, default=0)
    parser.add_argument("--fleet-rate", type=float, help="the fleet's comparisons a second")
    parser.add_argument("--replicas", type=int, default=1, help="... shared by this many")
    args = parser.parse_args()

    metrics = PrometheusMetrics(prometheus_client.CollectorRegistry())
    metrics.serve(args.port)
    shim = Shim(
        args.orch,
        flags=flags.FileFlags(args.flags, poll_interval=0.2),
        log_path=args.log,
        metrics=metrics,
        registry=KIWI / "orch" / "model_registry.yaml",
        assignments=KIWI / "orch" / "assignments.yaml",
        budgets=(
            {"kiwi.meal_plan": ShadowBudget(per_second=args.fleet_rate, replicas=args.replicas)}
            if args.fleet_rate
            else None
        ),
    )

    @shim.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda i: TaskRequest(prompt=f"plan week {i}"),
        legacy_model="qwen2.5-3b-instruct",
    )
    def plan(i: int) -> Any:
        time.sleep(0.002)  # legacy takes a moment, as a model does
        if args.mismatch_every and i % args.mismatch_every == 0:
            return {"plan": "a week of soups"}  # another shape than the coordinator's
        return [{"day": 1, "meal_type": "dinner", "recipe_id": i, "suggestion": "soup"}]

    started = time.monotonic()
    for i in range(args.calls):
        plan(i)
        time.sleep(max(0.0, started + (i + 1) / args.rate - time.monotonic()))
    elapsed = time.monotonic() - started
    shim.flush(timeout=60)
    print(f"done {args.calls} in {elapsed:.3f} s", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        shim.close()


if __name__ == "__main__":
    sys.exit(main())
