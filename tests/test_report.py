"""shim report on logs with planted truth: every number and every verdict as planted."""

from __future__ import annotations

import gzip
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shim import ConfigError
from shim.analysis.policy import Policy
from shim.analysis.report import build_report
from shim.cli.app import app

runner = CliRunner()


def record(
    task: str,
    rng: random.Random,
    *,
    legacy_err: float,
    cand_err: float,
    mismatch: float,
    speed: float,
    routing: float = 0.0,
) -> dict[str, Any]:
    legacy_ms = 800 * math.exp(rng.gauss(0, 0.4))
    legacy_ok, cand_ok = rng.random() >= legacy_err, rng.random() >= cand_err
    match = None if not (legacy_ok and cand_ok) else rng.random() >= mismatch
    product, _, name = task.partition(".")
    return {
        "event": "shim.comparison",
        "schema": 1,
        "ts": "2026-11-26T12:00:00.000000Z",
        "product": product,
        "task": name,
        "call_site": "x:y",
        "call_id": "c",
        "stage": "shadow",
        "served_by": "legacy",
        "legacy": {
            "ok": legacy_ok,
            "latency_ms": legacy_ms,
            "model": "m",
            "error": None if legacy_ok else "E: x",
        },
        "candidate": {
            "ok": cand_ok,
            "latency_ms": legacy_ms * speed,
            "model": "m",
            "service_type": "cf-text",
            "node_id": "n",
            "status": 200,
        },
        "model": {"verdict": "same", "expected": "m", "routing_error": rng.random() < routing},
        "structure": {
            "match": match,
            "legacy_valid": True,
            "candidate_valid": True,
            "diff": None if match is not False else ["[].x: missing in candidate"],
        },
        "latency_ratio": speed,
    }


PLANTED: dict[str, dict[str, Any]] = {
    "kiwi.good": {
        "n": 3000,
        "legacy_err": 0.002,
        "cand_err": 0.002,
        "mismatch": 0.001,
        "speed": 0.8,
    },
    "kiwi.failing": {
        "n": 3000,
        "legacy_err": 0.01,
        "cand_err": 0.08,
        "mismatch": 0.0,
        "speed": 0.8,
    },
    "kiwi.few": {"n": 120, "legacy_err": 0.0, "cand_err": 0.0, "mismatch": 0.0, "speed": 0.9},
    "kiwi.drifty": {"n": 3000, "legacy_err": 0.0, "cand_err": 0.0, "mismatch": 0.012, "speed": 0.9},
    "kiwi.slow": {"n": 3000, "legacy_err": 0.0, "cand_err": 0.0, "mismatch": 0.0, "speed": 1.4},
    "kiwi.misrouted": {
        "n": 500,
        "legacy_err": 0.0,
        "cand_err": 0.0,
        "mismatch": 0.0,
        "speed": 1.0,
        "routing": 0.01,
    },
}
VERDICTS = {
    "kiwi.good": "PROMOTE",
    "kiwi.failing": "ROLLBACK",
    "kiwi.few": "HOLD",
    "kiwi.drifty": "HOLD",
    "kiwi.slow": "HOLD",
    "kiwi.misrouted": "ROLLBACK",
}


@pytest.fixture(scope="module")
def planted_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(11)
    path = tmp_path_factory.mktemp("logs") / "comparisons.jsonl"
    lines = []
    for task, spec in PLANTED.items():
        spec = dict(spec)
        n = spec.pop("n")
        lines += [json.dumps(record(task, rng, **spec)) for _ in range(n)]
    rng.shuffle(lines)
    lines.append(
        json.dumps(
            {
                "event": "shim.dropped",
                "schema": 1,
                "ts": "2026-11-26T12:00:01Z",
                "product": "kiwi",
                "task": "good",
                "reason": "queue_full",
                "count": 17,
            }
        )
    )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_verdict_is_the_planted_one(planted_log: Path) -> None:
    report = build_report([str(planted_log)])
    assert {t["task"]: t["verdict"] for t in report["tasks"]} == VERDICTS
    by = {t["task"]: t for t in report["tasks"]}
    assert by["kiwi.few"]["reasons"] == [
        "120 pairs; at least 300 are needed to decide: needs 180 more"
    ]
    assert "error rate is higher" in by["kiwi.failing"]["reasons"][0]
    assert any("latency p50 ratio 1.40" in r for r in by["kiwi.slow"]["reasons"])
    assert any("mismatch upper bound" in r for r in by["kiwi.drifty"]["reasons"])
    assert "routing error" in by["kiwi.misrouted"]["reasons"][0]


