"""Kiwi's real call-site shapes, wrapped without changing their bodies: a function that
returns ``(router, ctx)`` with ctx entered, a shared helper whose task comes from its
arguments, allocations read by attribute, failures swallowed into empty values, and an
app with no coordinator at all."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim import Shim, TaskAllocation, TaskRequest
from shim.sim import Simulator

from .shimkit import make_shim, records, wait_for


class NodeRouter:
    """What kiwi's router adapter is: a base URL to chat with (``complete`` omitted)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")


@contextlib.contextmanager
def direct_allocation(sim: Simulator, service: str) -> Iterator[dict[str, Any]]:
    """The legacy tier: a direct allocation with a hardcoded service, released on exit."""
    body = {"model_candidates": [], "ttl_s": 120.0, "caller": "kiwi-meal-plan"}
    alloc = httpx.post(f"{sim.url}/api/services/{service}/allocate", json=body).json()
    try:
        yield alloc
    finally:
        httpx.delete(f"{sim.url}/api/services/{service}/allocations/{alloc['allocation_id']}")


def router_site(s: Shim, sim: Simulator) -> Any:
    """kiwi's ``get_meal_plan_router()``: ``(router, ctx)``, ctx already entered."""

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda: TaskRequest(),
        allocation="entered",
        response=lambda alloc: NodeRouter(alloc.url),
        service_hint="cf-text",
    )
    def get_meal_plan_router() -> tuple[NodeRouter, Any]:
        ctx = direct_allocation(sim, "cf-text")
        alloc = ctx.__enter__()
        return NodeRouter(alloc["url"]), ctx

    return get_meal_plan_router


def active(sim: Simulator) -> int:
    return int(sim.stats()["allocations_active"])


def test_router_pair_off_is_the_legacy_pair_itself(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 0, shadow: 0}\n")
    get_router = router_site(s, sim)
    router, ctx = pair = get_router()
    assert isinstance(router, NodeRouter) and "/nodes/" in router.base_url
    ctx.__exit__(None, None, None)
    s.close()
    assert active(sim) == 0 and records(tmp_path / "log.jsonl") == []
    assert isinstance(pair, tuple)


def test_router_pair_in_shadow_is_legacys_and_the_shadow_allocation_is_released(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    get_router = router_site(s, sim)
    for _ in range(3):
        router, ctx = get_router()
        assert isinstance(router, NodeRouter)
        ctx.__exit__(None, None, None)  # what kiwi's caller does after the LLM calls
    s.close()
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 3
    for row in rows:
        assert row["served_by"] == "legacy" and row["candidate"]["ok"], row
        assert row["candidate"]["model"] == "qwen2.5-3b-instruct", "learnt from /v1/models"
        assert row["candidate"]["service_type"] == "cf-text"
        assert row["structure"]["match"] is True, "both routers have a base_url"
    wait_for(lambda: active(sim) == 0)


def test_router_pair_served_by_the_task_path_releases_when_ctx_is_left(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100, shadow: 0}\n")
    get_router = router_site(s, sim)
    router, ctx = get_router()
    assert isinstance(router, NodeRouter)
    assert (
        httpx.get(f"{router.base_url}/v1/models").json()["data"][0]["id"] == "qwen2.5-3b-instruct"
    )
    assert active(sim) == 1, "the task path's allocation is held while the caller uses it"
    with ctx as alloc:  # kiwi's style classifier enters it again: allowed
        assert isinstance(alloc, TaskAllocation) and alloc.url == router.base_url
    assert active(sim) == 0
    ctx.__exit__(None, None, None)  # leaving twice releases once
    s.close()
    assert records(tmp_path / "log.jsonl", "shim.release_failed") == []


def test_router_pair_whose_task_path_fails_falls_back_and_is_recorded_whole(
    sim: Simulator, tmp_path: Path
) -> None:
    """Served, the task path fails: legacy's (router, ctx) answers, kept by reference
    as every allocation is (a held context cannot be copied), never a copy failure."""
    from .conftest import QUIET

    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100, shadow: 100}\n")
    get_router = router_site(s, sim)
    sim.set_profile(QUIET.with_knob("kiwi.meal_plan", "error_rate", 1.0))
    try:
        router, ctx = get_router()
        assert isinstance(router, NodeRouter)
        ctx.__exit__(None, None, None)
    finally:
        sim.set_profile(QUIET)
    stats = s.stats()
    s.close()
    [row] = records(tmp_path / "log.jsonl")
    assert row["served_by"] == "legacy_fallback" and row["legacy"]["ok"]
    assert row["legacy"].get("output_bytes") is not None, row["legacy"]
    assert not stats["internal_errors"], stats["internal_errors"]
    assert active(sim) == 0


