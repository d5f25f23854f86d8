"""The simulator answers the same request with the same content on both paths, so that
content scores measure drift and nothing else; an image request asks the coordinator
for an allocation, since the image goes to the node (issue 20)."""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shim import TaskRequest
from shim.comparators import KIWI_MEAL_PLAN, KIWI_RECEIPT, KIWI_RECIPE
from shim.sim import DRIFT_KINDS, Simulator, generate
from shim.sim._drift import apply_drift

http = httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    http.close()


def legacy(sim: Simulator, prompt: str) -> Any:
    body = {"model": "qwen2.5-3b-instruct", "product": "kiwi", "task": "recipe_generation"}
    reply = http.post(f"{sim.url}/api/inference", json={**body, "prompt": prompt})
    reply.raise_for_status()
    return reply.json()["output"]


def task(sim: Simulator, prompt: str) -> Any:
    body = {"product": "kiwi", "task": "recipe_generation", "prompt": prompt}
    reply = http.post(f"{sim.url}/api/inference/task", json=body)
    reply.raise_for_status()
    return reply.json()["output"]


def test_the_same_prompt_gets_the_same_content_on_both_paths(sim: Simulator) -> None:
    soup, stew = "a soup with leeks", "a stew with beans"
    assert legacy(sim, soup) == task(sim, soup) == legacy(sim, soup)
    assert task(sim, soup) != task(sim, stew)


def test_a_vision_chat_reads_the_image_for_its_content(sim: Simulator) -> None:
    alloc = http.post(
        f"{sim.url}/api/inference/task", json={"product": "kiwi", "task": "ocr"}
    ).json()

    def read(image: bytes, prompt: str) -> str:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        content = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": prompt},
        ]
        model = alloc.get("model") or "qwen2.5-vl-7b-instruct"
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
        reply = http.post(f"{alloc['url']}/v1/chat/completions", json=body)
        reply.raise_for_status()
        return str(reply.json()["choices"][0]["message"]["content"])

    assert read(b"receipt one", "read it") == read(b"receipt one", "read it, please")
    assert read(b"receipt one", "read it") != read(b"receipt two", "read it")


def test_an_image_request_asks_for_an_allocation_and_the_node_reads_it(
    sim: Simulator, infer: Any
) -> None:
    before = sim.stats()["counts"]
    image = base64.b64encode(b"a receipt").decode()
    result = infer(sim.url, "kiwi", "ocr", TaskRequest(prompt="read it", images=(image,)))
    after = sim.stats()["counts"]
    assert result.text or result.output
    grew = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert grew.get("allocations.task", 0) == 1, grew  # not an answer without the image


@pytest.mark.parametrize(
    ("kind", "comparator"),
    [("receipt", KIWI_RECEIPT), ("recipe", KIWI_RECIPE), ("meal_plan", KIWI_MEAL_PLAN)],
)
def test_values_drift_keeps_the_shape_and_lowers_the_content_score(
    kind: str, comparator: Any
) -> None:
    rng = random.Random(9)
    for seed in range(20):
        output = generate(kind, random.Random(seed))
        drifted = apply_drift(output, kind, "values", rng)
        verdict = comparator.compare(output, drifted)
        assert verdict.match is True, verdict.diff  # structure comparators see nothing
        assert verdict.quality is not None and verdict.quality.score is not None
        assert verdict.quality.score < 1.0
    assert "values" not in DRIFT_KINDS, "a profile's default drift is structural"


def test_an_image_request_sends_kiwis_allocation_body_and_refuses_an_output_answer() -> None:
    """The coordinator never sees the prompt or the image of an image request: kiwi's
    body ``{product, task, payload: {}}`` (and ``mode``, which cf-orch ignores). A
    coordinator that answers output anyway answered without the image: a failure."""
    import json as _json

    from shim import TaskClient, TaskFailed

    sent: list[dict[str, Any]] = []

    def coordinator(request: httpx.Request) -> httpx.Response:
        sent.append(_json.loads(request.content))
        return httpx.Response(200, json={"output": "made up", "model": "m"})

    image = base64.b64encode(b"a receipt").decode()
    client = TaskClient(
        "http://orch.test",
        api_key="",
        http=httpx.Client(transport=httpx.MockTransport(coordinator)),
    )
    try:
        with pytest.raises(TaskFailed, match="output to a request with images"):
            client.infer("kiwi", "ocr", TaskRequest(prompt="read it", system="s", images=(image,)))
    finally:
        client.close()
    assert sent == [{"product": "kiwi", "task": "ocr", "payload": {}, "mode": "allocate"}]
