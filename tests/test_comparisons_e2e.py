"""Comparators through the decorator, against the simulator's drift knobs."""

from __future__ import annotations

import hashlib
import json
import random
import threading
from pathlib import Path
from typing import Any

import pydantic

from shim import Limits, OrchConfig, TaskRequest, comparators
from shim.sim import Profile, Simulator, generate

from .conftest import KIWI, QUIET
from .shimkit import make_shim, records


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)


class Merchant(_Strict):
    name: str
    address: str | None
    phone: str | None


class Item(_Strict):
    name: str
    quantity: int | float
    unit_price: float | None
    total_price: float | None
    category: str | None
    tax_code: str | None
    discount: float | None


class Totals(_Strict):
    subtotal: float
    tax: float
    discount: float
    total: float
    payment_method: str | None
    amount_paid: float | None
    change: float | None


class Receipt(_Strict):
    """The receipt kiwi's prompt asks for; the ground truth for 'did this call drift?'."""

    merchant: Merchant
    transaction: dict[str, str | None]
    items: list[Item]
    totals: Totals
    confidence: dict[str, float]


def drifted(output: Any) -> bool:
    try:
        Receipt.model_validate(output)
    except pydantic.ValidationError:
        return True
    return False


def sha(value: Any) -> str:
    data = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def drifts(sim: Simulator) -> int:
    return sum(v for k, v in sim.stats()["counts"].items() if k.startswith("fault.drift."))


def test_structure_mismatch_exactly_on_the_drifted_calls(sim: Simulator, tmp_path: Path) -> None:
    sim.set_profile(
        Profile(
            seed=21,
            defaults={"latency_ms": 0},
            tasks={
                "kiwi.ocr": {
                    "drift_rate": 0.4,
                    "drift_kinds": ["missing_key", "renamed_key", "type_change"],
                }
            },
        )
    )
    drifted_before = drifts(sim)  # the simulator is shared by the session's tests
    s = make_shim(sim.url, tmp_path, "kiwi.ocr: {shadow: 100}\n", limits=Limits(workers=1))
    seen: dict[str, bool] = {}

    def keep(result: Any) -> Any:
        seen[sha(result.output)] = drifted(result.output)
        return result.output

    rng = random.Random(3)

    @s.shadow(
        product="kiwi",
        task="ocr",
        request=lambda: TaskRequest(payload={"i": 1}),
        response=keep,
        legacy_model="docuvision-receipts",
    )
    def scan() -> dict[str, Any]:
        return generate("receipt", rng)

    for _ in range(60):
        scan()
    s.close()
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 60
    truth = [seen[r["candidate"]["output_sha256"]] for r in rows]
    assert 10 < sum(truth) < 40, "the knob drifted some calls, not all"
    assert [r["structure"]["match"] is False for r in rows] == truth
    assert drifts(sim) - drifted_before == sum(truth), "and the simulator agrees"


def test_noise_calibration_marks_differences_legacy_makes_by_itself(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n", noise_sample=1.0)

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda: TaskRequest(prompt="x"),
        response=lambda r: json.loads(r.text),
    )
    def plan() -> list[dict[str, Any]]:
        rows = json.loads(generate("meal_plan", random.Random(1)))
        if threading.current_thread() is threading.main_thread():
            for row in rows:  # legacy adds a key on one run and not on the other
                row["note"] = "leftovers"
        return rows

    for _ in range(6):
        plan()
    s.close()
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 6
    note = ["[].note: missing in candidate"]
    assert all(r["structure"]["noise"] == {"match": False, "diff": note} for r in rows)
    assert all(r["structure"]["diff"] == note for r in rows)
    assert all(r["structure"]["noise_paths"] == note for r in rows), "explained by noise"


def test_noise_calibration_of_an_async_call_site_reruns_legacy_on_its_loop(
    sim: Simulator, tmp_path: Path
) -> None:
    """The comparison runs on a worker thread; legacy's second run goes back to the
    caller's event loop (it is a coroutine), and is told apart by a context variable the
    caller sets."""
    import asyncio
    import contextvars

    by_caller = contextvars.ContextVar("by_caller", default=False)
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n", noise_sample=1.0)
    loops: set[int] = set()

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda: TaskRequest(prompt="x"),
        response=lambda r: json.loads(r.text),
    )
    async def plan() -> list[dict[str, Any]]:
        loops.add(id(asyncio.get_running_loop()))
        rows = json.loads(generate("meal_plan", random.Random(1)))
        if by_caller.get():
            for row in rows:
                row["note"] = "leftovers"
        return rows

    async def main() -> None:
        by_caller.set(True)
        for _ in range(4):
            await plan()
        await s.aclose(timeout=30)

    asyncio.run(main())
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 4 and len(loops) == 1, "re-runs happen on the caller's loop"
    note = ["[].note: missing in candidate"]
    assert all(r["structure"]["noise"] == {"match": False, "diff": note} for r in rows)
    assert all(r["structure"]["noise_paths"] == note for r in rows)


def test_a_comparator_that_raises_never_reaches_the_caller(sim: Simulator, tmp_path: Path) -> None:
    class Broken:
        def compare(self, legacy: Any, candidate: Any) -> comparators.Structure:
            raise RuntimeError("comparator bug")

    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n")
    wrapped = s.shadow(
        product="kiwi", task="meal_plan", request=lambda: TaskRequest(), output=Broken()
    )(lambda: "legacy")
    assert [wrapped() for _ in range(3)] == ["legacy"] * 3
    s.close()
    assert s.stats()["internal_errors"] == {"compare": 3}
    rows = records(tmp_path / "log.jsonl")
    assert [r["structure"]["match"] for r in rows] == [None] * 3
    errors = records(tmp_path / "log.jsonl", "shim.error")
    assert {(r["task"], r["operation"], r["error"]) for r in errors} == {
        ("meal_plan", "compare", "RuntimeError: comparator bug")
    }
    assert sum(r["count"] for r in errors) == 3, "tallied: one record per interval"


def test_a_vision_task_resolved_to_cf_text_is_a_routing_error(tmp_path: Path) -> None:
    text = (KIWI / "orch" / "model_registry.yaml").read_text()
    start = text.index("  qwen2.5-vl-7b-instruct:")
    (tmp_path / "registry.yaml").write_text(
        text[:start] + text[start:].replace("cf-vision", "cf-text", 1)
    )
    misrouted = OrchConfig(KIWI / "orch" / "assignments.yaml", tmp_path / "registry.yaml")
    (tmp_path / "run").mkdir()
    with Simulator(misrouted, QUIET) as wrong:
        s = make_shim(wrong.url, tmp_path / "run", "kiwi.ocr: {shadow: 100}\n")
        wrapped = s.shadow(
            product="kiwi",
            task="ocr",
            request=lambda: TaskRequest(),
            legacy_model="docuvision-receipts",
        )(lambda: {"a": 1})
        wrapped()
        s.close()
    [row] = records(tmp_path / "run" / "log.jsonl")
    assert row["model"]["routing_error"] is True
    needs = "it needs cf-docuvision or cf-vision"
    assert row["model"]["reason"] == f"kiwi.ocr resolved to service cf-text; {needs}"
