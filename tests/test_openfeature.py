"""The OpenFeature backend: any OpenFeature client decides; the Unleash provider against
the test Unleash server decides exactly as UnleashFlags does."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

from shim import Shim, TaskRequest, flags
from shim.base.context import context
from shim.flags.store import Setting, UnleashAdminStore

from .shimkit import KIWI, records, wait_for

ON_OFF = {"on": True, "off": False}


def flag(on: bool) -> InMemoryFlag[bool]:
    return InMemoryFlag("on" if on else "off", ON_OFF)


def by_user(prefix: str) -> InMemoryFlag[bool]:
    """On for targeting keys that start with ``prefix``."""

    def evaluate(f: InMemoryFlag[bool], ctx: EvaluationContext) -> FlagResolutionDetails[bool]:
        return FlagResolutionDetails(value=(ctx.targeting_key or "").startswith(prefix))

    return InMemoryFlag("off", ON_OFF, context_evaluator=evaluate)


@pytest.fixture
def provider() -> Iterator[tuple[InMemoryProvider, Any]]:
    domain = f"test-{uuid.uuid4().hex[:8]}"
    provider = InMemoryProvider({})
    api.set_provider(provider, domain=domain)
    yield provider, api.get_client(domain=domain)
    provider.shutdown()


def source(client: Any, tasks: list[str], **kw: Any) -> tuple[flags.OpenFeatureFlags, list[Any]]:
    made = flags.OpenFeatureFlags(client, tasks, **kw)
    events: list[Any] = []
    made.subscribe(events.append)
    return made, events


def test_each_call_is_decided_by_the_client_and_staged_by_what_it_got(
    provider: tuple[InMemoryProvider, Any],
) -> None:
    memory, client = provider
    memory._flags.update(
        {
            "kiwi.ocr.serve": by_user("vip-"),
            "kiwi.ocr.shadow": flag(True),
            "kiwi.meal_plan.shadow": by_user("a"),
        }
    )
    made, events = source(client, ["kiwi.ocr", "kiwi.meal_plan"])
    try:
        assert made.decide("kiwi.ocr", "vip-1") == flags.Decision(True, True, "canary")
        assert made.decide("kiwi.ocr", "user-1") == flags.Decision(False, True, "shadow")
        assert made.decide("kiwi.meal_plan", "abc") == flags.Decision(False, True, "shadow")
        assert made.decide("kiwi.meal_plan", "bcd") == flags.OFF
        assert made.decide("kiwi.unknown", "abc") == flags.OFF  # not named: off
        # the flag context reaches the provider: the sticky value is the targeting key
        rule = made.rules.active["kiwi.ocr"]
        with context(user_id="vip-7"):
            assert rule.decide("vip-7").serve
        # kiwi.meal_plan.serve does not exist: off, said once, as info
        for _ in range(3):
            made.decide("kiwi.meal_plan", "abc")
        missing = [e for e in events if "kiwi.meal_plan.serve" in e.message]
        assert [e.level for e in missing] == ["info"]
        assert "FLAG_NOT_FOUND" in missing[0].message
        assert made.errors >= 4
    finally:
        made.close()


def test_a_tasks_stage_is_made_out_from_what_its_calls_got(
    provider: tuple[InMemoryProvider, Any],
) -> None:
    """One stage per task for its records (a watcher restarts its evidence on a new
    stage): up at once when a call gets more, down after stage_hold without such calls."""
    memory, client = provider
    memory._flags.update({"kiwi.ocr.serve": by_user("vip-"), "kiwi.ocr.shadow": flag(True)})
    made, events = source(client, ["kiwi.ocr"], kill_interval=0.05, stage_hold=0.5)
    try:
        assert made.decide("kiwi.ocr", "user-1").stage == "shadow"  # what it got
        wait_for(lambda: made.stages == {"kiwi.ocr": "shadow"}, timeout=2)
        assert made.decide("kiwi.ocr", "vip-1") == flags.Decision(True, True, "canary")
        wait_for(lambda: made.stages == {"kiwi.ocr": "canary"}, timeout=2)
        # every record of the task now says canary, the calls legacy serves too
        assert made.decide("kiwi.ocr", "user-2") == flags.Decision(False, True, "canary")
        assert any("stage kiwi.ocr: shadow -> canary" in e.message for e in events)
        # no call served for stage_hold: back to shadow
        wait_for(lambda: made.stages == {"kiwi.ocr": "shadow"}, timeout=3)
    finally:
        made.close()


def test_a_flag_of_another_type_is_off_with_a_warning(
    provider: tuple[InMemoryProvider, Any],
) -> None:
    memory, client = provider
    memory._flags["kiwi.ocr.shadow"] = InMemoryFlag("on", {"on": "yes"})
    memory._flags["kiwi.ocr.serve"] = flag(False)
    made, events = source(client, ["kiwi.ocr"])
    try:
        assert made.decide("kiwi.ocr", "u") == flags.OFF
        (warning,) = [e for e in events if e.level == "warning"]
        assert "kiwi.ocr.shadow" in warning.message and "TYPE_MISMATCH" in warning.message
    finally:
        made.close()


def test_the_kill_switch_is_heard_within_its_interval(
    provider: tuple[InMemoryProvider, Any],
) -> None:
    memory, client = provider
    memory._flags.update({"kiwi.ocr.serve": flag(True), "kiwi.ocr.shadow": flag(True)})
    made, events = source(client, ["kiwi.ocr"], kill_interval=0.05)
    try:
        assert made.decide("kiwi.ocr", "u").serve
        memory._flags[flags.KILL_SWITCH] = flag(True)
        wait_for(lambda: made.decide("kiwi.ocr", "u") == flags.OFF, timeout=2)
        assert made.rules.state.kill
        assert any(e.level == "warning" and "shim.kill is on" in e.message for e in events)
        # a kill switch that cannot be read is never taken for off
        memory._flags[flags.KILL_SWITCH] = InMemoryFlag("on", {"on": "yes"})
        time.sleep(0.3)
        assert made.decide("kiwi.ocr", "u") == flags.OFF
        assert any(e.level == "warning" and "shim.kill: TYPE_MISMATCH" in e.message for e in events)
        memory._flags[flags.KILL_SWITCH] = flag(False)
        wait_for(lambda: made.decide("kiwi.ocr", "u").serve, timeout=2)
        assert any("shim.kill is off" in e.message for e in events)
    finally:
        made.close()
    assert not any(t.name == "shim-openfeature-poller" for t in threading.enumerate())


@pytest.mark.parametrize(
    ("tasks", "kw", "message"),
    [
        ([], {}, "needs the tasks"),
        (["Kiwi OCR"], {}, "not a task name"),
        (["kiwi.ocr"], {"kill_interval": 0}, "kill_interval"),
        (["kiwi.ocr"], {"stage_hold": -1}, "stage_hold must be above 0"),
    ],
)
def test_bad_arguments_say_what_to_write(
    provider: tuple[InMemoryProvider, Any], tasks: list[str], kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        flags.OpenFeatureFlags(provider[1], tasks, **kw)


def test_a_shim_compares_the_calls_the_client_picks(
    provider: tuple[InMemoryProvider, Any], sim: Any, tmp_path: Path
) -> None:
    memory, client = provider
    memory._flags["kiwi.meal_plan.shadow"] = by_user("in-")
    made = flags.OpenFeatureFlags(client, ["kiwi.meal_plan"])
    shim = Shim(
        sim.url,
        flags=made,
        log_path=tmp_path / "log.jsonl",
        registry=KIWI / "orch" / "model_registry.yaml",
        assignments=KIWI / "orch" / "assignments.yaml",
    )

    @shim.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda prompt: TaskRequest(prompt=prompt),
        legacy_model="qwen2.5-3b-instruct",
    )
    def plan(prompt: str) -> str:
        return "[]"

    try:
        for user in ("in-1", "out-1", "in-2", "out-2"):
            with context(user_id=user):
                assert plan("a week of soups") == "[]"
        shim.flush(timeout=30)
    finally:
        shim.close()
        made.close()
    compared = records(tmp_path / "log.jsonl")
    assert len(compared) == 2
    assert {r["stage"] for r in compared} == {"shadow"}


# -- against the test Unleash server ------------------------------------------------------

needs_server = pytest.mark.skipif(
    not os.environ.get("UNLEASH_URL"),
    reason="needs a running Unleash server: run through `make test` (scripts/with-unleash.sh)",
)


@needs_server
def test_the_unleash_provider_decides_as_unleash_flags_for_10000_ids(tmp_path: Path) -> None:
    from openfeature.contrib.provider.unleash import UnleashProvider

    product = f"t{uuid.uuid4().hex[:10]}"
    settings = {f"{product}.p{p}": Setting(p, 100 - p) for p in (5, 30, 77)}
    admin = UnleashAdminStore(
        os.environ["UNLEASH_URL"],
        os.environ["UNLEASH_ADMIN_TOKEN"],
        environment=os.environ.get("UNLEASH_ENVIRONMENT", "development"),
    )
    url, token = os.environ["UNLEASH_URL"], os.environ["UNLEASH_API_TOKEN"]
    unleash = flags.UnleashFlags(url=url, api_token=token, refresh_interval=1)
    domain = f"unleash-{product}"
    of_provider = UnleashProvider(url=url, app_name="task-shim-test", api_token=token)
    try:
        admin.apply(settings)

        def served() -> bool:
            known = unleash.rules.state.tasks
            return all(
                known.get(t) == flags.TaskFlags(serve=s.serve, shadow=s.shadow)
                for t, s in settings.items()
            )

        # The provider's client fetches at start, then every 15 s: started once the
        # server serves the new flags, its first fetch has them.
        wait_for(served, timeout=20)
        api.set_provider(of_provider, domain=domain)
        made = flags.OpenFeatureFlags(api.get_client(domain=domain), list(settings))

        def fetched() -> bool:
            return all(
                any(made.decide(t, f"warm-{i}").compare for i in range(100)) for t in settings
            )

        wait_for(fetched, timeout=20)  # each task compares 23 % or more of its ids
        for task in settings:
            for i in range(10_000):
                sticky = f"user-{i}"
                expected = unleash.decide(task, sticky)
                got = made.decide(task, sticky)
                assert (got.serve, got.compare) == (expected.serve, expected.compare), sticky
        assert made.errors == 0, made._seen_errors
        made.close()
    finally:
        unleash.close()
        admin.close()
        of_provider.shutdown()
