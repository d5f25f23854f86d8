"""Kiwi traffic for the runbooks and the demo: call one task's call sites N times the
way the app does, then write every comparison and exit.

    python examples/kiwi/traffic.py meal_plan --calls 700

One call is one app request: a meal plan (router, plan, timing estimate on the same
router, then the router's ctx exited), a recipe suggestion, a receipt, a recipe scan,
a label capture (async) or a streamed recipe (an async generator, read to its end).
Each runs as one of 500 users (``shim.context(user_id=...)``). Configured like the app,
by the environment: ``CF_ORCH_URL``, ``SHIM_FLAGS``, ``SHIM_LOG`` (``SHIM_REGISTRY`` /
``SHIM_ASSIGNMENTS`` default to kiwi's files here; ``SHIM_METRICS`` serves Prometheus
metrics, ``--linger`` keeps them up after the calls). Prints how the calls were served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shim import context

HERE = Path(__file__).resolve().parent
PANTRY = [
    "rice",
    "chickpeas",
    "spinach",
    "eggs",
    "feta",
    "tomatoes",
    "oats",
    "lemons",
    "peanut butter",
    "sweet potato",
]
#: The tasks whose call sites are sync, and those that are async.
SYNC_TASKS = ("meal_plan", "recipe_generation", "ocr", "recipe_scan")
ASYNC_TASKS = ("barcode_scan", "recipe_stream")


def photo(kind: str, n: int) -> bytes:
    """A stand-in photo: JPEG magic bytes and a label (every node reads it the same)."""
    return b"\xff\xd8\xff\xe0" + f"{kind}-{n:04d}".encode()


def plan_week(kiwi: Any, pantry: list[str]) -> tuple[Any, Any]:
    """The meal-plan request: one router for the plan and the timing, then ``ctx`` exits."""
    router, ctx = kiwi.get_meal_plan_router()
    try:
        plan = kiwi.generate_plan(pantry, ["dinner"], "vegetarian", router)
        timing = kiwi.estimate_timing(plan[0].suggestion if plan else "Soup", pantry, router)
    finally:
        ctx.__exit__(None, None, None)
    return plan, timing


def app_call(kiwi: Any, task: str, user: str, rng: random.Random) -> Any:
    """One app request of a sync task, as ``user``."""
    pantry = rng.sample(PANTRY, 4)
    with context(user_id=user):
        if task == "meal_plan":
            return plan_week(kiwi, pantry)
        if task == "recipe_generation":
            return kiwi.LLMRecipeGenerator().generate(kiwi.RecipeRequest(pantry_items=pantry))
        if task == "ocr":
            return kiwi.VisionLanguageOCR().extract_receipt_data(
                photo("receipt", rng.randrange(99))
            )
        if task == "recipe_scan":
            pages = [photo("recipe-card", rng.randrange(99)) for _ in range(rng.randint(1, 2))]
            return kiwi.RecipeScanner().scan(pages, pantry)
    raise ValueError(f"no sync call site for {task}")


async def aapp_call(kiwi: Any, task: str, user: str, rng: random.Random) -> Any:
    """One app request of an async task, as ``user``."""
    with context(user_id=user):
        if task == "barcode_scan":
            return await kiwi.extract_label(photo("label", rng.randrange(99)))
        if task == "recipe_stream":
            return await kiwi.stream_recipe(kiwi.RecipeRequest(pantry_items=rng.sample(PANTRY, 4)))
    raise ValueError(f"no async call site for {task}")


def drive(kiwi: Any, plan: list[str], rng: random.Random, tick: Any = None) -> int:
    """Run ``plan`` (task names): sync tasks from 8 threads, then async ones on an event
    loop, 16 at a time (streams 4: what a coordinator holds at once by default); returns
    how many requests raised (as they would in the app)."""
    users = [f"user-{i}" for i in range(500)]
    sync = [(t, rng.choice(users), random.Random(rng.random())) for t in plan if t in SYNC_TASKS]
    asyn = [(t, rng.choice(users), random.Random(rng.random())) for t in plan if t in ASYNC_TASKS]

    def one(args: tuple[str, str, random.Random]) -> int:
        try:
            app_call(kiwi, *args)
        except Exception:
            return 1  # the legacy call failed: the app would see the same error
        finally:
            if tick is not None:
                tick()
        return 0

    async def aone(args: tuple[str, str, random.Random]) -> int:
        try:
            await aapp_call(kiwi, *args)
        except Exception:
            return 1
        finally:
            if tick is not None:
                tick()
        return 0

    async def async_calls() -> int:
        failed = 0
        streams = [a for a in asyn if a[0] == "recipe_stream"]
        others = [a for a in asyn if a[0] != "recipe_stream"]
        for calls, width in ((streams, 4), (others, 16)):
            for start in range(0, len(calls), width):
                batch = calls[start : start + width]
                failed += sum(await asyncio.gather(*(aone(a) for a in batch)))
        await kiwi.aclose()  # this loop's comparisons
        return failed

    with ThreadPoolExecutor(8, thread_name_prefix="kiwi") as pool:
        failed = sum(pool.map(one, sync))
    # After the threads, not beside them: a loop starved of the GIL by eight busy
    # threads would add their work to every async call's latency.
    return failed + (asyncio.run(async_calls()) if asyn else 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=[*SYNC_TASKS, *ASYNC_TASKS])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="seconds to stay up after the calls (serving SHIM_METRICS for a last scrape)",
    )
    args = parser.parse_args()
    os.environ.setdefault("SHIM_REGISTRY", str(HERE / "orch" / "model_registry.yaml"))
    os.environ.setdefault("SHIM_ASSIGNMENTS", str(HERE / "orch" / "assignments.yaml"))
    if "CF_ORCH_URL" in os.environ:  # the streaming proxy is the same coordinator here
        os.environ.setdefault("COORDINATOR_URL", os.environ["CF_ORCH_URL"])
        os.environ.setdefault("COORDINATOR_KIWI_KEY", "kiwi-traffic")
    sys.path.insert(0, str(HERE.parent.parent))
    from shim import ShimError

    try:
        from examples.kiwi import callsites as kiwi
    except ShimError as exc:  # bad configuration: say what, not a traceback
        print(f"kiwi cannot start: {exc}", file=sys.stderr)
        return 2

    failed = drive(kiwi, [args.task] * args.calls, random.Random(args.seed))
    kiwi.close()
    served = _served(Path(os.environ["SHIM_LOG"]), args.task) if "SHIM_LOG" in os.environ else {}
    print(
        f"kiwi.{args.task}: {args.calls} calls ({failed} failed on legacy); the log's "
        "comparisons of this task by who served: "
        + (", ".join(f"{k} {v}" for k, v in sorted(served.items())) or "none"),
        flush=True,
    )
    time.sleep(args.linger)
    return 0


def _served(log: Path, task: str) -> Counter[str]:
    served: Counter[str] = Counter()
    if log.is_file():  # (not /dev/full, say)
        for line in log.read_text().splitlines():
            row = json.loads(line)
            if row.get("event") == "shim.comparison" and row.get("task") == task:
                served[row["served_by"]] += 1
    return served


if __name__ == "__main__":
    sys.exit(main())