def test_router_pair_canary_serves_some_callers_from_each_path(
    sim: Simulator, tmp_path: Path
) -> None:
    flags = "kiwi.meal_plan: {serve: 50, shadow: 0, stickiness: user_id}\n"
    s = make_shim(sim.url, tmp_path, flags)
    get_router = router_site(s, sim)
    kinds = set()
    for user in range(40):
        with shim_context(user):
            _, ctx = get_router()
        kinds.add(type(ctx).__name__)
        ctx.__exit__(None, None, None)
    s.close()
    assert kinds == {"_GeneratorContextManager", "HeldAllocation"}
    assert active(sim) == 0


def shim_context(user: int) -> Any:
    import shim

    return shim.context(user_id=f"user-{user}")


@dataclass(frozen=True)
class Allocation:
    """kiwi's task allocation: read by attribute."""

    url: str
    allocation_id: str
    service: str


def shared_helper(s: Shim, sim: Simulator, calls: list[tuple[str, str]]) -> Any:
    """kiwi's ``task_allocate(product, task, *, service_hint, ttl_s)``: one helper, many
    tasks, which come from its arguments."""

    @s.shadow(
        product=lambda product, task, **kw: product,
        task=lambda product, task, **kw: task,
        allocation=True,  # no request=: kiwi's allocation body carries none
        service_hint=lambda product, task, *, service_hint, ttl_s=120.0: service_hint,
    )
    @contextlib.contextmanager
    def task_allocate(
        product: str, task: str, *, service_hint: str, ttl_s: float = 120.0
    ) -> Iterator[Allocation]:
        calls.append((product, task))
        with direct_allocation(sim, service_hint) as alloc:
            yield Allocation(alloc["url"], alloc["allocation_id"], alloc["service"])

    return task_allocate


def test_a_shared_helper_is_recorded_under_the_task_of_each_call(
    sim: Simulator, tmp_path: Path
) -> None:
    flags = "kiwi.ocr: {shadow: 100}\nkiwi.recipe_scan: {shadow: 100}\n"
    s = make_shim(sim.url, tmp_path, flags)
    calls: list[tuple[str, str]] = []
    task_allocate = shared_helper(s, sim, calls)
    for task in ("ocr", "recipe_scan", "ocr"):
        with task_allocate("kiwi", task, service_hint="cf-docuvision") as alloc:
            assert isinstance(alloc, Allocation) and alloc.service == "cf-docuvision"
    s.close()
    assert calls == [("kiwi", "ocr"), ("kiwi", "recipe_scan"), ("kiwi", "ocr")]
    rows = records(tmp_path / "log.jsonl")
    assert sorted(r["task"] for r in rows) == ["ocr", "ocr", "recipe_scan"]
    assert {r["call_site"] for r in rows} == {f"{__name__}:shared_helper.<locals>.task_allocate"}
    wait_for(lambda: active(sim) == 0)


