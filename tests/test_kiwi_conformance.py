"""Kiwi conformance: every flow kiwi's code runs against cf-orch, driven on the simulator
over real sockets with kiwi-shaped plumbing (examples/kiwi) and plain httpx.

The small parsers below restate what kiwi's own parsers accept (from the fact sheets):
if the simulator's answers pass them, kiwi's code would read them.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim import OrchConfig
from shim.demo.kiwi import coordinator_proxy, orch_client, task_inference
from shim.demo.kiwi.coordinator_proxy import (
    CoordinatorError,
    StreamTokenResult,
    coordinator_authorize,
    read_stream,
    stream_chunks,
)
from shim.demo.kiwi.docuvision_client import DocuvisionClient, DocuvisionResult
from shim.demo.kiwi.orch_client import OrchClient
from shim.demo.kiwi.task_inference import Allocation, TaskNotRegistered, task_allocate
from shim.sim import NodeSpec, Simulator

from .conftest import QUIET
from .shimkit import running_sim

http = httpx.Client(timeout=10)

KIWI_KEY = "kiwi-product-key"

# Kiwi's prompts, paraphrased: the simulator keys on what they ask, not their wording.
PLAN_SYSTEM = (
    "You are a practical meal planner. Reply with a JSON array only, no prose, no "
    "markdown fences: day (0-6), meal_type, recipe_id (int or null), suggestion."
)
TIMING_SYSTEM = (
    "Estimate prep_time (active minutes) and cook_time (minutes) for the recipe. Reply "
    "with only two integers on separate lines, prep first. If unsure reply 0 and 0."
)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    http.close()


@pytest.fixture
def kiwi_env(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """Kiwi's environment pointed at the simulator."""
    monkeypatch.setenv("CF_ORCH_URL", sim.url)
    monkeypatch.setenv("COORDINATOR_KIWI_KEY", KIWI_KEY)
    monkeypatch.delenv("COORDINATOR_URL", raising=False)
    monkeypatch.delenv("CF_LICENSE_KEY", raising=False)
    return sim


def stats(sim: Simulator, **headers: str) -> dict[str, Any]:
    reply = http.get(f"{sim.url}/_sim/stats", headers=headers)
    reply.raise_for_status()
    data: dict[str, Any] = reply.json()
    return data


def wait_for(what: Callable[[], bool], *, deadline_s: float = 5.0) -> None:
    """Wait until ``what()`` holds; fail at the deadline."""
    deadline = time.monotonic() + deadline_s
    while not what():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


def spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[str, dict[str, Any]]]:
    """Record every ``httpx.<name>(url, **kw)`` call (and make it)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    real = getattr(httpx, name)

    def recorded(url: str, **kw: Any) -> httpx.Response:
        calls.append((url, kw))
        response: httpx.Response = real(url, **kw)
        return response

    monkeypatch.setattr(httpx, name, recorded)
    return calls


def chat(url: str, messages: list[dict[str, str]], **body: Any) -> httpx.Response:
    """What kiwi's OpenAI client sends to an allocation's node."""
    return http.post(f"{url}/v1/chat/completions", json={"messages": messages, **body})


def first_model(url: str) -> str:
    """Kiwi's model choice: ``client.models.list().data[0].id``."""
    model: str = http.get(f"{url}/v1/models").json()["data"][0]["id"]
    return model


# -- kiwi's parsers, restated ------------------------------------------------------------


def parse_meal_plan(text: str) -> list[tuple[int, str, int | None, str]]:
    """llm_planner: strict json.loads; dict items with an int day 0-6."""
    out = []
    for item in json.loads(text.strip()):
        if not isinstance(item, dict):
            continue
        day = item.get("day")
        if not isinstance(day, int) or not 0 <= day <= 6:
            continue
        meal = item.get("meal_type", "dinner")
        out.append((day, meal, item.get("recipe_id"), str(item.get("suggestion", ""))))
    return out


def parse_timing(text: str) -> tuple[int | None, int | None]:
    """llm_timing: int of the first two lines; both zero means unknown."""
    lines = text.strip().splitlines()
    prep = int(lines[0]) if lines else 0
    cook = int(lines[1]) if len(lines) > 1 else 0
    if not prep and not cook:
        return None, None
    return prep or None, cook or None


_RECIPE_HEADERS = ("title", "ingredients", "directions", "notes")


