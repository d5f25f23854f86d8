"""Kiwi's example call sites, each in kiwi's own shape, against the simulator at every
stage: while legacy serves the caller gets legacy's value, when the task path serves a
value of legacy's type that works the same, every compared call is one record under its
task, and every allocation, held or shadow, is released."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shim import context
from shim.demo.run import TASKS, _callsites
from shim.sim import Profile, Simulator

from .conftest import KIWI
from .shimkit import records, wait_for

STAGES = {
    "off": "{serve: 0, shadow: 0}",
    "shadow": "{serve: 0, shadow: 100}",
    "canary": "{serve: 50, shadow: 100}",
    "live": "{serve: 100, shadow: 100}",
}
#: Who serves at each stage (canary: both, by user).
SERVED = {"off": set(), "shadow": {"legacy"}, "canary": {"legacy", "task"}, "live": {"task"}}
USERS = [f"user-{n}" for n in range(16)]
PANTRY = ["rice", "chickpeas", "spinach", "eggs", "feta", "tomatoes"]
NO_WAIT = {"latency_ms": 0, "latency_p99_ms": 0}
#: Every legacy allocation fails; the task path works.
LEGACY_FAILS = Profile(seed=1, defaults=NO_WAIT, legacy={"error_rate": 1.0})

Kiwi = Any


def flags(stage: str, *tasks: str) -> str:
    return "".join(f"kiwi.{task}: {STAGES[stage]}\n" for task in tasks)


def photo(kind: str, n: int = 0) -> bytes:
    return b"\xff\xd8\xff\xe0" + f"{kind}-{n}".encode()


@pytest.fixture
def load(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Kiwi]]:
    """``load(flags_text)``: kiwi's call sites imported afresh, as a process started with
    this environment would (the simulator for cf-orch and the streaming proxy)."""
    env = {
        "CF_ORCH_URL": sim.url,
        "COORDINATOR_URL": sim.url,
        "COORDINATOR_KIWI_KEY": "kiwi-test",
        "SHIM_FLAGS": str(tmp_path / "flags.yaml"),
        "SHIM_LOG": str(tmp_path / "log.jsonl"),
        "SHIM_REGISTRY": str(KIWI / "orch" / "model_registry.yaml"),
        "SHIM_ASSIGNMENTS": str(KIWI / "orch" / "assignments.yaml"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # restored after the test
    loaded: list[Kiwi] = []

    def load(flag_text: str, **changes: str | None) -> Kiwi:
        """Import with ``flag_text`` in the flags file and ``changes`` to the
        environment (None: unset)."""
        (tmp_path / "flags.yaml").write_text(flag_text)
        for name, value in changes.items():
            if value is None:
                monkeypatch.delenv(name)
                env.pop(name)
            else:
                monkeypatch.setenv(name, value)
                env[name] = value
        kiwi = _callsites(env)
        loaded.append(kiwi)
        return kiwi

    yield load
    for kiwi in loaded:
        kiwi.close()


def log_of(tmp_path: Path, event: str | None = "shim.comparison") -> list[dict[str, Any]]:
    return records(tmp_path / "log.jsonl", event)


def digest(value: Any) -> str:
    """A value's hash as records state it (``output_sha256``)."""
    if isinstance(value, str):
        data = value.encode()
    else:
        data = json.dumps(
            value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=repr
        ).encode()
    return hashlib.sha256(data).hexdigest()


def held_by(sim: Simulator, url_or_id: str) -> str:
    """Which path granted an allocation the caller holds (the simulator knows)."""
    allocation = sim._state.allocations[url_or_id.rsplit("/", 1)[-1]]
    return "task" if allocation.via_task else "legacy"


def released(sim: Simulator) -> None:
    wait_for(lambda: sim.stats()["allocations_active"] == 0)


def counts(sim: Simulator) -> Counter[str]:
    """The simulator's request counters (they add up over the session: compare two)."""
    return Counter(sim.stats()["counts"])


def served_as_expected(
    rows: list[dict[str, Any]], stage: str, task: str, calls: int
) -> Counter[str]:
    """The records of ``calls`` calls of ``task`` at ``stage``: one each, right task, and
    served by whom the stage says; returns the split."""
    if stage == "off":
        assert rows == []
        return Counter()
    assert len(rows) == calls
    assert {r["task"] for r in rows} == {task}
    split = Counter(r["served_by"] for r in rows)
    assert set(split) == SERVED[stage], split
    assert all(r["legacy"]["ok"] and r["candidate"]["ok"] for r in rows)
    return split


