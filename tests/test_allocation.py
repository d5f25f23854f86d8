"""Call sites that return a context manager yielding an allocation (kiwi's task_allocate)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim import TaskAllocation, TaskRequest
from shim.sim import Simulator

from .conftest import QUIET
from .shimkit import make_shim, records


def legacy_allocator(sim: Simulator) -> tuple[Any, Any, list[str]]:
    """kiwi's allocator, sync and async: allocate an explicit model, release on exit."""
    released: list[str] = []

    @contextmanager
    def task_allocate(service: str, model: str) -> Iterator[dict[str, Any]]:
        alloc = httpx.post(
            f"{sim.url}/api/services/{service}/allocate", json={"model": model}
        ).json()
        try:
            yield alloc
        finally:
            httpx.delete(f"{sim.url}/api/services/{service}/allocations/{alloc['allocation_id']}")
            released.append(alloc["allocation_id"])

    @asynccontextmanager
    async def atask_allocate(service: str, model: str) -> AsyncIterator[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=sim.url) as client:
            alloc = (
                await client.post(f"/api/services/{service}/allocate", json={"model": model})
            ).json()
            try:
                yield alloc
            finally:
                await client.delete(f"/api/services/{service}/allocations/{alloc['allocation_id']}")
                released.append(alloc["allocation_id"])

    return task_allocate, atask_allocate, released


def wrap(s: Any, fn: Any) -> Any:
    return s.shadow(
        product="kiwi",
        task="ocr",
        allocation=True,
        request=lambda service, model: TaskRequest(prompt="receipt"),
        legacy_model=lambda alloc: alloc["model"],
    )(fn)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_shadow_compares_allocations_and_releases_the_shadow_one(
    sim: Simulator, tmp_path: Path, kind: str
) -> None:
    sync_cm, async_cm, released = legacy_allocator(sim)
    s = make_shim(sim.url, tmp_path, "kiwi.ocr: {serve: 0, shadow: 100}\n")
    allocate = wrap(s, sync_cm if kind == "sync" else async_cm)
    seen = []
    if kind == "sync":
        for _ in range(4):
            with allocate("cf-docuvision", "docuvision-receipts") as alloc:
                seen.append(alloc)
        s.close()
    else:

        async def main() -> None:
            for _ in range(4):
                async with allocate("cf-docuvision", "docuvision-receipts") as alloc:
                    seen.append(alloc)
            await s.aclose()

        asyncio.run(main())
    assert [a["service"] for a in seen] == ["cf-docuvision"] * 4, "legacy serves"
    assert len(released) == 4
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 4
    for row in rows:
        assert row["legacy"]["model"] == "docuvision-receipts"
        assert row["candidate"]["model"] == "qwen2.5-vl-7b-instruct"
        assert row["candidate"]["service_type"] == "cf-vision"
        assert row["model"]["verdict"] == "different"
        assert row["structure"]["match"] is True, "both allocations have the same fields"
    assert sim.stats()["allocations_active"] == 0, "shadow allocations are released"


def test_served_allocation_comes_from_cf_orch_and_is_released(
    sim: Simulator, tmp_path: Path
) -> None:
    sync_cm, _, released = legacy_allocator(sim)
    s = make_shim(sim.url, tmp_path, "kiwi.ocr: {serve: 100, shadow: 100}\n")
    allocate = wrap(s, sync_cm)
    with allocate("cf-docuvision", "docuvision-receipts") as alloc:
        assert alloc["model"] == "qwen2.5-vl-7b-instruct" and alloc["service"] == "cf-vision"
        models = httpx.get(f"{alloc['url']}/v1/models").json()["data"]
        assert "qwen2.5-vl-7b-instruct" in {m["id"] for m in models}
    s.close()
    assert sim.stats()["allocations_active"] == 0
    assert len(released) == 1, "legacy ran once, in the background, for the comparison"
    [row] = records(tmp_path / "log.jsonl")
    assert (row["served_by"], row["stage"]) == ("task", "live")


def test_failed_task_allocation_falls_back_to_legacy(sim: Simulator, tmp_path: Path) -> None:
    sim.set_profile(QUIET.with_knob("kiwi.ocr", "error_rate", 1.0))
    sync_cm, _, released = legacy_allocator(sim)
    s = make_shim(sim.url, tmp_path, "kiwi.ocr: {serve: 100}\n")
    with wrap(s, sync_cm)("cf-docuvision", "docuvision-receipts") as alloc:
        assert alloc["service"] == "cf-docuvision"
    s.close()
    assert len(released) == 1
    [row] = records(tmp_path / "log.jsonl")
    assert row["served_by"] == "legacy_fallback" and row["candidate"]["status"] == 503


def test_off_returns_the_legacy_context_manager_itself(sim: Simulator, tmp_path: Path) -> None:
    sync_cm, _, _ = legacy_allocator(sim)
    s = make_shim(sim.url, tmp_path, "kiwi.ocr: {serve: 0, shadow: 0}\n")
    cm = wrap(s, sync_cm)("cf-docuvision", "docuvision-receipts")
    assert type(cm).__name__ == "_GeneratorContextManager"
    with cm as alloc:
        assert alloc["service"] == "cf-docuvision"
    s.close()


def test_task_client_allocate_and_release(sim: Simulator) -> None:
    from shim import TaskClient

    with TaskClient(sim.url) as client:
        alloc = client.allocate("kiwi", "barcode_scan", service_hint="cf-vision")
        assert isinstance(alloc, TaskAllocation)
        assert (alloc.model, alloc.service_type) == ("florence-2-large", "cf-vision")
        assert sim.stats()["allocations_active"] == 1
        client.release("kiwi", "barcode_scan", alloc)
    assert sim.stats()["allocations_active"] == 0


def test_served_allocation_with_async_with(sim: Simulator, tmp_path: Path) -> None:
    _, async_cm, released = legacy_allocator(sim)
    s = make_shim(sim.url, tmp_path, "kiwi.ocr: {serve: 100, shadow: 100}\n")
    allocate = wrap(s, async_cm)

    async def main() -> dict[str, Any]:
        async with allocate("cf-docuvision", "docuvision-receipts") as alloc:
            got = dict(alloc)
        await s.aclose()
        return got

    alloc = asyncio.run(main())
    assert alloc["service"] == "cf-vision"
    assert sim.stats()["allocations_active"] == 0
    assert len(released) == 1, "legacy ran in the background on the same loop"
    [row] = records(tmp_path / "log.jsonl")
    assert row["served_by"] == "task" and row["legacy"]["model"] == "docuvision-receipts"
