"""The simulator's endpoints and knobs, over a real socket."""

from __future__ import annotations

import copy
import json
import random
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim import ConfigError, OrchConfig
from shim.sim import DRIFT_KINDS, Profile, Simulator, generate, parse_knob
from shim.sim._outputs import OUTPUT_KINDS, DriftKind, apply_drift

from .conftest import QUIET

# One pooled client for the module: a fresh httpx.post per request costs ~20 ms.
http = httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    http.close()


def post(sim: Simulator, path: str, body: Any, **kw: Any) -> httpx.Response:
    return http.post(f"{sim.url}{path}", json=body, **kw)


def task(sim: Simulator, name: str, **body: Any) -> httpx.Response:
    return post(sim, "/api/inference/task", {"product": "kiwi", "task": name, **body})


def infer(sim: Simulator, name: str, **body: Any) -> httpx.Response:
    """A task request carrying a prompt: answered with output (this project's extension)."""
    return task(sim, name, prompt="p", **body)


def active(sim: Simulator) -> int:
    count: int = http.get(f"{sim.url}/_sim/stats").json()["allocations_active"]
    return count


def test_unknown_task_is_404_with_a_json_error(sim: Simulator) -> None:
    reply = task(sim, "soup", prompt="x")
    assert reply.status_code == 404
    assert reply.json() == {
        "error": "task_not_registered",
        "detail": "kiwi.soup is not in assignments.yaml",
    }


@pytest.mark.parametrize(
    "body",
    [
        {"product": "kiwi"},
        {"product": "kiwi", "task": 3},
        {"product": "kiwi", "task": "ocr", "mode": "stream"},
        {"product": "", "task": "ocr"},
        [1, 2],
    ],
)
def test_malformed_body_is_422(sim: Simulator, body: Any) -> None:
    reply = post(sim, "/api/inference/task", body)
    assert reply.status_code == 422
    assert "detail" in reply.json()


def test_body_that_is_not_json_is_422(sim: Simulator) -> None:
    reply = http.post(
        f"{sim.url}/api/inference/task",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 422


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/inference/task", {"product": "kiwi", "task": "ocr", "colour": "red"}),
        ("/api/inference", {"model": "ouro-1.4b", "colour": "red"}),
        ("/api/services/cf-text/allocate", {"gpu_id": 0, "params": {}, "colour": "red"}),
        ("/proxy/authorize", {"product": "kiwi", "product_key": "k", "colour": "red"}),
    ],
)
def test_unknown_fields_are_ignored(sim: Simulator, path: str, body: dict[str, Any]) -> None:
    """As a default FastAPI model does: a newer client's extra fields are no error."""
    assert post(sim, path, body).status_code == 200


def test_unknown_fields_are_ignored_by_nodes(sim: Simulator) -> None:
    """Chat and extract bodies too (OpenAI clients send many optional fields)."""
    alloc = task(sim, "ocr", payload={}).json()
    chat = http.post(
        f"{alloc['url']}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], "n": 1, "logprobs": False},
    )
    assert chat.status_code == 200
    extract = http.post(f"{alloc['url']}/extract", json={"image_b64": "AAAA", "pages": 2})
    assert extract.status_code == 200
    bad = http.post(f"{alloc['url']}/extract", json={"image_b64": "not base64!"})
    assert bad.status_code == 422 and bad.json()["error"] == "bad_image"


def test_require_key_guards_every_route_but_health(kiwi_config: OrchConfig) -> None:
    with Simulator(kiwi_config, QUIET, require_key="k") as locked:
        body = {"product": "kiwi", "task": "ocr"}
        url = f"{locked.url}/api/inference/task"
        missing = http.post(url, json=body)
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert http.post(url, json=body, headers={"Authorization": "Bearer x"}).status_code == 401
        assert http.post(url, json=body, headers={"Authorization": "k"}).status_code == 401
        assert http.post(url, json=body, headers={"Authorization": "Bearer k"}).status_code == 200
        assert http.get(f"{locked.url}/nodes/node-a/v1/models").status_code == 401
        assert http.get(f"{locked.url}/_sim/stats").status_code == 401
        assert http.get(f"{locked.url}/health").status_code == 200
        assert locked.stats()["counts"]["unauthorized"] == 5


