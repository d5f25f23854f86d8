"""What makes a shadowed call cheap in CPU, kept honest: JSON read fast but as the
standard library reads it, list items of one shape shaped once with the same result,
call ids from bulk random bytes still version-4 UUIDs and never repeated across a fork,
workers woken as the work needs them yet all of them for a backlog, and comparisons
handed to the recorder from any thread without a line lost or unaccounted at close."""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest

from shim import TaskRequest
from shim.base.jsonload import loads
from shim.comparators import JsonOutput, ModelNames, shape
from shim.core.dispatch import ThreadDispatcher
from shim.records.callid import new_call_id
from shim.records.observe import CallSite, Observation, Pending
from shim.records.recorder import Recorder
from shim.records.sinks import FileSink
from shim.records.values import capture
from shim.testing import TestShim

from .shimkit import log_rows, wait_for

# -- JSON -------------------------------------------------------------------------------

JSON_TEXTS = [
    '{"a": 1, "a": 2}',  # the last of duplicate keys wins
    "123456789012345678901234567890",  # stays an exact int
    "[NaN, Infinity, -Infinity, 1e400]",
    '"\\ud800"',  # a lone surrogate: pydantic-core refuses it, json reads it
    ' {"x": [1, 2.5, -0.0, true, null, "\\u00e9"]} ',
    "0.1",
    "1.7976931348623157e308",
    "5e-324",
    '"caf\\u00e9 \\n"',
    '"x\ud83d"',  # a str holding a lone surrogate: pydantic-core raises TypeError
]


@pytest.mark.parametrize("text", JSON_TEXTS)
def test_json_is_read_as_the_standard_library_reads_it(text: str) -> None:
    expected, got = json.loads(text), loads(text)
    assert repr(got) == repr(expected)  # nan == nan is False; repr tells them alike
    raw = text.encode("utf-8", "surrogatepass")
    if raw.decode("utf-8", "replace") == text:  # what a reply's bytes can hold
        assert repr(loads(raw)) == repr(json.loads(raw))


@pytest.mark.parametrize("text", ["[1,]", '{"a": 1} x', "", '"\x01"', b"\xff"])
def test_bad_json_raises_what_json_loads_raises(text: str | bytes) -> None:
    errors = []
    for read in (loads, json.loads):
        try:
            read(text)
        except ValueError as exc:
            errors.append(exc)
    ours, theirs = errors  # both raised
    assert type(ours) is type(theirs) and str(ours) == str(theirs)


def test_random_floats_read_exactly() -> None:
    rng = random.Random(3)
    for _ in range(20_000):
        x = rng.random() * 10 ** rng.randint(-300, 300)
        assert loads(repr(x)) == x


# -- shapes -----------------------------------------------------------------------------


def _reference_shape(value: Any) -> Any:
    """Every list item shaped and merged in turn, as documented: what shape() must
    equal however it gets there."""
    names = {str: "str", bool: "bool", int: "number", float: "number", type(None): "null"}
    if isinstance(value, dict):
        return {str(k): _reference_shape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        merged: Any = "empty"
        for item in value:
            item_shape = _reference_shape(item)
            if item_shape != merged:
                merged = _reference_merge(merged, item_shape)
        return ["list", merged]
    return names.get(type(value), type(value).__name__)


def _reference_merge(a: Any, b: Any) -> Any:
    if a == "empty" or a == b:
        return b if a == "empty" else a
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _reference_merge(a.get(k, "empty"), b.get(k, "empty")) for k in {**a, **b}}
    if isinstance(a, list) and isinstance(b, list):
        return ["list", _reference_merge(a[1], b[1])]
    if "null" in (a, b):
        return a if b == "null" else b

    def label(s: Any) -> str:
        return "object" if isinstance(s, dict) else "list" if isinstance(s, list) else str(s)

    return f"{label(a)}|{label(b)}"


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        return rng.choice([1, 2.5, "x", None, True, False, 7])
    if roll < 0.7:
        keys = rng.sample("abcde", rng.randint(0, 4))
        return {k: _random_value(rng, depth + 1) for k in keys}
    base = {k: rng.choice([1, "x", None, 2.0, True]) for k in rng.sample("abcde", 3)}
    return [
        dict(base)
        if rng.random() < 0.5
        else {**base, "a": rng.choice([None, "y", 3])}
        if rng.random() < 0.5
        else _random_value(rng, depth + 1)
        for _ in range(rng.randint(0, 8))
    ]


