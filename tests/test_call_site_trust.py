"""The call site's own code is the call site's: its errors never blame the task path,
its arguments are read when the call is made, and its side effects happen once per call."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shim import TaskRequest
from shim.analysis.report import build_report
from shim.testing import TestShim


def _errors(s: TestShim) -> list[dict[str, Any]]:
    return [r for r in s.records if r["event"] == "shim.error"]


def _verdict(s: TestShim, tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in s.records))
    return list(build_report([str(log)])["tasks"])


def _broken(*args: Any, **kwargs: Any) -> TaskRequest:
    raise TypeError("takes 1 positional argument but 2 were given")


@pytest.mark.parametrize("flags", [{"shadow": 100}, {"serve": 100, "shadow": 100}])
def test_a_request_lambda_that_raises_is_the_call_sites_error_not_the_task_paths(
    flags: dict[str, int], tmp_path: Path
) -> None:
    sent: list[TaskRequest] = []
    with TestShim({"kiwi.meal_plan": flags}, answer=lambda r: sent.append(r) or "soup") as s:

        @s.shadow(product="kiwi", task="meal_plan", request=_broken)
        def plan(q: str) -> str:
            return "legacy soup"

        for _ in range(40):
            assert plan("dinner") == "legacy soup", "legacy answers every call"
        s.flush()
        assert sent == [], "nothing was sent to the coordinator"
        assert s.breaker_state("kiwi.meal_plan") == "closed"
        assert s.comparisons == [], "no pair: nothing says the task path failed"
        errors = _errors(s)
        assert sum(e["count"] for e in errors) == 40
        assert len(errors) < 40, "one record per flush interval, not one per call"
        assert {e["operation"] for e in errors} == {"call_site.request"}
        assert errors[0]["call_site"].endswith("plan")
        assert errors[0]["function"].endswith(":_broken")
        assert (errors[0]["product"], errors[0]["task"]) == ("kiwi", "meal_plan")
        assert s.stats()["internal_errors"] == {"call_site.request": 40}
        for task in _verdict(s, tmp_path):
            assert task["verdict"] != "ROLLBACK"


def test_a_response_lambda_that_raises_while_serving_falls_back_to_legacy_and_spares_the_breaker(
    tmp_path: Path,
) -> None:
    with TestShim({"kiwi.meal_plan": {"serve": 100}}, answer=lambda r: "soup") as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda q: TaskRequest(prompt=q),
            response=lambda result: result.output["missing"],
        )
        def plan(q: str) -> str:
            return "legacy soup"

        for _ in range(30):
            assert plan("dinner") == "legacy soup"
        s.flush()
        assert s.breaker_state("kiwi.meal_plan") == "closed"
        assert {e["operation"] for e in _errors(s)} == {"call_site.response"}
        assert all(r["candidate"]["ok"] for r in s.comparisons), "never a task-path failure"
        for task in _verdict(s, tmp_path):
            assert task["verdict"] != "ROLLBACK"


def test_a_key_lambda_that_does_not_fit_is_recorded_with_its_task() -> None:
    with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=lambda r: "soup") as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda q, **kw: TaskRequest(prompt=q),
            key=lambda q, **kw: kw["user_id"],
        )
        def plan(q: str, **kw: Any) -> str:
            return "soup"

        assert plan("dinner") == "soup"
        s.flush()
        [error] = _errors(s)
        assert error["operation"] == "call_site.key"
        assert (error["product"], error["task"]) == ("kiwi", "meal_plan")
        assert "KeyError" in error["error"]


def test_the_task_path_is_sent_the_arguments_as_they_were_when_the_call_was_made() -> None:
    sent: list[TaskRequest] = []
    with TestShim(
        {"kiwi.meal_plan": {"shadow": 100}}, answer=lambda r: sent.append(r) or "ok"
    ) as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda items, opts: TaskRequest(
                prompt=", ".join(items), params={"items": items, "opts": opts}
            ),
        )
        def plan(items: list[str], opts: dict[str, Any]) -> str:
            return "ok"

        for i in range(20):
            items, opts = ["rice", f"call {i}"], {"n": i}
            plan(items, opts)
            items.clear()  # the caller reuses its list and dict once the call is done
            items.append("something else")
            opts.update({f"k{j}": j for j in range(50)})
        s.flush()
    assert len(sent) == 20
    for i, request in enumerate(sorted(sent, key=lambda r: r.params["opts"]["n"])):
        assert request.prompt == f"rice, call {i}"
        assert request.params == {"items": ["rice", f"call {i}"], "opts": {"n": i}}


def test_a_dict_the_caller_changes_after_the_call_never_breaks_the_task_request() -> None:
    """Built when the call is made, the request never meets a dict that the caller
    changes size once legacy has returned (a slow ``request=`` makes the race sure)."""

    def slow_copy(d: dict[str, int]) -> TaskRequest:
        copied = {}
        for k, v in d.items():
            time.sleep(0)  # lets other threads run mid-iteration, as a bigger build would
            copied[k] = v
        return TaskRequest(prompt="p", params={"d": copied})

    sent: list[TaskRequest] = []
    with TestShim(
        {"kiwi.meal_plan": {"shadow": 100}}, answer=lambda r: sent.append(r) or "ok"
    ) as s:

        @s.shadow(product="kiwi", task="meal_plan", request=slow_copy)
        def plan(d: dict[str, int]) -> str:
            return "ok"

        for n in range(50):
            shared = {f"k{i}": i for i in range(200)}
            plan(shared)
            for i in range(200):  # the caller goes on with its dict
                shared[f"more{n}-{i}"] = i
        s.flush()
        assert len(sent) == 50 and all(len(r.params["d"]) == 200 for r in sent)
        assert all(r["candidate"]["ok"] for r in s.comparisons)
        assert s.stats()["internal_errors"] == {}


def _rows_site(s: TestShim, rows: list[str], **options: Any) -> Any:
    @s.shadow(product="kiwi", task="meal_plan", request=lambda q: TaskRequest(prompt=q), **options)
    def plan(q: str) -> str:
        rows.append(q)  # one row per call: the side effect
        return "soup"

    return plan


def test_declared_side_effects_happen_once_per_call_when_the_flags_say_serve() -> None:
    rows: list[str] = []
    with TestShim({"kiwi.meal_plan": {"serve": 100, "shadow": 0}}, answer=lambda r: "soup") as s:
        plan = _rows_site(s, rows, side_effects=True)
        for i in range(10):
            assert plan(f"q{i}") == "soup"
        s.flush()
        assert rows == [f"q{i}" for i in range(10)], "legacy served: no row dropped"
        assert s.dropped("side_effects") == 10, "the serving that did not happen is counted"


def test_undeclared_side_effects_are_dropped_by_serving_as_before() -> None:
    rows: list[str] = []
    with TestShim({"kiwi.meal_plan": {"serve": 100, "shadow": 0}}, answer=lambda r: "soup") as s:
        plan = _rows_site(s, rows)
        plan("q")
        assert rows == [], "the task path served; legacy never ran"


def test_serve_without_side_effects_lets_the_task_path_serve() -> None:
    rows: list[str] = []
    with TestShim({"kiwi.meal_plan": {"serve": 100}}, answer=lambda r: "task soup") as s:
        plan = _rows_site(s, rows, side_effects=True, serve_without_side_effects=True)
        assert plan("q") == "task soup"
        assert rows == []


def test_declared_side_effects_are_never_repeated_for_noise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows: list[str] = []
    flags = {"kiwi.meal_plan": {"shadow": 100}}
    with TestShim(flags, answer=lambda r: "soup", noise_sample=1.0) as s:
        plan = _rows_site(s, rows, side_effects=True)
        assert "noise_sample=1.0 does not apply to it" in caplog.text, "said at decoration"
        for i in range(10):
            plan(f"q{i}")
        s.flush()
        assert len(s.comparisons) == 10
        assert rows == [f"q{i}" for i in range(10)], "one row per call, never two"
    rows.clear()
    with TestShim(flags, answer=lambda r: "soup", noise_sample=1.0) as s:
        plan = _rows_site(s, rows)
        plan("q")
        s.flush()
        assert rows == ["q", "q"], "undeclared: legacy runs again for noise"


def test_side_effect_options_that_mean_nothing_are_refused() -> None:
    with TestShim({}, answer=lambda r: "x") as s, pytest.raises(ValueError, match="side_effects"):
        s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda q: TaskRequest(prompt=q),
            serve_without_side_effects=True,
        )


def test_an_async_request_lambda_that_raises_leaves_the_breaker_closed() -> None:
    with TestShim({"kiwi.meal_plan": {"serve": 100, "shadow": 100}}, answer=lambda r: "x") as s:

        @s.shadow(product="kiwi", task="meal_plan", request=_broken)
        async def plan(q: str) -> str:
            return "legacy"

        async def main() -> list[str]:
            return [await plan("q") for _ in range(20)]

        assert asyncio.run(main()) == ["legacy"] * 20
        s.flush()
        assert s.breaker_state("kiwi.meal_plan") == "closed"
        assert sum(e["count"] for e in _errors(s)) == 20


def test_errors_while_a_comparison_becomes_a_record_name_the_task() -> None:
    """The call site's legacy_model= is its own code; a comparator's failure is the
    shim's; either way the shim.error record says which task it belongs to."""

    class Raising:
        def compare(self, legacy: Any, candidate: Any) -> Any:
            raise RuntimeError("comparator broke")

    with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=lambda r: "soup") as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda q: TaskRequest(prompt=q),
            legacy_model=lambda value: value["model"],
            output=Raising(),  # type: ignore[arg-type]
        )
        def plan(q: str) -> str:
            return "soup"

        plan("q")
        s.flush()
        by_operation = {e["operation"]: e for e in _errors(s)}
        assert by_operation["call_site.legacy_model"]["function"].endswith("<lambda>")
        assert by_operation["compare"]["error"] == "RuntimeError: comparator broke"
        for error in by_operation.values():
            assert (error["product"], error["task"]) == ("kiwi", "meal_plan")


