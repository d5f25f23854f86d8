"""The simulator's endpoints and knobs, over a real socket."""

from __future__ import annotations

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
        {"product": "kiwi", "task": "ocr", "colour": "red"},
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


def test_require_key_guards_the_api_not_the_nodes(kiwi_config: OrchConfig) -> None:
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
        assert http.get(f"{locked.url}/nodes/node-a/v1/models").status_code == 200


def test_allocation_lifecycle(sim: Simulator) -> None:
    alloc = task(sim, "barcode_scan", mode="allocate").json()
    assert alloc["url"] == f"{sim.url}/nodes/{alloc['node_id']}"
    assert (alloc["service"], alloc["model"]) == ("cf-vision", "florence-2-large")
    assert {"gpu_id", "started", "warm"} <= set(alloc)
    chat = http.post(
        f"{alloc['url']}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "scan"}]},
        headers={"X-Allocation-Id": alloc["allocation_id"]},
    ).json()
    content = json.loads(chat["choices"][0]["message"]["content"])
    assert content["format"] == "EAN-13" and len(content["code"]) == 13
    assert chat["object"] == "chat.completion" and chat["usage"]["total_tokens"] > 0
    path = f"/api/services/cf-vision/allocations/{alloc['allocation_id']}"
    assert http.delete(f"{sim.url}{path}").status_code == 204
    assert http.delete(f"{sim.url}{path}").status_code == 404
    late = http.post(
        f"{alloc['url']}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "scan"}]},
        headers={"X-Allocation-Id": alloc["allocation_id"]},
    )
    assert late.status_code == 409


def test_legacy_endpoints_take_an_explicit_model(sim: Simulator) -> None:
    reply = post(sim, "/api/inference", {"model": "Qwen/Qwen2.5-3B-Instruct", "prompt": "p"})
    assert reply.status_code == 200
    data = reply.json()
    assert (data["model"], data["service_type"]) == ("Qwen/Qwen2.5-3B-Instruct", "cf-text")
    assert isinstance(json.loads(data["output"]), list), "meal_plan's model answers a plan"
    assert post(sim, "/api/inference", {"model": "gpt-9"}).status_code == 404
    wrong = post(sim, "/api/services/cf-text/allocate", {"model": "florence-2-large"})
    assert wrong.status_code == 400 and "served by cf-vision" in wrong.json()["detail"]
    alloc = post(
        sim,
        "/api/services/cf-docuvision/allocate",
        {"model": "docuvision-receipts", "caller": "kiwi"},
    )
    assert alloc.status_code == 200
    assert (
        http.delete(
            f"{sim.url}/api/services/cf-docuvision/allocations/{alloc.json()['allocation_id']}"
        ).status_code
        == 204
    )


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
            tasks={"kiwi.recipe_scan": {"cold_start_ms": 300}},
        ),
    )
    with cold as sim:
        check_cold_start(sim)


def check_cold_start(sim: Simulator) -> None:
    first_alloc = task(sim, "recipe_scan", mode="allocate").json()
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        assert task(sim, "recipe_scan").status_code == 200
        timings.append(time.perf_counter() - started)
    assert timings[0] >= 0.3 + 0.03, "the first request on a node pays the cold start"
    assert all(0.03 <= t < 0.3 for t in timings[1:]), timings
    assert first_alloc["warm"] is False
    assert task(sim, "recipe_scan", mode="allocate").json()["warm"] is True


def test_error_rate_and_status(sim: Simulator) -> None:
    sim.set_profile(
        Profile(seed=2, defaults={"latency_ms": 0, "error_rate": 0.5, "error_status": 429})
    )
    statuses = [task(sim, "meal_plan").status_code for _ in range(200)]
    assert set(statuses) == {200, 429}
    assert 0.38 < statuses.count(429) / 200 < 0.62
    reply = next(r for r in (task(sim, "meal_plan") for _ in range(50)) if r.status_code == 429)
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
    assert task(sim, "meal_plan").json()["output"], "other tasks are untouched"


def shape_of(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape_of(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape_of(value[0])] if value else []
    return type(value).__name__


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_drift_changes_the_task_paths_structure_only(sim: Simulator, kind: str) -> None:
    sim.set_profile(
        QUIET.with_knob("defaults", "drift_rate", 1.0).with_knob("defaults", "drift_kinds", [kind])
    )
    reference = generate("barcode", random.Random(0))
    drifted = task(sim, "barcode_scan").json()["output"]
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
    recipe = task(sim, "recipe_generation").json()["output"]
    headings = [h for h in ("Title:", "Ingredients:", "Directions:", "Notes:") if h in recipe]
    assert len(headings) == 3
    plan = task(sim, "meal_plan").json()["output"]
    assert all(
        set(d) == {"day", "meal_type", "recipe_id", "suggestion"} for d in json.loads(plan)
    ), "drift was set for recipe_generation only"


def test_meal_plan_days_and_types(sim: Simulator) -> None:
    plan = json.loads(task(sim, "meal_plan").json()["output"])
    for entry in plan:
        assert 0 <= entry["day"] <= 6
        assert entry["meal_type"] in {"breakfast", "lunch", "dinner"}
        assert entry["recipe_id"] is None or isinstance(entry["recipe_id"], int)
        assert isinstance(entry["suggestion"], str)


def test_legacy_scope_applies_to_legacy_endpoints_only(sim: Simulator) -> None:
    sim.set_profile(QUIET.with_knob("legacy", "error_rate", 1.0))
    assert post(sim, "/api/inference", {"model": "ouro-1.4b"}).status_code == 503
    assert task(sim, "recipe_generation").status_code == 200


def test_same_seed_same_outputs(kiwi_config: OrchConfig) -> None:
    def run(seed: int) -> list[Any]:
        profile = Profile(seed=seed, defaults={"latency_ms": 1, "drift_rate": 0.5})
        with Simulator(kiwi_config, profile) as one:
            return [
                task(one, name).json()["output"]
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
