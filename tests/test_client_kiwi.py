"""The task client against a coordinator that answers exactly as kiwi's code and tests
describe: an allocation of ``{url, allocation_id}`` and little else, no ``service``
before cf-orch#63, no ``model`` or ``node_id``. Sync and async."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim import AsyncTaskClient, Shim, TaskClient, TaskFailed, TaskRequest
from shim.sim import Simulator

from .conftest import QUIET
from .shimkit import make_shim, records, wait_for

Handler = Callable[[httpx.Request], httpx.Response]

#: The answer kiwi's tests use: no service, no model, no node.
KIWI_ANSWER = {"url": "http://node.test:8080", "allocation_id": "alloc-123", "gpu_id": 0,
               "started": True, "warm": False}  # fmt: skip


def completion(content: str, model: str = "qwen2.5-3b-instruct") -> dict[str, Any]:
    return {"model": model, "choices": [{"message": {"role": "assistant", "content": content}}]}


class Coordinator:
    """A coordinator and its nodes as kiwi describes them, remembering every request."""

    def __init__(self, answer: dict[str, Any] | None = None, release_status: int = 200) -> None:
        self.answer = answer or dict(KIWI_ANSWER)
        self.release_status = release_status
        self.seen: list[tuple[str, str, Any, str | None]] = []
        self.raw_paths: list[bytes] = []  # as sent: percent-encoding kept

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.raw_paths.append(request.url.raw_path)
        body = json.loads(request.content) if request.content else None
        where = f"{request.url.scheme}://{request.url.netloc.decode()}{request.url.path}"
        self.seen.append((request.method, where, body, request.headers.get("authorization")))
        path = request.url.path
        if path == "/api/inference/task":
            return httpx.Response(200, json=self.answer)
        if path.endswith("/v1/models"):
            return httpx.Response(200, json={"data": [{"id": "qwen2.5-3b-instruct"}]})
        if path.endswith("/v1/chat/completions"):
            return httpx.Response(200, json=completion("a plan"))
        if path.endswith("/extract"):
            return httpx.Response(200, json={"raw_text": "STORE $12.34", "metadata": {}})
        if request.method == "DELETE":
            return httpx.Response(self.release_status, json={"released": True})
        return httpx.Response(404)

    def paths(self, method: str | None = None) -> list[str]:
        return [w for m, w, _, _ in self.seen if method is None or m == method]


Run = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Run:
    """``run(handler, lambda client: client.allocate(...), **options)`` on a sync or an
    async client (an async method's coroutine is awaited)."""

    def sync(handler: Handler, use: Callable[[Any], Any], **kw: Any) -> Any:
        http = httpx.Client(transport=httpx.MockTransport(handler))
        with TaskClient("http://orch.test", http=http, **kw) as client:
            return use(client)

    def async_(handler: Handler, use: Callable[[Any], Any], **kw: Any) -> Any:
        async def main() -> Any:
            http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
            async with AsyncTaskClient("http://orch.test", http=http, **kw) as client:
                result = use(client)
                return await result if asyncio.iscoroutine(result) else result

        return asyncio.run(main())

    return sync if request.param == "sync" else async_


def test_allocate_sends_exactly_kiwis_body(run: Run) -> None:
    orch = Coordinator()
    run(orch, lambda c: c.allocate("kiwi", "meal_plan", service_hint="cf-text"))
    method, where, body, _ = orch.seen[0]
    assert (method, where) == ("POST", "http://orch.test/api/inference/task")
    assert body == {"product": "kiwi", "task": "meal_plan", "payload": {}}


def test_allocation_without_service_model_or_node_takes_the_hint_and_the_nodes_model(
    run: Run,
) -> None:
    orch = Coordinator()
    alloc = run(orch, lambda c: c.allocate("kiwi", "meal_plan", service_hint="cf-text"))
    assert (alloc.url, alloc.allocation_id) == ("http://node.test:8080", "alloc-123")
    assert alloc.service == "cf-text", "no service in the answer: the hint"
    assert alloc.model == "qwen2.5-3b-instruct", "the model the node lists first (data[0])"
    assert alloc.node_id is None and alloc.gpu_id == 0


def test_the_answers_service_wins_over_the_hint(run: Run) -> None:
    orch = Coordinator({**KIWI_ANSWER, "service": "cf-vision"})
    alloc = run(orch, lambda c: c.allocate("kiwi", "ocr", service_hint="cf-docuvision"))
    assert alloc.service == "cf-vision"


def test_release_of_an_allocation_naming_no_service_never_raises(run: Run) -> None:
    """Was: StopIteration (sync) / RuntimeError (async) out of ``release``."""
    told: list[tuple[str, str, str, str]] = []
    orch = Coordinator()

    def use(client: Any) -> Any:
        async def both() -> None:
            alloc = await client.allocate("kiwi", "meal_plan")
            await client.release("kiwi", "meal_plan", alloc)

        if isinstance(client, AsyncTaskClient):
            return both()
        client.release("kiwi", "meal_plan", client.allocate("kiwi", "meal_plan"))
        return None

    run(orch, use, on_release_failed=lambda *a: told.append(a))
    [(product, task, allocation_id, error)] = told
    assert (product, task, allocation_id) == ("kiwi", "meal_plan", "alloc-123")
    assert "pass service_hint=" in error
    assert orch.paths("DELETE") == [], "nothing to release from"


def test_inference_on_an_allocation_releases_it_from_the_hinted_service(run: Run) -> None:
    orch = Coordinator()
    result = run(
        orch,
        lambda c: c.infer("kiwi", "meal_plan", TaskRequest(prompt="plan"), service_hint="cf-text"),
    )
    assert result.output == "a plan" and result.model == "qwen2.5-3b-instruct"
    assert result.service_type == "cf-text"
    assert orch.paths() == [
        "http://orch.test/api/inference/task",
        "http://node.test:8080/v1/models",
        "http://node.test:8080/v1/chat/completions",
        "http://orch.test/api/services/cf-text/allocations/alloc-123",
    ]


@pytest.mark.parametrize("status", [404, 500])
def test_a_release_the_coordinator_refuses_is_told_not_raised(run: Run, status: int) -> None:
    told: list[str] = []
    orch = Coordinator(release_status=status)
    result = run(
        orch,
        lambda c: c.infer("kiwi", "meal_plan", TaskRequest(prompt="p"), service_hint="cf-text"),
        on_release_failed=lambda *a: told.append(a[3]),
    )
    assert result.output == "a plan"
    assert told and f"answered {status}" in told[0]


@pytest.mark.parametrize(
    ("service", "allocation_id", "released"),
    [
        (
            "cf-text",
            "../../admin/keys",
            b"/api/services/cf-text/allocations/..%2F..%2Fadmin%2Fkeys",
        ),
        ("cf-text", "a?b#c d/%", b"/api/services/cf-text/allocations/a%3Fb%23c%20d%2F%25"),
        ("../../admin", "alloc-1", b"/api/services/..%2F..%2Fadmin/allocations/alloc-1"),
        ("cf-text", "..", None),
        ("..", "alloc-1", None),
        ("cf-text", ".", None),
        ("cf-text", "", None),
    ],
)
def test_the_release_url_keeps_the_coordinators_values_in_their_segments(
    run: Run, service: str, allocation_id: str, released: bytes | None
) -> None:
    """The service and allocation id come from the coordinator's answer: each stays one
    path segment ("/" and "?" encoded), and "." or ".." (a parent path once a server
    resolves it) is not sent at all: the release, and the key, go nowhere else."""
    told: list[str] = []
    orch = Coordinator({**KIWI_ANSWER, "service": service, "allocation_id": allocation_id})
    result = run(
        orch,
        lambda c: c.infer("kiwi", "meal_plan", TaskRequest(prompt="p")),
        api_key="k",
        on_release_failed=lambda *a: told.append(a[3]),
    )
    assert result.output == "a plan"
    deletes = [p for (m, *_), p in zip(orch.seen, orch.raw_paths, strict=True) if m == "DELETE"]
    if released is None:
        assert deletes == [] and told and "not released" in told[0]
    else:
        assert deletes == [released] and not told
    assert {a for _, w, _, a in orch.seen if w.startswith("http://orch.test")} == {"Bearer k"}


def test_an_allocation_id_no_header_can_carry_fails_the_call_and_is_still_released(
    run: Run,
) -> None:
    """Was: UnicodeEncodeError out of the call (httpx encodes header values as ASCII)."""
    orch = Coordinator({**KIWI_ANSWER, "service": "cf-text", "allocation_id": "a\u20ac\n"})
    with pytest.raises(TaskFailed, match="allocation id has characters a header cannot carry"):
        run(orch, lambda c: c.infer("kiwi", "meal_plan", TaskRequest(prompt="p")))
    assert orch.raw_paths[1:] == [b"/api/services/cf-text/allocations/a%E2%82%AC%0A"]


@pytest.mark.parametrize(
    "node",
    ["http://node.test:8080/?q=", "http://node.test:8080/#", "ftp://node.test/", "http://:8080",
     "http://node.test:99999", "http://no de.test/", "http://node.test/\n", "/relative", ""],
)  # fmt: skip
@pytest.mark.parametrize("how", ["infer", "allocate"])
def test_a_node_url_a_path_cannot_be_added_to_fails_and_is_released(
    run: Run, node: str, how: str
) -> None:
    """A query or fragment would swallow ``/v1/chat/completions``; the rest is no URL to
    send to. Either way the allocation is given back."""
    orch = Coordinator({**KIWI_ANSWER, "url": node, "service": "cf-text"})
    use = {
        "infer": lambda c: c.infer("kiwi", "meal_plan", TaskRequest(prompt="p")),
        "allocate": lambda c: c.allocate("kiwi", "meal_plan"),  # no model: asks the node
    }[how]
    with pytest.raises(TaskFailed, match="node URL is not an http"):
        run(orch, use)
    assert orch.paths() == [
        "http://orch.test/api/inference/task",
        "http://orch.test/api/services/cf-text/allocations/alloc-123",
    ]


def test_images_go_to_a_vision_node_as_image_parts(run: Run) -> None:
    orch = Coordinator({**KIWI_ANSWER, "service": "cf-vision"})
    request = TaskRequest(prompt="Read the label.", images=("iVBORw0KGgo=",))
    run(orch, lambda c: c.infer("kiwi", "barcode_scan", request))
    [chat] = [b for m, w, b, _ in orch.seen if w.endswith("/chat/completions")]
    [message] = chat["messages"]
    assert message["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": "Read the label."},
    ]