def parse_recipe(text: str) -> dict[str, Any]:
    """llm_recipe: four headers, continuation lines, ingredients split on commas."""
    found: dict[str, list[str]] = {h: [] for h in _RECIPE_HEADERS}
    current: str | None = None
    for raw in text.splitlines():
        line = re.sub(r"\*{1,2}([^*]+)\*{1,2}", r"\1", raw).strip()
        header = next((h for h in _RECIPE_HEADERS if line.lower().startswith(f"{h}:")), None)
        if header is not None:
            current = header
            rest = line.split(":", 1)[1].strip()
            if rest:
                found[header].append(rest)
        elif current is not None and line:
            found[current].append(line)
    ingredients = " ".join(found["ingredients"])
    return {
        "title": " ".join(found["title"]),
        "ingredients": [i.strip() for i in ingredients.split(",") if i.strip()],
        "directions": [re.sub(r"^(\d+[.)]|-|\*)\s*", "", d) for d in found["directions"]],
        "notes": " ".join(found["notes"]),
    }


_SKELETON: dict[str, Any] = {"merchant": {}, "transaction": {}, "items": [], "totals": {}}


def parse_receipt(text: str) -> dict[str, Any]:
    """vl_model: greedy first '{' to last '}', json.loads, one repair, else a skeleton."""
    match = re.search(r"\{.*\}", text, re.S)
    if match is None:
        return dict(_SKELETON)
    try:
        data: dict[str, Any] = json.loads(match.group(0))
    except json.JSONDecodeError:
        fixed = re.sub(r",\s*([}\]])", r"\1", match.group(0)).replace("'", '"')
        try:
            data = json.loads(fixed)
        except json.JSONDecodeError:
            return dict(_SKELETON)
    return data


def receipt_warnings(receipt: dict[str, Any]) -> list[str]:
    """vl_model's validator: what it would warn about."""
    warnings = []
    items, totals = receipt.get("items") or [], receipt.get("totals") or {}
    if not items:
        warnings.append("No items found on receipt")
    if items and totals:
        total = sum(i.get("total_price", 0) for i in items)
        if abs(total - totals.get("subtotal", 0)) > 0.10:
            warnings.append("Total mismatch")
    try:
        datetime.strptime(receipt["transaction"]["date"], "%Y-%m-%d")
    except (KeyError, TypeError, ValueError):
        warnings.append("Invalid date format")
    return warnings


def parse_scanner_json(text: str) -> dict[str, Any]:
    """recipe_scanner: fences and think blocks stripped, then JSON or the first object."""
    text = re.sub(r"<think(ing)?>.*?</think(ing)?>", "", text.strip(), flags=re.S | re.I)
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.S)
    data: dict[str, Any] = json.loads(fenced.group(1) if fenced else text)
    if data.get("error") == "not_a_recipe":
        raise ValueError("not_a_recipe")
    return data


# -- task allocation -----------------------------------------------------------------


