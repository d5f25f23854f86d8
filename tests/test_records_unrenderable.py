"""Outputs a record cannot hold (cyclic, tuple keys, a raising ``__repr__``, not
copyable) still give a ``shim.comparison`` record that says why; a record that cannot
be written at all is counted as dropped and logged. Nothing vanishes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from shim import Capture, TaskRequest
from shim.comparators import Structure
from shim.testing import TestShim


def _cyclic_list() -> list[Any]:
    value: list[Any] = ["a"]
    value.append(value)
    return value


def _cyclic_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


class _Unprintable:
    """An output whose ``repr`` and ``str`` raise."""

    def __repr__(self) -> str:
        raise ValueError("no repr for you")

    __str__ = __repr__


class _Uncomparable:
    """An output that cannot be compared or hashed."""

    def __eq__(self, other: object) -> bool:
        raise TypeError("no equality for you")

    def __hash__(self) -> int:
        raise TypeError("no hash for you")


class _Uncopyable:
    """An output that can be neither pickled nor deep-copied (it holds a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        raise TypeError("no copy for you")


#: name -> (makes the output, the internal-error operation it is counted under)
CASES: dict[str, tuple[Callable[[], Any], str]] = {
    "cyclic_list": (_cyclic_list, "render_output"),
    "cyclic_dict": (_cyclic_dict, "render_output"),
    "tuple_keys": (lambda: {(1, 2): "pair"}, "render_output"),
    "raising_repr": (_Unprintable, "render_output"),
    "uncopyable": (_Uncopyable, "copy_output"),
}


#: The stages a comparison is made at: legacy serves, or the task path does.
STAGES = {"shadow": {"shadow": 100}, "canary": {"serve": 100, "shadow": 100}}


def _compared(
    make: Callable[[], Any], side: str, stage: str = "shadow", **options: Any
) -> tuple[TestShim, list[Any]]:
    """One compared call whose ``side`` returns ``make()``, the other ``"soup"``."""
    s = TestShim({"kiwi.meal_plan": STAGES[stage]}, answer=lambda request: "soup", **options)

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda: TaskRequest(prompt="dinner"),
        response=(lambda result: make()) if side == "candidate" else (lambda result: result.text),
    )
    def plan() -> Any:
        return make() if side == "legacy" else "soup"

    plan()
    return s, s.records


def _operation(case: str, side: str, stage: str) -> str | None:
    """The internal-error operation a case is counted under; None: nothing to count.
    An output is copied only when the caller got it too, so may change it: legacy's
    when legacy serves (shadow), the task path's when it serves (canary)."""
    operation = CASES[case][1]
    if case == "uncopyable" and (side, stage) not in {
        ("legacy", "shadow"),
        ("candidate", "canary"),
    }:
        return None
    return operation


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("side", ["legacy", "candidate"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_an_output_a_record_cannot_hold_still_gives_a_record_that_says_why(
    case: str, side: str, stage: str
) -> None:
    """The comparison is written: the side's output hash and size are null, its
    ``render_error`` says why, the path itself stays ok (it answered), the structure
    is not a match, and the shim counts the failure under a named operation."""
    s, rows = _compared(CASES[case][0], side, stage)
    s.close()
    operation = _operation(case, side, stage)
    [row] = [r for r in rows if r["event"] == "shim.comparison"]
    assert row["served_by"] == ("task" if stage == "canary" else "legacy")
    other = "candidate" if side == "legacy" else "legacy"
    assert row[side]["ok"] is True, "the path answered; only its output could not be kept"
    assert row[other]["output_sha256"] is not None
    assert "render_error" not in row[other]
    assert row["structure"]["match"] is not True, "an output not kept is never a match"
    assert not [r for r in rows if r["event"] == "shim.dropped"]
    errors = s.stats()["internal_errors"]
    assert "render" not in errors, "the record itself was rendered"
    if operation is None:  # kept by reference: hashed from its repr like any object
        assert row[side]["output_sha256"] is not None
        assert "render_error" not in row[side]
        return
    assert (row[side]["output_sha256"], row[side]["output_bytes"]) == (None, None)
    assert isinstance(row[side]["render_error"], str) and row[side]["render_error"]
    assert errors.get(operation) == 1, errors
    [error] = [r for r in rows if r["event"] == "shim.error"]
    assert error["operation"] == operation


def test_an_uncopyable_output_says_it_was_not_recorded_and_why() -> None:
    """capture() could neither pickle nor copy legacy's output: the record says so."""
    s, rows = _compared(_Uncopyable, "legacy")
    s.close()
    [row] = [r for r in rows if r["event"] == "shim.comparison"]
    assert "not recorded" in row["legacy"]["render_error"]
    assert "copied" in row["legacy"]["render_error"]
    assert row["structure"]["match"] is None
    assert "legacy output not recorded" in row["structure"]["error"]


def test_a_cyclic_output_names_the_cause() -> None:
    """The reason is the encoder's own message, not a generic one."""
    s, rows = _compared(_cyclic_list, "legacy")
    s.close()
    [row] = [r for r in rows if r["event"] == "shim.comparison"]
    assert "Circular reference" in row["legacy"]["render_error"]


@pytest.mark.parametrize("side", ["legacy", "candidate"])
def test_an_output_that_cannot_be_compared_or_hashed_is_still_recorded(side: str) -> None:
    """Raising ``__eq__`` and ``__hash__``: the record is written and is no match."""
    s, rows = _compared(_Uncomparable, side)
    s.close()
    [row] = [r for r in rows if r["event"] == "shim.comparison"]
    assert row[side]["ok"] is True
    assert row["structure"]["match"] is not True
    assert not [r for r in rows if r["event"] == "shim.dropped"]
    assert "render" not in s.stats()["internal_errors"]


def test_with_capture_on_an_unrenderable_output_is_captured_as_null() -> None:
    """Capture switched on: the unrenderable side's ``output`` is null, the other's is
    there, and the record is written."""
    s, rows = _compared(_cyclic_dict, "candidate", capture=Capture(max_chars=100))
    s.close()
    [row] = [r for r in rows if r["event"] == "shim.comparison"]
    assert row["candidate"]["output"] is None
    assert row["legacy"]["output"] == "soup"
    assert row["candidate"]["render_error"]


def test_a_comparator_that_raises_leaves_its_reason_in_the_structure() -> None:
    """``structure.match`` is null and ``structure.error`` says what the comparator
    raised (it is also counted, ``compare``)."""

    class Broken:
        def compare(self, legacy: Any, candidate: Any) -> Structure:
            raise RuntimeError("comparator exploded")

    with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=lambda request: "soup") as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda: TaskRequest(prompt="dinner"),
            output=Broken(),
        )
        def plan() -> str:
            return "soup"

        plan()
        [row] = s.comparisons
        assert row["structure"]["match"] is None
        assert "comparator exploded" in row["structure"]["error"]
        assert s.stats()["internal_errors"] == {"compare": 1}