def test_shapes_of_lists_are_those_of_merging_every_item() -> None:
    rng = random.Random(11)
    for _ in range(30_000):
        value = _random_value(rng)
        assert shape(value) == _reference_shape(value), value


def test_items_alike_after_a_conflict_keep_the_merge_as_it_was() -> None:
    # The skip must not apply once the merge holds a conflict an item does not.
    value = [{"a": 1}, {"a": "x"}, {"a": "x"}, {"a": 1}]
    assert shape(value) == _reference_shape(value)


def test_keys_equal_but_of_other_types_are_not_taken_as_alike() -> None:
    value = [{1: "x"}, {True: "x"}, {1.0: "x"}]  # 1 == True == 1.0, as dict keys too
    assert shape(value) == _reference_shape(value)


# -- call ids ---------------------------------------------------------------------------


def test_call_ids_are_random_version_4_uuids() -> None:
    ids = [new_call_id() for _ in range(5_000)]
    assert len(set(ids)) == len(ids)
    for call_id in ids[:300]:
        parsed = uuid.UUID(call_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert parsed.hex == call_id


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_never_repeats_its_parents_call_ids() -> None:
    new_call_id()  # the parent holds unread random bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, " ".join(new_call_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_call_id() for _ in range(50)}
    assert len(child) == 50 and not child & parent


# -- workers woken as the work needs them -----------------------------------------------


def test_a_backlog_of_slow_jobs_wakes_every_worker() -> None:
    gate = threading.Event()
    running: set[int] = set()
    lock = threading.Lock()

    def slow() -> None:
        with lock:
            running.add(threading.get_ident())
        gate.wait(5)

    dispatch = ThreadDispatcher(workers=4, capacity=16, on_error=lambda *a: None)
    try:
        for _ in range(8):
            assert dispatch.try_reserve()
            dispatch.submit("p.t", slow)
        wait_for(lambda: len(running) == 4)  # one per poll for what waits
    finally:
        gate.set()
    wait_for(lambda: dispatch.pending == 0)
    assert dispatch.close(1) == Counter()


def test_fast_jobs_in_a_burst_all_run_and_free_their_slots() -> None:
    done: list[int] = []
    dispatch = ThreadDispatcher(workers=4, capacity=500, on_error=lambda *a: None)
    for i in range(400):
        assert dispatch.try_reserve()
        dispatch.submit("p.t", done.append, i)
    wait_for(lambda: dispatch.pending == 0)
    assert sorted(done) == list(range(400))
    assert dispatch.close(1) == Counter()


class _WaitsForTheFirstJob:
    """An app object whose copy (made by the pump, off the caller's thread) waits until
    the job queued before it has run."""

    ran = threading.Event()
    waited: ClassVar[list[bool]] = []

    def __reduce__(self) -> tuple[Any, ...]:
        _WaitsForTheFirstJob.waited.append(_WaitsForTheFirstJob.ran.wait(5))
        return (_WaitsForTheFirstJob, ())


def test_a_worker_starts_before_the_pump_has_weighed_every_job() -> None:
    _WaitsForTheFirstJob.ran.clear()
    _WaitsForTheFirstJob.waited.clear()
    dispatch = ThreadDispatcher(workers=2, capacity=4, on_error=lambda *a: None)
    for _ in range(2):
        assert dispatch.try_reserve()
    dispatch.submit("p.t", _WaitsForTheFirstJob.ran.set)
    dispatch.submit("p.t", lambda value: None, capture([_WaitsForTheFirstJob()]))
    wait_for(lambda: dispatch.pending == 0, timeout=10)
    assert _WaitsForTheFirstJob.waited == [True]  # the first job ran while it waited
    assert dispatch.close(1) == Counter()


def test_jobs_queued_at_close_are_counted_and_never_run() -> None:
    gate = threading.Event()
    started: list[int] = []

    def job(i: int) -> None:
        started.append(i)
        gate.wait(5)

    dispatch = ThreadDispatcher(workers=1, capacity=8, on_error=lambda *a: None)
    for i in range(3):
        assert dispatch.try_reserve()
        dispatch.submit("p.t", job, i)
    wait_for(lambda: started == [0])
    try:
        unfinished = dispatch.close(0.05)
    finally:
        gate.set()
    assert unfinished == Counter({"p.t": 3})  # one running, two queued
    wait_for(lambda: dispatch.pending == 0)
    assert started == [0]


# -- records made on the worker ---------------------------------------------------------


def _site() -> CallSite:
    return CallSite(
        "kiwi",
        "meal_plan",
        "kiwi.meal_plan",
        "app:plan",
        lambda: None,
        lambda r: r,
        None,
        JsonOutput(),
        None,
        True,
        None,
    )


def _pending(i: int) -> Pending:
    text = json.dumps([{"day": i, "suggestion": "soup"}])
    return Pending(
        _site(), "shadow", "legacy", Observation(True, 2.0, text), Observation(True, 1.0, text)
    )


def _recorder(path: Path, **options: Any) -> Recorder:
    errors: list[Any] = []
    return Recorder(
        FileSink(path), names=ModelNames(), on_error=lambda *a: errors.append(a), **options
    )


def test_comparisons_handed_over_by_workers_are_all_written(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path / "log.jsonl")

    def worker(k: int) -> None:
        for i in range(100):
            recorder.comparison(_pending(k * 100 + i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert recorder.close(5)
    rows, bad = log_rows((tmp_path / "log.jsonl").read_text())
    assert bad == 0 and len(rows) == 400
    assert len({r["call_id"] for r in rows}) == 400
    assert all(r["structure"]["match"] is True for r in rows)


def test_a_comparison_handed_over_is_written_without_waiting_for_a_flush(
    tmp_path: Path,
) -> None:
    recorder = _recorder(tmp_path / "log.jsonl", flush_interval=60)
    try:
        recorder.comparison(_pending(1))
        wait_for(lambda: recorder.written == 1)  # woken for it, not at the next interval
        assert recorder.unwritten == 0  # a healthy sink holds nothing back
        recorder.comparison(_pending(2))
        wait_for(lambda: recorder.written == 2)
    finally:
        assert recorder.close(5)


def test_a_full_recorder_counts_what_the_workers_could_not_hand_over(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path / "log.jsonl", capacity=5, flush_interval=60)
    recorder.flush(5)  # the thread is waiting: nothing written until asked
    for i in range(8):
        recorder.comparison(_pending(i))
    assert recorder.close(5)
    rows, _ = log_rows((tmp_path / "log.jsonl").read_text())
    compared = [r for r in rows if r["event"] == "shim.comparison"]
    dropped = [r for r in rows if r["event"] == "shim.dropped"]
    assert len(compared) + sum(r["count"] for r in dropped) == 8
    assert {r["reason"] for r in dropped} <= {"recorder_full"}


def test_a_record_made_after_close_is_counted_never_silently_lost(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path / "log.jsonl")
    recorder.comparison(_pending(1))
    assert recorder.close(5)
    recorder.comparison(_pending(2))  # a worker that finished late
    assert recorder.lost == 1
    rows, _ = log_rows((tmp_path / "log.jsonl").read_text())
    assert [r["event"] for r in rows] == ["shim.comparison"]


def test_shadowed_and_served_calls_are_all_recorded() -> None:
    flags = {"kiwi.meal_plan": {"shadow": 100, "serve": 50}}
    with TestShim(flags, answer=lambda request: "[1, 2]") as s:

        @s.shadow(product="kiwi", task="meal_plan", request=lambda q: TaskRequest(prompt=q))
        def plan(q: str) -> str:
            return "[3, 4]"

        for i in range(40):
            assert plan(f"p{i}") in ("[3, 4]", "[1, 2]")
        rows = s.comparisons
        assert len(rows) == 40
    assert {r["served_by"] for r in rows} == {"legacy", "task"}
    assert all(r["structure"]["match"] is True for r in rows)
