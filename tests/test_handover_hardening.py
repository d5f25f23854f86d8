"""Handing a compared call over to the workers: the app's classes hashed on no caller's
thread, its objects copied before the job waits in the queue and weighed with it, jobs
in flight at close counted, and a second close waiting for the first."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from typing import Any

from shim import Limits, TaskFailed, TaskRequest
from shim.core.callsite import kept_arguments
from shim.core.dispatch import ThreadDispatcher
from shim.records.values import capture, digest, restore, settle, size_of
from shim.testing import TestShim

from .shimkit import wait_for

SHADOW = {"kiwi.meal_plan": {"shadow": 100}}


class _HashRaises(type):
    """A metaclass whose ``__hash__`` is the app's code: it must never run on the caller's
    thread (hashing the class, as a set lookup of its type does, would run it)."""

    def __hash__(cls) -> int:
        raise RuntimeError("the metaclass's hash ran")


class _Out(metaclass=_HashRaises):
    pass


# -- 1. no hashing of the app's classes on the caller's thread ---------------------


def test_capture_never_hashes_the_class_of_a_value() -> None:
    for value in (_Out(), (_Out(), 1), frozenset({_Out()}), [_Out()]):
        assert capture(value) is not value  # kept aside for a worker to copy; no raise
    assert capture(frozenset({1, "a"})) == frozenset({1, "a"})


def test_kept_arguments_never_hash_the_class_of_an_argument() -> None:
    assert kept_arguments((_Out(),), {"x": _Out()}) is None


def test_a_fallback_whose_legacy_value_cannot_be_hashed_answers_the_caller() -> None:
    def refuse(request: TaskRequest) -> str:
        raise TaskFailed("down", product="kiwi", task="meal_plan", status=500)

    out = _Out()
    with TestShim({"kiwi.meal_plan": {"serve": 100}}, answer=refuse) as s:
        plan = s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="x"))(
            lambda: out
        )
        assert plan() is out


def test_a_frozenset_of_the_apps_objects_is_copied_not_shared() -> None:
    @dataclasses.dataclass(frozen=True)
    class Box:
        items: list[int]

        def __hash__(self) -> int:
            return 1

    box = Box([1])
    kept = settle(capture(frozenset({box})))  # as the pump does, once it has the job
    box.items.append(2)
    [restored] = restore(kept)
    assert restored.items == [1]


# -- 2. the app's objects copied before the job waits behind others --------------------

_copied = threading.Event()


class _Answer:
    """An output of the app's class, noting when it is copied."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __reduce__(self) -> tuple[Any, ...]:
        _copied.set()
        return (_Answer, (self.label,))

    def __repr__(self) -> str:
        return f"_Answer({self.label!r})"


def test_an_output_changed_after_the_call_is_recorded_as_returned_while_workers_are_busy() -> None:
    gate = threading.Event()

    def answer(request: TaskRequest) -> str:
        if request.prompt == "first":
            gate.wait(5)  # the one worker is busy with the task path
        return "soup"

    _copied.clear()
    with TestShim(SHADOW, answer=answer, limits=Limits(workers=1)) as s:
        wrapped = s.shadow(
            product="kiwi", task="meal_plan", request=lambda p, out: TaskRequest(prompt=p)
        )(lambda p, out: out)
        wrapped("first", "plain")
        out = _Answer("spam")
        assert wrapped("second", out) is out
        copied = _copied.wait(1.0)  # the pump copies it, though the worker is busy
        out.label = "ham"  # the app post-processes its result
        gate.set()
        rows = s.comparisons
    assert copied
    [second] = [r for r in rows if r["legacy"]["output_sha256"] != digest("plain")[0]]
    assert second["legacy"]["output_sha256"] == digest(_Answer("spam"))[0]


# -- 3. the byte bound weighs the copies of the app's objects --------------------------


@dataclasses.dataclass
class _Blob:
    data: bytes


def test_a_settled_copy_weighs_its_copied_objects() -> None:
    kept = settle(capture([_Blob(b"x" * 1_000_000)]))
    assert size_of(kept) > 1_000_000


