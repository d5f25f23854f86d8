"""Streaming call sites the task path serves (canary, live), against the simulator: the
caller iterates the node's stream as it comes; a failure before the first piece falls
back to legacy, one after it raises StreamInterrupted; nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shim import Limits, Shim, StreamInterrupted, TaskClient, TaskFailed, TaskRequest
from shim.comparators import TextOutput

from .conftest import QUIET, Simulator
from .shimkit import dropped, make_shim, records, wait_for

TASK = "kiwi.recipe_generation"
CANARY = f"{TASK}: {{serve: 100, shadow: 100}}\n"
LIVE = f"{TASK}: {{serve: 100, shadow: 0}}\n"
CHUNKS = ["Title: soup\n", "Ingredients:\n- water\n", "Directions:\n1. boil\n"]
PROMPT = "Pantry: rice, eggs"


class Legacy:
    """Legacy's stream, sync or async, noting the threads it ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def sync(self, q: str) -> Iterator[str]:
        self.threads.append(threading.get_ident())
        yield from CHUNKS

    async def asynchronous(self, q: str) -> AsyncIterator[str]:
        self.threads.append(threading.get_ident())
        for chunk in CHUNKS:
            await asyncio.sleep(0)
            yield chunk


def wrap(s: Shim, fn: Any, **options: Any) -> Any:
    return s.shadow(
        product="kiwi",
        task="recipe_generation",
        request=lambda q: TaskRequest(prompt=q),
        response=lambda r: r.text,
        output=TextOutput(),
        **options,
    )(fn)


#: How many other tasks were left on the event loop as each async ``read`` ended.
TASKS_LEFT: list[int] = []


def read(site: Any, q: str = PROMPT, leave_after: int | None = None) -> list[tuple[Any, float]]:
    """Iterate a wrapped stream (sync or async): each piece, with when it came."""
    started = time.perf_counter()

    def take(got: list[tuple[Any, float]], piece: Any) -> bool:
        got.append((piece, time.perf_counter() - started))
        return leave_after is not None and len(got) >= leave_after

    stream = site(q)
    if hasattr(stream, "__anext__"):

        async def run() -> list[tuple[Any, float]]:
            got: list[tuple[Any, float]] = []
            async for piece in stream:
                if take(got, piece):
                    await stream.aclose()
                    break
            await asyncio.sleep(0.05)  # what the stream's end started, if anything
            TASKS_LEFT.append(len(asyncio.all_tasks()) - 1)
            return got

        return asyncio.run(run())
    got: list[tuple[Any, float]] = []
    for piece in stream:
        if take(got, piece):
            stream.close()
            break
    return got


KINDS = ["sync", "async"]