# -- kiwi.meal_plan: get_meal_plan_router() -> (router, ctx), ctx entered --------------


@pytest.mark.parametrize("stage", STAGES)
def test_meal_plan_router_serves_the_plan_and_the_timing_then_releases(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path, stage: str
) -> None:
    """One router for the plan and the timing estimate, as the app uses it; its ctx
    holds the node of the path that served until the app exits it."""
    k = load(flags(stage, "meal_plan"))
    holders = []
    for user in USERS:
        with context(user_id=user):
            router, ctx = k.get_meal_plan_router()
        assert isinstance(router, k.OrchTextRouter)
        holders.append(held_by(sim, router._base_url))
        plan = k.generate_plan(PANTRY, ["dinner"], "vegetarian", router)
        prep, cook = k.estimate_timing(plan[0].suggestion, PANTRY, router)
        ctx.__exit__(None, None, None)
        assert plan and all(isinstance(p, k.PlanSuggestion) and 0 <= p.day <= 6 for p in plan)
        assert prep or cook
    k.close()
    released(sim)
    split = served_as_expected(log_of(tmp_path), stage, "meal_plan", len(USERS))
    assert Counter(holders) == (split or Counter(legacy=len(USERS)))
    if stage == "shadow":
        rows = log_of(tmp_path)
        assert {r["model"]["verdict"] for r in rows} == {"same"}, "cf-text's model both ways"


def test_meal_plan_router_ctx_works_with_with_and_twice(
    load: Callable[..., Kiwi], sim: Simulator
) -> None:
    """A served ctx can be left with ``with`` or exited twice: one release."""
    k = load(flags("live", "meal_plan"))
    router, ctx = k.get_meal_plan_router()
    with ctx:
        assert held_by(sim, router._base_url) == "task"
    ctx.__exit__(None, None, None)
    k.close()
    released(sim)


# -- plain functions: kiwi.ocr, kiwi.recipe_generation, kiwi.barcode_scan -------------


def call_ocr(k: Kiwi, user: str, n: int) -> Any:
    return k.try_docuvision(photo("receipt", n))


def call_recipe(k: Kiwi, user: str, n: int) -> Any:
    req = k.RecipeRequest(pantry_items=PANTRY[n % 3 :])
    return k.LLMRecipeGenerator()._call_llm(k.build_recipe_prompt(req))


def call_label(k: Kiwi, user: str, n: int) -> Any:
    return k.extract_label(photo("label", n))  # a coroutine: run on one loop below


FUNCTIONS: dict[str, tuple[Callable[[Kiwi, str, int], Any], type]] = {
    "ocr": (call_ocr, str),
    "recipe_generation": (call_recipe, str),
    "barcode_scan": (call_label, dict),
}


def call_each_user(k: Kiwi, task: str, users: list[str] = USERS) -> list[Any]:
    """The call site once per user, in order, each with the user in ``shim.context``."""
    call = FUNCTIONS[task][0]
    if task != "barcode_scan":
        values = []
        for n, user in enumerate(users):
            with context(user_id=user):
                values.append(call(k, user, n))
        return values

    async def main() -> list[Any]:
        values = []
        for n, user in enumerate(users):
            with context(user_id=user):
                values.append(await call(k, user, n))
        await k.aclose()
        return values

    return asyncio.run(main())


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("task", FUNCTIONS)
def test_function_call_site_returns_the_served_paths_value(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path, task: str, stage: str
) -> None:
    """Each caller gets the serving path's value itself (its hash is the one recorded on
    that side), of legacy's type; the calls are split as the stage says, and a user's
    second call goes the way the first did."""
    # The simulator answers a request with the same content on both paths; a prose
    # wrapper on the task path's recipes tells the paths' values apart.
    sim.set_profile(
        Profile(
            seed=1,
            defaults=NO_WAIT,
            tasks={"kiwi.recipe_generation": {"drift_rate": 1.0, "drift_kinds": ["prose"]}},
        )
    )
    k = load(flags(stage, task))
    before = counts(sim)
    users = USERS + USERS
    values = call_each_user(k, task, users)
    k.close()
    released(sim)
    assert all(isinstance(v, FUNCTIONS[task][1]) and v for v in values)
    rows = log_of(tmp_path)
    served_as_expected(rows, stage, task, len(users))
    if stage == "off":
        assert counts(sim)[f"task.kiwi.{task}"] == before[f"task.kiwi.{task}"]
        return
    side = {"legacy": "legacy", "task": "candidate"}
    by_hash = {r[side[r["served_by"]]]["output_sha256"]: r["served_by"] for r in rows}
    assert Counter(digest(v) for v in values) == Counter(
        r[side[r["served_by"]]]["output_sha256"] for r in rows
    )
    path = [by_hash[digest(v)] for v in values]
    assert path[: len(USERS)] == path[len(USERS) :], "sticky by user"