def test_a_document_node_reads_images_at_extract(run: Run) -> None:
    orch = Coordinator({**KIWI_ANSWER, "service": "cf-docuvision"})
    images = ("/9j/4AAQ", "data:image/png;base64,iVBOR")
    request = TaskRequest(images=images, params={"hint": "text"})
    result = run(orch, lambda c: c.infer("kiwi", "ocr", request))
    extracts = [b for m, w, b, _ in orch.seen if w.endswith("/extract")]
    assert extracts == [{"image_b64": "/9j/4AAQ", "hint": "text"},
                        {"image_b64": "iVBOR", "hint": "text"}]  # fmt: skip
    assert result.output == "STORE $12.34\n\nSTORE $12.34"
    assert not [w for w in orch.paths() if w.endswith("/chat/completions")], "no chat there"
    assert result.model == "qwen2.5-3b-instruct", "the model the node lists, when it lists one"


def test_the_key_goes_to_a_node_only_on_the_coordinators_own_origin(run: Run) -> None:
    orch = Coordinator({**KIWI_ANSWER, "url": "http://orch.test/nodes/node-a/a/alloc-123"})
    plan = TaskRequest(prompt="p")
    run(orch, lambda c: c.infer("kiwi", "meal_plan", plan, service_hint="cf-text"), api_key="k")
    assert {auth for _, _, _, auth in orch.seen} == {"Bearer k"}
    elsewhere = Coordinator()
    run(
        elsewhere, lambda c: c.infer("kiwi", "meal_plan", plan, service_hint="cf-text"), api_key="k"
    )
    node_auth = {a for _, w, _, a in elsewhere.seen if w.startswith("http://node.test")}
    assert node_auth == {None}, "never to another host"


