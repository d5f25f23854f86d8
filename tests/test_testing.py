"""shim.testing: users assert on comparisons in their own tests, with no coordinator,
through the real decorator, decisions, comparisons and records."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import shim
from shim import ConfigError, Shim, TaskFailed, TaskNotRegistered, TaskRequest, TaskResult
from shim.testing import TestShim

SHADOW = {"kiwi.meal_plan": {"serve": 0, "shadow": 100}}


def test_a_shadowed_call_is_one_comparison_readable_right_after_the_call() -> None:
    with TestShim(SHADOW, answer=lambda request: f"soup for {request.prompt}") as s:

        @s.shadow(product="kiwi", task="meal_plan", request=lambda q: TaskRequest(prompt=q))
        def plan(q: str) -> str:
            return f"soup for {q}"

        assert plan("dinner") == "soup for dinner"
        [row] = s.comparisons
    assert row["served_by"] == "legacy" and row["stage"] == "shadow"
    assert row["structure"]["match"] is True
    assert row["candidate"]["model"] == "test-model"
    assert row["call_site"].endswith("plan")


def test_a_different_answer_is_a_recorded_difference() -> None:
    answers = {"kiwi.meal_plan": lambda request: {"weeks": 1}}
    with TestShim(SHADOW, answer=answers, model="qwen2.5-3b-instruct") as s:

        @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="p"))
        def plan() -> dict[str, int]:
            return {"days": 7}

        plan()
        [row] = s.comparisons
    assert row["structure"]["match"] is False  # compared by shape: keys and types
    assert row["structure"]["diff"]
    assert row["candidate"]["model"] == "qwen2.5-3b-instruct"


def test_an_answer_that_raises_is_a_task_path_failure_and_serving_falls_back() -> None:
    def broken(request: TaskRequest) -> Any:
        raise RuntimeError("model crashed")

    with TestShim({"kiwi.meal_plan": {"serve": 100}}, answer=broken) as s:

        @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="p"))
        def plan() -> str:
            return "legacy"

        assert plan() == "legacy"
        [row] = s.comparisons
    assert row["served_by"] == "legacy_fallback"
    assert row["candidate"]["ok"] is False
    assert row["candidate"]["error"] == "RuntimeError: model crashed"


def test_a_busy_coordinator_pauses_shadowing() -> None:
    def busy(request: TaskRequest) -> Any:
        raise TaskFailed("kiwi.meal_plan: no GPU", product="kiwi", task="meal_plan", status=429)

    with TestShim(SHADOW, answer=busy) as s:

        @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="p"))
        def plan() -> str:
            return "legacy"

        plan()
        [paused] = [r for r in s.records if r["event"] == "shim.backoff"]
        for _ in range(3):
            plan()
        assert s.dropped("backoff") == 3
    assert paused["state"] == "paused" and paused["status"] == 429


def test_the_task_path_may_answer_with_a_task_result() -> None:
    result = TaskResult("soup", "llama3.2-3b-instruct", "cf-text", "node-1", None, 1.0, None)
    with TestShim({"kiwi.meal_plan": {"serve": 100}}, answer=lambda request: result) as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda: TaskRequest(prompt="p"),
            response=lambda r: (r.output, r.model),
        )
        def plan() -> tuple[str, str | None]:
            return ("legacy", None)

        assert plan() == ("soup", "llama3.2-3b-instruct")
        assert s.comparisons == []  # serve 100, shadow 0: nothing compared


def test_flags_change_mid_test_and_unknown_tasks_are_refused() -> None:
    with TestShim({}, answer=lambda request: "task") as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda: TaskRequest(prompt="p"),
            response=lambda r: r.output,
        )
        def plan() -> str:
            return "legacy"

        assert plan() == "legacy" and s.comparisons == []
        s.set_flags({"kiwi.meal_plan": {"serve": 100}})
        assert plan() == "task"
        s.set_flags({"kiwi.meal_plan": {"serve": 100}, "shim.kill": True})
        assert plan() == "legacy"

    def unknown(request: TaskRequest) -> Any:
        raise TaskNotRegistered(product="kiwi", task="meal_plan", detail="no such task")

    with TestShim(SHADOW, answer=unknown) as s:
        wrapped = s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest())(
            lambda: "legacy"
        )
        wrapped()
        [row] = s.comparisons
    assert row["candidate"]["error"].startswith("TaskNotRegistered")


def test_bad_flags_are_the_same_error_as_in_flags_yaml() -> None:
    with pytest.raises(ConfigError, match=r"kiwi\.meal_plan\.serve"):
        TestShim({"kiwi.meal_plan": {"serve": 400}}, answer=lambda request: None)


def test_async_call_sites_shadowed_and_served() -> None:
    with TestShim(SHADOW, answer=lambda request: "task") as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda q: TaskRequest(prompt=q),
            response=lambda r: r.output,
        )
        async def plan(q: str) -> str:
            await asyncio.sleep(0)
            return "legacy"

        async def main() -> tuple[str, str]:
            shadowed = await plan("a")
            s.set_flags({"kiwi.meal_plan": {"serve": 100, "shadow": 100}})
            served = await plan("b")
            await s.aflush()  # the served call's legacy runs on this loop
            return shadowed, served

        assert asyncio.run(main()) == ("legacy", "task")
        rows = s.comparisons
    assert sorted(r["served_by"] for r in rows) == ["legacy", "task"]


@dataclass(frozen=True)
class Allocation:
    url: str
    allocation_id: str
    model: str | None


def test_allocating_call_sites_get_a_test_allocation_and_give_it_back() -> None:
    with TestShim(
        {"kiwi.ocr": {"serve": 100}}, answer=lambda request: {"service": "cf-docuvision"}
    ) as s:

        @s.shadow(product="kiwi", task="ocr", allocation=True)
        @contextlib.contextmanager
        def allocate() -> Iterator[Allocation]:
            yield Allocation("http://legacy", "legacy-1", "legacy-model")

        @s.shadow(product="kiwi", task="ocr", allocation=True)
        @contextlib.asynccontextmanager
        async def aallocate() -> AsyncIterator[Allocation]:
            yield Allocation("http://legacy", "legacy-2", "legacy-model")

        with allocate() as held:
            assert held.model == "test-model" and held.url.startswith("http://node.")

        async def main() -> Allocation:
            async with aallocate() as held:
                return held

        assert asyncio.run(main()).model == "test-model"
        assert len(s.released) == 2


def test_wrap_tests_a_call_site_as_the_app_decorated_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app decorates at import with its own Shim (here one from the environment,
    disabled in tests); wrap() puts the same call site on the test Shim."""
    monkeypatch.delenv("CF_ORCH_URL", raising=False)
    app = Shim.from_env(log_path="-")

    @app.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda q: TaskRequest(prompt=q),
        legacy_model="qwen2.5-3b-instruct",
    )
    def plan(q: str) -> str:
        return q.upper()

    with TestShim(SHADOW, answer=lambda request: request.prompt.upper()) as s:
        assert s.wrap(plan)("soup") == "SOUP"
        [row] = s.comparisons
        with pytest.raises(TypeError, match="not a call site wrapped"):
            s.wrap(print)
    app.close()
    assert row["structure"]["match"] is True
    assert row["legacy"]["model"] == "qwen2.5-3b-instruct"


def test_clear_forgets_and_pytest_does_not_collect_the_class() -> None:
    with TestShim(SHADOW, answer=lambda request: "x") as s:
        wrapped = s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest())(
            lambda: "x"
        )
        wrapped()
        assert len(s.comparisons) == 1
        s.clear()
        assert s.records == []
    assert TestShim.__test__ is False
    assert shim.testing.TestShim is TestShim