def test_the_workers_queue_counts_the_copies_of_the_apps_objects() -> None:
    gate = threading.Event()
    dispatch = ThreadDispatcher(workers=1, capacity=4, on_error=lambda *a: None)
    try:
        assert dispatch.try_reserve()
        dispatch.submit("p.t", lambda value: gate.wait(5), capture([_Blob(b"x" * 1_000_000)]))
        wait_for(lambda: dispatch.queued_bytes > 0)
        assert dispatch.queued_bytes > 1_000_000
    finally:
        gate.set()
        dispatch.close(2)


# -- 4. comparisons in flight at close ------------------------------------------------


def test_a_comparison_handed_over_after_close_is_counted_not_stranded() -> None:
    dropped: list[tuple[str, str, str]] = []
    ran: list[int] = []
    dispatch = ThreadDispatcher(
        workers=1,
        capacity=4,
        on_error=lambda *a: None,
        on_dropped=lambda *a: dropped.append(a),
    )
    assert dispatch.try_reserve()
    dispatch.submit("p.t", ran.append, 1)
    wait_for(lambda: ran == [1] and dispatch.pending == 0)
    assert dispatch.try_reserve()  # a compared call whose legacy is still running
    assert dispatch.close(0.05) == Counter()
    dispatch.submit("p.t", ran.append, 2)  # legacy returns after close
    assert dispatch.pending == 0
    assert dropped == [("p", "t", "shutdown")]
    assert ran == [1]


class _SlowCopy:
    """An object whose copy takes as long as the test says (``release``)."""

    started = threading.Event()
    release = threading.Event()

    def __reduce__(self) -> tuple[Any, ...]:
        _SlowCopy.started.set()
        _SlowCopy.release.wait(5)
        return (_SlowCopy, ())


def test_a_job_the_pump_holds_at_close_is_counted() -> None:
    _SlowCopy.started.clear()
    _SlowCopy.release.clear()
    ran: list[Any] = []
    dispatch = ThreadDispatcher(workers=1, capacity=4, on_error=lambda *a: None)
    assert dispatch.try_reserve()
    dispatch.submit("p.t", ran.append, capture([_SlowCopy()]))
    try:
        assert _SlowCopy.started.wait(2), "the pump copies the job's objects"
        assert dispatch.close(0.05) == Counter({"p.t": 1})
    finally:
        _SlowCopy.release.set()
    wait_for(lambda: dispatch.pending == 0)
    assert ran == []


# -- 5. a second close waits for the first ---------------------------------------------


def _closing_while_a_comparison_waits(gate: threading.Event) -> tuple[TestShim, threading.Thread]:
    """A Shim whose one comparison waits for ``gate``, being closed on a thread."""

    def answer(request: TaskRequest) -> str:
        gate.wait(5)
        return "soup"

    s = TestShim(SHADOW, answer=answer)
    wrapped = s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="x"))(
        lambda: "legacy"
    )
    wrapped()
    first = threading.Thread(target=s.close, kwargs={"timeout": 5})
    first.start()
    return s, first


def test_a_second_close_waits_for_the_one_under_way() -> None:
    gate = threading.Event()
    s, first = _closing_while_a_comparison_waits(gate)
    wait_for(lambda: s._engine.closed)
    second_done = threading.Event()
    second = threading.Thread(target=lambda: (s.close(timeout=5), second_done.set()))
    started = time.monotonic()
    second.start()
    try:
        assert not second_done.wait(0.2), "the second close returned while the first ran"
    finally:
        gate.set()
    first.join(5)
    second.join(5)
    assert second_done.is_set() and not first.is_alive()
    assert time.monotonic() - started < 5


def test_a_second_close_keeps_its_own_timeout() -> None:
    gate = threading.Event()
    s, first = _closing_while_a_comparison_waits(gate)
    try:
        wait_for(lambda: s._engine.closed)
        started = time.monotonic()
        s.close(timeout=0.1)
        assert time.monotonic() - started < 1.0
    finally:
        gate.set()
        first.join(5)
