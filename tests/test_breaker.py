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


def test_consecutive_failures_open_it() -> None:
    breaker, _, moves = make(failures=3, min_calls=100)
    for _ in range(2):
        breaker.failure()
    breaker.success()  # a success resets the run
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "open"
    assert moves == [("closed", "open", "3 consecutive failures")]
    assert not breaker.allow()


def test_failure_ratio_over_the_window_opens_it() -> None:
    breaker, _, moves = make(failures=100, window=10, ratio=0.5, min_calls=10)
    for i in range(10):
        breaker.failure() if i % 2 else breaker.success()
    assert breaker.state == "open"
    assert moves[-1][2] == "5 of the last 10 calls failed"


def test_cooldown_then_one_probe_then_close_on_success() -> None:
    breaker, clock, moves = make(failures=1, cooldown=30)
    breaker.failure()
    clock.now += 29.9
    assert not breaker.may_probe() and not breaker.allow()
    clock.now += 0.2
    assert breaker.may_probe()
    assert breaker.allow(), "the probe"
    assert breaker.state == "half_open"
    assert not breaker.allow(), "only one probe at a time"
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()
    assert [m[:2] for m in moves] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_failed_probe_reopens_for_another_cooldown() -> None:
    breaker, clock, moves = make(failures=1, cooldown=10)
    breaker.failure()
    clock.now += 10
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and moves[-1] == ("half_open", "open", "probe failed")
    clock.now += 9
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_a_lost_probe_is_replaced_after_a_cooldown() -> None:
    breaker, clock, _ = make(failures=1, cooldown=5)
    breaker.failure()
    clock.now += 5
    assert breaker.allow()  # this probe never reports back
    clock.now += 4
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


@pytest.mark.parametrize(
    "bad", [{"failures": 0}, {"ratio": 0}, {"ratio": 1.5}, {"cooldown": -1}, {"window": 0}]
)
def test_policy_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        BreakerPolicy(**bad)
