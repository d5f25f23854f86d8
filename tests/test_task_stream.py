"""The task path read as it streams (``open_stream``): pieces of text as the node sends
them, the allocation given back however the stream ends."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shim import AsyncTaskClient, TaskClient, TaskFailed, TaskRequest
from shim.client.sse import CompletionReader, SSEError, read_completion_stream
from shim.sim import Simulator

from .conftest import QUIET

REQ = TaskRequest(prompt="Pantry: rice, eggs")
#: Read one stream: ``(url, request, leave_after, **client options)`` -> what was seen
#: (pieces with the seconds since the call, the result or None, the error or None).
Read = Callable[..., tuple[list[tuple[str, float]], Any, BaseException | None]]


def _read_sync(url: str, req: TaskRequest, leave_after: int | None = None, **kw: Any) -> Any:
    seen: list[tuple[str, float]] = []
    started = time.perf_counter()
    with TaskClient(url, **kw) as client:
        stream = client.open_stream("kiwi", "recipe_generation", req)
        try:
            for piece in stream:
                seen.append((piece, time.perf_counter() - started))
                if leave_after is not None and len(seen) >= leave_after:
                    stream.close()
                    break
        except TaskFailed as exc:
            return seen, stream.result, exc
        return seen, stream.result, None


def _read_async(url: str, req: TaskRequest, leave_after: int | None = None, **kw: Any) -> Any:
    async def run() -> Any:
        seen: list[tuple[str, float]] = []
        started = time.perf_counter()
        async with AsyncTaskClient(url, **kw) as client:
            stream = await client.open_stream("kiwi", "recipe_generation", req)
            try:
                async for piece in stream:
                    seen.append((piece, time.perf_counter() - started))
                    if leave_after is not None and len(seen) >= leave_after:
                        await stream.aclose()
                        break
            except TaskFailed as exc:
                return seen, stream.result, exc
            return seen, stream.result, None

    return asyncio.run(run())


@pytest.fixture(params=[_read_sync, _read_async], ids=["sync", "async"])
def read(request: pytest.FixtureRequest) -> Read:
    fn: Read = request.param
    return fn


def test_pieces_come_as_the_node_sends_them_and_add_up_to_the_answer(
    sim: Simulator, read: Read
) -> None:
    knobs = QUIET.with_knob("kiwi.recipe_generation", "ttft_ms", 100)
    sim.set_profile(knobs.with_knob("kiwi.recipe_generation", "chunk_interval_ms", 20))
    seen, result, error = read(sim.url, REQ)
    assert error is None and result is not None
    assert "".join(p for p, _ in seen) == result.text
    with TaskClient(sim.url) as client:  # the same answer, read whole
        assert client.infer("kiwi", "recipe_generation", REQ, stream=True).text == result.text
    assert result.chunks == len(seen) > 3
    first, last = seen[0][1], seen[-1][1]
    assert last - first >= 0.02 * (len(seen) - 1) * 0.8, "each piece as it came, not at the end"
    assert result.ttft_ms is not None and 100 <= result.ttft_ms < result.latency_ms
    # asked for (stream_options.include_usage), the usage comes in a last chunk
    assert result.usage is not None and result.usage["completion_tokens"] > 0
    assert sim.stats()["allocations_active"] == 0, "released"


def test_a_stream_left_early_gives_its_allocation_back(sim: Simulator, read: Read) -> None:
    sim.set_profile(QUIET.with_knob("kiwi.recipe_generation", "chunk_interval_ms", 50))
    seen, result, error = read(sim.url, REQ, leave_after=2)
    assert len(seen) == 2 and result is None and error is None
    assert sim.stats()["allocations_active"] == 0, "released on close"


def test_a_stream_never_read_gives_its_allocation_back_on_close(sim: Simulator) -> None:
    sim.set_profile(QUIET)
    with TaskClient(sim.url) as client:
        stream = client.open_stream("kiwi", "recipe_generation", REQ)
        assert sim.stats()["allocations_active"] == 1
        stream.close()
        stream.close()  # once is enough
    assert sim.stats()["allocations_active"] == 0


# -- failures, against a node that misbehaves -----------------------------------------

ALLOCATION = {"url": "http://node.test", "allocation_id": "a-1", "service": "cf-text"}


def _transport(node: Callable[[httpx.Request], httpx.Response], seen: list[Any]) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/inference/task":
            return httpx.Response(200, json=ALLOCATION | {"model": "m-0"})
        if request.method == "DELETE":
            seen.append("released")
            return httpx.Response(204)
        return node(request)

    return handler


def _sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def _chunk(text: str | None) -> str:
    delta = {} if text is None else {"content": text}
    return json.dumps({"model": "m-1", "choices": [{"index": 0, "delta": delta}]})


def _mocked_read(read: Read, node: Callable[[httpx.Request], httpx.Response], seen: list[Any]):  # type: ignore[no-untyped-def]
    handler = _transport(node, seen)
    if read is _read_sync:
        return _read_sync(
            "http://orch.test", REQ, http=httpx.Client(transport=httpx.MockTransport(handler))
        )
    transport = httpx.MockTransport(handler)
    return _read_async("http://orch.test", REQ, http=httpx.AsyncClient(transport=transport))


@pytest.mark.parametrize(
    ("body", "pieces", "message"),
    [
        (_sse(_chunk("a"), "{not json", "[DONE]"), ["a"], "node stream: .*not JSON"),
        (_sse(_chunk("a"), _chunk("b")), ["a", "b"], r"node stream: .*without data: \[DONE\]"),
        (_sse('{"model": "m"}', "[DONE]"), [], "node stream: .*no choices"),
    ],
)
def test_a_stream_that_breaks_raises_task_failed_after_what_it_gave_and_is_released(
    read: Read, body: bytes, pieces: list[str], message: str
) -> None:
    seen: list[Any] = []
    got, result, error = _mocked_read(read, lambda r: httpx.Response(200, content=body), seen)
    assert [p for p, _ in got] == pieces and result is None
    assert isinstance(error, TaskFailed) and error.task == "recipe_generation"
    assert error is not None and __import__("re").search(message, str(error))
    assert seen == ["released"]


def test_a_node_that_refuses_fails_before_the_first_piece_and_is_released(read: Read) -> None:
    seen: list[Any] = []
    refuse = lambda r: httpx.Response(503, json={"detail": "warming up"})  # noqa: E731
    got, _, error = _mocked_read(read, refuse, seen)
    assert got == [] and isinstance(error, TaskFailed) and error.status == 503
    assert "warming up" in str(error) and seen == ["released"]


def test_a_coordinator_that_answers_itself_is_one_piece() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"output": "all at once", "model": "m-2"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    got, result, error = _read_sync("http://orch.test", REQ, http=http)
    assert [p for p, _ in got] == ["all at once"] and error is None
    assert result is not None and result.chunks == 1


# -- the events, read as they come ----------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_events_read_in_any_pieces_say_what_the_whole_body_says(size: int) -> None:
    body = (
        b": a comment\r\n\r\n"
        b"event: message\r\ndata: " + _chunk("a").encode() + b"\r\n\r\n"
        b"data:\n\n"
        b"data: " + _chunk("b").encode() + b"\n\r\n"
        b'data: {"choices": [], "usage": {"total_tokens": 7}}\r\r'
        b"data: " + _chunk("c").encode() + b"\r\n\r\n"
        b"data: [DONE]\n\ndata: not json"
    )
    reader = CompletionReader()
    pieces: list[str] = []
    for at in range(0, len(body), size):
        pieces += reader.feed(body[at : at + size])
    pieces += reader.finish()
    whole = read_completion_stream(body)
    assert "".join(pieces) == whole.text == "abc" and len(pieces) == whole.chunks
    assert reader.usage == {"total_tokens": 7} and reader.model == "m-1" and reader.done


def test_a_body_cut_short_is_not_a_completion() -> None:
    reader = CompletionReader()
    assert reader.feed(_sse(_chunk("a"))) == ["a"]
    with pytest.raises(SSEError, match=r"without data: \[DONE\]"):
        reader.finish()


def test_a_long_event_in_small_pieces_is_not_scanned_again_and_again() -> None:
    """A 2 MB event fed 4 KB at a time: each byte searched once (it was quadratic)."""
    event = b"data: " + json.dumps({"choices": [{"delta": {"content": "x" * 2_000_000}}]}).encode()
    body = event + b"\n\ndata: [DONE]\n\n"
    reader = CompletionReader()
    started = time.perf_counter()
    pieces = [p for at in range(0, len(body), 4096) for p in reader.feed(body[at : at + 4096])]
    assert time.perf_counter() - started < 1.0
    assert pieces == ["x" * 2_000_000] and reader.done


def test_nothing_after_done_is_read_not_even_bytes_that_are_not_text() -> None:
    reader = CompletionReader()
    assert reader.feed(_sse(_chunk("a"), "[DONE]") + b"data: \xff\n\n") == ["a"]
    assert reader.finish() == []


def test_an_async_stream_ends_at_its_deadline_not_a_read_timeout_later(sim: Simulator) -> None:
    sim.set_profile(QUIET.with_knob("kiwi.recipe_generation", "chunk_interval_ms", 400))
    started = time.perf_counter()
    seen, result, error = _read_async(sim.url, REQ, timeout=0.9)
    took = time.perf_counter() - started
    assert isinstance(error, TaskFailed) and "no answer within 0.9 s" in str(error)
    assert result is None
    assert seen and took < 1.3, took  # a read timeout after the deadline would be ~1.7 s
    assert sim.stats()["allocations_active"] == 0