def test_every_number_matches_the_truth_within_sampling_error(planted_log: Path) -> None:
    report = build_report([str(planted_log)])
    assert report["records"] == sum(s["n"] for s in PLANTED.values()) + 1
    assert report["bad_lines"] == 0
    for task in report["tasks"]:
        spec = PLANTED[task["task"]]
        n = spec["n"]
        assert task["n"] == n
        for key, planted in (
            ("legacy_error_rate", spec["legacy_err"]),
            ("candidate_error_rate", spec["cand_err"]),
        ):
            sigma = math.sqrt(max(planted * (1 - planted), 1e-4) / n)
            assert abs(task[key] - planted) <= 4 * sigma, (task["task"], key)
            interval = task["intervals"][key]
            assert interval["low"] <= task[key] <= interval["high"]
        assert abs((1 - task["structure_match_rate"]) - spec["mismatch"]) <= 4 * math.sqrt(
            max(spec["mismatch"], 1e-3) / n
        )
        lat = task["latency_ms"]
        assert lat["legacy"]["p50"] == pytest.approx(800, rel=0.12)
        assert lat["candidate"]["p50"] / lat["legacy"]["p50"] == pytest.approx(
            spec["speed"], rel=0.02
        )
        ratio = task["latency_ratio"]["p50"]
        assert ratio["low"] <= spec["speed"] * 1.02 and ratio["high"] >= spec["speed"] * 0.98
    good = next(t for t in report["tasks"] if t["task"] == "kiwi.good")
    assert good["dropped"] == 17 and good["dropped_by_reason"] == {"queue_full": 17}


def test_bad_lines_are_counted_never_a_crash(tmp_path: Path, planted_log: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        planted_log.read_text()
        + "not json\n"
        + json.dumps({"event": "shim.comparison", "schema": 2})
        + "\n"
        + '{"event": "shim.comparison", "sche'
    )
    report = build_report([str(path)])
    assert report["bad_lines"] == 3
    assert report["records"] == sum(s["n"] for s in PLANTED.values()) + 1
    # A whole last line is read strictly first; a bad line in the middle sends the
    # logs to a second, tolerant read, and the figures are the same.
    lines = planted_log.read_text().splitlines(keepends=True)
    middle = len(lines) // 2
    path.write_text("".join([*lines[:middle], "not json\n", "[1, 2]\n", *lines[middle:]]))
    again = build_report([str(path)])
    assert again["bad_lines"] == 2
    assert again["tasks"] == build_report([str(planted_log)])["tasks"]