def open_sockets() -> int:
    """The sockets this process holds (the simulator's included: it runs here)."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(fd).startswith("socket:")
    return count


def legacy_fn(legacy: Legacy, kind: str) -> Callable[..., Any]:
    return legacy.sync if kind == "sync" else legacy.asynchronous


def task_text(sim: Simulator, q: str = PROMPT) -> str:
    with TaskClient(sim.url) as client:
        return client.infer("kiwi", "recipe_generation", TaskRequest(prompt=q), stream=True).text


@pytest.mark.parametrize("kind", KINDS)
def test_canary_serves_the_task_paths_stream_as_it_comes_and_compares_legacy(
    sim: Simulator, tmp_path: Path, kind: str
) -> None:
    sim.set_profile(QUIET.with_knob(TASK, "chunk_interval_ms", 15))
    s = make_shim(sim.url, tmp_path, CANARY)
    legacy = Legacy()
    got = read(wrap(s, legacy_fn(legacy, kind)))
    pieces = [p for p, _ in got]
    assert all(isinstance(p, str) for p in pieces) and len(pieces) > 3
    assert "".join(pieces) == task_text(sim)  # the node's answer, not legacy's
    assert got[-1][1] - got[0][1] >= 0.015 * (len(got) - 1) * 0.8, "as it came"
    assert s.flush(timeout=10)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    assert rec["served_by"] == "task" and rec["stage"] == "live"
    candidate, old = rec["candidate"], rec["legacy"]
    assert candidate["ok"] and candidate["chunks"] == len(pieces)
    assert 0 <= candidate["ttft_ms"] <= candidate["latency_ms"]
    assert old["ok"] and old["chunks"] == 3 and old["output_bytes"] == len("".join(CHUNKS))
    assert len(legacy.threads) == 1, "legacy ran once, in the background"
    if kind == "sync":
        assert legacy.threads[0] != threading.get_ident()
    assert sim.stats()["allocations_active"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_live_serves_and_never_runs_legacy(sim: Simulator, tmp_path: Path, kind: str) -> None:
    s = make_shim(sim.url, tmp_path, LIVE)
    legacy = Legacy()
    got = read(wrap(s, legacy_fn(legacy, kind)))
    assert "".join(p for p, _ in got) == task_text(sim)
    assert s.flush(timeout=10)
    s.close()
    assert legacy.threads == [] and records(tmp_path / "log.jsonl") == []
    assert sim.stats()["allocations_active"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_task_path_failing_before_its_first_piece_falls_back_to_legacy(
    sim: Simulator, tmp_path: Path, kind: str
) -> None:
    sim.set_profile(QUIET.with_knob(TASK, "error_rate", 1.0))
    s = make_shim(sim.url, tmp_path, CANARY)
    got = read(wrap(s, legacy_fn(Legacy(), kind)))
    assert all(a is b for (a, _), b in zip(got, CHUNKS, strict=True)), "legacy's very chunks"
    assert s.flush(timeout=10)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    assert rec["served_by"] == "legacy_fallback"
    assert not rec["candidate"]["ok"] and rec["candidate"]["status"] == 503
    assert rec["legacy"]["ok"] and rec["legacy"]["chunks"] == 3


def test_without_fallback_the_task_paths_error_is_raised_before_any_piece(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.set_profile(QUIET.with_knob(TASK, "error_rate", 1.0))
    s = make_shim(sim.url, tmp_path, CANARY)
    legacy = Legacy()
    site = wrap(s, legacy.sync, fallback=False)
    with pytest.raises(TaskFailed) as raised:
        next(site(PROMPT))
    assert raised.value.status == 503 and legacy.threads == []
    s.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_broken_after_its_first_piece_raises_stream_interrupted(
    sim: Simulator, tmp_path: Path, kind: str
) -> None:
    sim.set_profile(QUIET.with_knob(TASK, "stream_cut_rate", 1.0))
    s = make_shim(sim.url, tmp_path, CANARY)
    got: list[str] = []
    stream = wrap(s, legacy_fn(Legacy(), kind))(PROMPT)

    def run() -> None:
        if kind == "sync":
            got.extend(stream)
            return

        async def drain() -> None:
            async for piece in stream:
                got.append(piece)

        asyncio.run(drain())

    with pytest.raises(StreamInterrupted) as raised:
        run()
    assert got, "the caller had pieces before the break"
    assert isinstance(raised.value.__cause__, TaskFailed)
    assert "[DONE]" in str(raised.value) and raised.value.task == "recipe_generation"
    assert s.flush(timeout=10)
    s.close()
    log = tmp_path / "log.jsonl"
    [rec] = records(log)
    assert rec["served_by"] == "task" and not rec["candidate"]["ok"]
    assert rec["candidate"]["chunks"] == len(got) and rec["legacy"]["ok"]
    [count] = records(log, "shim.stream_interrupted")
    assert count["count"] == 1 and count["task"] == "recipe_generation"
    assert sim.stats()["allocations_active"] == 0


def test_stream_error_raises_the_call_sites_own_error(sim: Simulator, tmp_path: Path) -> None:
    class CoordinatorError(Exception):
        def __init__(self, message: str, status_code: int) -> None:
            super().__init__(message)
            self.status_code = status_code

    sim.set_profile(QUIET.with_knob(TASK, "stream_cut_rate", 1.0))
    s = make_shim(sim.url, tmp_path, LIVE)
    site = wrap(
        s, Legacy().sync, stream_error=lambda exc: CoordinatorError(str(exc), status_code=502)
    )
    with pytest.raises(CoordinatorError) as raised:
        list(site(PROMPT))
    assert raised.value.status_code == 502
    assert isinstance(raised.value.__cause__, TaskFailed)
    s.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_served_stream_left_early_is_closed_released_and_counted(
    sim: Simulator, tmp_path: Path, kind: str
) -> None:
    sim.set_profile(QUIET.with_knob(TASK, "chunk_interval_ms", 20))
    sockets = open_sockets()
    s = make_shim(sim.url, tmp_path, CANARY)
    threads = threading.active_count()
    legacy = Legacy()
    TASKS_LEFT.clear()
    got = read(wrap(s, legacy_fn(legacy, kind)), leave_after=2)
    assert len(got) == 2 and ([0] if kind == "async" else []) == TASKS_LEFT
    wait_for(lambda: sim.stats()["allocations_active"] == 0)
    assert s.flush(timeout=10)
    s.close()
    wait_for(lambda: open_sockets() <= sockets)  # the node's stream too, both ends
    log = tmp_path / "log.jsonl"
    assert records(log) == [] and dropped(log, "abandoned") == 1
    [left] = records(log, "shim.abandoned")
    assert (left["served_by"], left["chunks"]) == ("task", 2) and left["ttft_ms"] >= 0
    assert legacy.threads == [], "nothing to compare: legacy never ran"
    wait_for(lambda: threading.active_count() <= threads)


def test_the_report_says_which_streams_were_left_early(sim: Simulator, tmp_path: Path) -> None:
    from shim.analysis.report import build_report
    from shim.analysis.report_format import markdown

    sim.set_profile(QUIET.with_knob(TASK, "chunk_interval_ms", 5))
    s = make_shim(sim.url, tmp_path, CANARY)
    site = wrap(s, Legacy().sync)
    read(site, leave_after=1)
    read(site)
    s.close()
    report = build_report([str(tmp_path / "log.jsonl")])
    [task] = report["tasks"]
    assert task["n"] == 1 and task["abandoned"] == {"legacy": 0, "task": 1}
    line = (
        "kiwi.recipe_generation: 1 stream left early by the caller (0 served by legacy, "
        "1 by the task path; not compared)"
    )
    assert line.replace("_", "\\_") in markdown(report)


def test_past_max_serving_legacy_serves_and_it_is_counted(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, LIVE, limits=Limits(max_serving=1))
    site = wrap(s, Legacy().sync)
    held = site(PROMPT)
    first = next(held)  # the task path serves it, and holds the only place
    assert isinstance(first, str)
    assert [p for p, _ in read(site)] == CHUNKS  # legacy serves the next one
    assert "".join([first, *held]) == task_text(sim)
    s.close()
    assert dropped(tmp_path / "log.jsonl", "serve_full") == 1


@pytest.mark.parametrize("flag", [CANARY, f"{TASK}: {{serve: 0, shadow: 100}}\n"])
def test_a_function_returning_an_iterator_is_a_stream_when_it_says_so(
    sim: Simulator, tmp_path: Path, flag: str
) -> None:
    s = make_shim(sim.url, tmp_path, flag)
    site = wrap(s, lambda q: iter(CHUNKS), stream=True)
    got = [p for p, _ in read(site)]
    assert got == (CHUNKS if "serve: 0" in flag else [p for p, _ in read(site)])
    assert s.flush(timeout=10)
    s.close()
    recs = records(tmp_path / "log.jsonl")
    assert recs and all(r["legacy"]["chunks"] == 3 for r in recs)


def test_a_function_returning_an_async_iterator_is_a_stream_with_stream_async(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, f"{TASK}: {{serve: 0, shadow: 100}}\n")
    legacy = Legacy()
    site = wrap(s, legacy.asynchronous, stream="async")
    assert [p for p, _ in read(site)] == CHUNKS
    assert s.flush(timeout=10)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    assert rec["legacy"]["chunks"] == 3 and rec["candidate"]["ok"]


def test_stream_options_are_checked_when_decorating(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, LIVE)

    async def coroutine(q: str) -> Any:
        return iter(CHUNKS)

    with pytest.raises(TypeError, match="coroutine function: stream="):
        wrap(s, coroutine, stream=True)
    with pytest.raises(ValueError, match="stream_error= only applies"):
        wrap(s, lambda q: "x", stream_error=lambda exc: exc)
    with pytest.raises(TypeError, match="stream_error= takes"):
        wrap(s, Legacy().sync, stream_error=lambda a, b: a)
    with pytest.raises(ValueError, match="stream must be"):
        wrap(s, lambda q: iter(CHUNKS), stream="yes")
    s.close()


# -- from a review: each of these failed before its fix -------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_site_returning_an_iterator_falls_back_to_it(
    sim: Simulator, tmp_path: Path, kind: str
) -> None:
    sim.set_profile(QUIET.with_knob(TASK, "error_rate", 1.0))
    s = make_shim(sim.url, tmp_path, CANARY)
    legacy = Legacy()
    if kind == "sync":
        site = wrap(s, lambda q: iter(CHUNKS), stream=True)
    else:
        site = wrap(s, lambda q: legacy.asynchronous(q).__aiter__(), stream="async")
    assert [p for p, _ in read(site)] == CHUNKS
    assert s.flush(timeout=10)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    assert rec["served_by"] == "legacy_fallback" and rec["legacy"]["chunks"] == 3


def test_past_max_serving_an_async_iterator_site_is_served_by_legacy(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, LIVE, limits=Limits(max_serving=1))
    legacy = Legacy()
    site = wrap(s, lambda q: legacy.asynchronous(q).__aiter__(), stream="async")

    async def run() -> tuple[str, list[str]]:
        held = site(PROMPT)
        first = await anext(held)  # holds the only place
        second = [chunk async for chunk in site(PROMPT)]
        await held.aclose()
        return first, second

    first, second = asyncio.run(run())
    assert isinstance(first, str) and second == CHUNKS
    s.close()


def test_a_task_stream_dropped_unread_gives_its_allocation_back(sim: Simulator) -> None:
    import gc

    with TaskClient(sim.url) as client:
        for _ in range(3):
            stream = client.open_stream("kiwi", "recipe_generation", TaskRequest(prompt=PROMPT))
            assert sim.stats()["allocations_active"] == 1
            del stream  # never read, never closed
            gc.collect()
            wait_for(lambda: sim.stats()["allocations_active"] == 0)
        half = client.open_stream("kiwi", "recipe_generation", TaskRequest(prompt=PROMPT))
        next(half)
        del half  # read in part: given back at once, not at the next cyclic collection
        wait_for(lambda: sim.stats()["allocations_active"] == 0)


def test_an_async_task_stream_dropped_unread_gives_its_allocation_back(sim: Simulator) -> None:
    import gc

    from shim import AsyncTaskClient

    async def run() -> None:
        async with AsyncTaskClient(sim.url) as client:
            stream = await client.open_stream(
                "kiwi", "recipe_generation", TaskRequest(prompt=PROMPT)
            )
            del stream
            gc.collect()
            for _ in range(100):
                if sim.stats()["allocations_active"] == 0:
                    return
                await asyncio.sleep(0.02)

    asyncio.run(run())
    assert sim.stats()["allocations_active"] == 0


def test_an_uncompared_stream_left_early_is_not_recorded_on_either_path(
    sim: Simulator, tmp_path: Path
) -> None:
    """Abandonment is recorded for compared calls only, whoever served them, so the
    report's counts per path stand on the same footing."""
    s = make_shim(sim.url, tmp_path, LIVE)
    read(wrap(s, Legacy().sync), leave_after=1)
    s.close()
    log = tmp_path / "log.jsonl"
    assert records(log, "shim.abandoned") == [] and dropped(log) == 0


