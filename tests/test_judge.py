"""Judges: a sampled share of pairs is put to a judge task through the coordinator, on a
pool of its own; the record carries the verdict, the report counts it and its position
bias, and ``max_judge_loss`` gates on it (issue 20)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shim import Judge, TaskRequest
from shim.analysis.policy import Gates
from shim.analysis.report import build_report
from shim.analysis.report_judge import judge_gate
from shim.comparators import judge_prompt, judged_answers, read_winner
from shim.sim import Profile, Simulator
from shim.sim._judge import DriftMemory, fingerprint, verdict
from shim.testing import TestShim

from .shimkit import make_shim, records

SHADOW = {"kiwi.meal_plan": {"shadow": 100}}


# -- what a judge reads and answers --------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "slot"),
    [
        ('{"winner": "A"}', "A"),
        ('Having read both: {"winner": "b"} -- B lists the totals.', "B"),
        ("tie", "tie"),
        (" A. ", "A"),
        ({"winner": "Tie"}, "tie"),
        ('{"reason": "x"} then {"winner": "B"}', "B"),
        # the format repeated first: the verdict is the last word
        ('Reply {"winner": "A"}, {"winner": "B"} or {"winner": "tie"}. Mine: {"winner": "B"}', "B"),
        ('{"winner": "A"} ... on reflection {"winner": "tie"}', "tie"),
        ('{"reason": "A lacks {totals}", "winner": "B"}', "B"),  # braces inside a string
    ],
)
def test_a_verdict_is_read_from_json_or_a_lone_slot(answer: Any, slot: str) -> None:
    assert read_winner(answer) == slot


@pytest.mark.parametrize("answer", ["both are fine", '{"winner": "C"}', "", "{broken"])
def test_an_answer_that_names_no_winner_is_an_error_quoting_it(answer: str) -> None:
    with pytest.raises(ValueError, match="named no winner"):
        read_winner(answer)


def test_the_prompt_holds_both_answers_and_gives_them_back() -> None:
    prompt = judge_prompt("Compare.", {"total": 12.5}, "line one\nline two", request="scan it")
    assert "[Request]\nscan it" in prompt
    assert judged_answers(prompt) == ('{"total": 12.5}', "line one\nline two")
    assert judged_answers("no answers here") is None


def test_the_simulated_judge_knows_what_it_drifted() -> None:
    memory = DriftMemory(size=2)
    memory.add('[\n  {"day": 1, "total": 9.5}\n]')  # JSON in text, as a model writes it
    good, bad = [{"day": 1, "total": 10.0}], [{"total": 9.5, "day": 1}]
    assert fingerprint(bad) == fingerprint('[{"day":1,"total":9.5}]')

    def ask(first: Any, second: Any, bias: float = 0.0) -> str:
        import random

        text = verdict(judge_prompt("r", first, second), memory, bias, random.Random(0))
        return str(json.loads(text)["winner"])

    assert ask(good, bad) == "A" and ask(bad, good) == "B" and ask(good, good) == "tie"
    assert ask(bad, good, bias=1.0) == "A"  # a judge that always leans to the first
    memory.add("x")
    memory.add("y")
    assert bad not in memory  # only the latest are kept


# -- the pool ------------------------------------------------------------------------


def _shim(judge: Judge, answer: Callable[[TaskRequest], Any], **kw: Any) -> TestShim:
    return TestShim(
        SHADOW,
        answer={"kiwi.meal_plan": lambda req: [1, 2], "kiwi.judge": answer},
        judge=judge,
        **kw,
    )


def _plan(s: TestShim) -> Callable[[], list[int]]:
    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda: TaskRequest(prompt="plan"),
        response=lambda r: r.output,
    )
    def plan() -> list[int]:
        return [1, 3]

    return plan


def test_a_judged_pair_is_recorded_with_the_verdict_in_the_records_terms() -> None:
    prompts: list[str] = []

    def first_wins(req: TaskRequest) -> str:
        prompts.append(req.prompt or "")
        return '{"winner": "A"}'

    with _shim(Judge(sample=1.0, both_orders=0.0), first_wins) as s:
        plan = _plan(s)
        for _ in range(20):
            plan()
        rows = s.comparisons
        stats = s.stats()["judge"]
    assert len(rows) == 20 and stats["calls"] == 20 and stats["judged"] == 20
    for row in rows:
        judge = row["judge"]
        first = "legacy" if judge["order"] == "legacy_first" else "candidate"
        assert judge == {"winner": first, "model": "test-model", "order": judge["order"]}
    orders = {row["judge"]["order"] for row in rows}
    assert orders == {"legacy_first", "candidate_first"}, "the order is drawn per pair"
    assert all(judged_answers(p) in (("[1, 3]", "[1, 2]"), ("[1, 2]", "[1, 3]")) for p in prompts)


def test_both_orders_say_what_each_order_said_and_a_split_is_a_tie() -> None:
    with _shim(Judge(sample=1.0, both_orders=1.0), lambda req: "A") as s:
        plan = _plan(s)
        for _ in range(5):
            plan()
        rows = s.comparisons
        calls = s.stats()["judge"]["calls"]
    assert calls == 10
    for row in rows:
        assert row["judge"]["winner"] == "tie"
        assert row["judge"]["orders"] == {"legacy_first": "legacy", "candidate_first": "candidate"}


def test_a_failing_judge_costs_no_record_and_is_counted_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(req: TaskRequest) -> str:
        return "I cannot decide"

    with _shim(Judge(sample=1.0), broken) as s:
        plan = _plan(s)
        for _ in range(6):
            plan()
        rows, skipped = s.comparisons, s.records
        stats = s.stats()
    assert len(rows) == 6 and not any("judge" in r for r in rows)
    skips = [r for r in skipped if r["event"] == "shim.judge_skipped"]
    assert sum(r["count"] for r in skips) == 6 and {r["reason"] for r in skips} == {"failed"}
    assert "named no winner" in skips[0]["error"]
    assert stats["judge"]["skipped"] == {"failed": 6} and stats["internal_errors"]["judge"] == 6
    said = [r for r in caplog.records if "the judge failed" in r.getMessage()]
    assert len(said) == 1


def test_the_budget_caps_judge_calls_and_counts_the_rest() -> None:
    with _shim(Judge(sample=1.0, both_orders=0.0, budget=3, per=3600), lambda r: "tie") as s:
        plan = _plan(s)
        for _ in range(10):
            plan()
        rows = s.comparisons
        stats = s.stats()["judge"]
    assert len(rows) == 10
    assert stats["calls"] == 3 and stats["skipped"] == {"budget": 7}
    assert sum("judge" in r for r in rows) == 3


def test_the_budget_is_a_sliding_window_never_exceeded() -> None:
    with _shim(Judge(sample=1.0, both_orders=0.0, budget=2, per=0.5), lambda r: "tie") as s:
        plan = _plan(s)
        for _ in range(4):
            plan()
        s.flush()
        first = s.stats()["judge"]
        time.sleep(1.6)  # counted per whole second: free once all of it is past the window
        for _ in range(3):
            plan()
        s.flush()
        second = s.stats()["judge"]
    assert first["calls"] == 2 and first["skipped"] == {"budget": 2}
    assert second["calls"] == 4 and second["skipped"] == {"budget": 3}


def test_a_slow_judge_fills_its_pool_not_the_recorder() -> None:
    release = threading.Event()

    def slow(req: TaskRequest) -> str:
        release.wait(5)
        return "tie"

    with _shim(Judge(sample=1.0, both_orders=0.0, threads=1, queue=2), slow) as s:
        plan = _plan(s)
        started = time.monotonic()
        for _ in range(12):
            plan()
        took = time.monotonic() - started
        time.sleep(0.2)
        waiting = s.stats()["judge"]
        release.set()
        rows = s.comparisons
        stats = s.stats()
    assert took < 1.0, "the calls do not wait for the judge"
    assert waiting["waiting"] in (2, 3)  # two queued, and one being judged once it took one
    judged, skipped = stats["judge"]["judged"], stats["judge"]["skipped"]
    assert set(skipped) == {"pool_full"} and judged + skipped["pool_full"] == 12
    assert judged == waiting["waiting"]
    assert len(rows) == 12, "every pair is recorded, judged or not"
    assert not any(r["event"] == "shim.dropped" for r in s.records)


def test_closing_records_the_pairs_the_judge_did_not_answer_in_time() -> None:
    def never(req: TaskRequest) -> str:
        time.sleep(3)
        return "tie"

    s = _shim(Judge(sample=1.0, both_orders=0.0, threads=1, queue=8), never)
    plan = _plan(s)
    for _ in range(4):
        plan()
    time.sleep(0.1)
    started = time.monotonic()
    s.close(timeout=0.3)
    took = time.monotonic() - started
    rows = [json.loads(line) for line in s._sink.take()]
    comparisons = [r for r in rows if r["event"] == "shim.comparison"]
    skips = [r for r in rows if r["event"] == "shim.judge_skipped"]
    assert took < 1.5
    assert len(comparisons) == 4 and not any("judge" in r for r in comparisons)
    assert sum(r["count"] for r in skips) == 4 and skips[0]["reason"] == "shutdown"


def test_judge_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"product\.task"):
        Judge(task="judge")
    with pytest.raises(ValueError, match="sample"):
        Judge(sample=1.5)
    with pytest.raises(ValueError, match="budget"):
        Judge(budget=-1)
    assert Judge(tasks={"kiwi.ocr"}).tasks == frozenset({"kiwi.ocr"})  # type: ignore[arg-type]


# -- through the simulator: the truth is known --------------------------------------


def _drifting(bias: float = 0.0) -> Profile:
    return Profile(
        seed=3,
        defaults={"latency_ms": 0, "latency_p99_ms": 0},
        tasks={"kiwi.meal_plan": {"drift_rate": 0.5, "drift_kinds": ["values"]}},
        judge_bias=bias,
    )


def _run(sim: Simulator, tmp_path: Path, judge: Judge, calls: int = 120) -> list[dict[str, Any]]:
    import httpx

    flags = "kiwi.meal_plan:\n  shadow: 100\n"
    shim = make_shim(sim.url, tmp_path, flags, judge=judge)
    http = httpx.Client(timeout=10)

    @shim.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda week: TaskRequest(prompt=f"plan week {week}"),
        response=lambda r: json.loads(r.text),
    )
    def plan(week: int) -> Any:
        body = {"model": "qwen2.5-3b-instruct", "prompt": f"plan week {week}"}
        reply = http.post(f"{sim.url}/api/inference", json=body)
        return json.loads(reply.json()["output"])

    try:
        for week in range(calls):
            plan(week)
        shim.flush(10)
    finally:
        shim.close()
        http.close()
    return records(tmp_path / "log.jsonl")


def test_the_judge_through_the_coordinator_finds_the_drifted_answers(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.reset(_drifting())
    rows = _run(sim, tmp_path, Judge(sample=1.0, both_orders=0.2))
    judged = [r for r in rows if "judge" in r]
    assert len(judged) == len(rows) == 120
    drifted = [r for r in judged if r["quality"]["score"] < 1.0] if "quality" in rows[0] else []
    for row in judged:
        # the truth: legacy wins where the simulator drifted the candidate, else a tie;
        # equal answers are a tie without asking the judge
        same = row["legacy"]["output_sha256"] == row["candidate"]["output_sha256"]
        assert row["judge"].get("identical", False) is same
        assert row["judge"]["model"] == (None if same else "llama3.2-3b-instruct")
        assert row["judge"]["winner"] == ("tie" if same else "legacy")
    losses = sum(r["judge"]["winner"] == "legacy" for r in judged)
    assert 40 <= losses <= 80, losses  # drift_rate 0.5
    assert not drifted or all(r["judge"]["winner"] == "legacy" for r in drifted)
    report = build_report([str(tmp_path / "log.jsonl")])
    [task] = report["tasks"]
    judge = task["judge"]
    assert judge["n"] == 120 and judge["losses"] == losses and judge["wins"] == 0
    assert judge["position_bias"] == 0.0 and judge["both_orders"] >= 3
    assert judge["loss_margin"]["low"] > 0.3


def test_position_bias_is_measured_from_the_pairs_judged_both_ways(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.reset(_drifting(bias=0.6))
    _run(sim, tmp_path, Judge(sample=1.0, both_orders=1.0), calls=100)
    [task] = build_report([str(tmp_path / "log.jsonl")])["tasks"]
    bias = task["judge"]["position_bias"]
    # Only drifted pairs (about half) go to the judge (equal ones are ties without it):
    # the first answer wins both times when the second draw leans, 0.6 of them.
    assert 0.4 < bias < 0.8, bias
    assert 30 <= task["judge"]["both_orders"] <= 70


# -- the gate ------------------------------------------------------------------------


def _judged(wins: int, losses: int, ties: int) -> dict[str, Any]:
    from shim.analysis.report_judge import judge_summary

    n = wins + losses + ties
    row = {"judge_n": n, "judge_wins": wins, "judge_losses": losses}
    found = judge_summary(row)
    assert found is not None
    return found


def test_max_judge_loss_rolls_back_holds_and_passes_on_the_interval() -> None:
    gates = Gates(max_judge_loss=0.05)
    assert judge_gate(None, Gates()) is None
    assert judge_gate(None, gates)[0] == "hold"  # type: ignore[index]
    assert judge_gate(_judged(2, 30, 68), gates)[0] == "rollback"  # type: ignore[index]
    assert judge_gate(_judged(40, 40, 320), gates)[0] == "pass"  # type: ignore[index]
    assert judge_gate(_judged(10, 16, 74), gates)[0] == "hold"  # type: ignore[index]
    verdict_, line = judge_gate(_judged(0, 10, 10), gates)  # type: ignore[misc]
    assert verdict_ == "hold" and "needs 10 more" in line
    # 30 ties are not proof that no loss will come: bounds of some width
    assert judge_gate(_judged(0, 0, 30), Gates(max_judge_loss=0.0))[0] == "hold"  # type: ignore[index]


def test_a_judge_that_leans_to_a_position_passes_nothing_but_still_rolls_back() -> None:
    gates = Gates(max_judge_loss=0.1)
    leaning = _judged(40, 40, 320) | {
        "position_bias": 0.9,
        "position_bias_ci95": [0.8, 1.0],
        "both_orders": 40,
    }
    verdict_, line = judge_gate(leaning, gates)  # type: ignore[misc]
    assert verdict_ == "hold" and "leans to the first answer (+0.90 over 40 pairs" in line
    losing = _judged(2, 60, 38) | {
        "position_bias": -0.5,
        "position_bias_ci95": [-0.8, -0.3],
        "both_orders": 20,
    }
    assert judge_gate(losing, gates)[0] == "rollback"  # type: ignore[index]


def test_a_lean_over_few_pairs_or_with_a_wide_interval_blocks_nothing() -> None:
    """One pair judged both ways says +1.00; it says nothing about the judge."""
    from shim.analysis.report_judge import judge_summary

    gates = Gates(max_judge_loss=0.1)
    row = {"judge_n": 40, "judge_wins": 20, "judge_losses": 0, "judge_both": 1, "judge_first": 1}
    one = judge_summary(row)
    assert one is not None and one["position_bias"] == 1.0
    assert judge_gate(one, gates)[0] == "pass"  # type: ignore[index]
    split = judge_summary(row | {"judge_both": 12, "judge_first": 5, "judge_second": 3})
    assert split is not None and split["position_bias_ci95"][0] < 0.2
    assert judge_gate(split, gates)[0] == "pass"  # type: ignore[index]
    leaning = judge_summary(row | {"judge_both": 12, "judge_first": 12})
    assert leaning is not None and judge_gate(leaning, gates)[0] == "hold"  # type: ignore[index]


# -- from the environment ------------------------------------------------------------


def test_a_judge_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from shim.base.errors import ConfigError
    from shim.core.config import judge_from_env

    monkeypatch.setenv("SHIM_JUDGE", "kiwi.judge")
    monkeypatch.setenv("SHIM_JUDGE_SAMPLE", "0.25")
    monkeypatch.setenv("SHIM_JUDGE_BUDGET", "500")
    judge = judge_from_env()
    assert (judge.task, judge.sample, judge.budget, judge.per) == ("kiwi.judge", 0.25, 500, 3600)
    for var, value in (("SHIM_JUDGE_SAMPLE", "1.5"), ("SHIM_JUDGE_BUDGET", "lots")):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            with pytest.raises(ConfigError, match=f"{var}: expected .*got '{value}'"):
                judge_from_env()
    monkeypatch.setenv("SHIM_JUDGE", "judge")
    with pytest.raises(ConfigError, match=r"SHIM_JUDGE: Judge task must be product\.task"):
        judge_from_env()


@pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)
def test_a_forked_child_judges_with_threads_of_its_own(sim: Simulator, tmp_path: Path) -> None:
    import os

    flags = "kiwi.meal_plan: {serve: 0, shadow: 100}\n"
    s = make_shim(sim.url, tmp_path, flags, judge=Judge(sample=1.0, both_orders=0.0))

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda i: TaskRequest(prompt=f"plan {i}"),
        response=lambda r: json.loads(r.text),
    )
    def plan(i: int) -> list[int]:
        return [i]

    plan(0)
    assert s.flush(10)  # the parent's judge threads are up before the fork
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for i in range(1, 4):
                plan(i)
            s.close(timeout=10)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    s.close(timeout=10)
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 4 and all("judge" in r for r in rows), "none waits for ever in the child"


def test_prometheus_counts_verdicts_and_skips() -> None:
    import prometheus_client

    from shim.metrics import PrometheusMetrics

    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    judge = Judge(sample=1.0, both_orders=0.0, budget=3)
    with _shim(judge, lambda req: '{"winner": "tie"}', metrics=metrics) as s:
        plan = _plan(s)
        for _ in range(5):
            plan()
        s.flush()
    assert (
        registry.get_sample_value(
            "shim_judge_verdicts_total",
            {"task": "kiwi.meal_plan", "stage": "shadow", "winner": "tie"},
        )
        == 3
    )
    skipped = {"task": "kiwi.meal_plan", "reason": "budget"}
    assert registry.get_sample_value("shim_judge_skipped_total", skipped) == 2


def test_an_async_call_site_is_judged_the_same_way() -> None:
    import asyncio

    with _shim(Judge(sample=1.0, both_orders=0.0), lambda req: '{"winner": "B"}') as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda: TaskRequest(prompt="plan"),
            response=lambda r: r.output,
        )
        async def plan() -> list[int]:
            return [1, 3]

        async def main() -> None:
            for _ in range(5):
                assert await plan() == [1, 3]
            await s.aflush()

        asyncio.run(main())
        rows = s.comparisons
    assert len(rows) == 5
    for row in rows:
        second = "candidate" if row["judge"]["order"] == "legacy_first" else "legacy"
        assert row["judge"]["winner"] == second


def test_equal_answers_are_a_tie_without_a_judge_call() -> None:
    answers: list[str] = []
    with TestShim(
        SHADOW,
        answer={"kiwi.meal_plan": lambda req: [1, 3], "kiwi.judge": lambda r: answers.append("x")},
        judge=Judge(sample=1.0, both_orders=1.0, budget=4),
    ) as s:
        plan = _plan(s)
        for _ in range(6):
            plan()
        rows = s.comparisons
        stats = s.stats()["judge"]
    assert not answers and stats["calls"] == 0 and stats["skipped"] == {}, "nothing spent"
    assert all(r["judge"] == {**r["judge"], "winner": "tie", "identical": True} for r in rows)


def test_a_judge_task_the_assignments_lack_is_an_error_at_start(tmp_path: Path) -> None:
    from shim.base.errors import ConfigError

    with pytest.raises(ConfigError, match=r"kiwi\.nope: the judge task is assigned no model"):
        make_shim("http://127.0.0.1:9", tmp_path, "{}\n", judge=Judge("kiwi.nope"))


def test_judge_settings_without_a_judge_task_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from shim import Shim
    from shim.base.errors import ConfigError

    monkeypatch.setenv("CF_ORCH_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SHIM_FLAGS", "/nonexistent/flags.yaml")
    monkeypatch.delenv("SHIM_JUDGE", raising=False)
    monkeypatch.setenv("SHIM_JUDGE_SAMPLE", "0.2")
    with pytest.raises(ConfigError, match="SHIM_JUDGE_SAMPLE: set, but SHIM_JUDGE"):
        Shim.from_env()