def test_no_data_is_hold_never_a_pass(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(
        json.dumps(
            {
                "event": "shim.dropped",
                "schema": 1,
                "ts": "x",
                "product": "kiwi",
                "task": "ocr",
                "reason": "breaker_open",
                "count": 4,
            }
        )
        + "\n"
    )
    [task] = build_report([str(path)])["tasks"]
    assert (task["task"], task["verdict"], task["n"]) == ("kiwi.ocr", "HOLD", 0)
    assert task["reasons"] == ["no comparisons yet"]


def test_verdicts_and_models_are_counted_exactly(tmp_path: Path) -> None:
    """Every verdict (an unfamiliar one too) and every candidate model a task saw:
    one model per task is the common case, several the case a model change brings."""
    rng = random.Random(5)
    lines = []
    plan = {
        "kiwi.one": [("same", "m")] * 40,
        "kiwi.two": [("same", "m")] * 30
        + [("alias", "M-q4")] * 5
        + [("different", "rogue")] * 3
        + [("unknown", None)] * 2
        + [("renamed", "m")] * 4,
    }
    for task, calls in plan.items():
        for verdict, model in calls:
            r = record(task, rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
            r["model"]["verdict"], r["candidate"]["model"] = verdict, model
            lines.append(json.dumps(r))
    path = tmp_path / "models.jsonl"
    path.write_text("\n".join(lines) + "\n")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("defaults: {min_pairs: 10, allowed_models: [m, M-q4]}\n")
    report = build_report([str(path)], policy=Policy.load(policy_file))
    one, two = report["tasks"]
    assert (one["model_verdicts"], one["candidate_models"]) == ({"same": 40}, ["m"])
    assert two["model_verdicts"] == {
        "alias": 5,
        "different": 3,
        "renamed": 4,
        "same": 30,
        "unknown": 2,
    }
    assert two["candidate_models"] == ["M-q4", "m", "rogue"]
    assert one["verdict"] != "ROLLBACK"
    assert two["verdict"] == "ROLLBACK"
    assert any("rogue" in reason for reason in two["reasons"]), two["reasons"]


def test_tokens_gpu_seconds_and_cost_per_path(tmp_path: Path) -> None:
    """Usage sums per path, GPU-seconds (reported, else the call's latency), cost at the
    policy's prices, and the task path's spend minus legacy's."""
    rng = random.Random(9)
    lines = []
    for i in range(10):
        r = record("kiwi.meal_plan", rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
        r["legacy"].update(model="big", latency_ms=2000.0)
        r["legacy"]["usage"] = {"input_tokens": 100, "output_tokens": 300}  # no gpu_s
        r["candidate"].update(model="small", latency_ms=500.0)
        r["candidate"]["usage"] = {"input_tokens": 100, "output_tokens": 200, "gpu_s": 0.25}
        if i == 9:
            del r["candidate"]["usage"]  # a coordinator that did not say
        lines.append(json.dumps(r))
    path = tmp_path / "usage.jsonl"
    path.write_text("\n".join(lines) + "\n")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "prices:\n"
        "  big: {input_per_1k: 0.5, output_per_1k: 1.5, gpu_hour: 3.6}\n"
        "  small: {input_per_1k: 0.1, output_per_1k: 0.2, gpu_hour: 1.8}\n"
    )
    [task] = build_report([str(path)], policy=Policy.load(policy_file))["tasks"]
    legacy, candidate, delta = (task["usage"][k] for k in ("legacy", "candidate", "delta"))
    assert legacy == {
        "calls_with_usage": 10,
        "input_tokens": 1000,
        "output_tokens": 3000,
        "gpu_s": 20.0,  # not reported: 2 s of latency each
        "gpu_s_reported_calls": 0,
        "cost": pytest.approx(10 * (0.05 + 0.45 + 2 * 0.001)),
    }
    assert candidate == {
        "calls_with_usage": 9,
        "input_tokens": 900,
        "output_tokens": 1800,
        "gpu_s": 9 * 0.25 + 0.5,
        "gpu_s_reported_calls": 9,
        "cost": pytest.approx(9 * (0.01 + 0.04 + 0.25 * 0.0005) + 0.5 * 0.0005),
    }
    assert delta["input_tokens"] == -100 and delta["output_tokens"] == -1200
    assert delta["cost"] == pytest.approx(candidate["cost"] - legacy["cost"], abs=1e-6)
    [unpriced] = build_report([str(path)])["tasks"]
    assert (
        unpriced["usage"]["legacy"]["cost"] is None and unpriced["usage"]["delta"]["cost"] is None
    )


def test_policy_overrides_per_task(tmp_path: Path, planted_log: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "defaults: {min_pairs: 300}\ntasks:\n"
        "  kiwi.few: {min_pairs: 100, max_error_increase: 0.05, max_mismatch: 0.05}\n"
        "  kiwi.slow: {max_latency_ratio_p50: 1.5, max_latency_ratio_p95: 1.5}\n"
    )
    report = build_report([str(planted_log)], policy=Policy.load(policy_file))
    by = {t["task"]: t["verdict"] for t in report["tasks"]}
    assert by["kiwi.few"] == "PROMOTE"
    assert by["kiwi.slow"] == "PROMOTE"
    policy_file.write_text("defaults: {min_pairs: 0}\ntasks:\n  kiwi.few: {max_mismatch: 2}\n")
    with pytest.raises(ConfigError) as caught:
        Policy.load(policy_file)
    found = [str(p) for p in caught.value.problems]
    assert any(p.startswith(f"{policy_file}:1: defaults.min_pairs") for p in found), found


def test_cli_formats_filters_inputs_and_exit_codes(tmp_path: Path, planted_log: Path) -> None:
    gz = tmp_path / "rotated.jsonl.gz"
    with gzip.open(gz, "wt") as out:
        out.write(planted_log.read_text())
    result = runner.invoke(app, ["report", str(gz), "--format", "json", "--task", "kiwi.good"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [t["task"] for t in data["tasks"]] == ["kiwi.good"]
    assert set(data) >= {"schema", "records", "bad_lines", "tasks"}
    assert set(data["tasks"][0]) >= {
        "task",
        "n",
        "verdict",
        "reasons",
        "legacy_error_rate",
        "candidate_error_rate",
        "structure_match_rate",
        "model_verdicts",
        "dropped",
        "latency_ms",
    }
    table = runner.invoke(app, ["report", str(planted_log)])
    assert table.exit_code == 1, "a ROLLBACK verdict is a gate failure"
    assert "ROLLBACK" in table.output and "kiwi.failing" in table.output
    md = runner.invoke(
        app, ["report", str(tmp_path / "*.gz"), "--format", "markdown", "--task", "kiwi.good"]
    )
    assert md.exit_code == 0 and md.stdout.startswith("**task-shim report**")
    assert "| **PROMOTE** | kiwi.good |" in md.stdout
    piped = subprocess.run(
        [sys.executable, "-m", "shim", "report", "-", "--format", "json", "--task", "kiwi.few"],
        input=planted_log.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0 and json.loads(piped.stdout)["tasks"][0]["n"] == 120
    missing = runner.invoke(app, ["report", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such log file" in missing.output
    bad_format = runner.invoke(app, ["report", str(planted_log), "--format", "pdf"])
    assert bad_format.exit_code == 2


def test_promote_demands_a_promote_verdict_from_the_evidence(
    tmp_path: Path, planted_log: Path
) -> None:
    flags_file = tmp_path / "flags.yaml"
    flags_file.write_text("kiwi.good: {shadow: 100}\nkiwi.drifty: {shadow: 100}\n")
    log = tmp_path / "changes.jsonl"
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults: {min_soak: 0}\n")  # the planted pairs share one second
    base = [
        "--flags",
        str(flags_file),
        "--log",
        str(log),
        "--assignments",
        str(tmp_path / "none.yaml"),
        "--policy",
        str(policy),
    ]
    refused = runner.invoke(app, ["promote", "kiwi.drifty", *base])
    assert refused.exit_code == 1 and "needs evidence" in refused.output
    held = runner.invoke(app, ["promote", "kiwi.drifty", "--evidence", str(planted_log), *base])
    assert held.exit_code == 1
    assert "refusing to promote kiwi.drifty: the evidence from stage shadow says HOLD" in (
        held.output
    )
    assert "mismatch upper bound" in held.output
    from shim import flags

    assert flags.load_flags_file(flags_file).tasks["kiwi.drifty"].serve == 0, "unchanged"
    ok = runner.invoke(app, ["promote", "kiwi.good", "--evidence", str(planted_log), *base])
    assert ok.exit_code == 0, ok.output
    forced = runner.invoke(
        app, ["promote", "kiwi.drifty", "--evidence", str(planted_log), "--force", *base]
    )
    assert (
        forced.exit_code == 0
        and "forced past it (the evidence from stage shadow says HOLD)" in (forced.output)
    )
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["task"], r["forced"], r["evidence"]["verdict"]) for r in rows] == [
        ("good", False, "PROMOTE"),
        ("drifty", True, "HOLD"),
    ]
    assert rows[0]["to"]["serve"] == 1 and rows[0]["evidence"]["n"] == 3000


def test_html_report_renders_in_headless_chromium(tmp_path: Path, planted_log: Path) -> None:
    """One self-contained page: it renders, says the verdicts, and logs no console errors."""
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("needs Debian's chromium: `make test` installs it (scripts/ensure-chromium.sh)")
    page = tmp_path / "report.html"
    result = runner.invoke(
        app, ["report", str(planted_log), "--format", "html", "--out", str(page)]
    )
    assert result.exit_code == 1, "kiwi.failing is a ROLLBACK"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2400",
    ]
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.stat().st_size > 20_000, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = [
        line
        for line in done.stderr.splitlines()
        if "CONSOLE" in line or "Uncaught" in line or "Failed to load" in line
    ]
    assert console == []
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert "task-shim report: 1 PROMOTE, 3 HOLD, 2 ROLLBACK" in dom
    for name, verdict in VERDICTS.items():
        assert f'{name} <span class="badge"' in dom and verdict in dom
    assert dom.count("<svg") >= 2 * len(VERDICTS)


def test_interval_statistics() -> None:
    from shim.analysis.stats import Z_ONE_SIDED_95, newcombe_difference, wilson

    rate, low, high = wilson(0, 300, z=Z_ONE_SIDED_95) or (1, 1, 1)
    assert (rate, low) == (0.0, 0.0)
    assert high == pytest.approx(0.0089, abs=2e-4), "300 clean pairs pass a 1 % gate"
    rate, low, high = wilson(30, 100) or (0, 0, 0)
    assert (round(low, 4), round(high, 4)) == (0.2189, 0.3958)  # Wilson 1927, 95 %
    d, low, high = newcombe_difference(56, 70, 48, 80) or (0, 0, 0)
    assert (round(d, 4), round(low, 4), round(high, 4)) == (0.2, 0.0524, 0.3339)  # Newcombe 1998
    assert wilson(0, 0) is None
