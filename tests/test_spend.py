"""Shadow spend: a per-task budget (comparisons per second, task-path tokens per hour) and
back-off when the coordinator is full, against the simulator over real sockets."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shim import Backoff, ConfigError, Limits, ShadowBudget, TaskRequest
from shim.core.spend import Spend
from shim.flags import load_flags_file
from shim.sim import Profile, Simulator

from .conftest import QUIET
from .shimkit import Driver, dropped, make_shim, records, wait_for


def legacy_plan(i: int) -> list[dict[str, Any]]:
    return [{"day": 1, "meal_type": "dinner", "recipe_id": i, "suggestion": "soup"}]


def paced(fn: Any, rate: float, seconds: float) -> list[tuple[float, Any, Any]]:
    """Call ``fn(i)`` ``rate`` times a second for ``seconds``: (time, result, expected)."""
    out = []
    start = time.monotonic()
    i = 0
    while (now := time.monotonic()) - start < seconds:
        i += 1
        time.sleep(max(0.0, start + i / rate - now))
        out.append((time.monotonic(), fn(i), i))
    return out


def test_a_budget_of_5_per_second_holds_at_200_calls_per_second(
    sim: Simulator, tmp_path: Path
) -> None:
    shim = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 0, shadow: 100, shadow_rate: 5}\n",
        limits=Limits(workers=8),
    )
    wrapped = shim.shadow(
        product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=f"plan {i}")
    )(legacy_plan)
    calls = paced(wrapped, 200, 3.0)
    shim.close(timeout=30)
    assert all(result[0]["recipe_id"] == i for _, result, i in calls)  # legacy's own answers
    log = tmp_path / "log.jsonl"
    compared = records(log, "shim.comparison")
    budget = dropped(log, "budget")
    assert len(compared) + budget == len(calls)  # every call: compared or counted
    assert len(calls) > 500
    assert 13 <= len(compared) <= 17, len(compared)  # 5 a second for 3 s, give or take one
    # no second of the run saw more than 5 + 1 comparisons
    stamps = sorted(_seconds(r["ts"]) for r in compared)
    busiest = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    assert busiest <= 6, stamps


def test_a_token_budget_per_hour_stops_comparisons_when_spent(
    sim: Simulator, tmp_path: Path
) -> None:
    """The simulator reports usage; the third comparison spends what remains of 300."""
    shim_budget = {"kiwi.meal_plan": ShadowBudget(tokens_per_hour=300)}
    shim = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 0, shadow: 100}\n",
        budgets=shim_budget,
        limits=Limits(workers=1),
    )
    wrapped = shim.shadow(
        product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=f"plan {i}")
    )(legacy_plan)
    for i in range(40):
        wrapped(i)
        shim.flush()  # one at a time, so each comparison is charged before the next call
    shim.close()
    log = tmp_path / "log.jsonl"
    compared = records(log, "shim.comparison")
    spent = [r["candidate"]["usage"] for r in compared]
    assert all(u["input_tokens"] > 0 and u["output_tokens"] > 0 for u in spent)
    totals = [u["input_tokens"] + u["output_tokens"] for u in spent]
    assert sum(totals[:-1]) < 300 <= sum(totals) + 1  # stopped once the budget was spent
    assert dropped(log, "budget") == 40 - len(compared)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_full_coordinator_is_backed_off_and_shadowing_resumes(
    sim: Simulator, tmp_path: Path, kind: str
) -> None:
    shim = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 0, shadow: 100}\n",
        backoff=Backoff(initial=0.1, maximum=0.4),
        limits=Limits(workers=8),
    )
    driver = Driver(kind)
    legacy_answers: list[Any] = []

    def body(i: int) -> dict[str, int]:
        legacy_answers.append({"n": i})
        return legacy_answers[-1]

    wrapped = driver.wrap(shim, body)
    sim.set_profile(
        Profile(seed=2, defaults={"latency_ms": 0, "error_rate": 1.0, "error_status": 429})
    )
    reached = lambda: sim.stats()["counts"].get("requests.task", 0)  # noqa: E731
    first = driver.run(shim, wrapped, [(i,) for i in range(100)], close=False)
    shim.flush()  # what was queued before the first 429 came back is dropped, not sent
    before = reached()
    calls = []
    start = time.monotonic()
    while time.monotonic() - start < 2.0:  # 200 calls a second for 2 s, all still 429
        calls += driver.run(shim, wrapped, [(len(calls),)], close=False)
        time.sleep(0.005)
    busy_reached = reached() - before
    assert busy_reached < 0.05 * len(calls), (busy_reached, len(calls))
    sim.set_profile(QUIET)
    more: list[Any] = []
    start = time.monotonic()
    while time.monotonic() - start < 1.5:
        more += driver.run(shim, wrapped, [(len(more),)], close=False)
        time.sleep(0.005)
    driver.run(shim, wrapped, [], close=True)
    assert [*first, *calls, *more] == legacy_answers  # legacy's own objects, throughout
    assert all(a is b for a, b in zip([*first, *calls, *more], legacy_answers, strict=True))
    log = tmp_path / "log.jsonl"
    events = records(log, "shim.backoff")
    assert events[0]["state"] == "paused" and events[0]["status"] == 429
    assert events[-1]["state"] == "resumed"
    pauses = [e["seconds"] for e in events if e["state"] == "paused"]
    assert max(pauses) <= 0.4 and max(pauses) > pauses[0]  # it grew, within the cap
    ok = [r for r in records(log, "shim.comparison") if r["candidate"]["ok"]]
    assert len(ok) > 20  # shadowing resumed once the coordinator had room
    assert dropped(log, "backoff") > 0 and dropped(log, "breaker_open") == 0


def test_backoff_grows_with_jitter_and_one_probe_goes_through() -> None:
    now = [100.0]
    spend = Spend(Backoff(initial=1.0, maximum=8.0), clock=lambda: now[0], rng=random.Random(3))
    sent, early = spend.current, spend.current  # two calls out before the first 429
    pauses = []
    for _ in range(6):
        pauses.append(spend.busy(sent))
        assert spend.busy(early) == 0.0  # an answer to a call sent before the pause: no escalation
        assert spend.admit(None) == "backoff" and spend.paused()
        assert spend.probe() is None  # not before the pause is over
        now[0] += pauses[-1]
        assert spend.admit(None) is None  # the probe
        assert spend.admit(None) == "backoff"  # and only the probe
        probe = spend.probe()
        assert probe is not None and probe.probe
        assert spend.probe() is None  # one probe out at a time
        assert spend.answered(early) is False  # still not the probe's answer
        sent = probe
    assert all(cap / 2 <= p <= cap for p, cap in zip(pauses, (1, 2, 4, 8, 8, 8), strict=True))
    assert len(set(pauses)) == len(pauses)  # jittered
    assert spend.answered(sent) is True
    assert spend.admit(None) is None and spend.admit(None) is None
    assert spend.current is not None and spend.busy(early) == 0.0  # stale for good


def test_budget_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="per_second must be positive"):
        ShadowBudget(per_second=0)
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(initial=5, maximum=1)
    path = tmp_path / "flags.yaml"
    path.write_text("kiwi.ocr: {shadow: 100, shadow_rate: 0}\n")
    with pytest.raises(ConfigError, match=r"flags.yaml:1: kiwi.ocr.shadow_rate"):
        load_flags_file(path)


def _seconds(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_a_fleet_budget_is_shared_by_the_live_replica_count(sim: Simulator, tmp_path: Path) -> None:
    """ShadowBudget(replicas=...): this process takes its share of the fleet's rate,
    the flags' shadow_rate included."""

    def replicas() -> int:
        return 4

    shim = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 0, shadow: 100, shadow_rate: 20}\n",  # the fleet's 20/s
        budgets={"kiwi.meal_plan": ShadowBudget(per_second=100, replicas=replicas)},
        limits=Limits(workers=8),
    )
    wrapped = shim.shadow(
        product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=f"plan {i}")
    )(legacy_plan)
    paced(wrapped, 100, 2.0)  # 20 / 4 replicas = 5 a second here
    shim.close(timeout=30)
    compared = records(tmp_path / "log.jsonl", "shim.comparison")
    assert 8 <= len(compared) <= 12, len(compared)  # 5 a second for 2 s, give or take