def test_a_cancelled_probe_lets_the_next_call_probe_at_once(sim: Any, tmp_path: Path) -> None:
    """An async caller that gives up on the probe (a timeout of its own) ends it: the
    next call probes, instead of every call running legacy for another cooldown."""
    from shim import BreakerPolicy

    from .conftest import QUIET
    from .shimkit import make_shim

    s = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 100}\n",
        breaker=BreakerPolicy(failures=1, cooldown=0.3),
    )

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda q: TaskRequest(prompt=q),
        response=lambda result: "task",
    )
    async def plan(q: str) -> str:
        return "legacy"

    async def main() -> list[str]:
        sim.set_profile(QUIET.with_knob("kiwi.meal_plan", "error_rate", 1.0))
        assert await plan("q") == "legacy"  # the task path failed: the breaker opens
        assert s.breaker_state("kiwi.meal_plan") == "open"
        sim.set_profile(QUIET.with_knob("kiwi.meal_plan", "hang_rate", 1.0))
        await asyncio.sleep(0.35)  # the cooldown, a fixed part of the scenario
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(plan("probe"), 0.2)  # the probe, given up on
        sim.set_profile(QUIET)
        return [await plan("next") for _ in range(3)]

    try:
        assert asyncio.run(main()) == ["task"] * 3, "the next call probed and closed it"
        assert s.breaker_state("kiwi.meal_plan") == "closed"
    finally:
        s.close()


