"""Decisions: Unleash's bucketing, stages, stickiness from the context."""

from __future__ import annotations

import mmh3
from hypothesis import given, settings
from hypothesis import strategies as st

import shim
from shim import flags
from shim.base.context import sticky_value
from shim.flags import Decision, FlagState, Rules, TaskFlags


def unleash_in(group: str, sticky: str, percent: int) -> bool:
    """flexibleRollout as the Unleash SDKs compute it."""
    return mmh3.hash(f"{group}:{sticky}", 0, signed=False) % 100 + 1 <= percent


@settings(deadline=None)  # a loaded machine is not a wrong decision
@given(
    sticky=st.text(min_size=1, max_size=40), serve=st.integers(0, 100), shadow=st.integers(0, 100)
)
def test_rule_decides_exactly_as_unleash_buckets(sticky: str, serve: int, shadow: int) -> None:
    rules = Rules(FlagState({"kiwi.meal_plan": TaskFlags(serve=serve, shadow=shadow)}))
    decision = rules.decide("kiwi.meal_plan", sticky)
    assert decision.serve == unleash_in("kiwi.meal_plan.serve", sticky, serve)
    assert decision.compare == unleash_in("kiwi.meal_plan.shadow", sticky, shadow)
    assert flags.bucket("kiwi.meal_plan.serve", sticky) <= serve or not decision.serve


def test_off_killed_and_unknown_tasks_decide_off() -> None:
    state = FlagState({"kiwi.a": TaskFlags(serve=100), "kiwi.b": TaskFlags()})
    assert Rules(state).decide("kiwi.a", "u").stage == "live"
    assert Rules(state).decide("kiwi.b", "u") is flags.OFF
    assert Rules(state).decide("kiwi.zzz", "u") is flags.OFF
    assert Rules(FlagState(state.tasks, kill=True)).decide("kiwi.a", "u") is flags.OFF
    assert set(Rules(state).active) == {"kiwi.a"}, "inactive tasks cost one dict miss"


def test_random_draws_without_a_sticky_value_follow_the_percentage() -> None:
    rules = Rules(FlagState({"kiwi.a": TaskFlags(serve=25)}))
    served = sum(rules.decide("kiwi.a", None).serve for _ in range(20_000))
    assert 0.23 < served / 20_000 < 0.27


def test_default_stickiness_is_user_then_session() -> None:
    assert sticky_value("default") is None
    with shim.context(session_id="s1"):
        assert sticky_value("default") == "s1"
        with shim.context(user_id="u1"):
            assert sticky_value("default") == "u1"
            assert sticky_value("userId") == "u1"
            assert sticky_value("sessionId") == "s1"
            assert sticky_value("tenant") is None
    with shim.context(tenant="acme"):
        assert sticky_value("tenant") == "acme"


def test_an_engine_decided_call_keeps_its_tasks_stage() -> None:
    """Without a stage from the source, an engine-decided call has the flags' stage, as
    a plain one does: one stage for the task's records. With one (a source that knows
    no percentages), it is raised to what the call got."""
    tasks = {"kiwi.a": TaskFlags(), "kiwi.b": TaskFlags(serve=20)}
    engines = {
        "kiwi.a.serve": lambda sticky: sticky == "in",
        "kiwi.a.shadow": lambda sticky: True,
        "kiwi.b.shadow": lambda sticky: True,
    }
    rules = Rules(FlagState(tasks), engines)
    assert rules.decide("kiwi.a", "in") == Decision(True, True, "off")
    assert rules.decide("kiwi.a", "out") == Decision(False, True, "off")
    assert {rules.decide("kiwi.b", f"u{i}").stage for i in range(50)} == {"canary"}
    staged = Rules(FlagState(tasks), engines, stages={"kiwi.a": "shadow"})
    assert staged.decide("kiwi.a", "in") == Decision(True, True, "canary")
    assert staged.decide("kiwi.a", "out") == Decision(False, True, "shadow")
    canary = Rules(FlagState(tasks), engines, stages={"kiwi.a": "canary"})
    assert canary.decide("kiwi.a", "out") == Decision(False, True, "canary")