def test_a_replica_count_that_fails_is_an_internal_error_not_a_failed_call(
    sim: Simulator, tmp_path: Path
) -> None:
    asked_on: list[str] = []

    def replicas() -> int:
        asked_on.append(threading.current_thread().name)
        raise RuntimeError("the orchestrator did not answer")

    shim = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 0, shadow: 100}\n",
        budgets={"kiwi.meal_plan": ShadowBudget(per_second=50, replicas=replicas)},
    )
    wrapped = shim.shadow(
        product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=f"plan {i}")
    )(legacy_plan)
    assert wrapped(1)[0]["recipe_id"] == 1  # asked on a thread of its own, not this one
    wait_for(lambda: shim.stats()["internal_errors"] == {"budget.replicas": 1})
    assert wrapped(2)[0]["recipe_id"] == 2
    shim.close(timeout=30)
    assert asked_on == ["shim-replicas"]
    # the fleet's share is not known: nothing compared (a budget is a cap), counted
    assert records(tmp_path / "log.jsonl", "shim.comparison") == []
    assert dropped(tmp_path / "log.jsonl", "budget") == 2


def test_fleet_budget_shares_and_counts() -> None:
    from shim.core.spend import REPLICAS_EVERY, Replicas

    budget = ShadowBudget(per_second=30, burst=2, tokens_per_hour=90_000, replicas=3)
    assert budget.share(3) == ShadowBudget(per_second=10, burst=2, tokens_per_hour=30_000)
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="replicas must be a whole number of 1 or more"):
            ShadowBudget(per_second=1, replicas=bad)  # type: ignore[arg-type]
    now, said, errors = [0.0], [2], []

    def count() -> Any:
        if isinstance(said[0], Exception):
            raise said[0]
        return said[0]

    failing = Replicas(lambda: 1 // 0, errors.append, run=lambda ask: ask())
    assert failing.count() is None and type(errors.pop()).__name__ == "ZeroDivisionError"
    live = Replicas(count, errors.append, clock=lambda: now[0], run=lambda ask: ask())
    assert live.count() == 2
    said[0] = 5
    assert live.count() == 2  # asked again only after REPLICAS_EVERY
    now[0] += REPLICAS_EVERY
    assert live.count() == 5
    for wrong in (RuntimeError("down"), 0, "3"):
        said[0] = wrong
        now[0] += REPLICAS_EVERY
        assert live.count() == 5  # the last count stays in force
    assert [type(e).__name__ for e in errors] == ["RuntimeError", "ValueError", "ValueError"]
    assert Replicas(7, errors.append).count() == 7
    said[0] = 3.0  # a count read from Prometheus comes as a float
    now[0] += REPLICAS_EVERY
    assert live.count() == 3
    assert ShadowBudget(per_second=1, replicas=3.0).share(3).per_second == 1 / 3