def test_an_iterator_argument_is_read_by_legacy_first() -> None:
    """The shadow path never reads what only one reader can read before legacy does."""
    sent: list[TaskRequest] = []
    with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=lambda r: sent.append(r) or "") as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda items: TaskRequest(prompt=",".join(items)),
        )
        def plan(items: Iterator[str]) -> list[str]:
            return list(items)

        assert plan(x for x in ["a", "b"]) == ["a", "b"], "legacy read the whole iterator"
        s.flush()
        assert len(sent) == 1, "still compared, with what legacy left"


def test_a_served_call_compares_legacy_on_the_arguments_as_they_were() -> None:
    """Canary: legacy runs in the background after the caller has moved on; it must see
    the caller's list as it was when the call was made, or every pair mismatches."""
    with TestShim(
        {"kiwi.meal_plan": {"serve": 100, "shadow": 100}},
        answer=lambda r: r.prompt,
    ) as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda items: TaskRequest(prompt=",".join(items)),
            response=lambda result: result.output,
        )
        def plan(items: list[str]) -> str:
            return ",".join(items)

        items: list[str] = []
        for i in range(10):
            items[:] = [f"day {i}", "rice"]
            assert plan(items) == f"day {i},rice"
            items.clear()  # the caller reuses its list
        s.flush()
        assert len(s.comparisons) == 10
        assert all(r["structure"]["match"] for r in s.comparisons)