@pytest.mark.parametrize(
    ("task", "failed"),
    [
        ("ocr", lambda value: value is None),
        ("barcode_scan", lambda value: value["confidence"] == 0 and value["needs_review"]),
    ],
)
def test_a_swallowed_legacy_failure_is_recorded_as_a_legacy_failure(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path, task: str, failed: Any
) -> None:
    """Legacy's allocations fail: the call site swallows it (None, a zero-confidence
    placeholder), the caller gets that, and the record says legacy failed, no match."""
    sim.set_profile(LEGACY_FAILS)
    k = load(flags("shadow", task))
    values = call_each_user(k, task)
    k.close()
    assert all(failed(v) for v in values)
    rows = log_of(tmp_path)
    assert len(rows) == len(USERS)
    for row in rows:
        assert row["legacy"]["ok"] is False and "SoftFailure" in row["legacy"]["error"]
        assert row["candidate"]["ok"] is True
        assert row["structure"]["match"] is not True


def test_a_swallowed_legacy_failure_is_served_over_when_live(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path
) -> None:
    """Live, the task path's label reaches the caller although legacy would have failed."""
    sim.set_profile(LEGACY_FAILS)
    k = load(flags("live", "barcode_scan"))
    values = call_each_user(k, "barcode_scan")
    k.close()
    assert all(v["confidence"] > 0 and v["product_name"] for v in values)
    assert {r["served_by"] for r in log_of(tmp_path)} == {"task"}


# -- allocate_for(product, task, *, service_hint): task from the arguments ------------


@pytest.mark.parametrize("stage", STAGES)
def test_allocation_helper_yields_an_allocation_of_the_serving_path(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path, stage: str
) -> None:
    """The helper yields kiwi's frozen ``Allocation`` (read by attribute) on a node that
    reads pages, from the path that serves; released when the block ends."""
    k = load(flags(stage, "recipe_scan"))
    from shim.demo.kiwi.docuvision_client import DocuvisionClient

    holders = []
    for n, user in enumerate(USERS):
        with (
            context(user_id=user),
            k.allocate_for("kiwi", "recipe_scan", service_hint="cf-docuvision") as alloc,
        ):
            assert type(alloc) is k.Allocation
            assert alloc.service == "cf-docuvision" and alloc.url.endswith(alloc.allocation_id)
            holders.append(held_by(sim, alloc.allocation_id))
            text = DocuvisionClient(alloc.url).extract_text(photo("card", n)).text
            assert text.strip()
    k.close()
    released(sim)
    split = served_as_expected(log_of(tmp_path), stage, "recipe_scan", len(USERS))
    assert Counter(holders) == (split or Counter(legacy=len(USERS)))


@pytest.mark.parametrize("stage", ["shadow", "canary", "live"])
def test_allocation_helper_records_the_task_its_arguments_name(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path, stage: str
) -> None:
    """One wrapped helper, two tasks: each call is decided and recorded under the task
    its arguments name."""
    k = load(flags(stage, "ocr", "recipe_scan"))
    for user in USERS[:6]:
        for task in ("ocr", "recipe_scan"):
            with context(user_id=user), k.allocate_for("kiwi", task, service_hint="cf-docuvision"):
                pass
    k.close()
    released(sim)
    rows = log_of(tmp_path)
    assert Counter(r["task"] for r in rows) == {"ocr": 6, "recipe_scan": 6}
    assert {r["call_site"] for r in rows} == {"shim.demo.kiwi.node_allocation:allocate_for"}


