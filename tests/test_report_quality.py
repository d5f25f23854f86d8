"""The report's content quality and the ``min_quality`` gate, on logs whose truth is
planted: shapes always match, the candidate's content is worse by a known amount
(issue 20)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shim.analysis.policy import Policy
from shim.analysis.report import build_report

POLICY = "defaults: {min_pairs: 300, min_soak: 0, min_quality: 0.95}\n"


def record(task: str, rng: random.Random, score: float | None, noise: float | None) -> str:
    """A comparison whose structure matches, with a content score (and a noise run's)."""
    product, _, name = task.partition(".")
    latency = 500 * (1 + rng.random())
    row: dict[str, Any] = {
        "event": "shim.comparison",
        "schema": 1,
        "ts": "2026-12-01T12:00:00.000000Z",
        "product": product,
        "task": name,
        "stage": "shadow",
        "served_by": "legacy",
        "legacy": {"ok": True, "latency_ms": latency, "model": "m"},
        "candidate": {"ok": True, "latency_ms": latency, "model": "m"},
        "model": {"verdict": "same", "expected": "m"},
        "structure": {"match": True, "legacy_valid": True, "candidate_valid": True, "diff": None},
        "latency_ratio": 1.0,
    }
    if score is not None:
        row["quality"] = {"method": "json_fields", "score": score, "detail": {}}
    if noise is not None:
        row["structure"]["noise"] = {"match": True, "diff": None, "score": noise}
    return json.dumps(row)


#: task -> (mean of the planted scores, mean of the noise scores or None)
PLANTED = {
    "kiwi.equal": (1.0, None),
    "kiwi.worse": (0.80, None),  # a model that keeps the shape, gets 20 % of it wrong
    "kiwi.noisy": (0.86, 0.88),  # as good as legacy against itself
    "kiwi.unscored": (None, None),
}


def planted(tmp_path: Path, n: int = 1500) -> Path:
    rng = random.Random(20)
    lines = []
    for task, (mean, noise) in PLANTED.items():
        for i in range(n):
            score = None
            if mean is not None:  # uniform around the mean, within [0, 1]
                spread = min(mean, 1 - mean)
                score = mean + rng.uniform(-spread, spread)
            noisy = None
            if noise is not None and i % 10 == 0:  # one call in ten got a noise run
                noisy = noise + rng.uniform(-0.1, 0.1)
            lines.append(record(task, rng, score, noisy))
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(lines) + "\n")
    return log