def test_task_allocate_sends_kiwis_exact_body_and_gets_an_allocation(
    kiwi_env: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kiwi's body is exactly {product, task, payload: {}}; the answer is an allocation
    with the real coordinator's keys; the release brings the count back to 0."""
    posts = spy(monkeypatch, "post")
    deletes = spy(monkeypatch, "delete")
    with task_allocate("kiwi", "meal_plan", service_hint="cf-text", ttl_s=120.0) as alloc:
        assert stats(kiwi_env)["allocations_active"] == 1
    [(url, kw)] = posts
    assert url == f"{kiwi_env.url}/api/inference/task"
    assert kw["json"] == {"product": "kiwi", "task": "meal_plan", "payload": {}}
    assert kw["timeout"] == 30.0 and "headers" not in kw
    assert isinstance(alloc, Allocation) and alloc.service == "cf-text"
    cf_text_nodes = ("node-a", "node-b")  # round-robin: which one depends on earlier tests
    assert alloc.url in [f"{kiwi_env.url}/nodes/{n}/a/{alloc.allocation_id}" for n in cf_text_nodes]
    answer = http.post(url, json=kw["json"]).json()
    assert set(answer) == {"url", "allocation_id", "service", "gpu_id", "started", "warm"}
    [(released, _)] = deletes
    assert released.endswith(f"/api/services/cf-text/allocations/{alloc.allocation_id}")
    http.delete(f"{kiwi_env.url}/api/services/cf-text/allocations/{answer['allocation_id']}")
    assert stats(kiwi_env)["allocations_active"] == 0


def test_the_answers_service_beats_the_hint(kiwi_env: Simulator) -> None:
    """OCR's hint is cf-docuvision; the coordinator's answer (cf-vision) wins and is
    where the release goes."""
    with task_allocate("kiwi", "ocr", service_hint="cf-docuvision") as alloc:
        assert alloc.service == "cf-vision"
    assert stats(kiwi_env)["allocations_active"] == 0


def test_without_service_in_the_answer_the_hint_is_used(kiwi_env: Simulator) -> None:
    """A coordinator before cf-orch#63 sends no service: the hint names the release."""
    kiwi_env.set_profile(QUIET.with_options(omit_service=True))
    raw = http.post(
        f"{kiwi_env.url}/api/inference/task",
        json={"product": "kiwi", "task": "meal_plan", "payload": {}},
    ).json()
    assert "service" not in raw and {"url", "allocation_id"} <= set(raw)
    http.delete(f"{kiwi_env.url}/api/services/cf-text/allocations/{raw['allocation_id']}")
    with task_allocate("kiwi", "meal_plan", service_hint="cf-text") as alloc:
        assert alloc.service == "cf-text"
    assert stats(kiwi_env)["allocations_active"] == 0


def test_a_wrong_hint_leaks_the_allocation_until_its_ttl(kiwi_env: Simulator) -> None:
    """Without service in the answer, OCR's hint (cf-docuvision) misses the real service
    (cf-vision): the release is refused, kiwi swallows that, and the allocation lives
    until the coordinator's TTL drops it."""
    # Long enough to see it still held after the block, even on a loaded machine.
    kiwi_env.set_profile(QUIET.with_options(omit_service=True, task_ttl_s=1.0))
    with task_allocate("kiwi", "ocr", service_hint="cf-docuvision") as alloc:
        pass
    assert stats(kiwi_env)["active"] == [alloc.allocation_id], "release went to the hint"
    expired = stats(kiwi_env)["counts"].get("allocations.expired", 0)
    wait_for(lambda: stats(kiwi_env)["allocations_active"] == 0)
    assert stats(kiwi_env)["counts"]["allocations.expired"] == expired + 1


def test_release_runs_when_the_block_raises(kiwi_env: Simulator) -> None:
    """The with-block's exception propagates, after the release."""
    with (
        pytest.raises(ValueError, match="parse failed"),
        task_allocate("kiwi", "meal_plan", service_hint="cf-text"),
    ):
        raise ValueError("parse failed")
    assert stats(kiwi_env)["allocations_active"] == 0


def test_unregistered_task_raises_task_not_registered(kiwi_env: Simulator) -> None:
    """404 from the task endpoint is TaskNotRegistered (kiwi's cue to fall back)."""
    ctx = task_allocate("kiwi", "soup", service_hint="cf-text")
    with pytest.raises(TaskNotRegistered, match=r"kiwi\.soup"), ctx:
        pass
    assert not issubclass(TaskNotRegistered, RuntimeError)


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_url", "CF_ORCH_URL"),
        ("unreachable", "unreachable"),
        ("http_503", "HTTP 503"),
        ("malformed", "malformed"),
    ],
)
def test_task_allocate_failures_are_runtime_errors(
    kiwi_env: Simulator, monkeypatch: pytest.MonkeyPatch, case: str, message: str
) -> None:
    """Each failure kiwi's tests name raises RuntimeError with its word, on enter."""
    if case == "no_url":
        monkeypatch.delenv("CF_ORCH_URL")
    elif case == "unreachable":
        monkeypatch.setenv("CF_ORCH_URL", _closed_port())
    elif case == "http_503":
        kiwi_env.set_profile(QUIET.with_knob("kiwi.meal_plan", "error_rate", 1.0))
    else:
        kiwi_env.set_profile(QUIET.with_knob("kiwi.meal_plan", "malformed_rate", 1.0))
    posts = spy(monkeypatch, "post")
    ctx = task_allocate("kiwi", "meal_plan", service_hint="cf-text")
    assert posts == [], "nothing happens before the context is entered"
    with pytest.raises(RuntimeError, match=message), ctx:
        pass
    assert len(posts) == (0 if case == "no_url" else 1)


# -- the node ---------------------------------------------------------------------------