def test_a_record_that_cannot_be_written_at_all_is_counted_as_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A comparator whose structure holds a value no encoder can write (a list that
    contains itself): the comparison is counted as ``shim.dropped``, reason
    ``unrenderable``, and logged; it does not vanish."""

    class Cyclic:
        def compare(self, legacy: Any, candidate: Any) -> Structure:
            return Structure(False, True, True, (_cyclic_list(),))  # type: ignore[arg-type]

    with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=lambda request: "soup") as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda: TaskRequest(prompt="dinner"),
            output=Cyclic(),
        )
        def plan() -> str:
            return "soup"

        with caplog.at_level(logging.WARNING, logger="shim"):
            plan()
            assert s.comparisons == []
            assert s.dropped("unrenderable") == 1
        assert "render" in s.stats()["internal_errors"]
    assert any("render" in r.getMessage() for r in caplog.records)


def test_an_exception_whose_message_raises_is_still_described() -> None:
    """Legacy raises an exception whose ``str`` raises: the comparison is written and
    legacy's ``error`` names the class."""

    class Odd(Exception):
        def __str__(self) -> str:
            raise ValueError("no message for you")

    with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=lambda request: "soup") as s:

        @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="q"))
        def plan() -> str:
            raise Odd()

        with pytest.raises(Odd):
            plan()
        [row] = s.comparisons
        assert row["legacy"]["ok"] is False
        assert row["legacy"]["error"].startswith("Odd")


def test_what_comes_after_close_is_counted_as_lost_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A comparison that finishes after the Shim was closed (an async call site's
    background legacy run outliving a sync ``close()`` made on its running loop)
    cannot be written: it is counted in ``records_lost`` and one warning says so,
    however many follow."""
    import asyncio
    import time

    s = TestShim({"kiwi.meal_plan": {"serve": 100, "shadow": 100}}, answer=lambda r: "soup")

    @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="q"))
    async def plan() -> str:
        await asyncio.sleep(0.05)
        return "soup"

    async def main() -> None:
        assert await plan() == "soup"
        assert await plan() == "soup"
        s.close()  # not aclose: this loop's background legacy runs are still going
        deadline = time.monotonic() + 5
        while s.stats()["records_lost"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.WARNING, logger="shim"):
        asyncio.run(main())
    assert s.stats()["records_lost"] == 2
    told = [r for r in caplog.records if "after the Shim was closed" in r.getMessage()]
    assert len(told) == 1
