"""shim watch: rolling windows over a growing log, and rollback on a breach."""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shim import flags
from shim.analysis.policy import Policy
from shim.cli.app import app
from shim.ops.watch import Watch, follow

from .test_report import record
from .test_rollout import dearer, slow_tail

runner = CliRunner()


def stream(rng: random.Random, healthy: int, failing: int) -> list[dict[str, Any]]:
    rows = [
        record("kiwi.meal_plan", rng, legacy_err=0.0, cand_err=0.0, mismatch=0.0, speed=0.9)
        for _ in range(healthy)
    ]
    rows += [
        record("kiwi.meal_plan", rng, legacy_err=0.0, cand_err=0.3, mismatch=0.0, speed=0.9)
        for _ in range(failing)
    ]
    for row in rows:
        row["stage"] = "canary"
    return rows


def test_a_task_that_starts_failing_breaches_within_one_window() -> None:
    watch = Watch()
    rows = stream(random.Random(1), healthy=600, failing=400)
    breaches = [(i, b) for i, row in enumerate(rows) if (b := watch.feed(row)) is not None]
    assert breaches, "the failing stretch must breach"
    first, breach = breaches[0]
    assert 600 < first <= 600 + 200, "within 200 pairs of the failures starting"
    # an always-valid bound over the stage's pairs: one crossing is enough
    assert breach.task == "kiwi.meal_plan" and breach.consecutive == 1
    assert breach.reasons[0].startswith("candidate error rate higher by ")
    assert re.search(r"always-valid 9[\d.]+ % over", breach.describe())
    assert breach.pairs == first + 1


def test_records_that_are_not_pairs_leave_the_stage_and_its_evidence_alone() -> None:
    """A line of another shape every tenth record (no stage, no paths): the failing
    stretch still breaches, on the evidence before and after each."""
    rows = stream(random.Random(1), healthy=600, failing=400)
    mixed: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        mixed.append(row)
        if i % 10 == 0:
            mixed.append({"event": "shim.comparison", "schema": 1, "product": "kiwi",
                          "task": "meal_plan", "stage": None})  # fmt: skip
    watch = Watch()
    breaches = [b for row in mixed if (b := watch.feed(row)) is not None]
    assert breaches and breaches[0].pairs > 600, "the stage's pairs, all of them"


def test_healthy_traffic_never_breaches() -> None:
    watch = Watch()
    assert not any(watch.feed(row) for row in stream(random.Random(2), 3000, 0))


def test_a_task_path_that_gets_slower_breaches_on_latency() -> None:
    """Every task-path time 1.5 times legacy's: over the policy's
    max_latency_ratio_p50 (1.10), on the typical ratio's always-valid bound."""
    rows = stream(random.Random(6), 300, 0)
    for row in rows:
        row["candidate"]["latency_ms"] = row["legacy"]["latency_ms"] * 1.5
    watch = Watch()
    breaches = [b for row in rows if (b := watch.feed(row)) is not None]
    assert breaches and breaches[0].reasons[0].startswith("task path slower: typical latency")
    assert "ratio 1.50" in breaches[0].reasons[0] and "over the 1.10 line" in breaches[0].reasons[0]


def test_a_slower_tail_or_a_dearer_path_breaches_and_prices_decide_the_cost() -> None:
    """Only the task path's slowest tenth 1.5 times slower (the p95 line, 1.25), or a
    model priced twice as high (``max_cost_ratio`` 1.25): each breaches alone."""
    policy = Policy.model_validate(
        {
            "defaults": {"max_cost_ratio": 1.25},
            "prices": {"m": {"input_per_1k": 0.01}, "big": {"input_per_1k": 0.02}},
        }
    )
    for change, said in (
        (slow_tail, "task path slower in the tail"),
        (dearer, "task path dearer"),
    ):
        rows = stream(random.Random(8), 3000, 0)
        for row in rows:
            row["candidate"]["latency_ms"] = row["legacy"]["latency_ms"]
            change(row)
        watch = Watch(policy)
        breaches = [b for row in rows if (b := watch.feed(row)) is not None]
        assert breaches and [r.split(":")[0] for r in breaches[0].reasons] == [said]
    # a model without a price is not free: its pairs are left out of the cost test
    unpriced = Policy.model_validate(
        {"defaults": {"max_cost_ratio": 1.25}, "prices": {"m": {"input_per_1k": 0.01}}}
    )
    rows = stream(random.Random(8), 3000, 0)
    for row in rows:
        dearer(row)
    watch = Watch(unpriced)
    assert not any(watch.feed(row) for row in rows)
    # and a cost line without prices is a mistake, said when the policy is read
    with pytest.raises(ValueError, match="max_cost_ratio needs prices"):
        Policy.model_validate({"tasks": {"kiwi.ocr": {"max_cost_ratio": 1.25}}})