def test_meal_plan_and_timing_on_the_allocated_text_node(kiwi_env: Simulator) -> None:
    """Kiwi's meal-plan router: models.list().data[0] is the allocation's model; the
    plan is a bare JSON array its strict parser reads; the timing estimate on the same
    node is two integers."""
    with task_allocate("kiwi", "meal_plan", service_hint="cf-text") as alloc:
        models = http.get(f"{alloc.url}/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["qwen2.5-3b-instruct"]
        messages = [
            {"role": "system", "content": PLAN_SYSTEM},
            {"role": "user", "content": "Meal types: dinner\nDietary notes: none"},
        ]
        reply = chat(alloc.url, messages, model=models[0]["id"], max_tokens=512, temperature=0.7)
        assert reply.status_code == 200, reply.text
        plan = parse_meal_plan(reply.json()["choices"][0]["message"]["content"])
        assert len(plan) >= 5 and {meal for _, meal, _, _ in plan} == {"dinner"}
        assert len({day for day, *_ in plan}) == len(plan), "one dinner per day"
        timing = chat(
            alloc.url,
            [{"role": "system", "content": TIMING_SYSTEM}, {"role": "user", "content": "Soup"}],
            model=first_model(alloc.url),
            max_tokens=16,
            temperature=0.0,
        ).json()["choices"][0]["message"]["content"]
        assert re.fullmatch(r"\d+\n\d+", timing), timing
        assert parse_timing(timing)[0], "prep minutes first"
        other = chat(alloc.url, messages, model="llama3.2-3b-instruct")
        assert other.status_code == 404 and other.json()["error"] == "model_not_found"
        alias = chat(alloc.url, messages, model="Qwen/Qwen2.5-3B-Instruct")
        assert alias.status_code == 200, "an alias of the allocation's model is that model"
    assert stats(kiwi_env)["allocations_active"] == 0


def test_recipe_text_parses_into_kiwis_four_sections(kiwi_env: Simulator) -> None:
    """llm_recipe sends one user message and reads Title / Ingredients / Directions /
    Notes."""
    with task_allocate("kiwi", "recipe_generation", service_hint="vllm") as alloc:
        reply = chat(alloc.url, [{"role": "user", "content": "Pantry: rice, eggs"}])
        recipe = parse_recipe(reply.json()["choices"][0]["message"]["content"])
    assert recipe["title"] and recipe["notes"]
    assert len(recipe["ingredients"]) >= 4, "a comma-separated ingredient line"
    assert len(recipe["directions"]) >= 3 and all(recipe["directions"])


def test_drift_reaches_kiwis_parser_on_the_task_path_only(kiwi_env: Simulator) -> None:
    """With fence drift on kiwi.meal_plan, the task path's node answers what kiwi's
    strict parser rejects; a direct allocation of the same model never drifts."""
    kiwi_env.set_profile(
        QUIET.with_knob("kiwi.meal_plan", "drift_rate", 1.0).with_knob(
            "kiwi.meal_plan", "drift_kinds", ["fence"]
        )
    )
    messages = [{"role": "system", "content": PLAN_SYSTEM}, {"role": "user", "content": "x"}]
    with task_allocate("kiwi", "meal_plan", service_hint="cf-text") as alloc:
        fenced = chat(alloc.url, messages).json()["choices"][0]["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        parse_meal_plan(fenced)
    with OrchClient(kiwi_env.url).allocate("cf-text", caller="kiwi-meal-plan") as direct:
        plain = chat(direct.url, messages).json()["choices"][0]["message"]["content"]
    assert parse_meal_plan(plain)


# -- direct allocation (the fallback tier) ----------------------------------------------


def test_direct_allocate_without_candidates_gets_the_services_default(
    kiwi_env: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The meal-plan fallback sends no candidates: the coordinator picks the model
    assigned on that service, and the node serves it."""
    posts = spy(monkeypatch, "post")
    client = OrchClient(kiwi_env.url)
    with client.allocate("cf-text", ttl_s=120.0, caller="kiwi-meal-plan") as alloc:
        assert (alloc.service, alloc.model) == ("cf-text", "qwen2.5-3b-instruct")
        assert isinstance(alloc.gpu_id, int) and alloc.node_id in {"node-a", "node-b"}
        assert first_model(alloc.url) == "qwen2.5-3b-instruct"
    [(url, kw)] = posts
    assert url == f"{kiwi_env.url}/api/services/cf-text/allocate"
    assert kw["json"] == {"model_candidates": [], "ttl_s": 120.0, "caller": "kiwi-meal-plan"}
    assert stats(kiwi_env)["allocations_active"] == 0


@pytest.mark.parametrize(
    ("candidates", "model"),
    [
        (["Ouro-2.6B-Thinking", "Ouro-1.4B"], "ouro-2.6b-thinking"),
        (["gpt-9", "Ouro-1.4B"], "ouro-1.4b"),
    ],
)
def test_direct_allocate_takes_the_first_candidate_that_fits(
    kiwi_env: Simulator, candidates: list[str], model: str
) -> None:
    """llm_recipe's candidates: the first registered on the service (any case) is
    allocated, and its node writes kiwi's recipe format."""
    client = OrchClient(kiwi_env.url)
    with client.allocate(
        "vllm", model_candidates=candidates, ttl_s=300.0, caller="kiwi-recipe"
    ) as alloc:
        assert alloc.model == model
        reply = chat(alloc.url, [{"role": "user", "content": "a recipe"}], model=alloc.model)
    assert parse_recipe(reply.json()["choices"][0]["message"]["content"])["title"]
    assert stats(kiwi_env)["allocations_active"] == 0


@pytest.mark.parametrize(
    ("service", "candidates", "status"),
    [
        ("cf-audio", None, "HTTP 422"),  # no model runs on that service
        ("cf-text", ["florence-2-large"], "HTTP 503"),  # every candidate failed
    ],
)
def test_direct_allocate_refusals(
    kiwi_env: Simulator, service: str, candidates: list[str] | None, status: str
) -> None:
    """Refusals raise RuntimeError with the coordinator's status, as kiwi's client does."""
    with (
        pytest.raises(RuntimeError, match=f"allocation failed for '{service}': {status}"),
        OrchClient(kiwi_env.url).allocate(service, model_candidates=candidates),
    ):
        pass


def test_direct_allocate_without_capacity_is_503(kiwi_env: Simulator) -> None:
    """No node runs the service: 503."""
    kiwi_env.set_profile(
        QUIET.model_copy(update={"nodes": [NodeSpec(id="node-x", services=["cf-text"])]})
    )
    with (
        pytest.raises(RuntimeError, match="HTTP 503"),
        OrchClient(kiwi_env.url).allocate("vllm", model_candidates=["ouro-1.4b"]),
    ):
        pass


def test_direct_allocate_async_sends_the_license_key(
    kiwi_config: OrchConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async twin allocates and releases with Bearer CF_LICENSE_KEY; without the
    key a guarded coordinator refuses."""
    monkeypatch.setenv("CF_LICENSE_KEY", "lic-1")
    with Simulator(kiwi_config, QUIET, require_key="lic-1") as locked:

        async def run() -> str | None:
            client = OrchClient(locked.url)
            async with client.allocate_async("cf-text", ttl_s=60.0, caller="kiwi") as alloc:
                assert locked.stats()["allocations_active"] == 1
                return alloc.model

        assert asyncio.run(run()) == "qwen2.5-3b-instruct"
        assert locked.stats()["allocations_active"] == 0
        with (
            pytest.raises(RuntimeError, match="HTTP 401"),
            OrchClient(locked.url, api_key="").allocate("cf-text"),
        ):
            pass


def test_direct_allocation_expires_after_its_ttl(kiwi_env: Simulator) -> None:
    """Unreleased, a direct allocation ends at ttl_s: it leaves the stats, is counted,
    its node says it expired, and the late release is swallowed."""
    expired = stats(kiwi_env)["counts"].get("allocations.expired", 0)
    with OrchClient(kiwi_env.url).allocate("cf-text", ttl_s=1.0) as alloc:
        assert http.get(f"{alloc.url}/v1/models").status_code == 200, "alive before ttl_s"
        wait_for(lambda: stats(kiwi_env)["allocations_active"] == 0)
        late = chat(alloc.url, [{"role": "user", "content": "x"}])
        assert late.status_code == 409 and "expired" in late.json()["detail"]
    assert stats(kiwi_env)["counts"]["allocations.expired"] == expired + 1


def test_task_allocation_expires_after_the_profiles_ttl(kiwi_env: Simulator) -> None:
    """Kiwi sends no TTL to the task endpoint: the coordinator's own (task_ttl_s)
    applies."""
    kiwi_env.set_profile(QUIET.with_options(task_ttl_s=0.3))
    with task_allocate("kiwi", "meal_plan", service_hint="cf-text") as alloc:
        wait_for(lambda: stats(kiwi_env)["allocations_active"] == 0)
        late = http.get(f"{alloc.url}/v1/models")
        assert late.status_code == 409 and "expired" in late.json()["detail"]


# -- docuvision -------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_docuvision_reads_a_receipt_kiwis_ocr_accepts(
    kiwi_env: Simulator, tmp_path: Path, driver: str
) -> None:
    """OCR's task path: /extract's raw_text is receipt JSON that kiwi's parser accepts
    (merchant and items present) and its validator passes (items add up, ISO date)."""
    photo = tmp_path / "receipt.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 a jpeg, as far as the node cares")
    with task_allocate("kiwi", "ocr", service_hint="cf-docuvision", ttl_s=60.0) as alloc:
        client = DocuvisionClient(alloc.url)
        result: DocuvisionResult
        if driver == "sync":
            result = client.extract_text(photo)
        else:
            result = asyncio.run(client.extract_text_async(photo))
    receipt = parse_receipt(result.text)
    assert receipt.get("items") and receipt.get("merchant"), "kiwi accepts the docuvision text"
    assert receipt_warnings(receipt) == []
    assert set(receipt["confidence"]) == {"overall", "merchant", "items", "totals"}
    assert isinstance(result.confidence, float) and 0 < result.confidence <= 1
    assert result.raw is not None and result.raw["raw_text"] == result.text
    assert stats(kiwi_env)["allocations_active"] == 0


def test_docuvision_ocr_fallback_names_the_service_as_candidate(kiwi_env: Simulator) -> None:
    """OCR's direct tier asks cf-docuvision for candidate 'cf-docuvision': the
    service's own model, which reads receipts."""
    client = OrchClient(kiwi_env.url)
    with client.allocate(
        "cf-docuvision", model_candidates=["cf-docuvision"], ttl_s=60.0, caller="kiwi-ocr"
    ) as alloc:
        assert alloc.model == "docuvision-receipts"
        text = DocuvisionClient(alloc.url).extract_text(b"\x89PNG raw bytes").text
    assert parse_receipt(text)["items"]


def test_docuvision_reads_a_recipe_card_as_plain_text(kiwi_env: Simulator) -> None:
    """recipe_scan's /extract is OCR'd text of a card (kiwi's LLM structures it later),
    not JSON."""
    with task_allocate("kiwi", "recipe_scan", service_hint="cf-docuvision") as alloc:
        assert alloc.service == "cf-docuvision", "the task is registered on kiwi's hint"
        text = DocuvisionClient(alloc.url).extract_text(b"card bytes", hint="text").text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    lines = text.splitlines()
    assert "Ingredients:" in lines and "Directions:" in lines and len(lines) >= 6


def test_text_nodes_have_no_extract(kiwi_env: Simulator) -> None:
    """A text allocation answers /extract with 404: only document services read images."""
    with (
        task_allocate("kiwi", "meal_plan", service_hint="cf-text") as alloc,
        pytest.raises(httpx.HTTPStatusError) as caught,
    ):
        DocuvisionClient(alloc.url).extract_text(b"x")
    assert caught.value.response.status_code == 404


def test_vision_task_outputs_follow_kiwis_formats(kiwi_env: Simulator) -> None:
    """The task output extension answers recipe_scan with the scanner's JSON and
    barcode_scan with a label kiwi's label capture reads."""
    url = f"{kiwi_env.url}/api/inference/task"
    body = {"product": "kiwi", "prompt": "read this"}
    card = http.post(url, json={**body, "task": "recipe_scan"}).json()["output"]
    scanned = parse_scanner_json(json.dumps(card))
    assert (
        scanned["title"]
        and scanned["steps"]
        and scanned["confidence"]
        in {
            "high",
            "medium",
            "low",
        }
    )
    assert all(set(i) == {"name", "qty", "unit", "raw"} for i in scanned["ingredients"])
    label = http.post(url, json={**body, "task": "barcode_scan"}).json()["output"]
    assert set(label) == {
        "product_name",
        "brand",
        "serving_size_g",
        "calories",
        "fat_g",
        "saturated_fat_g",
        "carbs_g",
        "sugar_g",
        "fiber_g",
        "protein_g",
        "sodium_mg",
        "ingredient_names",
        "allergens",
        "confidence",
    }
    assert isinstance(label["allergens"], list) and 0 <= label["confidence"] <= 1


# -- streaming --------------------------------------------------------------------------


def test_stream_authorisation_and_reading(
    kiwi_env: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """coordinator_authorize posts kiwi's six keys (to CF_ORCH_URL when COORDINATOR_URL is
    unset); the browser reads a recipe once; the token cannot be used again."""
    sent: list[Any] = []
    real_post = httpx.AsyncClient.post

    async def recorded(self: httpx.AsyncClient, url: str, **kw: Any) -> httpx.Response:
        sent.append((url, kw.get("json")))
        return await real_post(self, url, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "post", recorded)
    grant = asyncio.run(coordinator_authorize("Pantry: rice, eggs"))
    assert sent == [
        (
            f"{kiwi_env.url}/proxy/authorize",
            {
                "product": "kiwi",
                "product_key": KIWI_KEY,
                "caller": "kiwi-recipe",
                "prompt": "Pantry: rice, eggs",
                "params": {},
                "ttl_s": 300,
            },
        )
    ]
    assert grant.stream_url == f"{kiwi_env.url}/proxy/stream" and grant.expires_in_s == 300
    assert stats(kiwi_env)["streams_active"] == 1
    recipe = parse_recipe(asyncio.run(read_stream(grant)))
    assert recipe["title"] and len(recipe["ingredients"]) >= 4 and recipe["directions"]
    assert stats(kiwi_env)["streams_active"] == 0
    with pytest.raises(CoordinatorError) as again:
        asyncio.run(read_stream(grant))
    assert again.value.status_code == 410, "the token is one-time"
    forged = StreamTokenResult(grant.stream_url, "forged", 300)
    with pytest.raises(CoordinatorError) as unknown:
        asyncio.run(read_stream(forged))
    assert unknown.value.status_code == 401


def test_stream_events_are_kiwis_chunks_then_done(kiwi_env: Simulator) -> None:
    """The stream is text/event-stream as kiwi's browser reads it: ``{"chunk"}`` events,
    then ``{"done": true}``."""
    grant = asyncio.run(coordinator_authorize("p"))
    reply = http.get(grant.stream_url, params={"token": grant.token})
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(e.removeprefix("data: ")) for e in reply.text.split("\n\n") if e]
    assert events[-1] == {"done": True}
    assert len(events) > 3 and all(set(e) == {"chunk"} for e in events[:-1])
    assert parse_recipe("".join(e["chunk"] for e in events[:-1]))["title"]


def test_stream_pacing_follows_the_legacy_knobs(kiwi_env: Simulator) -> None:
    """``ttft_ms`` before the first chunk and ``chunk_interval_ms`` between chunks."""
    kiwi_env.set_profile(
        QUIET.with_knob("legacy", "ttft_ms", 300).with_knob("legacy", "chunk_interval_ms", 20)
    )

    async def timed() -> list[float]:
        grant = await coordinator_authorize("p")
        started, seen = time.perf_counter(), []
        async for _ in stream_chunks(grant):
            seen.append(time.perf_counter() - started)
        return seen

    seen = asyncio.run(timed())
    assert seen[0] >= 0.3
    assert seen[-1] - seen[0] >= 0.02 * (len(seen) - 1) * 0.9


def test_stream_authorisation_refusals_map_as_kiwi_maps_them(
    kiwi_config: OrchConfig, kiwi_env: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """401 bad key, 429 too many streams, 503 no GPU or a fault; another status is 503
    with its code in the message; a missing key is 503 before any request."""

    def refused() -> CoordinatorError:
        with pytest.raises(CoordinatorError) as caught:
            asyncio.run(coordinator_authorize("p"))
        return caught.value

    with Simulator(kiwi_config, QUIET, product_key="the-real-key") as keyed:
        monkeypatch.setenv("COORDINATOR_URL", keyed.url + "/")
        assert (refused().status_code, str(refused())) == (401, "Invalid product key")
        monkeypatch.setenv("COORDINATOR_KIWI_KEY", "the-real-key")
        assert asyncio.run(coordinator_authorize("p")).stream_url.startswith(keyed.url)
    monkeypatch.delenv("COORDINATOR_URL")
    monkeypatch.setenv("COORDINATOR_KIWI_KEY", KIWI_KEY)
    empty = http.post(f"{kiwi_env.url}/proxy/authorize", json={"product": "kiwi"})
    assert empty.status_code == 401, "an empty product key is refused"

    kiwi_env.set_profile(QUIET.with_options(max_streams=1))
    first = asyncio.run(coordinator_authorize("p"))
    assert refused().status_code == 429
    asyncio.run(read_stream(first))
    assert asyncio.run(read_stream(asyncio.run(coordinator_authorize("p")))), "a slot came back"

    kiwi_env.set_profile(QUIET.model_copy(update={"nodes": [NodeSpec(id="t", services=["x"])]}))
    assert (refused().status_code, str(refused())) == (503, "No GPU available for streaming")
    faulty = QUIET.with_knob("legacy", "error_rate", 1.0)  # authorising is kiwi's own path
    kiwi_env.set_profile(faulty.with_knob("legacy", "error_status", 500))
    other = refused()
    assert other.status_code == 503 and str(other).startswith("Coordinator error 500")

    monkeypatch.delenv("COORDINATOR_KIWI_KEY")
    assert "COORDINATOR_KIWI_KEY" in str(refused())


def test_an_unused_stream_token_expires(kiwi_env: Simulator) -> None:
    """A token nobody opens frees its slot at ttl_s and then answers 410."""
    reply = http.post(
        f"{kiwi_env.url}/proxy/authorize",
        json={"product": "kiwi", "product_key": KIWI_KEY, "prompt": "p", "ttl_s": 0.3},
    ).json()
    assert reply["expires_in_s"] == 1, "whole seconds, rounded up"
    wait_for(lambda: stats(kiwi_env)["streams_active"] == 0)
    late = http.get(reply["stream_url"], params={"token": reply["token"]})
    assert late.status_code == 410 and "expired" in late.json()["detail"]


# -- the simulator's key ------------------------------------------------------------------


def test_require_key_guards_nodes_and_sim_but_not_health_or_streams(
    kiwi_config: OrchConfig,
) -> None:
    """With --require-key, nodes and /_sim want the Bearer key too; /health and the
    token-guarded stream URL do not."""
    auth = {"Authorization": "Bearer k"}
    with Simulator(kiwi_config, QUIET, require_key="k") as locked:
        task = {"product": "kiwi", "task": "meal_plan", "payload": {}}
        assert http.post(f"{locked.url}/api/inference/task", json=task).status_code == 401
        alloc = http.post(f"{locked.url}/api/inference/task", json=task, headers=auth).json()
        assert http.get(f"{alloc['url']}/v1/models").status_code == 401
        assert http.get(f"{alloc['url']}/v1/models", headers=auth).status_code == 200
        assert http.get(f"{locked.url}/nodes/node-a/v1/models").status_code == 401
        assert http.get(f"{locked.url}/_sim/stats").status_code == 401
        assert http.get(f"{locked.url}/_sim/stats", headers=auth).status_code == 200
        assert http.put(f"{locked.url}/_sim/profile", json={}).status_code == 401
        assert http.get(f"{locked.url}/health").status_code == 200
        body = {"product": "kiwi", "product_key": "x", "prompt": "p"}
        assert http.post(f"{locked.url}/proxy/authorize", json=body).status_code == 401
        grant = http.post(f"{locked.url}/proxy/authorize", json=body, headers=auth).json()
        streamed = http.get(grant["stream_url"], params={"token": grant["token"]})
        assert streamed.status_code == 200 and streamed.text.endswith('data: {"done": true}\n\n')


def test_plumbing_modules_export_what_the_call_sites_use() -> None:
    """The names kiwi's call sites import from the plumbing."""
    assert task_inference.__all__ == ["Allocation", "TaskNotRegistered", "task_allocate"]
    assert orch_client.__all__ == ["NodeAllocation", "OrchClient"]
    assert coordinator_proxy.__all__ == [
        "CoordinatorError",
        "StreamTokenResult",
        "coordinator_authorize",
        "read_stream",
        "stream_chunks",
    ]


# -- the whole of kiwi's traffic against `shim sim`, the command ------------------------


@pytest.mark.subprocess
def test_every_kiwi_flow_against_the_shim_sim_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new user's run: ``shim sim`` as a coordinator before cf-orch#63, and kiwi's
    plumbing through allocate, chat, release, 404, fallback allocate, stream
    authorisation and docuvision extract; nothing is left allocated."""
    args = ["--seed", "5", "--latency-ms", "1", "--omit-service", "--product-key", KIWI_KEY]
    with running_sim(*args) as first:
        assert first.startswith("listening on http://127.0.0.1:"), first
        url = first.removeprefix("listening on ")
        monkeypatch.setenv("CF_ORCH_URL", url)
        monkeypatch.setenv("COORDINATOR_URL", url)
        monkeypatch.setenv("COORDINATOR_KIWI_KEY", KIWI_KEY)
        with task_allocate("kiwi", "meal_plan", service_hint="cf-text") as alloc:
            assert alloc.service == "cf-text", "no service in the answer: the hint"
            plan = chat(alloc.url, [{"role": "system", "content": PLAN_SYSTEM},
                                    {"role": "user", "content": "Pantry: rice"}],
                        model=first_model(alloc.url))  # fmt: skip
            assert parse_meal_plan(plan.json()["choices"][0]["message"]["content"])
        with pytest.raises(TaskNotRegistered):
            task_allocate("kiwi", "soup", service_hint="cf-text").__enter__()
        with OrchClient(url).allocate("cf-text", ttl_s=120.0, caller="kiwi-meal-plan") as n:
            assert first_model(n.url) == n.model
        with task_allocate("kiwi", "recipe_scan", service_hint="cf-docuvision") as card:
            page = DocuvisionClient(card.url).extract_text(b"\x89PNG page", hint="text")
            assert page.text.strip()
        grant = asyncio.run(coordinator_authorize("Soup from rice", ttl_s=60))
        assert "Directions:" in asyncio.run(read_stream(grant))
        assert http.get(f"{url}/_sim/stats").json()["allocations_active"] == 0
