"""The shadow decorator end to end: the legacy path is sacred, comparisons are recorded."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shim
from shim import BreakerPolicy, Limits, Shim, TaskFailed, TaskRequest, TaskResult, Timeouts
from shim.sim import Profile, Simulator

from .conftest import QUIET
from .shimkit import Driver, dropped, make_shim, records, wait_for, write_flags

SHADOW = "kiwi.meal_plan: {serve: 0, shadow: 100}\n"
OFF = "kiwi.meal_plan: {serve: 0, shadow: 0}\n"


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> Driver:
    return Driver(request.param)


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- the legacy path is sacred --------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


class Opaque:
    """An object the shim cannot pickle: it must still come back untouched."""

    def __init__(self) -> None:
        self.lock = __import__("threading").Lock()


outcomes = st.one_of(
    json_values.map(lambda v: ("return", v)),
    st.builds(Opaque).map(lambda v: ("return", v)),
    st.sampled_from([ValueError, KeyError, RuntimeError, TaskFailed]).map(lambda e: ("raise", e)),
)


@pytest.mark.parametrize("stage", [OFF, SHADOW], ids=["off", "shadow"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(outcome=outcomes)
def test_caller_gets_the_very_object_or_exception(
    sim: Simulator, tmp_path: Path, driver: Driver, stage: str, outcome: tuple[str, Any]
) -> None:
    kind, payload = outcome
    if kind == "raise":
        payload = (
            payload("x", product="kiwi", task="meal_plan", status=500)
            if payload is TaskFailed
            else payload("boom")
        )

    def legacy() -> Any:
        if kind == "raise":
            raise payload
        return payload

    s = make_shim(sim.url, tmp_path, stage, log_path=tmp_path / f"{time.perf_counter()}.jsonl")
    [got] = driver.run(s, driver.wrap(s, legacy), [()])
    assert got is payload


def test_wrapper_keeps_name_doc_and_signature(tmp_path: Path, sim: Simulator) -> None:
    import inspect

    s = make_shim(sim.url, tmp_path, OFF)

    @s.shadow(product="kiwi", task="meal_plan", request=lambda a, b=2: TaskRequest(prompt=a))
    def plan(a: str, b: int = 2) -> str:
        """Plans."""
        return a

    @s.shadow(product="kiwi", task="meal_plan", request=lambda a: TaskRequest(prompt=a))
    async def aplan(a: str) -> str:
        return a

    assert (plan.__name__, plan.__doc__) == ("plan", "Plans.")
    assert list(inspect.signature(plan).parameters) == ["a", "b"]
    assert inspect.signature(plan) == inspect.signature(plan.__wrapped__)
    assert inspect.iscoroutinefunction(aplan)
    s.close()


# -- comparisons ------------------------------------------------------------------------


def test_shadow_records_one_schema_1_comparison_per_call(
    sim: Simulator, tmp_path: Path, driver: Driver
) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)

    def legacy(i: int) -> list[dict[str, Any]]:
        time.sleep(0.002)  # a legacy call that takes a measurable time (see latency_ratio)
        return [{"day": i, "meal_type": "dinner", "recipe_id": 1, "suggestion": "soup"}]

    wrapped = driver.wrap(
        s, legacy, response=lambda r: json.loads(r.text), legacy_model="Qwen/Qwen2.5-3B-Instruct"
    )
    driver.run(s, wrapped, [(i,) for i in range(20)])
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 20
    row = rows[0]
    assert set(row) == {
        "event",
        "schema",
        "ts",
        "product",
        "task",
        "call_site",
        "call_id",
        "stage",
        "served_by",
        "legacy",
        "candidate",
        "model",
        "structure",
        "latency_ratio",
    }
    assert (row["schema"], row["product"], row["task"]) == (1, "kiwi", "meal_plan")
    assert row["call_site"].endswith(":Driver.wrap.<locals>.site")
    assert (row["stage"], row["served_by"]) == ("shadow", "legacy")
    assert set(row["legacy"]) == {
        "ok",
        "latency_ms",
        "model",
        "error",
        "output_sha256",
        "output_bytes",
    }
    # usage: an optional key, there when the path reported it (the simulator does)
    assert set(row["candidate"]) == set(row["legacy"]) | {
        "service_type",
        "node_id",
        "status",
        "usage",
    }
    assert set(row["candidate"]["usage"]) == {"input_tokens", "output_tokens"}
    assert row["candidate"]["service_type"] == "cf-text"
    assert row["model"] == {
        "verdict": "alias",
        "expected": "qwen2.5-3b-instruct",
        "routing_error": False,
        "reason": None,
    }
    assert row["structure"]["match"] is True
    assert row["ts"].endswith("Z")
    # The ratio is taken before the latencies are rounded to µs for the record.
    assert row["latency_ratio"] == pytest.approx(
        row["candidate"]["latency_ms"] / row["legacy"]["latency_ms"], rel=0.5
    )
    assert len({r["call_id"] for r in rows}) == 20


def test_structure_drift_is_recorded_as_a_mismatch(sim: Simulator, tmp_path: Path) -> None:
    sim.set_profile(
        QUIET.with_knob("kiwi.ocr", "drift_rate", 1.0).with_knob(
            "kiwi.ocr", "drift_kinds", ["missing_key"]
        )
    )
    s = make_shim(sim.url, tmp_path, "kiwi.ocr: {shadow: 100}\n")
    from shim.sim import generate

    wrapped = Driver("sync").wrap(
        s, lambda: generate("receipt", __import__("random").Random(1)), task="ocr"
    )
    Driver("sync").run(s, wrapped, [()] * 5)
    rows = records(tmp_path / "log.jsonl")
    assert [r["structure"]["match"] for r in rows] == [False] * 5
    assert all(r["structure"]["diff"][0].endswith("missing in candidate") for r in rows)


def test_caller_mutating_the_result_cannot_corrupt_the_record(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)
    original = {"day": 1, "items": ["a", "b"]}
    wrapped = Driver("sync").wrap(s, lambda: json.loads(json.dumps(original)))
    result = wrapped()
    result["items"].clear()
    result["extra"] = "x" * 1000
    s.close()
    [row] = records(tmp_path / "log.jsonl")
    expected = json.dumps(original, sort_keys=True, separators=(",", ":")).encode()
    assert row["legacy"]["output_bytes"] == len(expected)
    assert row["legacy"]["output_sha256"] == __import__("hashlib").sha256(expected).hexdigest()


def test_legacy_exception_is_reraised_and_recorded(
    sim: Simulator, tmp_path: Path, driver: Driver
) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)
    error = KeyError("pantry")

    def legacy() -> None:
        raise error

    [got] = driver.run(s, driver.wrap(s, legacy), [()])
    assert got is error
    [row] = records(tmp_path / "log.jsonl")
    assert row["legacy"] == {
        "ok": False,
        "latency_ms": row["legacy"]["latency_ms"],
        "model": None,
        "error": "KeyError: 'pantry'",
        "output_sha256": None,
        "output_bytes": None,
    }
    assert row["candidate"]["ok"] is True
    assert row["latency_ratio"] is None


def test_legacy_model_may_be_read_from_the_result(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, SHADOW)
    wrapped = Driver("sync").wrap(
        s,
        lambda: {"model": "llama3.2-3b-instruct", "text": "x"},
        legacy_model=lambda result: result["model"],
    )
    wrapped()
    s.close()
    [row] = records(tmp_path / "log.jsonl")
    assert row["legacy"]["model"] == "llama3.2-3b-instruct"
    assert row["model"]["verdict"] == "different"


@pytest.mark.parametrize("fault", ["stopped", "hanging", "garbage"])
def test_broken_coordinator_never_reaches_the_caller(
    sim: Simulator, tmp_path: Path, driver: Driver, fault: str
) -> None:
    url = closed_port() if fault == "stopped" else sim.url
    if fault == "hanging":
        sim.set_profile(QUIET.with_knob("defaults", "hang_rate", 1.0))
    if fault == "garbage":
        sim.set_profile(QUIET.with_knob("defaults", "malformed_rate", 1.0))
    s = make_shim(
        url,
        tmp_path,
        SHADOW,
        timeouts=Timeouts(shadow=0.3),
        limits=Limits(workers=8),
        breaker=BreakerPolicy(failures=1000, ratio=1.0, min_calls=1000),
    )
    values = [object() for _ in range(8)]
    started = time.perf_counter()
    got = (
        driver.run(s, driver.wrap(s, lambda i: values[i]), [(i,) for i in range(8)], close=False)
        if driver.kind == "sync"
        else None
    )
    if driver.kind == "sync":
        caller_time = time.perf_counter() - started
        assert all(a is b for a, b in zip(got, values, strict=True))
        assert caller_time < 0.25, "the caller never waits for the task path"
        s.close(timeout=10)
    else:
        got = driver.run(
            s, driver.wrap(s, lambda i: values[i], product="kiwi"), [(i,) for i in range(8)]
        )
        assert all(a is b for a, b in zip(got, values, strict=True))
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 8
    expected = {
        "stopped": "ConnectError",
        "hanging": "no answer within 0.3 s",
        "garbage": "malformed JSON",
    }[fault]
    for row in rows:
        assert row["candidate"]["ok"] is False
        assert row["candidate"]["error"].startswith("TaskFailed: ")
        assert expected in row["candidate"]["error"]
        assert row["legacy"]["ok"] is True


def test_breaker_opens_and_stops_calling_the_task_path(tmp_path: Path, driver: Driver) -> None:
    s = make_shim(
        closed_port(),
        tmp_path,
        SHADOW,
        limits=Limits(workers=1),
        breaker=BreakerPolicy(failures=3, cooldown=60),
    )
    driver.run(s, driver.wrap(s, lambda: 1), [()] * 12)
    log = tmp_path / "log.jsonl"
    compared = records(log)
    [opened] = records(log, "shim.breaker")
    assert (opened["from"], opened["to"]) == ("closed", "open")
    assert opened["reason"] == "3 consecutive failures"
    assert len(compared) >= 3
    assert len(compared) + dropped(log, "breaker_open") == 12


# -- serving ------------------------------------------------------------------------------


def task_value(result: TaskResult) -> Any:
    return ("task", result.model)


def test_live_serves_from_the_task_path_and_compares_legacy(
    sim: Simulator, tmp_path: Path, driver: Driver
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100, shadow: 100}\n")
    got = driver.run(s, driver.wrap(s, lambda: ("legacy", None), response=task_value), [()] * 5)
    assert got == [("task", "qwen2.5-3b-instruct")] * 5
    rows = records(tmp_path / "log.jsonl")
    assert [(r["stage"], r["served_by"]) for r in rows] == [("live", "task")] * 5
    assert all(r["legacy"]["ok"] and r["candidate"]["ok"] for r in rows)


def test_failing_task_path_falls_back_to_legacy(
    sim: Simulator, tmp_path: Path, driver: Driver
) -> None:
    sim.set_profile(QUIET.with_knob("defaults", "error_rate", 1.0))
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100, shadow: 0}\n")
    got = driver.run(s, driver.wrap(s, lambda: "legacy", response=task_value), [()] * 3)
    assert got == ["legacy"] * 3
    rows = records(tmp_path / "log.jsonl")
    assert [r["served_by"] for r in rows] == ["legacy_fallback"] * 3
    assert all(r["candidate"]["status"] == 503 for r in rows)


def test_without_fallback_the_task_error_reaches_the_caller(
    sim: Simulator, tmp_path: Path, driver: Driver
) -> None:
    sim.set_profile(QUIET.with_knob("defaults", "error_rate", 1.0))
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100}\n")
    [got] = driver.run(s, driver.wrap(s, lambda: "legacy", fallback=False), [()])
    assert isinstance(got, TaskFailed) and got.status == 503


def test_canary_share_is_sticky_and_monotonic(tmp_path: Path) -> None:
    from shim import flags

    def served(percent: int) -> set[str]:
        path = write_flags(tmp_path / f"f{percent}.yaml", f"kiwi.meal_plan: {{serve: {percent}}}\n")
        source = flags.FileFlags(path)
        ids = {
            f"user-{i}" for i in range(10_000) if source.decide("kiwi.meal_plan", f"user-{i}").serve
        }
        assert ids == {
            f"user-{i}" for i in range(10_000) if source.decide("kiwi.meal_plan", f"user-{i}").serve
        }, "sticky"
        source.close()
        return ids

    at30, at50 = served(30), served(50)
    assert 0.28 <= len(at30) / 10_000 <= 0.32
    assert at30 <= at50, "raising serve never moves an id back to legacy"


def test_canary_through_the_decorator_uses_key_and_context(
    sim: Simulator, tmp_path: Path, driver: Driver
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 30, stickiness: user_id}\n")
    from shim import flags

    rule = s.flags.rules.active["kiwi.meal_plan"]
    users = [f"u{i}" for i in range(60)]
    wrapped = driver.wrap(s, lambda user: "legacy", response=task_value, key=lambda user: user)
    got = driver.run(s, wrapped, [(u,) for u in users])
    assert [g != "legacy" for g in got] == [rule.decide(u).serve for u in users]
    assert isinstance(rule, flags.Rule)

    (tmp_path / "ctx").mkdir()
    s2 = make_shim(sim.url, tmp_path / "ctx", "kiwi.meal_plan: {serve: 30, stickiness: user_id}\n")
    plain = Driver("sync").wrap(s2, lambda: "legacy", response=task_value)
    for user in users[:20]:
        with shim.context(user_id=user):
            assert (plain() != "legacy") == rule.decide(user).serve
    s2.close()


# -- flags --------------------------------------------------------------------------------


def test_kill_switch_turns_everything_to_bare_legacy(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 100, shadow: 100}\nshim.kill: true\n")
    assert (
        Driver("sync").run(s, Driver("sync").wrap(s, lambda: "legacy"), [()] * 3) == ["legacy"] * 3
    )
    assert records(tmp_path / "log.jsonl") == []


def test_flag_file_changes_take_effect_within_a_second(sim: Simulator, tmp_path: Path) -> None:
    s = make_shim(sim.url, tmp_path, OFF)
    path = tmp_path / "flags.yaml"
    assert s.flags.decide("kiwi.meal_plan", "u").stage == "off"
    path.write_text("kiwi.meal_plan: {serve: 100}\n")
    took = wait_for(lambda: s.flags.decide("kiwi.meal_plan", "u").stage == "live", timeout=3)
    assert took < 1.0
    path.write_text("kiwi.meal_plan: {serve: 400}\n")
    wait_for(
        lambda: (
            s.flush(1.0)
            and any(
                r["level"] == "error" and "kiwi.meal_plan.serve" in r["message"]
                for r in records(tmp_path / "log.jsonl", "shim.flags")
            )
        ),
        timeout=5,
    )
    assert s.flags.decide("kiwi.meal_plan", "u").stage == "live", "last good state kept"
    s.close()
    flag_rows = records(tmp_path / "log.jsonl", "shim.flags")
    # (A poll between write_text's truncate and write adds a "file is empty" error.)
    errors = [r for r in flag_rows if r["level"] == "error" and "file is empty" not in r["message"]]
    assert "flags.yaml:1: kiwi.meal_plan.serve" in errors[-1]["message"]
    assert "keeping the last good flags" in errors[-1]["message"]


def test_an_empty_flags_file_is_taken_for_a_write_in_progress(tmp_path: Path) -> None:
    from shim import flags

    source = flags.FileFlags(write_flags(tmp_path / "flags.yaml", "kiwi.ocr: {shadow: 100}\n"))
    events: list[flags.FlagEvent] = []
    source.subscribe(events.append)
    (tmp_path / "flags.yaml").write_text("  \n")
    source.reload()  # (or the poller, whichever comes first)
    assert source.decide("kiwi.ocr", None).compare, "the last good flags stay"
    assert events[-1].level == "error" and "file is empty" in events[-1].message
    (tmp_path / "flags.yaml").write_text("{}\n")  # the way to turn every task off
    source.reload()
    assert not source.decide("kiwi.ocr", None).compare
    source.close()


# -- bounded background work ----------------------------------------------------------


def test_close_writes_every_queued_comparison(sim: Simulator, tmp_path: Path) -> None:
    sim.set_profile(Profile(seed=1, defaults={"latency_ms": 10, "latency_p99_ms": 10}))
    s = make_shim(sim.url, tmp_path, SHADOW, limits=Limits(workers=4, queue_size=1000))
    wrapped = Driver("sync").wrap(s, lambda i: i)
    for i in range(500):
        wrapped(i)
    assert s.stats()["pending"] > 0, "comparisons are still queued when close starts"
    s.close(timeout=60)
    assert len(records(tmp_path / "log.jsonl")) == 500
    assert dropped(tmp_path / "log.jsonl") == 0


def test_queue_full_drops_are_counted_exactly(
    sim: Simulator, tmp_path: Path, driver: Driver
) -> None:
    sim.set_profile(Profile(seed=1, defaults={"latency_ms": 100, "latency_p99_ms": 100}))
    s = make_shim(sim.url, tmp_path, SHADOW, limits=Limits(workers=2, queue_size=5, concurrency=5))
    driver.run(s, driver.wrap(s, lambda i: i), [(i,) for i in range(200)])
    log = tmp_path / "log.jsonl"
    compared = len(records(log))
    assert 5 <= compared < 200
    assert dropped(log, "queue_full") == 200 - compared
    assert dropped(log) == 200 - compared


def test_shim_from_env(sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CF_ORCH_URL", sim.url)
    monkeypatch.setenv("SHIM_FLAGS", str(write_flags(tmp_path / "f.yaml", SHADOW)))
    monkeypatch.setenv("SHIM_LOG", str(tmp_path / "env.jsonl"))
    s = Shim.from_env()
    Driver("sync").wrap(s, lambda: 1)()
    s.close()
    assert len(records(tmp_path / "env.jsonl")) == 1
    monkeypatch.delenv("CF_ORCH_URL")
    disabled = Shim.from_env()  # self-hosted: no coordinator, legacy only
    assert disabled.enabled is False
    disabled.close()
    monkeypatch.setenv("CF_ORCH_URL", sim.url)
    monkeypatch.delenv("SHIM_FLAGS")
    unflagged = Shim.from_env()  # the flags not configured yet: legacy, said once
    assert unflagged.enabled is False
    unflagged.close()
    monkeypatch.setenv("SHIM_FLAGS", "unleash")
    monkeypatch.delenv("UNLEASH_URL", raising=False)
    with pytest.raises(shim.ConfigError, match="UNLEASH_URL: not set"):
        Shim.from_env()  # named but broken: an error


def test_noise_runs_from_the_environment(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CF_ORCH_URL", sim.url)
    monkeypatch.setenv("SHIM_FLAGS", str(write_flags(tmp_path / "f.yaml", SHADOW)))
    monkeypatch.setenv("SHIM_NOISE_SAMPLE", " 0.25 ")
    s = Shim.from_env()
    assert s.noise_sample == 0.25
    s.close()
    for bad in ("lots", "1.5", "-0.1"):
        monkeypatch.setenv("SHIM_NOISE_SAMPLE", bad)
        with pytest.raises(
            shim.ConfigError, match=f"SHIM_NOISE_SAMPLE: expected a share from 0 to 1, got '{bad}'"
        ):
            Shim.from_env()


def test_metrics_from_the_environment(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SHIM_METRICS serves /metrics (one endpoint per process, every Shim from the
    environment counting on it); a value that is not a port, or a port taken, is a
    ConfigError naming it."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CF_ORCH_URL", sim.url)
    monkeypatch.setenv("SHIM_FLAGS", str(write_flags(tmp_path / "f.yaml", SHADOW)))
    monkeypatch.setenv("SHIM_LOG", str(tmp_path / "env.jsonl"))
    monkeypatch.setenv("SHIM_METRICS", f"127.0.0.1:{port}")
    first, second = Shim.from_env(), Shim.from_env()
    Driver("sync").wrap(first, lambda: 1)()
    first.close()
    second.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert 'shim_pairs_total{candidate="ok",legacy="ok",stage="shadow"' in text
    for bad in ("metrics", "host:0", "127.0.0.1:99999", "²"):
        monkeypatch.setenv("SHIM_METRICS", bad)
        with pytest.raises(shim.ConfigError, match="SHIM_METRICS: expected PORT or HOST:PORT"):
            Shim.from_env()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("SHIM_METRICS", str(taken.getsockname()[1]))
        with pytest.raises(shim.ConfigError, match="SHIM_METRICS: cannot serve /metrics on"):
            Shim.from_env()


def test_context_nests_and_resets() -> None:
    assert shim.current_context() == {}
    with shim.context(user_id=1, tenant="a"):
        with shim.context(session_id="s", tenant=None):
            assert dict(shim.current_context()) == {
                "user_id": "1",
                "tenant": "a",
                "session_id": "s",
            }
        assert dict(shim.current_context()) == {"user_id": "1", "tenant": "a"}
    assert shim.current_context() == {}