def test_a_b_a_a_stage_watched_a_long_time_does_not_breach_on_noise() -> None:
    """The fixed bounds re-tested every 50 pairs rolled back A/A traffic (the same 5 %
    error rate on both paths) when the line sat at no difference; the always-valid
    ones hold."""
    policy = Policy.model_validate({"defaults": {"rollback_error_increase": 0.0}})
    rng = random.Random(7)
    rows = [
        record("kiwi.meal_plan", rng, legacy_err=0.05, cand_err=0.05, mismatch=0.0, speed=1.0)
        for _ in range(6000)
    ]
    for row in rows:
        row["stage"] = "canary"
    watch = Watch(policy)
    assert not any(watch.feed(row) for row in rows)
    assert watch.evaluations == 6000 // 50


def test_cli_rolls_back_and_says_why(tmp_path: Path) -> None:
    log = tmp_path / "comparisons.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in stream(random.Random(3), 400, 400)))
    flag_file = tmp_path / "flags.yaml"
    flag_file.write_text("kiwi.meal_plan: {serve: 25, shadow: 100}\n")
    result = runner.invoke(
        app,
        ["watch", str(log), "--auto-rollback", "--once", "--from-start", "--flags", str(flag_file)],
    )
    assert result.exit_code == 1, result.output
    assert "BREACH kiwi.meal_plan breached in stage canary" in result.output
    assert "rolled back kiwi.meal_plan: serve 25 % -> 0 %" in result.output
    assert flags.load_flags_file(flag_file).tasks["kiwi.meal_plan"].serve == 0
    [decision] = [
        json.loads(line) for line in log.read_text().splitlines() if '"shim.rollback"' in line
    ]
    assert decision["automatic"] is True and decision["consecutive"] == 1
    assert decision["from"]["serve"] == 25 and "candidate error rate higher" in decision["reason"]


def test_follow_reads_a_growing_log_across_rotation(tmp_path: Path) -> None:
    log = tmp_path / "comparisons.jsonl"
    log.write_text("")
    seen: list[int] = []
    done = threading.Event()

    def reader() -> None:
        for row in follow(log, poll=0.02, stop=done.is_set, from_start=True):
            seen.append(row["n"])

    thread = threading.Thread(target=reader)
    thread.start()
    with log.open("a") as out:
        out.write("".join(json.dumps({"n": i}) + "\n" for i in range(5)))
    deadline = time.monotonic() + 5
    while len(seen) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.rename(log, tmp_path / "comparisons.jsonl.1")
    with log.open("a") as out:
        out.write("".join(json.dumps({"n": i}) + "\n" for i in range(5, 9)))
        out.write('{"n": 9')  # a line still being written is not read yet
    while len(seen) < 9 and time.monotonic() < deadline:
        time.sleep(0.02)
    with log.open("a") as out:
        out.write("}\n")
    while len(seen) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    done.set()
    thread.join(5)
    assert seen == list(range(10))


def test_content_that_gets_worse_breaches_on_min_quality_and_equal_never() -> None:
    policy = Policy.model_validate({"defaults": {"min_quality": 0.95}})
    rng = random.Random(3)

    def scored(rows: list[dict[str, Any]], mean: float) -> list[dict[str, Any]]:
        for row in rows:
            row["quality"] = {"method": "json_fields", "score": mean + rng.uniform(-0.05, 0.05)}
        return rows

    good = scored(stream(rng, 600, 0), 0.99)
    watch = Watch(policy)
    assert not any(watch.feed(row) for row in good)
    worse = scored(stream(rng, 400, 0), 0.80)  # shapes and errors as before: only content
    breaches = [b for row in worse if (b := watch.feed(row)) is not None]
    assert breaches and breaches[0].reasons[0].startswith("quality 0.9")
    assert "under min_quality 0.950" in breaches[0].reasons[0]
    assert not any(Watch().feed(row) for row in worse), "no min_quality: content not read"
    # a candidate as good as legacy, whose own answers differ as much (noise runs):
    # read against that noise, never a breach
    noisy = scored(stream(rng, 1500, 0), 0.85)
    for row in noisy[::5]:
        row["structure"]["noise"] = {"score": 0.85 + rng.uniform(-0.05, 0.05)}
    watch = Watch(policy)
    assert not any(watch.feed(row) for row in noisy)
    # without noise runs the same scores are read as they are: under the line
    watch = Watch(policy)
    plain = [b for row in scored(stream(rng, 1500, 0), 0.85) if (b := watch.feed(row))]
    assert plain and "relative" not in plain[0].reasons[0]
    # and a candidate worse than legacy's noise is told as such
    worse_than_noise = scored(stream(rng, 1500, 0), 0.70)
    for row in worse_than_noise[::5]:
        row["structure"]["noise"] = {"score": 0.85 + rng.uniform(-0.05, 0.05)}
    watch = Watch(policy)
    found = [b for row in worse_than_noise if (b := watch.feed(row))]
    assert found and "relative to legacy's own noise" in found[0].reasons[0]


def test_a_score_too_large_for_a_float_is_read_not_a_crash() -> None:
    policy = Policy.model_validate({"defaults": {"min_quality": 0.95}})
    watch = Watch(policy)
    rows = stream(random.Random(4), 60, 0)
    for row in rows:
        row["quality"] = {"method": "m", "score": 10**400}
    assert not any(watch.feed(row) for row in rows)
    assert watch.records == 60


