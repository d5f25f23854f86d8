"""The copies records are made from, on the caller's path: whatever a value holds (an
object of the app's class, a nesting deeper than the interpreter's recursion limit,
keys whose ``__hash__`` is the app's code), copying it never raises into the caller,
never leaks a slot, and runs none of the app's code on the caller's thread."""

from __future__ import annotations

import asyncio
import pickle
import threading
from typing import Any, ClassVar

import pytest

from shim import TaskRequest
from shim.records.values import NOT_RECORDED, capture, restore, restore_argument, settle
from shim.testing import TestShim

from .shimkit import Driver

SHADOW = {"kiwi.meal_plan": {"shadow": 100}}
SERVED = {"kiwi.meal_plan": {"serve": 100, "shadow": 100}}
DEPTH = 5_000  # deeper than any recursion limit: copied recursively, it raises


class _Watched:
    """An object of the app's class that notes the threads its copy and hash code ran
    on (``__reduce__``, ``__getstate__``, ``__deepcopy__``, ``__hash__``, ``__eq__``)."""

    ran_on: ClassVar[set[int]] = set()

    def __init__(self, text: str) -> None:
        self.text = text

    def _note(self) -> None:
        _Watched.ran_on.add(threading.get_ident())

    def __reduce__(self) -> tuple[Any, ...]:
        self._note()
        return (_Watched, (self.text,))

    def __getstate__(self) -> dict[str, Any]:
        self._note()
        return {"text": self.text}

    def __deepcopy__(self, memo: dict[int, Any]) -> _Watched:
        self._note()
        return _Watched(self.text)

    def __hash__(self) -> int:
        self._note()
        return hash(self.text)

    def __eq__(self, other: object) -> bool:
        self._note()
        return isinstance(other, _Watched) and other.text == self.text

    def __repr__(self) -> str:
        return f"_Watched({self.text!r})"


def _deep(leaf: Any) -> list[Any]:
    """An object of the app's first, then lists nested DEPTH deep."""
    nested: list[Any] = ["bottom"]
    for _ in range(DEPTH):
        nested = [nested]
    return [leaf, nested]


def _wrap(s: TestShim, kind: str, body: Any) -> Any:
    return Driver(kind).wrap(s, body, request=lambda *a: TaskRequest(prompt="x"))


def _call(kind: str, wrapped: Any, *args: Any) -> Any:
    if kind == "sync":
        return wrapped(*args)
    got: list[Any] = []

    async def main() -> None:
        # Kept out of the task's result: asyncio.run reprs its main task at the end,
        # and a repr of the value would hash its keys on this thread.
        got.append(await wrapped(*args))

    asyncio.run(main())
    return got[0]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_return_value_too_deep_to_copy_is_the_callers_very_object(kind: str) -> None:
    deep = _deep(_Watched("a"))
    with TestShim(SHADOW, answer=lambda request: "soup") as s:
        wrapped = _wrap(s, kind, lambda: deep)
        assert _call(kind, wrapped) is deep
        [row] = s.comparisons
        assert s.stats()["pending"] == 0
    assert row["legacy"]["ok"] and row["legacy"]["output_sha256"] is None
    assert "not recorded" in row["legacy"]["render_error"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_argument_too_deep_to_copy_still_runs_legacy(kind: str) -> None:
    deep = _deep(_Watched("a"))
    with TestShim(SHADOW, answer=lambda request: "soup") as s:
        wrapped = _wrap(s, kind, lambda items: "legacy")
        assert _call(kind, wrapped, deep) == "legacy"
        [row] = s.comparisons
        assert s.stats()["pending"] == 0, "no slot is kept by a failed copy"
    assert row["candidate"]["ok"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_served_call_with_an_argument_too_deep_to_copy_answers(kind: str) -> None:
    deep = _deep(_Watched("a"))
    with TestShim(SERVED, answer=lambda request: "soup") as s:
        wrapped = Driver(kind).wrap(
            s,
            lambda items: "legacy",
            request=lambda items: TaskRequest(prompt="x"),
            response=lambda result: result.text,
        )
        assert _call(kind, wrapped, deep) == "soup"
        if kind == "async":
            asyncio.run(s.aflush())
        s.flush()
        assert s.stats()["pending"] == 0
        assert s.stats()["internal_errors"] == {}


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("where", ["returned", "argument"])
def test_the_apps_copy_and_hash_code_never_run_on_the_callers_thread(kind: str, where: str) -> None:
    """Lists, dicts and sets holding objects of the app's class, as keys, values and
    members: their ``__reduce__``, ``__deepcopy__``, ``__hash__`` and ``__eq__`` run on
    a worker, never on the thread that called."""

    # Made (and hashed) here, before the call.
    made = {"plain": [1, 2], "apps": [_Watched("v")], "members": {_Watched("m")}}
    made["keyed"] = [{_Watched("k"): "key"}]
    with TestShim(SHADOW, answer=lambda request: "soup") as s:
        if where == "returned":
            wrapped = _wrap(s, kind, lambda: made)
        else:
            wrapped = _wrap(s, kind, lambda items: "legacy")
        _Watched.ran_on = set()
        caller = threading.get_ident()
        if where == "returned":
            assert _call(kind, wrapped) is made
        else:
            assert _call(kind, wrapped, [made]) == "legacy"
        [row] = s.comparisons
    assert caller not in _Watched.ran_on
    assert _Watched.ran_on, "they were copied, on a worker"
    assert row["legacy"]["ok"] and row["candidate"]["ok"]
    # Its keys have no name in JSON (no hash of it), but the copy was kept.
    assert "not recorded" not in row["legacy"].get("render_error", "")


# -- the copy itself -----------------------------------------------------------------


def test_capture_never_raises_whatever_the_value_holds() -> None:
    assert capture(_deep(_Watched("a"))) is NOT_RECORDED
    nested: list[Any] = []
    for _ in range(DEPTH):
        nested = [nested]
    assert capture(nested) is NOT_RECORDED


def test_a_mixed_value_comes_back_whole_with_its_objects_copied() -> None:
    shared = [1, 2]
    thing = _Watched("t")
    value = {"rows": [{"id": i} for i in range(3)], "thing": thing, "again": thing, "s": shared}
    kept = capture(value)
    value["rows"].append({"id": 99})  # the caller's containers: copied at the call
    back = restore(settle(kept))
    assert back["rows"] == [{"id": 0}, {"id": 1}, {"id": 2}]
    assert back["thing"] is not thing and back["thing"].text == "t"
    assert back["thing"] is back["again"], "one object, once, as in the value"


def test_an_argument_whose_object_cannot_be_copied_is_passed_as_it_was() -> None:
    lock = threading.Lock()  # neither picklable nor deep-copyable
    kept = capture([lock, "x"])
    assert restore(kept) is NOT_RECORDED
    assert restore_argument(kept)[0] is lock


def test_a_value_of_builtins_only_is_pickled_once_on_the_callers_thread() -> None:
    value = {"a": [1, 2, {"b": (3, "c")}], "d": {4, 5}}
    kept = capture(value)
    assert restore(kept) == value
    assert pickle.loads(pickle.dumps(value)) == restore(kept)
