"""The task client against the simulator on a real socket, sync and async."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from structlog.testing import capture_logs

from shim import OrchConfig, TaskFailed, TaskNotRegistered, TaskRequest
from shim.sim import Profile, Simulator

from .conftest import QUIET, Infer

KIWI_TASKS = ["meal_plan", "recipe_generation", "ocr", "barcode_scan", "recipe_scan"]


@pytest.mark.parametrize("mode", ["output", "allocate"])
@pytest.mark.parametrize("task", KIWI_TASKS)
def test_every_kiwi_task_resolves_in_both_modes(
    sim: Simulator, infer: Infer, task: str, mode: str, kiwi_config: OrchConfig
) -> None:
    images = ("iVBORw0KGgo=",) if task in ("ocr", "barcode_scan", "recipe_scan") else ()
    request = TaskRequest(prompt="hi", mode=mode, images=images)  # type: ignore[arg-type]
    result = infer(sim.url, "kiwi", task, request)
    resolved = kiwi_config.resolve(f"kiwi.{task}")
    assert resolved is not None
    assert (result.model, result.service_type) == (resolved.model, resolved.service_type)
    assert result.node_id in {"node-a", "node-b", "node-v"}
    assert result.allocation_id and result.allocation_id.startswith("alloc-")
    assert result.latency_ms > 0
    assert result.text
    assert sim.stats()["allocations_active"] == 0, "the allocation must be released"


def test_output_keeps_the_coordinators_json_value(sim: Simulator, infer: Infer) -> None:
    result = infer(sim.url, "kiwi", "ocr", TaskRequest(payload={"image_b64": "AAAA"}))
    assert isinstance(result.output, dict)
    assert set(result.output) == {"merchant", "transaction", "items", "totals", "confidence"}
    assert json.loads(result.text) == result.output
    plan = infer(sim.url, "kiwi", "meal_plan", TaskRequest(prompt="plan"))
    assert isinstance(plan.output, str) and plan.text is plan.output
    assert {"day", "meal_type", "recipe_id", "suggestion"} == set(json.loads(plan.text)[0])
    assert plan.usage and plan.usage["completion_tokens"] > 0


def test_unregistered_task_raises_task_not_registered(sim: Simulator, infer: Infer) -> None:
    with pytest.raises(TaskNotRegistered) as caught:
        infer(sim.url, "kiwi", "soup", TaskRequest(prompt="x"))
    error = caught.value
    assert isinstance(error, TaskFailed)
    assert (error.status, error.product, error.task) == (404, "kiwi", "soup")
    assert "add it to assignments.yaml" in str(error)


@pytest.mark.parametrize("status", [500, 503, 429, 400])
def test_coordinator_errors_raise_task_failed_with_status(
    sim: Simulator, infer: Infer, status: int
) -> None:
    sim.set_profile(
        QUIET.with_knob("defaults", "error_rate", 1.0).with_knob("defaults", "error_status", status)
    )
    with pytest.raises(TaskFailed) as caught:
        infer(sim.url, "kiwi", "meal_plan", TaskRequest(prompt="x"))
    assert type(caught.value) is TaskFailed
    assert caught.value.status == status
    assert f"coordinator answered {status}: simulated {status}" in str(caught.value)


@pytest.mark.parametrize("mode", ["output", "allocate"])
def test_malformed_json_raises_task_failed(sim: Simulator, infer: Infer, mode: str) -> None:
    sim.set_profile(QUIET.with_knob("defaults", "malformed_rate", 1.0))
    with pytest.raises(TaskFailed, match="malformed JSON") as caught:
        infer(sim.url, "kiwi", "ocr", TaskRequest(mode=mode))  # type: ignore[arg-type]
    assert caught.value.status == 200


def test_hanging_coordinator_times_out_within_the_deadline(sim: Simulator, infer: Infer) -> None:
    sim.set_profile(QUIET.with_knob("defaults", "hang_rate", 1.0))
    started = time.perf_counter()
    with pytest.raises(TaskFailed, match=r"no answer within 0.3 s \(ReadTimeout\)") as caught:
        infer(sim.url, "kiwi", "meal_plan", TaskRequest(prompt="x"), timeout=0.3)
    assert caught.value.status is None
    assert time.perf_counter() - started < 2.0
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)


def test_refused_connection_raises_task_failed(infer: Infer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TaskFailed, match="ConnectError") as caught:
        infer(f"http://127.0.0.1:{port}", "kiwi", "meal_plan", TaskRequest(prompt="x"))
    assert caught.value.status is None


def test_bearer_key_is_sent_and_checked(
    kiwi_config: OrchConfig, infer: Infer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Simulator(kiwi_config, QUIET, require_key="s3cret") as locked:
        ok = infer(locked.url, "kiwi", "ocr", TaskRequest(mode="allocate"), api_key="s3cret")
        assert ok.service_type == "cf-vision"
        for key in ("", "wrong"):
            with pytest.raises(TaskFailed) as caught:
                infer(locked.url, "kiwi", "ocr", TaskRequest(), api_key=key)
            assert caught.value.status == 401
            assert "s3cret" not in str(caught.value)
        monkeypatch.setenv("CF_LICENSE_KEY", "s3cret")
        assert infer(locked.url, "kiwi", "barcode_scan", TaskRequest()).model


ALLOCATION = {
    "url": "http://node.test:9000",
    "allocation_id": "a-1",
    "service": "cf-text",
    "node_id": "node-x",
    "model": "m",
}


def completion(content: str) -> dict[str, object]:
    return {"model": "m", "choices": [{"message": {"role": "assistant", "content": content}}]}


def test_key_goes_to_the_coordinator_only_never_to_the_node(infer: Infer) -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((f"{request.method} {request.url}", request.headers.get("authorization")))
        if request.url.path == "/api/inference/task":
            return httpx.Response(200, json=ALLOCATION)
        if request.url.host == "node.test":
            assert request.headers["x-allocation-id"] == "a-1"
            return httpx.Response(200, json=completion("hello"))
        return httpx.Response(204)

    result = infer(
        "http://orch.test",
        "kiwi",
        "t",
        TaskRequest(prompt="p", system="s"),
        api_key="k",
        handler=handler,
    )
    assert (result.output, result.node_id, result.allocation_id) == ("hello", "node-x", "a-1")
    assert seen == [
        ("POST http://orch.test/api/inference/task", "Bearer k"),
        ("POST http://node.test:9000/v1/chat/completions", None),
        ("DELETE http://orch.test/api/services/cf-text/allocations/a-1", "Bearer k"),
    ]


@pytest.mark.parametrize("release", ["500", "refused", "no service"])
def test_failed_release_is_logged_never_raised(infer: Infer, release: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/inference/task":
            body = dict(ALLOCATION)
            if release == "no service":
                del body["service"]
            return httpx.Response(200, json=body)
        if request.method == "POST":
            return httpx.Response(200, json=completion("ok"))
        if release == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(500, json={"detail": "boom"})

    with capture_logs() as logs:
        result = infer("http://orch.test", "kiwi", "t", TaskRequest(), handler=handler)
    assert result.output == "ok"
    [event] = [e for e in logs if e["event"] == "shim.release_failed"]
    assert event["allocation_id"] == "a-1" and event["log_level"] == "warning"
    assert {
        "500": "answered 500: boom",
        "refused": "connection refused",
        "no service": "names no service",
    }[release] in event["error"]


def test_node_failure_raises_and_still_releases(infer: Infer) -> None:
    released: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/inference/task":
            return httpx.Response(200, json=ALLOCATION)
        if request.method == "DELETE":
            released.append(request.url.path)
            return httpx.Response(204)
        return httpx.Response(502, text="bad gateway")

    with pytest.raises(TaskFailed, match="node node-x answered 502: bad gateway") as caught:
        infer("http://orch.test", "kiwi", "t", TaskRequest(), handler=handler)
    assert caught.value.status == 502
    assert released == ["/api/services/cf-text/allocations/a-1"]


@pytest.mark.parametrize("body", [{"hello": 1}, [1, 2], {"url": "x"}, "text"])
def test_reply_of_unknown_shape_raises_task_failed(infer: Infer, body: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    with pytest.raises(TaskFailed, match="neither output nor an allocation"):
        infer("http://orch.test", "kiwi", "t", TaskRequest(), handler=handler)


def test_node_reply_that_is_not_a_completion_raises(infer: Infer) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/inference/task":
            return httpx.Response(200, json=ALLOCATION)
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(200, json={"choices": []})

    with pytest.raises(TaskFailed, match="not a chat completion"):
        infer("http://orch.test", "kiwi", "t", TaskRequest(), handler=handler)


def test_request_body_carries_only_what_was_given(infer: Infer) -> None:
    bodies: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"output": "x"})

    infer("http://orch.test", "kiwi", "t", TaskRequest(prompt="p"), handler=handler)
    infer(
        "http://orch.test",
        "kiwi",
        "t",
        TaskRequest(
            prompt="p", system="s", payload={"i": 1}, params={"temperature": 0.2}, mode="output"
        ),
        handler=handler,
    )
    assert bodies == [
        {"product": "kiwi", "task": "t", "prompt": "p"},
        {
            "product": "kiwi",
            "task": "t",
            "prompt": "p",
            "system": "s",
            "payload": {"i": 1},
            "mode": "output",
            "params": {"temperature": 0.2},
        },
    ]


def test_timeout_must_be_positive() -> None:
    from shim import TaskClient

    with pytest.raises(ValueError, match="timeout must be positive"):
        TaskClient("http://x", timeout=0)


def test_profile_knobs_can_be_swapped_while_running(sim: Simulator, infer: Infer) -> None:
    sim.set_profile(Profile(seed=3, tasks={"kiwi.ocr": {"error_rate": 1.0}}))
    with pytest.raises(TaskFailed):
        infer(sim.url, "kiwi", "ocr", TaskRequest())
    sim.set_profile(QUIET)
    assert infer(sim.url, "kiwi", "ocr", TaskRequest()).model == "qwen2.5-vl-7b-instruct"