def test_a_judge_that_prefers_legacy_breaches_on_max_judge_loss_and_ties_never() -> None:
    policy = Policy.model_validate({"defaults": {"max_judge_loss": 0.1}})
    rng = random.Random(5)

    def judged(rows: list[dict[str, Any]], lose: float) -> list[dict[str, Any]]:
        for i, row in enumerate(rows):
            if i % 10:  # a tenth judged, as Judge()'s default sample: a window of its own
                continue
            winner = "legacy" if rng.random() < lose else "tie"
            row["judge"] = {"winner": winner, "model": "judge", "order": "legacy_first"}
        return rows

    watch = Watch(policy)
    assert not any(watch.feed(row) for row in judged(stream(rng, 800, 0), 0.0))
    worse = judged(stream(rng, 2000, 0), 0.6)
    breaches = [b for row in worse if (b := watch.feed(row)) is not None]
    assert breaches and "vs max_judge_loss 0.100" in breaches[0].reasons[0]
    assert not any(Watch().feed(row) for row in worse), "no max_judge_loss: verdicts not read"
    odd = stream(rng, 60, 0)
    for row in odd:  # what a judge record is not: skipped, never a crash
        row["judge"] = {"winner": ["legacy"], "orders": "x"}
    assert not any(Watch(policy).feed(row) for row in odd)


def test_a_regression_late_in_a_long_stage_is_caught_as_fast_as_early() -> None:
    """The tests start again every 2,000 pairs (alpha spent over epochs): 20,000
    healthy pairs before the failures do not slow the breach down."""
    rows = stream(random.Random(8), healthy=20_000, failing=800)
    watch = Watch()
    first = next(i for i, row in enumerate(rows) if watch.feed(row) is not None)
    assert 20_000 < first <= 20_000 + 2_000 + 300, first


def _mismatching(n: int, every: int, seed: int) -> str:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = record("kiwi.meal_plan", rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
        row["structure"]["match"] = i % every != 0
        rows.append(json.dumps(row) + "\n")
    return "".join(rows)


def test_several_logs_are_watched_as_one(tmp_path: Path) -> None:
    """Each replica's log alone (100 pairs, 9 % mismatched) is too little to cross the
    2 % line; the three together cross it, a log that appears later included."""
    for i in (1, 2):
        (tmp_path / f"replica-{i}.jsonl").write_text(_mismatching(100, 12, seed=i))
    alone = runner.invoke(
        app, ["watch", str(tmp_path / "replica-1.jsonl"), "--once", "--from-start"]
    )
    assert alone.exit_code == 0, alone.output
    two = runner.invoke(app, ["watch", str(tmp_path / "replica-*.jsonl"), "--once", "--from-start"])
    assert two.exit_code == 0 and "read 200 comparison records" in two.output, two.output
    (tmp_path / "replica-3.jsonl").write_text(_mismatching(100, 12, seed=3))
    three = runner.invoke(
        app,
        [
            *("watch", str(tmp_path / "replica-1.jsonl"), str(tmp_path / "replica-[23].jsonl")),
            *("--once", "--from-start"),
        ],
    )
    assert three.exit_code == 1, three.output
    assert "watching 3 log(s)" in three.output and "mismatch rate 9." in three.output
    missing = runner.invoke(app, ["watch", str(tmp_path / "replica-1.jsonl"), "nope.jsonl"])
    assert missing.exit_code == 2 and "nope.jsonl: no such log file" in missing.output


def test_a_log_that_comes_to_match_is_read_from_its_start(tmp_path: Path) -> None:
    from shim.ops.logtail import LogTail

    first = tmp_path / "a.jsonl"
    first.write_text(_mismatching(5, 12, seed=1))
    tail = LogTail([first], from_end=True)
    assert list(tail.poll()) == []  # from its end: what it held is not new
    with first.open("a") as out:
        out.write(_mismatching(2, 12, seed=2))
    assert len(list(tail.poll())) == 2
    later = tmp_path / "b.jsonl"
    later.write_text(_mismatching(3, 12, seed=3))
    tail.add(later)
    assert len(list(tail.poll())) == 3 and tail.paths == [first, later]


@pytest.mark.subprocess
def test_a_glob_reads_the_logs_of_replicas_that_start_later(tmp_path: Path) -> None:
    """The watcher starts before most of the fleet: a glob that matches one log (or
    none) at start reads each log that comes to match it, from its start."""
    import subprocess
    import sys

    (tmp_path / "replica-1.jsonl").write_text(_mismatching(100, 12, seed=1))
    watcher = subprocess.Popen(
        [sys.executable, "-m", "shim", "watch", str(tmp_path / "replica-*.jsonl")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # started, reading replica-1 from its end
        (tmp_path / "replica-2.jsonl").write_text(_mismatching(150, 12, seed=2))
        (tmp_path / "replica-3.jsonl").write_text(_mismatching(150, 12, seed=3))
        time.sleep(2.0)
    finally:
        watcher.terminate()
        out, err = watcher.communicate(timeout=30)
    assert "watching 1 log(s)" in out and "and what comes to match" in out, out
    assert "BREACH kiwi.meal_plan" in err, out + err