# -- against the simulator answering as a coordinator before cf-orch#63 ----------------

PRE_63 = QUIET.model_copy(update={"omit_service": True, "task_ttl_s": 0.5})


def expired_so_far(sim: Simulator) -> int:
    return int(sim.stats()["counts"].get("allocations.expired", 0))


def shadowed_sites(s: Shim) -> tuple[Any, Any]:
    """A plain call site and an allocating one of kiwi.meal_plan, both shadowed."""

    @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="plan"))
    def plan() -> str:
        return '[{"day": 0, "meal_type": "dinner", "recipe_id": null, "suggestion": "Soup"}]'

    @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(), allocation=True)
    @contextlib.contextmanager
    def node() -> Iterator[dict[str, str]]:
        yield {"url": "http://legacy.node", "allocation_id": "legacy-1", "service": "cf-text"}

    return plan, node


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_no_allocation_leaks_when_the_answer_names_no_service(
    sim: Simulator, tmp_path: Path, kind: str
) -> None:
    """The registry tells the shim which service a task's allocation is released from."""
    sim.set_profile(PRE_63)
    expired = expired_so_far(sim)  # the simulator is shared by the session's tests
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    plan, node = shadowed_sites(s)
    for _ in range(3):
        assert plan().startswith("[")
        with node() as alloc:
            assert alloc["allocation_id"] == "legacy-1"
    if kind == "async":

        async def served() -> str:
            async with AsyncTaskClient(sim.url) as client:
                alloc = await client.allocate("kiwi", "meal_plan", service_hint="cf-text")
                await client.release("kiwi", "meal_plan", alloc)
                return alloc.service or ""

        assert asyncio.run(served()) == "cf-text"
    s.close()
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 6 and all(r["candidate"]["ok"] for r in rows), rows
    assert {r["candidate"]["service_type"] for r in rows} == {"cf-text"}
    assert records(tmp_path / "log.jsonl", "shim.release_failed") == []
    assert sim.stats()["allocations_active"] == 0
    assert expired_so_far(sim) == expired, "released, not expired"


