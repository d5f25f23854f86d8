"""Kiwi's example call sites, every kind, against the simulator: each one returns what
it returned before it was wrapped, and each one is compared."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shim._demo import TASKS, _callsites
from shim._orch import default_config_path
from shim.sim import Simulator

from .shimkit import records


def kiwi(sim: Simulator, tmp_path: Path, flags: str) -> Any:
    (tmp_path / "flags.yaml").write_text(flags)
    return _callsites(
        {
            "CF_ORCH_URL": sim.url,
            "SHIM_FLAGS": str(tmp_path / "flags.yaml"),
            "SHIM_LOG": str(tmp_path / "log.jsonl"),
            "SHIM_REGISTRY": str(default_config_path("model_registry.yaml")),
            "SHIM_ASSIGNMENTS": str(default_config_path("assignments.yaml")),
        }
    )


def call_every_site(k: Any) -> dict[str, Any]:
    got: dict[str, Any] = {
        "router": k.router.complete("You write recipes.", "Soup", user_id="u1"),
        "plan": k.plan_week(["rice", "eggs"], user_id="u1"),
        "recipe": k.generate_recipe("Frittata", ["eggs", "feta"], user_id="u1"),
        "receipt": k.scan_receipt("iVBORw0KGgo="),
    }
    with k.receipt_node(3) as alloc:
        got["node"] = alloc

    async def main() -> None:
        got["barcode"] = await k.scan_barcode("R0lGODlh")
        async with k.recipe_stream("u1") as grant:
            got["stream"] = grant
        await k.aclose()

    asyncio.run(main())
    k.close()
    return got


def test_every_kind_of_call_site_is_compared(sim: Simulator, tmp_path: Path) -> None:
    k = kiwi(sim, tmp_path, "".join(f"{t}: {{shadow: 100}}\n" for t in TASKS))
    got = call_every_site(k)
    assert set(got["plan"][0]) == {"day", "meal_type", "recipe_id", "suggestion"}
    assert "Ingredients:" in got["recipe"] and "Directions:" in got["recipe"]
    assert set(got["receipt"]) >= {"merchant", "items", "totals"}
    assert got["node"]["service"] == "cf-docuvision" and got["stream"]["service"] == "vllm"
    rows = records(tmp_path / "log.jsonl")
    assert {r["call_site"].split(":")[1] for r in rows} == {
        "TextRouter.complete",
        "plan_week",
        "generate_recipe",
        "scan_receipt",
        "receipt_node",
        "scan_barcode",
        "recipe_stream",
    }
    assert all(r["candidate"]["ok"] and r["served_by"] == "legacy" for r in rows)
    assert sim.stats()["allocations_active"] == 0, "every allocation, shadow or not, released"


def test_with_flags_off_nothing_is_compared(sim: Simulator, tmp_path: Path) -> None:
    k = kiwi(sim, tmp_path, "{}\n")
    call_every_site(k)
    assert records(tmp_path / "log.jsonl") == []
    assert sim.stats()["allocations_active"] == 0