def test_legacy_failing_after_its_loop_ended_is_not_held_against_legacy() -> None:
    """One loop per job: a served call's background legacy run that outlasts the job
    finds the job's own client closed. That failure is the loop's end, not legacy's:
    counted as dropped (loop_closed), never a legacy error in the verdict."""

    class Client:
        closed = False

    flags = {"kiwi.meal_plan": {"serve": 100, "shadow": 100}}
    with TestShim(flags, answer=lambda r: "task") as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda client: TaskRequest(prompt="p"),
            response=lambda result: result.output,
        )
        async def plan(client: Client) -> str:
            await asyncio.sleep(0.05)
            if client.closed:
                raise RuntimeError("client closed")
            return "legacy"

        async def job() -> str:
            client = Client()
            try:
                return await plan(client)
            finally:
                client.closed = True  # the job's own client goes with the job

        for _ in range(5):
            assert asyncio.run(job()) == "task"
        s.flush()
        assert not [r for r in s.comparisons if not r["legacy"]["ok"]]
        assert s.dropped("loop_closed") == 5


def test_a_routed_call_site_blames_the_callable_that_raised() -> None:
    with TestShim({"kiwi.ocr": {"shadow": 100}}, answer=lambda r: "x") as s:

        @s.shadow(
            product=lambda kind: {"receipt": "kiwi"}[kind],
            task=lambda kind: "ocr",
            request=lambda kind: TaskRequest(prompt=kind),
        )
        def scan(kind: str) -> str:
            return kind

        assert scan("label") == "label"
        s.flush()
        [error] = _errors(s)
        assert error["operation"] == "call_site.product" and "KeyError" in error["error"]


def test_the_call_sites_own_objects_are_never_copied() -> None:
    """Only the caller's containers are copied: a router's ``self`` is the very object
    in every background legacy run, never a copy."""
    seen: list[int] = []
    flags = {"kiwi.meal_plan": {"serve": 100, "shadow": 100}}
    with TestShim(flags, answer=lambda r: "task", noise_sample=1.0) as s:

        class Router:
            @s.shadow(
                product="kiwi",
                task="meal_plan",
                request=lambda self, q: TaskRequest(prompt=q),
                response=lambda result: result.output,
            )
            def complete(self, q: list[str]) -> str:
                seen.append(id(self))
                return "legacy"

        router = Router()
        assert router.complete(["q"]) == "task"
        s.flush()
        assert seen == [id(router)], "legacy ran once, in the background, on the router"