@pytest.fixture(scope="module")
def locked(kiwi_config: OrchConfig) -> Iterator[Simulator]:
    """A simulator that wants ``Bearer k``."""
    with Simulator(kiwi_config, QUIET, require_key="k") as sim:
        yield sim


# Every route, in each form a client might try (and some no route has): without the
# key, all answer 401 before routing, so a route added later is guarded too.
GUARDED = [
    ("POST", "/api/inference/task"),
    ("POST", "/api/inference"),
    ("POST", "/api/services/cf-text/allocate"),
    ("DELETE", "/api/services/cf-text/allocations/a-1"),
    ("POST", "/proxy/authorize"),
    ("GET", "/nodes/node-a/v1/models"),
    ("POST", "/nodes/node-a/v1/chat/completions"),
    ("POST", "/nodes/node-a/extract"),
    ("GET", "/nodes/node-a/a/a-1/v1/models"),
    ("POST", "/nodes/node-a/a/a-1/v1/chat/completions"),
    ("POST", "/nodes/node-a/a/a-1/extract"),
    ("GET", "/_sim/stats"),
    ("PUT", "/_sim/profile"),
    ("PUT", "/_sim/profile/"),
    ("HEAD", "/_sim/stats"),
    ("OPTIONS", "/_sim/profile"),
    ("GET", "/_sim/anything-added-later"),
    ("GET", "/docs"),
]


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_require_key_answers_401_on_every_path_but_health_and_the_stream(
    locked: Simulator, method: str, path: str
) -> None:
    assert http.request(method, f"{locked.url}{path}").status_code == 401
    wrong = {"Authorization": "Bearer kk"}
    assert http.request(method, f"{locked.url}{path}", headers=wrong).status_code == 401
    assert http.get(f"{locked.url}/health").status_code == 200
    assert http.get(f"{locked.url}/proxy/stream", params={"token": "x"}).status_code == 401


def test_an_unauthenticated_profile_put_changes_nothing(locked: Simulator) -> None:
    """One PUT without the key must not make authorised calls hang."""
    hang = {"defaults": {"hang_rate": 1.0, "hang_s": 600}}
    assert http.put(f"{locked.url}/_sim/profile", json=hang).status_code == 401
    assert locked.profile == QUIET
    auth = {"Authorization": "Bearer k"}
    reply = post(locked, "/api/inference/task", {"product": "kiwi", "task": "ocr"}, headers=auth)
    assert reply.status_code == 200
    put = http.put(f"{locked.url}/_sim/profile", json=QUIET.model_dump(), headers=auth)
    assert put.status_code == 204, "with the key, the profile can be changed"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_require_key_takes_the_bearer_scheme_in_any_case(locked: Simulator, scheme: str) -> None:
    """HTTP auth scheme names are case-insensitive (RFC 9110 11.1); the key is not."""
    ok = http.get(f"{locked.url}/_sim/stats", headers={"Authorization": f"{scheme} k"})
    assert ok.status_code == 200
    wrong = http.get(f"{locked.url}/_sim/stats", headers={"Authorization": f"{scheme} K"})
    assert wrong.status_code == 401
    basic = http.get(f"{locked.url}/_sim/stats", headers={"Authorization": "Basic k"})
    assert basic.status_code == 401


