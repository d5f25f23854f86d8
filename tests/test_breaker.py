"""The circuit breaker, on a clock we move by hand."""

from __future__ import annotations

from typing import Any

import pytest

from shim import BreakerPolicy
from shim.core.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(**policy: Any) -> tuple[CircuitBreaker, Clock, list[tuple[str, str, str]]]:
    clock = Clock()
    moves: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker(
        "kiwi.ocr",
        BreakerPolicy(**policy),
        clock=clock,
        on_transition=lambda task, a, b, d: moves.append((a, b, d["reason"])),
    )
    return breaker, clock, moves


def call(breaker: CircuitBreaker, ok: bool) -> None:
    """One call let through and answered (``ok``) or failed."""
    ticket = breaker.allow()
    assert ticket is not None
    (breaker.success if ok else breaker.failure)(ticket)


def test_consecutive_failures_open_it() -> None:
    breaker, _, moves = make(failures=3, min_calls=100)
    for _ in range(2):
        call(breaker, ok=False)
    call(breaker, ok=True)  # a success resets the run
    for _ in range(3):
        call(breaker, ok=False)
    assert breaker.state == "open"
    assert moves == [("closed", "open", "3 consecutive failures")]
    assert breaker.allow() is None


def test_failure_ratio_over_the_window_opens_it() -> None:
    """The reason states the count and the rule it met."""
    breaker, _, moves = make(failures=100, window=20, ratio=0.5, min_calls=10)
    for i in range(10):
        call(breaker, ok=i % 3 == 2)  # the 10th fails: 7 of 10 (6 of 9 were too few)
    assert breaker.state == "open"
    assert moves[-1][2] == (
        "7 of the last 10 calls failed (opens at 50 % of the last 20 once 10 are in)"
    )


def test_cooldown_then_one_probe_then_close_on_success() -> None:
    breaker, clock, moves = make(failures=1, cooldown=30)
    call(breaker, ok=False)
    clock.now += 29.9
    assert not breaker.may_probe() and breaker.allow() is None
    clock.now += 0.2
    assert breaker.may_probe()
    probe = breaker.allow()
    assert probe is not None and probe.probe, "the probe"
    assert breaker.state == "half_open"
    assert breaker.allow() is None, "only one probe at a time"
    breaker.success(probe)
    assert breaker.state == "closed" and breaker.allow() is not None
    assert [m[:2] for m in moves] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_failed_probe_reopens_for_another_cooldown() -> None:
    breaker, clock, moves = make(failures=1, cooldown=10)
    call(breaker, ok=False)
    clock.now += 10
    probe = breaker.allow()
    assert probe is not None
    breaker.failure(probe)
    assert breaker.state == "open" and moves[-1] == ("half_open", "open", "probe failed")
    clock.now += 9
    assert breaker.allow() is None
    clock.now += 1
    assert breaker.allow() is not None


def test_a_lost_probe_is_replaced_after_a_cooldown() -> None:
    """A probe that never reports back does not wedge the breaker; once replaced, its
    late answer is stale."""
    breaker, clock, _ = make(failures=1, cooldown=5)
    call(breaker, ok=False)
    clock.now += 5
    lost = breaker.allow()
    assert lost is not None
    clock.now += 4
    assert breaker.allow() is None
    clock.now += 1
    probe = breaker.allow()
    assert probe is not None and probe is not lost
    breaker.success(lost)
    assert breaker.state == "half_open"
    breaker.success(probe)
    assert breaker.state == "closed"


def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    """A probe that was not sent after all (shadowing paused) gives its turn back."""
    breaker, clock, _ = make(failures=1, cooldown=5)
    call(breaker, ok=False)
    clock.now += 5
    probe = breaker.allow()
    assert probe is not None
    breaker.cancel(probe)
    assert breaker.state == "half_open"
    again = breaker.allow()
    assert again is not None and again.probe


@pytest.mark.parametrize(
    "bad", [{"failures": 0}, {"ratio": 0}, {"ratio": 1.5}, {"cooldown": -1}, {"window": 0}]
)
def test_policy_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        BreakerPolicy(**bad)
