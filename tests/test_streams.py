"""Streaming call sites (generators and async generators) at off and shadow, against
the simulator: the caller iterates legacy's own chunks, the stream is compared once it
ends, and a stream left early or never read holds nothing."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shim import BreakerPolicy, Shim, TaskRequest
from shim.comparators import TextOutput

from .conftest import QUIET, Simulator
from .shimkit import dropped, make_shim, records

OFF = "kiwi.recipe_generation: {serve: 0, shadow: 0}\n"
SHADOW = "kiwi.recipe_generation: {serve: 0, shadow: 100}\n"
CANARY = "kiwi.recipe_generation: {serve: 100, shadow: 100}\n"

#: Legacy's chunks: objects of their own, so that identity can be checked.
CHUNKS = ["Title: soup\n", "Ingredients:\n- water\n", "Directions:\n1. boil\n"]


def wrap(s: Shim, fn: Any, **options: Any) -> Any:
    return s.shadow(
        product="kiwi",
        task="recipe_generation",
        request=lambda q: TaskRequest(prompt=q),
        response=lambda r: r.text,
        output=TextOutput(),
        **options,
    )(fn)


def stream_site(s: Shim, chunks: list[Any]) -> Any:
    @wrap_with(s)
    def recipe(q: str) -> Iterator[Any]:
        yield from chunks

    return recipe


def wrap_with(s: Shim) -> Any:
    return lambda fn: wrap(s, fn)


def settled(s: Shim) -> None:
    assert s.flush(timeout=10)


def test_off_hands_back_legacys_own_generator(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, OFF)

    def recipe(q: str) -> Iterator[str]:
        yield from CHUNKS

    got = wrap(s, recipe)("soup")
    assert inspect.isgenerator(got) and got.gi_code is recipe.__code__
    assert list(got) == CHUNKS
    s.close()
    assert records(tmp_path / "log.jsonl") == []


def test_a_sync_stream_relays_legacys_chunks_then_is_compared(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)
    site = stream_site(s, CHUNKS)
    got = list(site("soup"))
    assert len(got) == 3 and all(a is b for a, b in zip(got, CHUNKS, strict=True))
    settled(s)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    legacy = rec["legacy"]
    assert legacy["ok"] and legacy["chunks"] == 3 and legacy["ttft_ms"] >= 0
    assert legacy["latency_ms"] >= legacy["ttft_ms"]
    assert legacy["output_bytes"] == len("".join(CHUNKS).encode())
    candidate = rec["candidate"]  # streamed from the node the coordinator allocated
    assert candidate["ok"] and candidate["chunks"] > 3, candidate
    assert 0 < candidate["ttft_ms"] <= candidate["latency_ms"]
    assert rec["served_by"] == "legacy"


def test_an_async_stream_relays_legacys_chunks_then_is_compared(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)

    @wrap_with(s)
    async def recipe(q: str) -> AsyncIterator[str]:
        for chunk in CHUNKS:
            await asyncio.sleep(0)
            yield chunk

    async def read() -> list[str]:
        return [chunk async for chunk in recipe("soup")]

    got = asyncio.run(read())
    assert all(a is b for a, b in zip(got, CHUNKS, strict=True))
    settled(s)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    assert rec["legacy"]["chunks"] == 3 and rec["legacy"]["ok"]


def test_legacys_error_mid_stream_reaches_the_caller_as_is(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)
    boom = ValueError("the oven broke")

    @wrap_with(s)
    def recipe(q: str) -> Iterator[str]:
        yield CHUNKS[0]
        raise boom

    stream = recipe("soup")
    assert next(stream) is CHUNKS[0]
    with pytest.raises(ValueError, match="the oven broke") as caught:
        next(stream)
    assert caught.value is boom
    settled(s)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    assert rec["legacy"]["ok"] is False and "the oven broke" in rec["legacy"]["error"]
    assert rec["legacy"]["chunks"] == 1


def test_send_throw_and_a_return_value_behave_as_unwrapped(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)

    def echo(q: str) -> Any:
        got = yield "ready"
        while got != "stop":
            try:
                got = yield f"heard {got}"
            except KeyError:
                got = yield "caught"
        return "finished"

    def drive(gen: Any) -> list[Any]:
        out = [next(gen), gen.send("a"), gen.throw(KeyError("k")), gen.send("b")]
        with pytest.raises(StopIteration) as stop:
            gen.send("stop")
        return [*out, stop.value.value]

    assert drive(wrap(s, echo)("q")) == drive(echo("q"))
    s.close()


def closing_site(s: Shim, chunks: list[Any]) -> tuple[Any, list[bool]]:
    """A wrapped generator of ``chunks``, and the list it appends to as it closes."""
    closed: list[bool] = []

    @wrap_with(s)
    def recipe(q: str) -> Iterator[Any]:
        try:
            yield from chunks
        finally:
            closed.append(True)

    return recipe, closed


def test_a_stream_left_early_is_counted_and_holds_nothing(sim: Simulator, tmp_path: Path) -> None:
    import threading

    before = set(threading.enumerate())
    s = make_shim(sim.url, tmp_path, SHADOW)
    recipe, closed = closing_site(s, CHUNKS)

    for _chunk in recipe("soup"):
        break  # the relay is dropped here: legacy's generator is closed with it
    assert closed == [True]
    never_read = recipe("soup")
    del never_read
    gc.collect()
    settled(s)
    assert s.stats()["pending"] == 0
    s.close()
    assert records(tmp_path / "log.jsonl") == []
    assert dropped(tmp_path / "log.jsonl", "abandoned") == 1
    [left_early] = records(tmp_path / "log.jsonl", "shim.abandoned")  # with what was seen
    assert (left_early["served_by"], left_early["stage"], left_early["chunks"]) == (
        "legacy",
        "shadow",
        1,
    )
    assert left_early["call_site"].endswith(":" + recipe.__wrapped__.__qualname__)
    assert 0 <= left_early["ttft_ms"] <= left_early["latency_ms"]
    assert sim.stats()["allocations_active"] == 0, "no task-path stream was left open"
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not left, f"threads left behind: {left}"


def test_arguments_that_do_not_fit_raise_at_the_call(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)
    site = stream_site(s, CHUNKS)
    with pytest.raises(TypeError):
        site("soup", "one too many")
    s.close()


def test_a_generator_is_never_an_allocation(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)

    def stream(q: str) -> Iterator[str]:
        yield q

    with pytest.raises(TypeError, match=r"is a generator function, compared as a stream"):
        s.shadow(product="kiwi", task="recipe_generation", allocation=True)(stream)
    s.close()


def test_an_async_stream_left_early_is_counted(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)
    closed = []

    @wrap_with(s)
    async def recipe(q: str) -> AsyncIterator[str]:
        try:
            for chunk in CHUNKS:
                yield chunk
        finally:
            closed.append(True)

    async def first() -> str:
        stream = recipe("soup")
        async for chunk in stream:
            await stream.aclose()  # type: ignore[attr-defined]
            return str(chunk)
        raise AssertionError("no chunk")

    assert asyncio.run(first()) is CHUNKS[0]
    assert closed == [True]
    settled(s)
    s.close()
    assert records(tmp_path / "log.jsonl") == []
    assert dropped(tmp_path / "log.jsonl", "abandoned") == 1


def test_the_report_still_reads_streams_legacy_served_from_older_logs(tmp_path: Path) -> None:
    """Before the task path served streams, a serving decision on a stream was counted
    as dropped (``stream``): such logs still read as held, not as drops."""
    import json

    from shim.analysis.report import build_report
    from shim.analysis.report_verdict import held_line

    log = tmp_path / "old.jsonl"
    drop = {
        "event": "shim.dropped",
        "schema": 1,
        "ts": "2026-12-01T10:00:00.000Z",
        "product": "kiwi",
        "task": "recipe_generation",
    }
    lines = [drop | {"reason": "stream", "count": 4}, drop | {"reason": "abandoned", "count": 1}]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    [task] = build_report([str(log)])["tasks"]
    assert task["stream_held"] == 4 and task["dropped_by_reason"] == {"abandoned": 1}
    assert held_line(task) == (
        "kiwi.recipe_generation: 4 calls the flags sent to the task path were served by "
        "legacy (a streaming call site)"
    )


@pytest.mark.parametrize(("planted_ms", "verdict"), [(0, "PROMOTE"), (150, "ROLLBACK")])
def test_a_planted_ttft_regression_is_rolled_back_by_the_ttft_gate(
    sim: Simulator, tmp_path: Path, planted_ms: int, verdict: str
) -> None:
    """Legacy's stream starts after 20 ms; the task path's after the simulator's
    latency plus ``planted_ms``: the p95 ratio of the times to first chunk decides."""
    import time

    from shim.analysis.policy import Gates, Policy
    from shim.analysis.report import build_report
    from shim.sim import Profile

    quiet = Profile(seed=1).with_knob("defaults", "latency_ms", 1)
    sim.set_profile(
        quiet.with_knob("defaults", "latency_p99_ms", 2).with_knob(
            "kiwi.recipe_generation", "ttft_ms", planted_ms
        )
    )
    s = make_shim(sim.url, tmp_path, SHADOW)

    @wrap_with(s)
    def recipe(q: str) -> Iterator[str]:
        time.sleep(0.02)
        yield from CHUNKS

    for i in range(40):
        assert list(recipe(f"soup {i}")) == CHUNKS
    settled(s)
    s.close()
    gates = Gates(min_pairs=30, min_soak=0, max_error_increase=1.0, max_mismatch=1.0)
    relaxed = gates.model_copy(
        update={f"max_latency_ratio_{q}": 1e9 for q in ("p50", "p95", "p99")}
    )
    [task] = build_report([str(tmp_path / "log.jsonl")], policy=Policy(defaults=relaxed))["tasks"]
    assert task["ttft"]["n"] == 40
    assert task["verdict"] == verdict, task["reasons"]
    line = next(r for r in task["reasons"] if r.startswith("time to first chunk"))
    assert ("beyond the interval" in line) == (verdict == "ROLLBACK"), line


def test_a_stream_longer_than_the_cap_is_relayed_whole_but_not_kept(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shim.core import relay

    monkeypatch.setattr(relay, "MAX_STREAM_BYTES", 100)
    s = make_shim(sim.url, tmp_path, SHADOW)
    big = [f"{i:>10}" for i in range(30)]  # 300 characters
    site = stream_site(s, big)
    got = list(site("soup"))
    assert len(got) == 30 and all(a is b for a, b in zip(got, big, strict=True))
    settled(s)
    assert s.stats()["pending"] == 0
    s.close()
    assert records(tmp_path / "log.jsonl") == []
    assert dropped(tmp_path / "log.jsonl", "stream_too_large") == 1


ASYNC_SHADOW_UNDRAWN = "kiwi.recipe_generation: {serve: 0, shadow: 1}\n"
TASK = "kiwi.recipe_generation"


def test_an_async_stream_not_compared_still_forwards_asend_athrow_and_aclose(
    sim: Simulator, tmp_path: Path
) -> None:
    """Served by legacy without a comparison (a caller the shadow share does not
    draw), the relay still hands on what is sent and thrown in, and closes legacy's
    stream."""
    from shim import flags

    s = make_shim(sim.url, tmp_path, ASYNC_SHADOW_UNDRAWN)
    source = flags.FileFlags(tmp_path / "flags.yaml")
    q = next(f"q{i}" for i in range(100) if not source.decide(TASK, f"q{i}").compare)
    source.close()

    def echo_factory(log: list[str]) -> Any:
        async def echo(q: str) -> AsyncIterator[str]:
            try:
                got = yield "ready"
                while True:
                    try:
                        got = yield f"heard {got}"
                    except KeyError:
                        got = yield "caught"
            finally:
                log.append("closed")

        return echo

    async def drive(gen: Any) -> list[Any]:
        out = [await gen.asend(None), await gen.asend("a"), await gen.athrow(KeyError("k"))]
        await gen.aclose()
        return out

    plain_log: list[str] = []
    wrapped_log: list[str] = []
    plain = asyncio.run(drive(echo_factory(plain_log)(q)))
    wrapper = s.shadow(
        product="kiwi",
        task="recipe_generation",
        request=lambda q: TaskRequest(prompt=q),
        key=lambda q: q,
    )
    wrapped = asyncio.run(drive(wrapper(echo_factory(wrapped_log))(q)))
    assert wrapped == plain == ["ready", "heard a", "caught"]
    assert wrapped_log == plain_log == ["closed"], "closed at aclose(), not at collection"
    s.close()
    assert records(tmp_path / "log.jsonl") == []


def test_legacys_time_leaves_out_the_callers_and_empty_chunks_start_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    import time

    s = make_shim(sim.url, tmp_path, SHADOW)

    @wrap_with(s)
    def recipe(q: str) -> Iterator[str]:
        yield ""  # an empty first chunk is no start
        time.sleep(0.05)
        yield from CHUNKS

    for _chunk in recipe("soup"):
        time.sleep(0.1)  # the caller's own work between chunks
    settled(s)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    legacy = rec["legacy"]
    assert 50 <= legacy["ttft_ms"] < 100 and legacy["latency_ms"] < 150, legacy
    assert legacy["chunks"] == 4


def test_an_exception_the_caller_throws_in_or_a_failing_close_is_abandonment(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)

    @wrap_with(s)
    def recipe(q: str) -> Iterator[str]:
        yield from CHUNKS

    @wrap_with(s)
    def stubborn(q: str) -> Iterator[str]:
        closes = 0
        while True:
            try:
                yield "again"
            except GeneratorExit:
                closes += 1  # yields again on the first close: Python raises RuntimeError
                if closes > 1:
                    return

    thrown = ValueError("the caller's own")
    stream = recipe("soup")
    next(stream)
    with pytest.raises(ValueError, match="the caller's own") as caught:
        stream.throw(thrown)
    assert caught.value is thrown
    stubborn_stream = stubborn("q")
    next(stubborn_stream)
    with pytest.raises(RuntimeError, match="ignored GeneratorExit"):
        stubborn_stream.close()
    settled(s)
    s.close()
    assert records(tmp_path / "log.jsonl") == []
    assert dropped(tmp_path / "log.jsonl", "abandoned") == 2


def test_a_buffer_legacy_fills_again_is_kept_as_it_was(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)

    @wrap_with(s)
    def frames(q: str) -> Iterator[bytearray]:
        buffer = bytearray()
        for word in (b"one ", b"two ", b"three"):
            buffer[:] = word
            yield buffer

    seen = [(b, bytes(b)) for b in frames("q")]
    assert [copy for _, copy in seen] == [b"one ", b"two ", b"three"]
    assert seen[0][0] is seen[2][0], "the caller gets legacy's one buffer"
    settled(s)
    s.close()
    [rec] = records(tmp_path / "log.jsonl")
    assert rec["legacy"]["output_bytes"] == len(b"one two three")


def test_a_stream_left_open_past_close_is_said_as_such(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)
    stream = stream_site(s, CHUNKS)("soup")
    next(stream)
    s.close()
    with caplog.at_level("WARNING", logger="shim"):
        del stream
        gc.collect()
    assert s.stats()["records_lost"] == 2  # its drop count and its shim.abandoned record
    assert "a stream was still open when the Shim closed" in caplog.text, caplog.text


def test_a_stream_the_draw_leaves_uncompared_is_legacys_own_generator(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.recipe_generation: {serve: 0, shadow: 50}\n")

    def recipe(q: str) -> Iterator[str]:
        yield from CHUNKS

    site = wrap(s, recipe, key=lambda q: q)  # the draw follows q
    streams = [site(f"soup {i}") for i in range(20)]
    own = [st for st in streams if st.gi_code is recipe.__code__]  # legacy's, unwrapped
    assert 0 < len(own) < len(streams)
    for st in streams:
        assert all(a is b for a, b in zip(st, CHUNKS, strict=True))
    settled(s)
    s.close()
    assert len(records(tmp_path / "log.jsonl")) == len(streams) - len(own)


def test_a_stream_functions_iterator_is_one_kind_of_stream_at_shadow(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.recipe_generation: {serve: 0, shadow: 50}\n")
    site = wrap(s, lambda q: list(CHUNKS), key=lambda q: q, stream=True)
    streams = [site(f"soup {i}") for i in range(20)]
    kinds = {type(st).__name__ for st in streams}
    for st in streams:
        assert list(st) == CHUNKS
    settled(s)
    s.close()
    assert kinds == {"generator"}, "compared or not, the caller sees one kind of stream"
    assert 0 < len(records(tmp_path / "log.jsonl")) < 20


def test_arguments_are_kept_at_the_call_before_a_stream_function_runs(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)
    built: list[list[str]] = []

    def request(parts: list[str]) -> TaskRequest:
        built.append(list(parts))
        return TaskRequest(prompt=" ".join(parts))

    @s.shadow(
        product="kiwi",
        task="recipe_generation",
        request=request,
        response=lambda r: r.text,
        output=TextOutput(),
        stream=True,
    )
    def recipe(parts: list[str]) -> Iterator[str]:
        parts.append("(and a system prompt legacy adds)")  # legacy changes the caller's list
        return iter(CHUNKS)

    assert list(recipe(["soup"])) == CHUNKS
    settled(s)
    s.close()
    assert built == [["soup"]]


def test_the_admission_refusing_at_a_streams_end_is_the_drop_reason(
    sim: Simulator, tmp_path: Path
) -> None:
    """The admission is asked once a compared stream has ended: an open breaker, not
    the caller, is why a stream left early while it was open is not compared."""
    task = "kiwi.recipe_generation"
    sim.set_profile(QUIET.with_knob(task, "error_rate", 1.0).with_knob(task, "error_status", 500))
    s = make_shim(
        sim.url, tmp_path, SHADOW, breaker=BreakerPolicy(failures=1, min_calls=1, cooldown=60)
    )
    try:
        site = stream_site(s, CHUNKS)
        assert list(site("soup")) == CHUNKS  # compared: the task path fails, the breaker opens
        settled(s)
        assert s.breaker_state("kiwi.recipe_generation") == "open"
        for _chunk in site("soup"):
            break  # left early, the breaker open
        assert list(site("soup")) == CHUNKS  # ended, the breaker open
        settled(s)
    finally:
        sim.set_profile(QUIET)
        s.close()
    log = tmp_path / "log.jsonl"
    assert len(records(log)) == 1
    assert dropped(log, "breaker_open") == 2
    assert dropped(log, "abandoned") == 0


class Unweighable:
    """A chunk of the app's that neither bool() nor sys.getsizeof() can take (as a
    numpy array refuses bool())."""

    def __bool__(self) -> bool:
        raise ValueError("the truth value of an array is ambiguous")

    def __sizeof__(self) -> int:
        raise RuntimeError("cannot be weighed")


def test_a_chunk_the_relay_cannot_note_is_the_shims_error_not_the_callers(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)
    chunks = [Unweighable(), Unweighable()]
    frames, closed = closing_site(s, chunks)

    assert all(a is b for a, b in zip(frames("scan"), chunks, strict=True))
    stream = frames("scan")
    assert next(stream) is chunks[0]
    stream.close()  # the caller leaves once the relay has failed to note a chunk
    assert closed == [True, True]
    settled(s)
    errors = s.stats()["internal_errors"]
    s.close()
    assert errors == {"relay": 2}
    assert records(tmp_path / "log.jsonl") == []


def test_the_report_shows_a_time_to_first_chunk_under_a_millisecond() -> None:
    from shim.analysis.report_ttft import ttft_text

    quantiles = {"p50": 0.0091, "p95": 0.012}
    task = {
        "ttft": {
            "legacy_ms": quantiles,
            "candidate_ms": {"p50": 45.2, "p95": 1234.5},
            "ratio": {},
            "n": 5,
        }
    }
    assert ttft_text(task) == (
        "p50 0.0091 / 45 ms, p95 0.012 / 1,234 ms (legacy / task path) over 5 streams"
    )