def test_require_key_is_stripped_as_clients_strip_theirs(kiwi_config: OrchConfig) -> None:
    """A key read from a file that ends in a newline works on both ends."""
    with Simulator(kiwi_config, QUIET, require_key=" k\n") as sim:
        ok = http.get(f"{sim.url}/_sim/stats", headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200


@pytest.mark.parametrize("key", ["", " \n", "k k"])
def test_an_empty_or_broken_require_key_is_refused(kiwi_config: OrchConfig, key: str) -> None:
    """An empty key would let an empty ``Bearer`` in; one with a space inside could
    never match. Neither is quoted in the error."""
    with pytest.raises(ConfigError, match="require_key") as caught:
        Simulator(kiwi_config, QUIET, require_key=key)
    assert "k k" not in str(caught.value)


def test_kiwis_task_body_answers_the_real_allocation_shape(sim: Simulator) -> None:
    """{product, task, payload: {}} gets what the real coordinator sends: no model, no
    node_id; mode=allocate adds them (this project's extension)."""
    real = task(sim, "barcode_scan", payload={}).json()
    assert set(real) == {"url", "allocation_id", "service", "gpu_id", "started", "warm"}
    assert real["url"] == f"{sim.url}/nodes/node-v/a/{real['allocation_id']}"
    assert real["started"] is (not real["warm"]), "started now, or warm from earlier calls"
    extended = task(sim, "barcode_scan", mode="allocate").json()
    assert set(extended) == set(real) | {"node_id", "model"}
    assert extended["model"] == "florence-2-large"
    assert active(sim) == 2
    sim.set_profile(QUIET.with_options(omit_service=True))
    assert "service" not in task(sim, "ocr").json()


def test_allocation_lifecycle(sim: Simulator) -> None:
    alloc = task(sim, "barcode_scan", mode="allocate").json()
    assert alloc["url"] == f"{sim.url}/nodes/{alloc['node_id']}/a/{alloc['allocation_id']}"
    assert (alloc["service"], alloc["model"]) == ("cf-vision", "florence-2-large")
    models = http.get(f"{alloc['url']}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["florence-2-large"], "exactly the allocation's model"
    chat = http.post(
        f"{alloc['url']}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "scan"}]},
    ).json()
    label = json.loads(chat["choices"][0]["message"]["content"])
    assert {"product_name", "allergens", "confidence"} <= set(label)
    assert chat["object"] == "chat.completion" and chat["usage"]["total_tokens"] > 0
    assert chat["model"] == "florence-2-large"
    path = f"/api/services/cf-vision/allocations/{alloc['allocation_id']}"
    assert http.delete(f"{sim.url}/api/services/cf-text/allocations/x").status_code == 404
    wrong = http.delete(f"{sim.url}/api/services/cf-text/allocations/{alloc['allocation_id']}")
    assert wrong.status_code == 404, "another service's allocation"
    released = http.delete(f"{sim.url}{path}")
    assert released.status_code == 200
    assert released.json() == {"released": True, "allocation_id": alloc["allocation_id"]}
    assert http.delete(f"{sim.url}{path}").status_code == 404
    late = http.post(
        f"{sim.url}/nodes/{alloc['node_id']}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "scan"}]},
        headers={"X-Allocation-Id": alloc["allocation_id"]},
    )
    assert late.status_code == 409 and late.json()["detail"].endswith("was released")
    unknown = http.get(f"{sim.url}/nodes/node-v/a/alloc-999999/v1/models")
    assert unknown.status_code == 404 and unknown.json()["error"] == "allocation_not_found"


def test_header_and_url_must_name_the_same_allocation(sim: Simulator) -> None:
    one, two = (task(sim, "meal_plan", mode="allocate").json() for _ in range(2))
    clash = http.post(
        f"{one['url']}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}]},
        headers={"X-Allocation-Id": two["allocation_id"]},
    )
    assert clash.status_code == 409 and clash.json()["error"] == "allocation_mismatch"
    elsewhere = http.get(f"{sim.url}/nodes/node-v/a/{one['allocation_id']}/v1/models")
    assert elsewhere.status_code == 409, "the allocation is not on that node"


def test_chat_can_stream_server_sent_events(sim: Simulator) -> None:
    alloc = task(sim, "recipe_generation", payload={}).json()
    reply = http.post(
        f"{alloc['url']}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in reply.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text.startswith("Title: ") and "\nDirections:\n1. " in text


def test_a_nodes_stream_is_paced_by_the_tasks_knobs(sim: Simulator) -> None:
    sim.set_profile(
        QUIET.with_knob("kiwi.recipe_generation", "ttft_ms", 300).with_knob(
            "kiwi.recipe_generation", "chunk_interval_ms", 10
        )
    )
    alloc = task(sim, "recipe_generation", payload={}).json()
    body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    started, seen = time.perf_counter(), []
    with http.stream("POST", f"{alloc['url']}/v1/chat/completions", json=body) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: "):
                seen.append(time.perf_counter() - started)
    assert seen[0] >= 0.3 and seen[-1] - seen[0] >= 0.01 * (len(seen) - 1) * 0.9


def test_legacy_endpoints_take_an_explicit_model(sim: Simulator) -> None:
    reply = post(sim, "/api/inference", {"model": "Qwen/Qwen2.5-3B-Instruct", "prompt": "p"})
    assert reply.status_code == 200
    data = reply.json()
    assert (data["model"], data["service_type"]) == ("Qwen/Qwen2.5-3B-Instruct", "cf-text")
    assert isinstance(json.loads(data["output"]), list), "meal_plan's model answers a plan"
    assert post(sim, "/api/inference", {"model": "gpt-9"}).status_code == 404


@pytest.mark.parametrize(
    ("service", "body", "status", "model"),
    [
        ("cf-text", {}, 200, "qwen2.5-3b-instruct"),  # the model assigned on cf-text
        ("vllm", {"model_candidates": ["gpt-9", "BYTEDANCE/OURO-1.4B"]}, 200, "ouro-1.4b"),
        ("cf-docuvision", {"model_candidates": ["cf-docuvision"]}, 200, "docuvision-receipts"),
        ("cf-docuvision", {"model": "docuvision-receipts"}, 200, "docuvision-receipts"),
        ("cf-text", {"model_candidates": ["florence-2-large"]}, 503, None),
        ("cf-audio", {}, 422, None),
    ],
)
def test_direct_allocation_picks_a_candidate(
    sim: Simulator, service: str, body: dict[str, Any], status: int, model: str | None
) -> None:
    """The first candidate registered on the service, else its default; a service no
    model runs on is 422, candidates that all fail 503."""
    reply = post(sim, f"/api/services/{service}/allocate", body)
    assert reply.status_code == status, reply.text
    if model is None:
        assert active(sim) == 0
        return
    alloc = reply.json()
    assert list(alloc) == [
        "allocation_id",
        "service",
        "node_id",
        "gpu_id",
        "model",
        "url",
        "started",
        "warm",
    ]
    assert (alloc["service"], alloc["model"]) == (service, model)
    assert http.get(f"{alloc['url']}/v1/models").json()["data"][0]["id"] == model
    path = f"/api/services/{service}/allocations/{alloc['allocation_id']}"
    assert http.delete(f"{sim.url}{path}").status_code == 200
    assert active(sim) == 0


@pytest.mark.parametrize(
    ("caller", "reads"),
    [("kiwi-recipe-scan", "a recipe card"), ("kiwi-ocr", "a receipt"), ("", "a receipt")],
)
def test_a_direct_allocations_caller_names_its_task(
    sim: Simulator, caller: str, reads: str
) -> None:
    """docuvision-receipts is assigned no task: the caller says what its node reads."""
    body = {"model_candidates": ["docuvision-receipts"], "caller": caller}
    alloc = post(sim, "/api/services/cf-docuvision/allocate", body).json()
    text = http.post(f"{alloc['url']}/extract", json={"image_b64": "AAAA"}).json()["raw_text"]
    assert ("merchant" in json.loads(text)) if reads == "a receipt" else "Directions:" in text


def test_allocations_expire_lazily_and_are_counted(sim: Simulator) -> None:
    """An allocation past its ttl_s leaves allocations_active, is counted, and its node
    traffic answers 409 "expired"."""
    expired = sim.stats()["counts"].get("allocations.expired", 0)  # the sim is shared
    alloc = post(sim, "/api/services/cf-text/allocate", {"ttl_s": 0.2}).json()
    keep = post(sim, "/api/services/cf-text/allocate", {"ttl_s": 60}).json()
    deadline = time.monotonic() + 5
    while sim.stats()["active"] != [keep["allocation_id"]]:
        assert time.monotonic() < deadline, sim.stats()
        time.sleep(0.01)
    assert sim.stats()["counts"]["allocations.expired"] - expired == 1
    late = http.get(f"{alloc['url']}/v1/models")
    assert late.status_code == 409 and "expired" in late.json()["detail"]
    gone = f"{sim.url}/api/services/cf-text/allocations/{alloc['allocation_id']}"
    assert http.delete(gone).status_code == 404


def test_node_models_list_what_the_node_serves(sim: Simulator) -> None:
    data = http.get(f"{sim.url}/nodes/node-v/v1/models").json()
    ids = {m["id"] for m in data["data"]}
    assert {"qwen2.5-vl-7b-instruct", "florence-2-large"} <= ids
    assert "ouro-1.4b" not in ids
    assert http.get(f"{sim.url}/nodes/node-z/v1/models").status_code == 404
    chat = http.post(
        f"{sim.url}/nodes/node-v/v1/chat/completions",
        json={"model": "ouro-1.4b", "messages": [{"role": "user", "content": "x"}]},
    )
    assert chat.status_code == 404 and chat.json()["error"] == "model_not_loaded"
    alloc = task(sim, "meal_plan", payload={}).json()
    other = http.post(
        f"{alloc['url']}/v1/chat/completions",
        json={"model": "llama3.2-3b-instruct", "messages": [{"role": "user", "content": "x"}]},
    )
    assert other.status_code == 404 and other.json()["error"] == "model_not_found"


# -- knobs --------------------------------------------------------------------------------


def test_latency_draws_follow_the_median_and_p99() -> None:
    settings = Profile(defaults={"latency_ms": 40, "latency_p99_ms": 200}).settings(
        "kiwi.ocr", legacy=False
    )
    rng = random.Random(5)
    draws = sorted(settings.latency_s(rng) * 1000 for _ in range(40_000))
    assert statistics.median(draws) == pytest.approx(40, rel=0.05)
    assert draws[int(len(draws) * 0.99)] == pytest.approx(200, rel=0.1)


def test_latency_and_cold_start_are_served(kiwi_config: OrchConfig) -> None:
    cold = Simulator(
        kiwi_config,
        Profile(
            seed=1,
            defaults={"latency_ms": 30, "latency_p99_ms": 30},
            tasks={"kiwi.barcode_scan": {"cold_start_ms": 300}},
        ),
    )
    with cold as sim:
        check_cold_start(sim)


def check_cold_start(sim: Simulator) -> None:
    first_alloc = task(sim, "barcode_scan", mode="allocate").json()
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        assert infer(sim, "barcode_scan").status_code == 200
        timings.append(time.perf_counter() - started)
    assert timings[0] >= 0.3 + 0.03, "the first request on a node pays the cold start"
    assert all(0.03 <= t < 0.3 for t in timings[1:]), timings
    assert first_alloc["warm"] is False
    assert task(sim, "barcode_scan", mode="allocate").json()["warm"] is True


def test_error_rate_and_status(sim: Simulator) -> None:
    sim.set_profile(
        Profile(seed=2, defaults={"latency_ms": 0, "error_rate": 0.5, "error_status": 429})
    )
    statuses = [infer(sim, "meal_plan").status_code for _ in range(200)]
    assert set(statuses) == {200, 429}
    assert 0.38 < statuses.count(429) / 200 < 0.62
    reply = next(r for r in (infer(sim, "meal_plan") for _ in range(50)) if r.status_code == 429)
    assert reply.headers["retry-after"] == "1"
    assert reply.json() == {"error": "injected", "detail": "simulated 429"}


def test_hang_holds_the_request_for_hang_s(sim: Simulator) -> None:
    sim.set_profile(
        QUIET.with_knob("defaults", "hang_rate", 1.0).with_knob("defaults", "hang_s", 0.4)
    )
    started = time.perf_counter()
    assert task(sim, "ocr").status_code == 200
    assert time.perf_counter() - started >= 0.4


def test_malformed_rate_cuts_replies(sim: Simulator) -> None:
    sim.set_profile(QUIET.with_knob("tasks" and "kiwi.ocr", "malformed_rate", 1.0))
    broken = task(sim, "ocr")
    assert broken.status_code == 200 and broken.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.content)
    assert infer(sim, "meal_plan").json()["output"], "other tasks are untouched"


def shape_of(value: Any) -> Any:
    """Keys and types; a list is a list whatever it holds (an empty one says nothing of
    its elements, and the content is the request's, not the reference's)."""
    if isinstance(value, dict):
        return {k: shape_of(v) for k, v in value.items()}
    return type(value).__name__


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_drift_changes_the_task_paths_structure_only(sim: Simulator, kind: str) -> None:
    sim.set_profile(
        QUIET.with_knob("defaults", "drift_rate", 1.0).with_knob("defaults", "drift_kinds", [kind])
    )
    reference = generate("barcode", random.Random(0))
    drifted = infer(sim, "barcode_scan").json()["output"]
    if kind in ("fence", "prose"):
        assert isinstance(drifted, str)
        assert ("```json" in drifted) == (kind == "fence")
        assert json.loads(drifted[drifted.index("{") : drifted.rindex("}") + 1])
    else:
        assert isinstance(drifted, dict) and shape_of(drifted) != shape_of(reference)
        if kind == "missing_key":
            assert len(drifted) == len(reference) - 1
        if kind == "renamed_key":
            assert len(drifted) == len(reference) and set(drifted) != set(reference)
        if kind == "type_change":
            assert set(drifted) == set(reference)
    legacy = post(sim, "/api/inference", {"model": "florence-2-large"}).json()["output"]
    assert shape_of(legacy) == shape_of(reference), "legacy never drifts"


def test_drift_in_text_outputs(sim: Simulator) -> None:
    sim.set_profile(
        Profile(
            seed=4,
            defaults={"latency_ms": 0},
            tasks={"kiwi.recipe_generation": {"drift_rate": 1.0, "drift_kinds": ["missing_key"]}},
        )
    )
    recipe = infer(sim, "recipe_generation").json()["output"]
    headings = [h for h in ("Title:", "Ingredients:", "Directions:", "Notes:") if h in recipe]
    assert len(headings) == 3
    plan = infer(sim, "meal_plan").json()["output"]
    assert all(
        set(d) == {"day", "meal_type", "recipe_id", "suggestion"} for d in json.loads(plan)
    ), "drift was set for recipe_generation only"


def test_meal_plan_days_and_types(sim: Simulator) -> None:
    plan = json.loads(infer(sim, "meal_plan").json()["output"])
    assert 5 <= len(plan) <= 7 and len({e["day"] for e in plan}) == len(plan)
    for entry in plan:
        assert isinstance(entry["day"], int) and 0 <= entry["day"] <= 6
        assert entry["meal_type"] == "dinner"
        assert entry["recipe_id"] is None or isinstance(entry["recipe_id"], int)
        assert isinstance(entry["suggestion"], str)


def test_drift_follows_the_allocation_however_it_is_addressed(sim: Simulator) -> None:
    """A task-path allocation's node output drifts by URL, by header and on /extract; a
    direct allocation's never does."""
    sim.set_profile(
        QUIET.with_knob("defaults", "drift_rate", 1.0).with_knob(
            "defaults", "drift_kinds", ["fence"]
        )
    )
    before = sim.stats()["counts"].get("fault.drift.fence", 0)  # the sim is shared
    body = {"messages": [{"role": "user", "content": "plan"}]}
    via_task = task(sim, "meal_plan", mode="allocate").json()
    by_url = http.post(f"{via_task['url']}/v1/chat/completions", json=body).json()
    by_header = http.post(
        f"{sim.url}/nodes/{via_task['node_id']}/v1/chat/completions",
        json=body,
        headers={"X-Allocation-Id": via_task["allocation_id"]},
    ).json()
    for reply in (by_url, by_header):
        assert reply["choices"][0]["message"]["content"].startswith("```json")
    ocr = task(sim, "ocr", payload={}).json()
    extracted = http.post(f"{ocr['url']}/extract", json={"image_b64": "AAAA"}).json()
    assert extracted["raw_text"].startswith("```json")
    direct = post(sim, "/api/services/cf-text/allocate", {}).json()
    plain = http.post(f"{direct['url']}/v1/chat/completions", json=body).json()
    assert json.loads(plain["choices"][0]["message"]["content"]), "direct never drifts"
    assert sim.stats()["counts"]["fault.drift.fence"] - before == 3


def test_faults_apply_to_node_traffic(sim: Simulator) -> None:
    """Error knobs of the allocation's task apply to its chat and /extract calls."""
    alloc = task(sim, "ocr", payload={}).json()
    before = sim.stats()["counts"].get("fault.error.node", 0)
    sim.set_profile(
        QUIET.with_knob("kiwi.ocr", "error_rate", 1.0).with_knob("kiwi.ocr", "error_status", 500)
    )
    chat = http.post(
        f"{alloc['url']}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    extract = http.post(f"{alloc['url']}/extract", json={"image_b64": "AAAA"})
    assert (chat.status_code, extract.status_code) == (500, 500)
    assert sim.stats()["counts"]["fault.error.node"] - before == 2


def test_a_timing_prompt_is_answered_with_two_integers(sim: Simulator) -> None:
    """Kiwi's timing estimate asks the meal plan's model for prep and cook minutes."""
    system = "Estimate prep_time and cook_time in minutes; reply with two integers."
    output = task(sim, "meal_plan", system=system, prompt="Soup").json()["output"]
    assert re.fullmatch(r"\d+\n\d+", output), output


@pytest.mark.parametrize("kind", sorted(OUTPUT_KINDS))
@pytest.mark.parametrize("drift", DRIFT_KINDS)
def test_every_drift_changes_every_kind(kind: str, drift: DriftKind) -> None:
    """Each drift kind changes each output format (a drift that left it alone would
    measure nothing)."""
    original = generate(kind, random.Random(3))
    drifted = apply_drift(copy.deepcopy(original), kind, drift, random.Random(3))
    assert drifted != original


def test_text_drift_breaks_what_kiwis_recipe_parser_reads() -> None:
    """Renamed headings are ones kiwi does not know; type_change turns the ingredient
    line into bullets and the numbered directions into one line."""
    recipe = generate("recipe", random.Random(5))
    renamed = apply_drift(recipe, "recipe", "renamed_key", random.Random(5))
    known = ("Title:", "Ingredients:", "Directions:", "Notes:")
    assert sum(h in renamed for h in known) == 3
    retyped = apply_drift(recipe, "recipe", "type_change", random.Random(5))
    assert "\nIngredients:\n- " in retyped and re.search(r"^Directions: \S", retyped, re.M)
    timing = generate("timing", random.Random(5))
    for drift in ("fence", "prose", "renamed_key", "type_change"):
        with pytest.raises(ValueError, match="invalid literal"):
            int(apply_drift(timing, "timing", drift, random.Random(5)).strip().splitlines()[0])


def test_with_options_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="--task-ttl-s"):
        Profile().with_options(task_ttl_s=0)
    assert Profile().with_options(max_streams=0).max_streams == 0


def test_legacy_scope_applies_to_legacy_endpoints_only(sim: Simulator) -> None:
    sim.set_profile(QUIET.with_knob("legacy", "error_rate", 1.0))
    assert post(sim, "/api/inference", {"model": "ouro-1.4b"}).status_code == 503
    assert task(sim, "recipe_generation").status_code == 200


def test_same_seed_same_outputs(kiwi_config: OrchConfig) -> None:
    def run(seed: int) -> list[Any]:
        profile = Profile(seed=seed, defaults={"latency_ms": 1, "drift_rate": 0.5})
        with Simulator(kiwi_config, profile) as one:
            return [
                infer(one, name).json()["output"]
                for name in ("meal_plan", "ocr", "recipe_generation") * 3
            ]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_profile_can_be_replaced_over_http(sim: Simulator) -> None:
    url = f"{sim.url}/_sim/profile"
    assert http.put(url, json={"defaults": {"error_rate": 1.0}}).status_code == 204
    assert task(sim, "ocr").status_code == 503
    bad = http.put(url, json={"defaults": {"error_rate": 3}})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_profile"
    counts = http.get(f"{sim.url}/_sim/stats").json()["counts"]
    assert counts["fault.error.task"] >= 1


def test_profile_yaml_errors_are_located(tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(
        "seed: 3\nlegacy:\n  drift_rate: 0.5\ntasks:\n  kiwi.ocr:\n"
        "    drift_kinds: [fence, sideways]\n    error_rate: 2\n"
    )
    with pytest.raises(ConfigError) as caught:
        Profile.load(path)
    found = [str(p) for p in caught.value.problems]
    assert any(
        p.startswith(f"{path}:6: tasks.kiwi.ocr.drift_kinds[1]: Input should be") for p in found
    ), found
    assert any(
        p.startswith(f"{path}:7: tasks.kiwi.ocr.error_rate: Input should be less") for p in found
    ), found
    path.write_text("legacy:\n  drift_rate: 0.5\n")
    with pytest.raises(ConfigError, match="drift applies to the task path only"):
        Profile.load(path)


def test_profile_yaml_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text("seed: 9\ndefaults: {latency_ms: 5}\ntasks:\n  kiwi.ocr: {drift_rate: 0.2}\n")
    profile = Profile.load(path)
    assert profile.seed == 9
    assert profile.settings("kiwi.ocr", legacy=False).drift_rate == 0.2
    assert profile.settings("kiwi.ocr", legacy=False).latency_ms == 5
    assert profile.settings("kiwi.ocr", legacy=True).drift_rate == 0.0
    assert profile.settings("kiwi.meal_plan", legacy=False).drift_rate == 0.0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("error_rate=0.1", ("defaults", "error_rate", "0.1")),
        ("kiwi.ocr:drift_rate=0.3", ("kiwi.ocr", "drift_rate", "0.3")),
        ("legacy:latency_ms=900", ("legacy", "latency_ms", "900")),
        ("drift_kinds=fence,prose", ("defaults", "drift_kinds", ["fence", "prose"])),
    ],
)
def test_parse_knob(spec: str, expected: tuple[str, str, Any]) -> None:
    assert parse_knob(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("error_rate", "expected [SCOPE:]NAME=VALUE"),
        ("kiwi.ocr:colour=red", "unknown knob 'colour'"),
    ],
)
def test_parse_knob_rejects_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_knob(spec)


def test_with_knob_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"--knob: kiwi.ocr:error_rate: .*less than or equal"):
        Profile().with_knob("kiwi.ocr", "error_rate", "7")