def test_allocation_helper_releases_by_service_hint_when_the_coordinator_omits_service(
    load: Callable[..., Kiwi], sim: Simulator
) -> None:
    """A coordinator before cf-orch#63 sends no ``service``: the call's ``service_hint``
    names it, for the Allocation and for the release."""
    sim.set_profile(Profile(seed=1, defaults=NO_WAIT, omit_service=True))
    k = load(flags("live", "recipe_scan"))
    with k.allocate_for("kiwi", "recipe_scan", service_hint="cf-docuvision") as alloc:
        assert alloc.service == "cf-docuvision"
        assert held_by(sim, alloc.allocation_id) == "task"
    k.close()
    released(sim)


@pytest.mark.parametrize("stage", STAGES)
def test_recipe_scan_reads_a_card_at_every_stage(
    load: Callable[..., Kiwi], sim: Simulator, stage: str
) -> None:
    """The app's whole scan (pages through the held node, then structuring) works
    whichever path holds the node."""
    k = load(flags(stage, "recipe_scan"))
    for n, user in enumerate(USERS[:4]):
        with context(user_id=user):
            card = k.RecipeScanner().scan([photo("card", n), photo("card", n + 1)], PANTRY)
        assert isinstance(card, k.ScannedRecipeResult)
        assert card.title and card.ingredients and card.steps
    k.close()
    released(sim)


# -- the app's own calls, streaming, local mode -----------------------------------------


def test_every_call_site_is_compared_once_per_app_request(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path
) -> None:
    """kiwi's traffic driver, one request of each task at shadow 100 %: one comparison
    per call site, legacy served each, the task path answered each."""
    from shim.demo.kiwi import traffic

    k = load(flags("shadow", *(t.partition(".")[2] for t in TASKS)))
    tasks = [t.partition(".")[2] for t in TASKS]
    assert traffic.drive(k, tasks, random.Random(3)) == 0
    k.close()
    released(sim)
    rows = log_of(tmp_path)
    assert {(r["task"], r["call_site"].partition(":")[2]) for r in rows} == {
        ("meal_plan", "get_meal_plan_router"),
        ("recipe_generation", "LLMRecipeGenerator._call_llm"),
        ("ocr", "try_docuvision"),
        ("barcode_scan", "extract_label"),
        ("recipe_scan", "allocate_for"),
    }
    assert all(r["served_by"] == "legacy" and r["candidate"]["ok"] for r in rows)


@pytest.mark.parametrize("stage", ["off", "shadow", "live"])
def test_recipe_stream_is_a_streaming_call_site(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path, stage: str
) -> None:
    """Kiwi's authorised stream, wrapped: in off and shadow the browser's chunks are
    kiwi's own, compared in shadow once the stream ends, with its time to first chunk;
    live, they are the task path's as the node streams them, and kiwi's own stream runs
    in the background to compare with."""
    k = load(flags(stage, "recipe_generation"))
    before = counts(sim)

    async def main() -> tuple[Any, list[str]]:
        req = k.RecipeRequest(pantry_items=PANTRY)
        token = await k.stream_token(req)
        chunks = [chunk async for chunk in k.stream_recipe_chunks(req)]
        await k.aclose()
        return token, chunks

    token, chunks = asyncio.run(main())
    k.close()
    text = "".join(chunks)
    assert token.token and token.stream_url.startswith(sim.url)
    assert len(chunks) > 3 and k.parse_recipe(text)["title"] and k.parse_recipe(text)["ingredients"]
    assert counts(sim)["streams.completed"] - before["streams.completed"] == 1
    rows = log_of(tmp_path)
    if stage == "off":
        assert rows == []
        return
    [row] = rows
    seen = row["candidate"] if stage == "live" else row["legacy"]  # what the browser got
    assert row["served_by"] == ("task" if stage == "live" else "legacy")
    assert seen["chunks"] == len(chunks) and seen["output_sha256"] == digest(text)
    assert row["candidate"]["ok"] and row["legacy"]["ok"] and row["quality"]["method"]


