"""shim report and shim watch say what is wrong with their input (exit 2) instead of
printing an empty answer, or waiting forever, with exit 0."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shim.cli.app import app

from .test_report import record
from .test_watch import stream

runner = CliRunner()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Two tasks, 50 pairs each, in stage shadow."""
    rng = random.Random(1)
    path = tmp_path / "comparisons.jsonl"
    rows = [
        record(task, rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
        for task in ("kiwi.meal_plan", "kiwi.ocr")
        for _ in range(50)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_missing_log_or_an_empty_glob_is_named(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["report", str(tmp_path / "typo.jsonl")])
    assert missing.exit_code == 2 and "typo.jsonl" in missing.output
    assert "no such log file" in missing.output
    glob = runner.invoke(app, ["report", str(tmp_path / "nothing-*.jsonl")])
    assert glob.exit_code == 2 and "nothing-*.jsonl" in glob.output
    assert "no log matches" in glob.output
    folder = runner.invoke(app, ["report", str(tmp_path)])
    assert folder.exit_code == 2 and "not a file" in folder.output


def test_stdin_still_reads(log: Path) -> None:
    piped = subprocess.run(
        [sys.executable, "-m", "shim", "report", "-", "--format", "json"],
        input=log.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert [t["n"] for t in json.loads(piped.stdout)["tasks"]] == [50, 50]


@pytest.mark.parametrize("option", ["--since", "--until"])
@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "12/01/2026", "5x"])
def test_an_unparseable_time_says_the_format(log: Path, option: str, value: str) -> None:
    result = runner.invoke(app, ["report", str(log), option, value])
    assert result.exit_code == 2, result.output
    assert option in result.output and repr(value) in result.output
    assert "ISO 8601" in result.output and "2026-12-01T12:00:00Z" in result.output


def test_times_are_iso_8601_or_a_duration_back_from_now(tmp_path: Path) -> None:
    """An offset is converted to UTC (the records' zone); 24h means the last 24 hours."""
    rng = random.Random(2)
    now = datetime.now(UTC)
    rows = []
    for hours_ago in (1, 2, 48):
        row = record("kiwi.meal_plan", rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
        row["ts"] = (now - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        rows.append(row)
    path = tmp_path / "times.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def pairs(*options: str) -> int:
        result = runner.invoke(app, ["report", str(path), "--format", "json", *options])
        assert result.exit_code == 0, result.output
        return int(json.loads(result.stdout)["tasks"][0]["n"])

    assert pairs("--since", "24h") == 2
    assert pairs("--since", "7d") == 3
    assert pairs("--since", "90m") == 1 and pairs("--until", "90m") == 2
    cut = (now - timedelta(hours=3)).astimezone(timezone(timedelta(hours=2)))
    assert pairs("--since", cut.isoformat()) == 2, "+02:00 is read as the same instant in UTC"
    assert pairs("--since", (now - timedelta(days=3)).date().isoformat()) == 3
    backwards = runner.invoke(app, ["report", str(path), "--since", "1h", "--until", "2h"])
    assert backwards.exit_code == 2 and "--since" in backwards.output


def test_a_task_the_logs_do_not_have_names_those_they_do(log: Path) -> None:
    result = runner.invoke(app, ["report", str(log), "--task", "acme.nope"])
    assert result.exit_code == 2, result.output
    assert "acme.nope" in result.output
    assert "kiwi.meal_plan" in result.output and "kiwi.ocr" in result.output


def test_an_unknown_stage_is_refused(log: Path) -> None:
    result = runner.invoke(app, ["report", str(log), "--stage", "canery"])
    assert result.exit_code == 2, result.output
    assert "canery" in result.output and "canary" in result.output


def test_filters_that_leave_nothing_are_an_input_error(log: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = runner.invoke(app, ["report", str(empty)])
    assert result.exit_code == 2 and "no comparison records" in result.output
    live = runner.invoke(app, ["report", str(log), "--stage", "live"])
    assert live.exit_code == 2 and "no comparison records" in live.output
    assert "--stage live" in live.output
    old = runner.invoke(app, ["report", str(log), "--until", "2000-01-01"])
    assert old.exit_code == 2 and "no comparison records" in old.output


def test_drops_alone_are_a_row_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "drops.jsonl"
    drop = {
        "event": "shim.dropped",
        "schema": 1,
        "ts": "2026-11-26T12:00:00Z",
        "product": "kiwi",
        "task": "ocr",
        "reason": "breaker_open",
        "count": 4,
    }
    path.write_text(json.dumps(drop) + "\n")
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "kiwi.ocr" in result.output and "HOLD" in result.output


def test_watch_refuses_a_log_that_is_not_there(tmp_path: Path) -> None:
    """`shim watch typo.jsonl --auto-rollback` used to watch nothing forever."""
    flags_file = tmp_path / "flags.yaml"
    flags_file.write_text("kiwi.meal_plan: {serve: 25, shadow: 100}\n")
    command = [sys.executable, "-m", "shim", "watch", str(tmp_path / "typo.jsonl")]
    for extra in (["--once"], []):
        done = subprocess.run(
            [*command, "--auto-rollback", "--flags", str(flags_file), *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done
        assert "typo.jsonl" in done.stderr and "--wait" in done.stderr


def test_watch_follows_the_one_log_a_glob_names(tmp_path: Path) -> None:
    log = tmp_path / "comparisons-1.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in stream(random.Random(3), 400, 400)))
    result = runner.invoke(
        app, ["watch", str(tmp_path / "comparisons-*.jsonl"), "--once", "--from-start"]
    )
    assert result.exit_code == 1 and "BREACH kiwi.meal_plan" in result.output
    (tmp_path / "comparisons-2.jsonl").write_text("")
    several = runner.invoke(app, ["watch", str(tmp_path / "comparisons-*.jsonl"), "--once"])
    # several logs are watched as one; from their ends, there is nothing to judge yet
    assert several.exit_code == 2 and "comparisons-2.jsonl" in several.output
    assert "read no comparison records from 2 logs" in several.output


def test_watch_wait_follows_a_log_that_appears_later(tmp_path: Path) -> None:
    log = tmp_path / "later.jsonl"
    with subprocess.Popen(
        [sys.executable, "-m", "shim", "watch", str(log), "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        # A watcher that never breaches must not hang the suite.
        timer = threading.Timer(30, proc.terminate)
        timer.start()
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline()
            assert "waiting for" in first and "later.jsonl" in first
            rows = stream(random.Random(4), 100, 400)
            log.write_text("".join(json.dumps(r) + "\n" for r in rows))
            deadline = time.monotonic() + 20
            line = ""
            while "BREACH" not in line and time.monotonic() < deadline:
                line = proc.stderr.readline()
            assert "BREACH kiwi.meal_plan" in line
        finally:
            timer.cancel()
            proc.terminate()
            proc.wait(10)


def test_watch_wait_once_waits_for_the_log_then_evaluates_it(tmp_path: Path) -> None:
    """`--wait --once` used to print "waiting..." and exit 0 at once, having read nothing."""
    log = tmp_path / "later.jsonl"
    with subprocess.Popen(
        [sys.executable, "-m", "shim", "watch", str(log), "--wait", "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        timer = threading.Timer(30, proc.terminate)  # never hang the suite
        timer.start()
        try:
            assert proc.stdout is not None
            assert "waiting for" in proc.stdout.readline()
            assert proc.poll() is None, "still waiting for the log"
            rows = stream(random.Random(4), 100, 400)
            whole = tmp_path / "whole.jsonl"  # appears whole: --once reads what is there
            whole.write_text("".join(json.dumps(r) + "\n" for r in rows))
            whole.rename(log)
            out, err = proc.communicate(timeout=20)
        finally:
            timer.cancel()
    assert proc.returncode == 1, (out, err)
    assert "BREACH kiwi.meal_plan" in err


def test_watch_wait_gives_up_after_its_timeout_with_exit_2(tmp_path: Path) -> None:
    started = time.monotonic()
    result = runner.invoke(
        app, ["watch", str(tmp_path / "never.jsonl"), "--wait", "--once", "--wait-timeout", "0.5"]
    )
    assert result.exit_code == 2, result.output
    assert "never.jsonl did not appear within 0.5 s" in result.output
    assert time.monotonic() - started >= 0.5


@pytest.mark.parametrize("extra", [[], ["--from-start"]])
def test_watch_once_that_reads_no_comparison_is_exit_2(tmp_path: Path, extra: list[str]) -> None:
    """An empty log, or one read from its end: nothing was evaluated, so no exit 0."""
    log = tmp_path / "comparisons.jsonl"
    log.write_text("" if extra else json.dumps(stream(random.Random(5), 10, 0)[0]) + "\n")
    result = runner.invoke(app, ["watch", str(log), "--once", *extra])
    assert result.exit_code == 2, result.output
    assert "read no comparison records" in result.output
    if not extra:
        assert "--from-start" in result.output, "says how to read what is already there"


def test_watch_once_says_what_it_evaluated(tmp_path: Path) -> None:
    log = tmp_path / "comparisons.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in stream(random.Random(6), 300, 0)))
    result = runner.invoke(app, ["watch", str(log), "--once", "--from-start"])
    assert result.exit_code == 0, result.output
    assert "read 300 comparison records of 1 task(s); no breach" in result.output