def test_a_served_allocation_has_the_type_the_legacy_path_yields(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.ocr: {serve: 100}\n")
    calls: list[tuple[str, str]] = []
    task_allocate = shared_helper(s, sim, calls)
    with task_allocate("kiwi", "ocr", service_hint="cf-docuvision") as alloc:
        assert type(alloc) is Allocation, "kiwi reads alloc.url: the legacy type, not a dict"
        assert alloc.url.startswith(sim.url) and alloc.allocation_id
        assert active(sim) == 1
    s.close()
    assert calls == [], "the task path served; legacy never ran"
    assert active(sim) == 0


def test_a_task_name_from_arguments_that_does_not_fit_runs_legacy_and_is_counted(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.ocr: {shadow: 100}\n")
    calls: list[tuple[str, str]] = []
    task_allocate = shared_helper(s, sim, calls)
    with task_allocate("kiwi", "no such/task", service_hint="cf-docuvision") as alloc:
        assert isinstance(alloc, Allocation)
    s.close()
    assert calls == [("kiwi", "no such/task")]
    [error] = records(tmp_path / "log.jsonl", "shim.error")
    assert error["operation"] == "call_site.task", "the app's name, not the shim's error"
    assert error["call_site"].endswith(":shared_helper.<locals>.task_allocate")
    assert s.stats()["internal_errors"] == {"call_site.task": 1}
    assert active(sim) == 0


@pytest.mark.parametrize("empty", [None, [], "", {}])
def test_a_legacy_value_that_swallowed_a_failure_is_a_legacy_failure_never_a_match(
    sim: Simulator, tmp_path: Path, empty: Any
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n")

    @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="plan"))
    def plan() -> Any:
        return empty  # kiwi's planner: any exception -> []

    assert plan() is empty
    s.close()
    [row] = records(tmp_path / "log.jsonl")
    assert row["legacy"]["ok"] is False
    assert row["legacy"]["error"].startswith("SoftFailure: legacy returned")
    assert row["structure"]["match"] is None and row["candidate"]["ok"] is True


def test_soft_failures_are_configurable_per_call_site(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.barcode_scan: {shadow: 100}\nkiwi.ocr: {shadow: 100}\n")

    @s.shadow(
        product="kiwi",
        task="barcode_scan",
        request=lambda: TaskRequest(prompt="label", images=("iVBOR",)),
        response=lambda r: json.loads(r.text),  # the node's reply is text, as kiwi's
        soft_failure=lambda label: label.get("confidence", 0) == 0,
    )
    def extract_label() -> dict[str, Any]:
        return {"product_name": "", "confidence": 0.0}  # kiwi's placeholder on failure

    @s.shadow(product="kiwi", task="ocr", request=lambda: TaskRequest(), soft_failure=None)
    def read() -> Any:
        return None

    extract_label()
    read()
    s.close()
    rows = {r["task"]: r for r in records(tmp_path / "log.jsonl")}
    assert rows["barcode_scan"]["legacy"]["ok"] is False
    assert rows["ocr"]["legacy"]["ok"] is True, "soft_failure=None: None is an answer"
    assert rows["ocr"]["structure"]["match"] is False, "but it never matches an output"
    assert rows["ocr"]["structure"]["diff"] == ["$: legacy output is empty (None)"]


def test_a_served_soft_failure_falls_back_to_legacy(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100}\n")
    answer = ["Mon: soup"]

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda: TaskRequest(prompt="plan"),
        response=lambda result: [],  # a parser that found nothing it could use
    )
    def plan() -> list[str]:
        return answer

    assert plan() is answer
    s.close()
    [row] = records(tmp_path / "log.jsonl")
    assert row["served_by"] == "legacy_fallback"
    assert row["candidate"]["error"].startswith("SoftFailure: the task path returned []")


def test_without_cf_orch_url_the_app_runs_on_legacy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("CF_ORCH_URL", raising=False)
    monkeypatch.delenv("SHIM_FLAGS", raising=False)
    monkeypatch.setenv("SHIM_LOG", str(tmp_path / "log.jsonl"))
    with caplog.at_level(logging.WARNING, logger="shim"):
        s = Shim.from_env()  # at import, as kiwi's modules would: no exception
    assert s.enabled is False
    answer = ["local plan"]

    @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="p"))
    def plan() -> list[str]:
        return answer

    assert [plan() is answer for _ in range(3)] == [True, True, True]
    s.close()
    [warning] = [r for r in caplog.records if "CF_ORCH_URL" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    rows = records(tmp_path / "log.jsonl", None)
    assert [r["event"] for r in rows] == ["shim.error"]
    assert rows[0]["operation"] == "configure" and "CF_ORCH_URL" in rows[0]["error"]


def test_a_plain_call_site_needs_a_request(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, "{}\n")
    with pytest.raises(TypeError, match="needs request="):
        s.shadow(product="kiwi", task="meal_plan")(lambda: None)
    s.close()


def test_a_served_holder_dropped_without_being_left_releases_its_allocation(
    sim: Simulator, tmp_path: Path
) -> None:
    """A caller that raises before ``ctx.__exit__`` (or enters a served allocation by
    hand and never leaves it) does not leak: the holder releases when collected, as
    kiwi's generator context managers do."""
    import gc

    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100}\nkiwi.ocr: {serve: 100}\n")
    get_router = router_site(s, sim)
    task_allocate = shared_helper(s, sim, [])

    def caller_that_fails() -> None:
        _router, _ctx = get_router()
        cm = task_allocate("kiwi", "ocr", service_hint="cf-docuvision")
        cm.__enter__()
        raise RuntimeError("the plan failed before ctx.__exit__")

    with pytest.raises(RuntimeError):
        caller_that_fails()
    gc.collect()
    wait_for(lambda: active(sim) == 0)
    s.close()


def test_without_fallback_a_served_soft_failure_is_returned_not_raised(
    sim: Simulator, tmp_path: Path
) -> None:
    """The call site's contract is "an empty value on failure": the task path's empty
    value reaches the caller as such, never as an exception."""
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100}\n")

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda: TaskRequest(prompt="plan"),
        response=lambda result: [],
        fallback=False,
    )
    def plan() -> list[str]:
        return ["Mon: soup"]

    assert plan() == []
    s.close()