def test_an_allocation_with_no_service_to_release_from_is_recorded_and_expires(
    sim: Simulator, tmp_path: Path
) -> None:
    """Without a registry or a hint nothing says where to release: the caller never
    sees it, a record says so, and the coordinator's TTL takes the allocation back."""
    sim.set_profile(PRE_63)
    expired = expired_so_far(sim)
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n", registry=None)
    _, node = shadowed_sites(s)
    with node() as alloc:
        assert alloc["allocation_id"] == "legacy-1"
    s.close()
    [failed] = records(tmp_path / "log.jsonl", "shim.release_failed")
    assert (failed["product"], failed["task"]) == ("kiwi", "meal_plan")
    assert "pass service_hint=" in failed["error"]
    assert s.stats()["internal_errors"] == {"release": 1}
    wait_for(lambda: sim.stats()["allocations_active"] == 0, timeout=5)
    assert expired_so_far(sim) == expired + 1


def test_an_allocate_interrupted_after_the_grant_gives_the_allocation_back(run: Run) -> None:
    """Cancelled (async) or interrupted (sync) while learning the node's model: the
    granted allocation is released before the interruption goes on."""
    orch = Coordinator({**KIWI_ANSWER, "service": "cf-text"})
    interrupt: type[BaseException] = KeyboardInterrupt

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v1/models"):
            raise interrupt("interrupted")
        return orch(request)

    def use(client: Any) -> Any:
        nonlocal interrupt
        if isinstance(client, AsyncTaskClient):
            interrupt = asyncio.CancelledError
        return client.allocate("kiwi", "meal_plan")

    with pytest.raises((KeyboardInterrupt, asyncio.CancelledError)):
        run(handler, use)
    assert orch.paths("DELETE") == ["http://orch.test/api/services/cf-text/allocations/alloc-123"]


# -- the production flow: a coordinator that only allocates --------------------------

REAL = QUIET.model_copy(update={"omit_service": True, "allocate_only": True})
REQUESTS = {
    "meal_plan": (TaskRequest(system="Reply with a JSON array only.", prompt="Pantry: rice"),
                  "qwen2.5-3b-instruct", "cf-text"),
    "barcode_scan": (TaskRequest(prompt="Read the label.", images=("iVBORw0KGgo=",)),
                     "florence-2-large", "cf-vision"),
    "recipe_scan": (TaskRequest(images=("/9j/4AAQ",), params={"hint": "text"}),
                    "docuvision-pages", "cf-docuvision"),
}  # fmt: skip


@pytest.mark.parametrize("stage", ["shadow", "live"])
@pytest.mark.parametrize("task", REQUESTS)
def test_plain_call_sites_through_allocate_complete_release(
    sim: Simulator, tmp_path: Path, task: str, stage: str
) -> None:
    """Against a coordinator that answers every request with an allocation (and no
    service), a plain call site's task path allocates, completes on the node (chat with
    image parts, or /extract) and releases: the caller's value and the record are
    right, and nothing stays allocated."""
    sim.set_profile(REAL)
    flags = "{serve: 0, shadow: 100}" if stage == "shadow" else "{serve: 100, shadow: 0}"
    s = make_shim(sim.url, tmp_path, f"kiwi.{task}: {flags}\n")
    request, model, service = REQUESTS[task]
    legacy_text = "legacy's answer"

    @s.shadow(product="kiwi", task=task, request=lambda: request, response=lambda r: r.text)
    def call() -> str:
        return legacy_text

    got = [call() for _ in range(3)]
    s.close()
    if stage == "shadow":
        assert all(g is legacy_text for g in got)
        rows = records(tmp_path / "log.jsonl")
        assert len(rows) == 3
        for row in rows:
            assert row["candidate"]["ok"], row["candidate"]
            assert (row["candidate"]["model"], row["candidate"]["service_type"]) == (model, service)
    else:
        assert all(g and g != legacy_text for g in got), got
    assert records(tmp_path / "log.jsonl", "shim.release_failed") == []
    assert sim.stats()["allocations_active"] == 0
