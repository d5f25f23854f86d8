"""Kiwi traffic for the runbooks: call one kiwi task's call site N times, the way the
app would, then write every comparison and exit.

    python examples/kiwi/traffic.py meal_plan --calls 700

Configured like the app, by the environment: ``CF_ORCH_URL``, ``SHIM_FLAGS``,
``SHIM_LOG`` (``SHIM_REGISTRY`` / ``SHIM_ASSIGNMENTS`` default to kiwi's files here).
Prints how the calls were served.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PANTRY = ["rice", "chickpeas", "spinach", "eggs", "feta", "tomatoes", "oats", "lemons"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["meal_plan", "recipe_generation", "ocr", "barcode_scan"])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("SHIM_REGISTRY", str(HERE / "orch" / "model_registry.yaml"))
    os.environ.setdefault("SHIM_ASSIGNMENTS", str(HERE / "orch" / "assignments.yaml"))
    sys.path.insert(0, str(HERE.parent.parent))
    from shim import ShimError

    try:
        from examples.kiwi import callsites as kiwi
    except ShimError as exc:  # bad configuration: say what, not a traceback
        print(f"kiwi cannot start: {exc}", file=sys.stderr)
        return 2

    rng = random.Random(args.seed)
    users = [f"user-{i}" for i in range(500)]
    calls: dict[str, Any] = {
        "meal_plan": lambda: kiwi.plan_week(rng.sample(PANTRY, 4), user_id=rng.choice(users)),
        "recipe_generation": lambda: kiwi.router.complete(
            "You write recipes.", "Something with " + rng.choice(PANTRY), user_id=rng.choice(users)
        ),
        "ocr": lambda: kiwi.scan_receipt("iVBORw0KGgo="),
    }
    failed = 0
    if args.task == "barcode_scan":

        async def scans() -> None:
            for start in range(0, args.calls, 16):
                batch = min(16, args.calls - start)
                await asyncio.gather(*(kiwi.scan_barcode("R0lGODlh") for _ in range(batch)))
            await kiwi.aclose()

        asyncio.run(scans())
    else:

        def one(_: int) -> None:
            nonlocal failed
            try:
                calls[args.task]()
            except Exception:
                failed += 1  # the legacy call failed: the app would see the same error

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(args.calls)))
    kiwi.close()
    served = _served(Path(os.environ["SHIM_LOG"]), args.task) if "SHIM_LOG" in os.environ else {}
    print(
        f"kiwi.{args.task}: {args.calls} calls ({failed} failed on legacy); the log's "
        "comparisons of this task by who served: "
        + (", ".join(f"{k} {v}" for k, v in sorted(served.items())) or "none")
    )
    return 0


def _served(log: Path, task: str) -> Counter[str]:
    import json

    served: Counter[str] = Counter()
    if log.is_file():  # (not /dev/full, say)
        for line in log.read_text().splitlines():
            row = json.loads(line)
            if row.get("event") == "shim.comparison" and row.get("task") == task:
                served[row["served_by"]] += 1
    return served


if __name__ == "__main__":
    sys.exit(main())