def test_a_failing_task_path_falls_back_to_kiwis_own_stream(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path
) -> None:
    """Live, with the task path failing before its first piece: the browser gets kiwi's
    own stream (the fault is the task's: kiwi's /proxy/authorize is legacy's path)."""
    from shim.sim import Profile

    sim.set_profile(Profile(seed=1).with_knob("kiwi.recipe_generation", "error_rate", 1.0))
    k = load(flags("live", "recipe_generation"))

    async def main() -> list[str]:
        req = k.RecipeRequest(pantry_items=PANTRY)
        chunks = [chunk async for chunk in k.stream_recipe_chunks(req)]
        await k.aclose()
        return chunks

    chunks = asyncio.run(main())
    k.close()
    assert len(chunks) > 3 and k.parse_recipe("".join(chunks))["title"]
    [row] = log_of(tmp_path)
    assert row["served_by"] == "legacy_fallback" and not row["candidate"]["ok"]
    assert row["legacy"]["chunks"] == len(chunks)


def test_recipe_stream_refused_without_a_product_key(load: Callable[..., Kiwi]) -> None:
    """No product key: kiwi's API would answer 503, before any request."""
    k = load("{}\n", COORDINATOR_KIWI_KEY=None)
    from shim.demo.kiwi.coordinator_proxy import CoordinatorError

    with pytest.raises(CoordinatorError) as refused:
        asyncio.run(k.stream_token(k.RecipeRequest(pantry_items=PANTRY)))
    assert refused.value.status_code == 503


def test_local_mode_runs_every_call_site_locally_and_records_one_error(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path
) -> None:
    """``CF_ORCH_URL`` unset: the shim is off (one shim.error says so), every call site
    answers from its local path, and no comparison is made, whatever the flags."""
    from shim.demo.kiwi import traffic

    k = load(flags("live", *(t.partition(".")[2] for t in TASKS)), CF_ORCH_URL=None)
    assert k.shim.enabled is False
    before = counts(sim)
    router, ctx = k.get_meal_plan_router()
    assert isinstance(router, k.LocalRouter)
    plan, timing = traffic.plan_week(k, PANTRY)
    assert plan and timing == (15, 30)
    ctx.__exit__(None, None, None)
    assert k.try_docuvision(photo("receipt")) is None
    receipt = k.VisionLanguageOCR().extract_receipt_data(photo("receipt"))
    assert receipt["items"] and "error" not in receipt
    assert k.LLMRecipeGenerator().generate(k.RecipeRequest(pantry_items=PANTRY)).suggestions
    assert k.RecipeScanner().scan([photo("card")]).title
    assert asyncio.run(k.extract_label(photo("label")))["confidence"] > 0
    k.close()
    assert counts(sim) == before, "nothing reached cf-orch"
    rows = log_of(tmp_path, None)
    assert [r["event"] for r in rows] == ["shim.error"]
    assert "CF_ORCH_URL" in rows[0]["error"]


def test_coordinator_down_every_call_site_answers_from_its_local_path(
    load: Callable[..., Kiwi], tmp_path: Path
) -> None:
    """cf-orch unreachable while shadowing: callers get legacy's local fallbacks, the
    records say the task path failed."""
    from shim.demo.kiwi import traffic

    tasks = ("meal_plan", "ocr", "recipe_generation")
    k = load(flags("shadow", *tasks), CF_ORCH_URL="http://127.0.0.1:9")  # nothing listens
    plan, _ = traffic.plan_week(k, PANTRY)
    assert plan, "the local router planned"
    assert k.VisionLanguageOCR().extract_receipt_data(photo("receipt"))["items"]
    assert k.LLMRecipeGenerator().generate(k.RecipeRequest(pantry_items=PANTRY)).suggestions
    k.close()
    rows = log_of(tmp_path)
    assert {r["task"] for r in rows} == set(tasks)
    assert all(r["served_by"] == "legacy" and not r["candidate"]["ok"] for r in rows)


def test_with_every_flag_off_nothing_is_compared(
    load: Callable[..., Kiwi], sim: Simulator, tmp_path: Path
) -> None:
    from shim.demo.kiwi import traffic

    k = load("{}\n")
    tasks = [t.partition(".")[2] for t in TASKS]
    before = counts(sim)
    assert traffic.drive(k, tasks, random.Random(3)) == 0
    k.close()
    released(sim)
    assert log_of(tmp_path) == []
    assert counts(sim)["requests.task"] == before["requests.task"], "the task path never ran"