@pytest.fixture
def report(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    found = build_report([str(planted(tmp_path))], policy=Policy.load(tmp_path / "policy.yaml"))
    return {t["task"]: t for t in found["tasks"]}


def test_worse_content_with_matching_shapes_rolls_back_on_quality(
    report: dict[str, Any],
) -> None:
    worse = report["kiwi.worse"]
    assert worse["structure_match_rate"] == 1.0
    assert worse["verdict"] == "ROLLBACK"
    assert any("vs min_quality 0.950" in r for r in worse["reasons"]), worse["reasons"]
    low, high = worse["quality"]["ci95"]
    assert low <= PLANTED["kiwi.worse"][0] <= high
    assert high - low < 0.03


def test_equal_content_promotes(report: dict[str, Any]) -> None:
    equal = report["kiwi.equal"]
    assert equal["verdict"] == "PROMOTE", equal["reasons"]
    assert equal["quality"] == {
        "n": 1500,
        "mean": 1.0,
        "ci95": [1.0, 1.0],
        "noise": None,
        "relative": {"mean": 1.0, "low": 1.0, "high": 1.0, "against_noise": False},
    }


def test_quality_is_read_against_legacys_own_noise(report: dict[str, Any]) -> None:
    noisy = report["kiwi.noisy"]
    quality = noisy["quality"]
    assert quality["noise"]["n"] == 150
    assert quality["noise"]["mean"] == pytest.approx(0.88, abs=0.02)
    assert quality["relative"]["mean"] == pytest.approx(0.86 / 0.88, abs=0.02)
    assert quality["relative"]["against_noise"] is True
    # the bounds take the noise mean's own interval: wider than the mean's alone
    relative, mean = quality["relative"], quality["mean"]
    assert relative["low"] < mean / quality["noise"]["mean"] - (mean - quality["ci95"][0]) / 2
    assert noisy["verdict"] == "PROMOTE", noisy["reasons"]


def test_few_noise_runs_are_not_relied_on(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    log = tmp_path / "few.jsonl"
    rng = random.Random(2)
    # two noise runs that happen to score 0.5 would make a 0.6 candidate look perfect
    rows = [record("kiwi.a", rng, 0.6, 0.5 if i < 2 else None) for i in range(400)]
    log.write_text("\n".join(rows) + "\n")
    [task] = build_report([str(log)], policy=Policy.load(tmp_path / "policy.yaml"))["tasks"]
    assert task["quality"]["noise"]["n"] == 2
    assert task["quality"]["relative"]["against_noise"] is False
    # legacy may be as far from itself as the candidate is from it: no rollback on that
    assert task["verdict"] == "HOLD"
    assert any("only 2 noise runs: not relied on" in r for r in task["reasons"])


def test_no_scores_hold_under_min_quality_and_nothing_changes_without_it(
    report: dict[str, Any], tmp_path: Path
) -> None:
    unscored = report["kiwi.unscored"]
    assert unscored["quality"] is None
    assert unscored["verdict"] == "HOLD"
    assert any("no scored pairs" in r for r in unscored["reasons"])
    plain = {t["task"]: t for t in build_report([str(tmp_path / "log.jsonl")])["tasks"]}
    assert {t: r["verdict"] for t, r in plain.items()} == dict.fromkeys(PLANTED, "PROMOTE")


def test_few_scored_pairs_hold_until_min_pairs(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    log = tmp_path / "few.jsonl"
    rng = random.Random(1)
    rows = [record("kiwi.a", rng, 1.0 if i < 100 else None, None) for i in range(400)]
    log.write_text("\n".join(rows) + "\n")
    [task] = build_report([str(log)], policy=Policy.load(tmp_path / "policy.yaml"))["tasks"]
    assert task["verdict"] == "HOLD"
    assert any("100 scored pairs, needs 200 more" in r for r in task["reasons"])
    # two equal low scores make a zero-width interval: too few to roll back on
    two = [record("kiwi.b", rng, 0.5 if i < 2 else None, None) for i in range(400)]
    log.write_text("\n".join(two) + "\n")
    [task] = build_report([str(log)], policy=Policy.load(tmp_path / "policy.yaml"))["tasks"]
    assert task["verdict"] == "HOLD", task["reasons"]


def test_cli_json_and_table_show_quality(tmp_path: Path) -> None:
    log = planted(tmp_path, n=400)
    done = subprocess.run(
        [sys.executable, "-m", "shim", "report", str(log), "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    tasks = {t["task"]: t for t in json.loads(done.stdout)["tasks"]}
    assert tasks["kiwi.worse"]["quality"]["n"] == 400
    table = subprocess.run(
        [sys.executable, "-m", "shim", "report", str(log)],
        capture_output=True,
        text=True,
        check=False,
        env={"COLUMNS": "200", "PATH": ""},
    )
    assert "quality" in table.stdout


def test_diff_paths_rank_what_differs_beyond_legacys_noise(tmp_path: Path) -> None:
    rng = random.Random(5)
    rows = []
    for i in range(1000):
        row = json.loads(record("kiwi.plan", rng, None, None))
        diff = []
        if i % 5 == 0:  # 20 %: a key the candidate drops
            diff.append("[].x: missing in candidate")
        if i % 10 == 1:  # 10 %: a type that legacy itself changes as often
            diff += ["[].y: number -> str", "[].y: number -> str", "... 2 more"]
        if diff:
            row["structure"].update(match=False, diff=diff)
        if i % 10 == 0:  # a noise run on every tenth call; legacy changes y in a tenth
            noisy = ["[].y: number -> str"] if i % 100 == 0 else None
            row["structure"]["noise"] = {"match": noisy is None, "diff": noisy}
        rows.append(json.dumps(row))
    log = tmp_path / "paths.jsonl"
    log.write_text("\n".join(rows) + "\n")
    [task] = build_report([str(log)])["tasks"]
    assert task["diff_paths"] == [
        {"path": "[].x", "rate": 0.2, "noise_rate": 0.0, "kind": "structure"},
        {"path": "[].y", "rate": 0.1, "noise_rate": 0.1, "kind": "structure"},
    ]
    table = subprocess.run(
        [sys.executable, "-m", "shim", "report", str(log)],
        capture_output=True,
        text=True,
        check=False,
        env={"COLUMNS": "200", "PATH": ""},
    )
    assert "kiwi.plan: paths that differ: [].x 20.00 % (noise 0.00 %); [].y 10.00 %" in table.stdout


def test_paths_whose_values_differ_in_the_same_shape_are_listed_as_content(
    tmp_path: Path,
) -> None:
    """The issue's main case: the same shape, wrong values. The paths a content score
    found worst are counted per pair, beside those whose shape differs."""
    rng = random.Random(7)
    rows = []
    for i in range(200):
        row = json.loads(record("kiwi.ocr", rng, None, None))
        worst = {}
        if i % 4 == 0:  # 25 %: the total read wrong
            worst["totals.total"] = 0.2
        if i % 10 == 0:  # 10 %: an item name too
            worst["items[].name"] = 0.6
        if i % 20 == 1:  # 5 %: a key missing, in shape (and a low score for it)
            row["structure"].update(match=False, diff=["merchant.phone: missing in candidate"])
            worst["merchant.phone"] = 0.0
        score = 1.0 if not worst else 0.8
        row["quality"] = {"method": "json_fields", "score": score, "detail": {"worst": worst}}
        rows.append(json.dumps(row))
    log = tmp_path / "values.jsonl"
    log.write_text("\n".join(rows) + "\n")
    [task] = build_report([str(log)])["tasks"]
    assert task["diff_paths"] == [
        {"path": "totals.total", "rate": 0.25, "noise_rate": None, "kind": "value"},
        {"path": "items[].name", "rate": 0.1, "noise_rate": None, "kind": "value"},
        {"path": "merchant.phone", "rate": 0.05, "noise_rate": None, "kind": "structure"},
    ]
    from shim.analysis.report_format import diff_paths_line

    assert diff_paths_line(task) == (
        "kiwi.ocr: paths that differ: totals.total 25.00 % (content); items[].name 10.00 % "
        "(content); merchant.phone 5.00 %"
    )


def test_a_diff_path_with_a_colon_in_a_key_is_kept_whole(tmp_path: Path) -> None:
    rng = random.Random(6)
    rows = []
    for _ in range(20):
        row = json.loads(record("kiwi.plan", rng, None, None))
        row["structure"].update(match=False, diff=[".links.http://x: missing in candidate"])
        rows.append(json.dumps(row))
    log = tmp_path / "colon.jsonl"
    log.write_text("\n".join(rows) + "\n")
    [task] = build_report([str(log)])["tasks"]
    assert [p["path"] for p in task["diff_paths"]] == [".links.http://x"]


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ('"0.9"', "expected a number from 0 to 1, not text (write it without quotes)"),
        ("abc", "expected a number from 0 to 1, not text (write it without quotes)"),
        ("true", "expected a number from 0 to 1, not true or false"),
        ("1.5", "Input should be less than or equal to 1 (got 1.5)"),
    ],
)
def test_a_share_in_the_policy_is_a_number_from_0_to_1(
    tmp_path: Path, value: str, said: str
) -> None:
    from shim.analysis.policy import Policy
    from shim.base.errors import ConfigError

    path = tmp_path / "policy.yaml"
    path.write_text(f"defaults:\n  min_pairs: 10\n  min_quality: {value}\n")
    with pytest.raises(ConfigError) as raised:
        Policy.load(path)
    assert f"policy.yaml:3: defaults.min_quality: {said}" in str(raised.value)


@pytest.mark.parametrize("tasks", ["1.0", "[kiwi.ocr]", "text"])
def test_tasks_in_the_policy_that_are_not_a_mapping_are_a_config_error(
    tmp_path: Path, tasks: str
) -> None:
    """Found by the config fuzzer: ``tasks: 1.0`` raised a TypeError, not a ConfigError."""
    from shim.analysis.policy import Policy
    from shim.base.errors import ConfigError

    path = tmp_path / "policy.yaml"
    path.write_text(f"defaults:\n  min_pairs: 10\ntasks: {tasks}\n")
    with pytest.raises(ConfigError) as raised:
        Policy.load(path)
    assert "policy.yaml:3: tasks:" in str(raised.value)
