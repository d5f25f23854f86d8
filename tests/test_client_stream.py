"""The task path, streamed: an allocation, the node's chat completion read as
server-sent events, the time to its first piece of text, the allocation released."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shim import AsyncTaskClient, TaskClient, TaskFailed, TaskRequest, TaskResult
from shim.client.sse import SSEError, arrived_by, read_completion_stream
from shim.sim import Simulator

from .conftest import QUIET

Stream = Callable[..., TaskResult]


def _sync(url: str, req: TaskRequest, **kw: Any) -> TaskResult:
    with TaskClient(url, **kw) as client:
        return client.infer("kiwi", "recipe_generation", req, stream=True)


def _sync_httpx(url: str, req: TaskRequest, **kw: Any) -> TaskResult:
    with httpx.Client() as http:  # the caller's own client: the TaskClient leaves it open
        return _sync(url, req, http=http, **kw)


def _async(url: str, req: TaskRequest, **kw: Any) -> TaskResult:
    async def run() -> TaskResult:
        async with AsyncTaskClient(url, **kw) as client:
            return await client.infer("kiwi", "recipe_generation", req, stream=True)

    return asyncio.run(run())


@pytest.fixture(params=[_sync, _sync_httpx, _async], ids=["wire", "httpx", "async"])
def stream(request: pytest.FixtureRequest) -> Stream:
    fn: Stream = request.param
    return fn


def test_a_streamed_answer_says_when_its_first_text_came(sim: Simulator, stream: Stream) -> None:
    knobs = QUIET.with_knob("kiwi.recipe_generation", "ttft_ms", 200)
    sim.set_profile(knobs.with_knob("kiwi.recipe_generation", "chunk_interval_ms", 5))
    result = stream(sim.url, TaskRequest(prompt="Pantry: rice, eggs"))
    assert result.text.startswith("Title: ") and "\nDirections:\n" in result.text
    assert result.chunks is not None and result.chunks > 3
    assert result.ttft_ms is not None and 200 <= result.ttft_ms < result.latency_ms
    assert result.latency_ms - result.ttft_ms >= 5 * (result.chunks - 1) * 0.9
    assert result.model == "ouro-1.4b" and result.allocation_id  # kiwi's assignment
    assert sim.stats()["allocations_active"] == 0, "released"


ALLOCATION = {
    "url": "http://node.test",
    "allocation_id": "a-1",
    "service": "cf-text",
    "model": "m-0",
}


def _mocked(node: Callable[[httpx.Request], httpx.Response], seen: list[Any]) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/inference/task":
            seen.append(json.loads(request.content))
            return httpx.Response(200, json=ALLOCATION)
        if request.method == "DELETE":
            seen.append("released")
            return httpx.Response(204)
        seen.append(json.loads(request.content))
        return node(request)

    return handler


def _sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def _chunk(text: str | None, **extra: Any) -> str:
    delta = {} if text is None else {"content": text}
    return json.dumps({"model": "m-1", "choices": [{"index": 0, "delta": delta}], **extra})


def test_a_stream_asks_for_an_allocation_and_the_node_for_events() -> None:
    seen: list[Any] = []
    body = _sse(_chunk(""), _chunk("Hello"), _chunk(" there"), _chunk(None), "[DONE]")
    node = _mocked(lambda r: httpx.Response(200, content=body), seen)
    result = _sync("http://orch.test", TaskRequest(prompt="hi"), http=_client(node))
    assert seen[0] == {
        "product": "kiwi",
        "task": "recipe_generation",
        "prompt": "hi",
        "mode": "allocate",
    }
    assert seen[1]["stream"] is True and seen[1]["messages"][-1]["content"] == "hi"
    assert seen[1]["stream_options"] == {"include_usage": True}
    assert seen[2] == "released"
    assert (result.text, result.chunks, result.model) == ("Hello there", 2, "m-1")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_sse("{not json", "[DONE]"), "not JSON"),
        (_sse(_chunk("a") + ", " + _chunk("b"), "[DONE]"), "not JSON"),  # two values
        (_sse('{"model": "m"}', "[DONE]"), "no choices"),
        (_sse(json.dumps({"choices": [{"delta": {"content": 3}}]}), "[DONE]"), "not text"),
        (_sse(_chunk("cut short")), r"without data: \[DONE\]"),
        (json.dumps({"choices": [{"message": {"content": "x"}}]}).encode(), "DONE"),
    ],
)
def test_a_stream_that_is_not_a_completions_events_fails_and_is_released(
    body: bytes, message: str
) -> None:
    seen: list[Any] = []
    node = _mocked(lambda r: httpx.Response(200, content=body), seen)
    with pytest.raises(TaskFailed, match=f"node stream: .*{message}"):
        _sync("http://orch.test", TaskRequest(prompt="hi"), http=_client(node))
    assert seen[-1] == "released"


def test_a_coordinator_that_answers_itself_is_one_piece() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"output": "all at once", "model": "m-2"})

    result = _sync("http://orch.test", TaskRequest(prompt="hi"), http=_client(handler))
    assert (result.text, result.chunks, result.ttft_ms) == ("all at once", 1, result.latency_ms)


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


# -- the events themselves ------------------------------------------------------------


def test_events_split_on_any_blank_line_and_skip_what_is_not_data() -> None:
    body = (
        b": a comment\r\n\r\n"
        b"event: message\r\ndata: " + _chunk("a").encode() + b"\r\n\r\n"
        b"retry: 5\n\n"
        b"data:\n\n"  # empty data: no event
        b"data: " + _chunk("b").encode() + b"\n\r\n"  # LF, then a blank CRLF line
        b'data: {"choices": [], "usage": {"total_tokens": 7}}\r\r'
        b"data: " + _chunk("c").encode() + b"\n\n"
        b"data: [DONE]"  # the last event without its blank line
    )
    got = read_completion_stream(body)
    assert (got.text, got.chunks, got.usage) == ("abc", 3, {"total_tokens": 7})
    assert got.first_end == body.index(b"\r\n\r\nretry") + 4


def test_a_stream_without_done_is_not_a_completion() -> None:
    with pytest.raises(SSEError, match=r"without data: \[DONE\]"):
        read_completion_stream(_sse(_chunk("cut short")))
    with pytest.raises(SSEError, match=r"without data: \[DONE\]"):
        read_completion_stream(json.dumps({"choices": [{"message": {"content": "x"}}]}).encode())


def test_nothing_after_done_is_read_and_no_text_has_no_first_end() -> None:
    got = read_completion_stream(_sse(_chunk(None), "[DONE]", "not json at all"))
    assert (got.text, got.chunks, got.first_end) == ("", 0, None)
    with pytest.raises(SSEError, match="not UTF-8"):
        read_completion_stream(b"data: \xff\n\n")


def test_events_that_only_parse_together_are_refused() -> None:
    """One object cut across two events, another event of two values: as one array they
    would parse; each event must be one chunk on its own."""
    first, second = _chunk("a")[:10], _chunk("a")[10:]
    body = _sse(first, second, _chunk("b") + ", " + _chunk("c"), "[DONE]")
    with pytest.raises(SSEError, match="not JSON"):
        read_completion_stream(body)


def test_arrivals_say_when_the_body_reached_an_offset() -> None:
    arrivals = [(10, 1.0), (25, 2.0), (40, 3.0)]
    assert [arrived_by(arrivals, n) for n in (1, 10, 11, 40, 41)] == [1.0, 1.0, 2.0, 3.0, None]


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",  # read to the end
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["to-close", "length", "chunked"],
)
def test_a_body_that_came_with_the_head_is_timed_as_it_came(head: bytes) -> None:
    import socket
    import time

    from shim.client.http1 import Conn, read_reply

    body = b"b\r\nhello world\r\n0\r\n\r\n" if b"chunked" in head else b"hello world"
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(head + body)
        theirs.shutdown(socket.SHUT_WR)
        before = time.perf_counter()
        arrivals: list[tuple[int, float]] = []
        status, content, _ = read_reply(Conn(ours), "GET", before + 5, 1 << 20, arrivals)
    assert (status, content) == (200, b"hello world")
    assert arrivals and arrivals[-1][0] == 11 and arrivals[0][1] - before < 0.1