def test_the_callers_time_is_not_the_task_paths_in_an_abandoned_record(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, CANARY)
    stream = wrap(s, Legacy().sync)(PROMPT)
    next(stream)
    time.sleep(0.3)  # the caller's own time
    stream.close()
    s.close()
    [left] = records(tmp_path / "log.jsonl", "shim.abandoned")
    assert left["latency_ms"] < 250, left


def test_an_empty_answer_falls_back_to_legacy(tmp_path: Path) -> None:
    """The node streams no text at all: as for any call site, an empty answer is a
    task-path failure (soft), and legacy serves before the caller saw anything."""
    import httpx

    def coordinator(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/inference/task":
            return httpx.Response(
                200, json={"url": "http://node.test", "allocation_id": "a", "service": "cf-text"}
            )
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.url.path.endswith("/v1/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return httpx.Response(200, content=b"data: [DONE]\n\n")

    http = httpx.Client(transport=httpx.MockTransport(coordinator))
    s = make_shim("http://orch.test", tmp_path, LIVE, http=http)
    got = [p for p, _ in read(wrap(s, Legacy().sync))]
    assert got == CHUNKS
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    assert rec["served_by"] == "legacy_fallback" and "SoftFailure" in rec["candidate"]["error"]


def test_a_stream_error_that_gives_no_exception_is_the_call_sites_error(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.set_profile(QUIET.with_knob(TASK, "stream_cut_rate", 1.0))
    s = make_shim(sim.url, tmp_path, LIVE)
    site = wrap(s, Legacy().sync, stream_error=lambda exc: "not an exception")
    with pytest.raises(StreamInterrupted):
        list(site(PROMPT))
    assert s.stats()["internal_errors"].get("call_site.stream_error") == 1
    s.close()


@pytest.mark.parametrize("stage", ["shadow", "fallback"])
def test_a_function_that_works_before_returning_its_stream_is_timed_from_the_call(
    sim: Simulator, tmp_path: Path, stage: str
) -> None:
    """An SDK-style call site does its request, then returns the stream: legacy's time
    to first chunk counts that work (it read 0.004 ms, and the TTFT gate rolled back)."""
    if stage == "fallback":
        sim.set_profile(QUIET.with_knob(TASK, "error_rate", 1.0))
    flag = CANARY if stage == "fallback" else f"{TASK}: {{serve: 0, shadow: 100}}\n"
    s = make_shim(sim.url, tmp_path, flag)

    def sdk_style(q: str) -> Iterator[str]:
        time.sleep(0.1)  # the request, before the stream comes back
        return iter(CHUNKS)

    assert [p for p, _ in read(wrap(s, sdk_style, stream=True))] == CHUNKS
    assert s.flush(timeout=10)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    assert rec["legacy"]["ttft_ms"] >= 100 and rec["legacy"]["latency_ms"] >= 100


def test_closing_the_shim_lets_an_open_served_stream_finish(sim: Simulator, tmp_path: Path) -> None:
    sim.set_profile(QUIET.with_knob(TASK, "chunk_interval_ms", 5))
    s = make_shim(sim.url, tmp_path, LIVE)
    stream = wrap(s, Legacy().sync)(PROMPT)
    first = [next(stream), next(stream)]
    s.close()  # a SIGTERM drain: the stream in the caller's hands reads on
    assert "".join(first + list(stream)) == task_text(sim)
    assert sim.stats()["allocations_active"] == 0


def test_closing_the_shim_on_its_loop_lets_an_open_served_stream_finish(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.set_profile(QUIET.with_knob(TASK, "chunk_interval_ms", 5))
    s = make_shim(sim.url, tmp_path, LIVE)
    site = wrap(s, Legacy().asynchronous)

    async def run() -> str:
        stream = site(PROMPT)
        got = [await anext(stream), await anext(stream)]
        await s.aclose()
        return "".join(got + [piece async for piece in stream])

    assert asyncio.run(run()) == task_text(sim)
    assert sim.stats()["allocations_active"] == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_served_stream_left_by_break_as_its_loop_ends_gives_its_allocation_back(
    sim: Simulator, tmp_path: Path
) -> None:
    """``break`` leaves the stream open; asyncio.run cancels its closing and closes
    what is left as the loop ends: the allocation is given back from a thread of its
    own. (asyncio still says that it closed half-closed generators: left for now.)"""
    sim.set_profile(QUIET.with_knob(TASK, "chunk_interval_ms", 5))
    s = make_shim(sim.url, tmp_path, LIVE)
    site = wrap(s, Legacy().asynchronous)

    async def run() -> str:
        async for piece in site(PROMPT):
            return str(piece)  # left open: closed by the loop's end
        return ""

    assert asyncio.run(run())
    wait_for(lambda: sim.stats()["allocations_active"] == 0)
    s.close()


def test_an_async_client_closed_before_its_stream_is_read_still_gives_it_back(
    sim: Simulator,
) -> None:
    from shim import AsyncTaskClient

    async def run() -> None:
        client = AsyncTaskClient(sim.url)
        stream = await client.open_stream("kiwi", "recipe_generation", TaskRequest(prompt=PROMPT))
        await client.aclose()  # closes after the stream
        assert "".join([p async for p in stream]) == task_text(sim)

    asyncio.run(run())
    assert sim.stats()["allocations_active"] == 0


def test_the_callers_time_between_pieces_is_not_the_task_paths(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, CANARY)
    started = time.perf_counter()
    pieces = 0
    for _piece in wrap(s, Legacy().sync)(PROMPT):
        pieces += 1
        time.sleep(0.03)  # the caller's own work on each piece
    wall_ms = (time.perf_counter() - started) * 1000
    assert s.flush(timeout=10)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    assert rec["candidate"]["latency_ms"] < wall_ms - 0.8 * pieces * 30, (rec, wall_ms)
