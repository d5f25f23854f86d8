"""``shim demo``: kiwi's call sites in shadow on the simulator, then what the log says."""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ._orch import OrchConfig, default_config_path
from ._report import build_report
from ._report_format import table

__all__ = ["run_demo"]

TASKS = ("kiwi.meal_plan", "kiwi.recipe_generation", "kiwi.ocr", "kiwi.barcode_scan")
PANTRY = [
    "rice",
    "chickpeas",
    "spinach",
    "eggs",
    "feta",
    "tomatoes",
    "lemons",
    "oats",
    "peanut butter",
    "sweet potato",
]


def _profile(seed: int) -> Any:
    from .sim import Profile

    # Legacy services are a little slower; the vision task path drifts now and then,
    # as a new vision model that sometimes renames or drops a key would.
    return Profile(
        seed=seed,
        defaults={"latency_ms": 30, "latency_p99_ms": 110},
        legacy={"latency_ms": 40, "latency_p99_ms": 150},
        tasks={"kiwi.ocr": {"drift_rate": 0.3, "drift_kinds": ["missing_key", "renamed_key"]}},
    )


def _callsites(env: dict[str, str]) -> Any:
    """Import kiwi's call sites with this environment (fresh, as a new process would)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "examples" / "kiwi" / "callsites.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    os.environ.update(env)
    name = "examples.kiwi.callsites"
    if name in sys.modules:
        return importlib.reload(sys.modules[name])
    return importlib.import_module(name)


def run_demo(*, seed: int, calls: int, out: Path, console: Console) -> dict[str, Any]:
    """Shadow every kiwi task at 100 % for ``calls`` calls; print and return the report."""
    from .sim import Simulator

    out.mkdir(parents=True, exist_ok=True)
    log = out / "comparisons.jsonl"
    log.unlink(missing_ok=True)
    flags = out / "flags.yaml"
    flags.write_text(
        "# written by shim demo: every kiwi task compared on every call\n"
        + "".join(f"{t}: {{serve: 0, shadow: 100}}\n" for t in TASKS)
    )
    rng = random.Random(seed)
    with Simulator(OrchConfig.default(), _profile(seed)) as sim:
        console.print(f"simulator listening on {sim.url}; flags {flags}; log {log}")
        kiwi = _callsites(
            {
                "CF_ORCH_URL": sim.url,
                "SHIM_FLAGS": str(flags),
                "SHIM_LOG": str(log),
                "SHIM_REGISTRY": str(default_config_path("model_registry.yaml")),
                "SHIM_ASSIGNMENTS": str(default_config_path("assignments.yaml")),
            }
        )
        plan = [rng.choice(TASKS) for _ in range(calls)]
        started = time.perf_counter()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            bar = progress.add_task("kiwi traffic, shadow 100 %", total=calls)
            _drive(kiwi, plan, rng, lambda: progress.advance(bar))
        kiwi.shim.close(timeout=30)
    took = time.perf_counter() - started
    report = build_report([str(log)])
    console.print(table(report))
    console.print(
        f"{calls:,} calls in {took:.1f} s; every comparison is a line in {log}; "
        f"read it again with: shim report {log}"
    )
    return report


def _drive(kiwi: Any, plan: list[str], rng: random.Random, tick: Any) -> None:
    """Sync call sites from 8 threads, the async one on its own event loop."""
    users = [f"user-{i}" for i in range(200)]
    sync_calls = [t for t in plan if t != "kiwi.barcode_scan"]
    async_calls = len(plan) - len(sync_calls)
    args = [(t, rng.choice(users), rng.sample(PANTRY, 4)) for t in sync_calls]

    def one(task: str, user: str, pantry: list[str]) -> None:
        try:
            if task == "kiwi.meal_plan":
                kiwi.plan_week(pantry, user_id=user)
            elif task == "kiwi.recipe_generation":
                kiwi.router.complete(
                    "You write recipes.", "Something with " + pantry[0], user_id=user
                )
            else:
                kiwi.scan_receipt("iVBORw0KGgo=")
        finally:
            tick()

    async def barcodes() -> None:
        async def scan() -> None:
            try:
                await kiwi.scan_barcode("R0lGODlh")
            finally:
                tick()

        for start in range(0, async_calls, 16):
            await asyncio.gather(*(scan() for _ in range(min(16, async_calls - start))))
        await kiwi.shim.aflush(timeout=30)

    loop_thread = threading.Thread(target=asyncio.run, args=(barcodes(),), name="kiwi-async")
    loop_thread.start()
    with ThreadPoolExecutor(8, thread_name_prefix="kiwi") as pool:
        list(pool.map(lambda a: one(*a), args))
    loop_thread.join()
