"""A flags source missing at start: the app runs on legacy, says so once, and takes the
flags when the file appears. ``flags_required`` (env ``SHIM_FLAGS_REQUIRED=1``) makes
a missing source an error instead, for those who want the crash."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shim import ConfigError, Shim, TaskRequest, flags
from shim.sim import Simulator

from .shimkit import records, wait_for


def replace(path: Path, text: str) -> None:
    """Write ``path`` as editors and ``shim promote`` do, whole at once: a poll never
    sees it empty or half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_file_flags_missing_at_start_decide_legacy_until_the_file_appears(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flags.yaml"
    source = flags.FileFlags(path, poll_interval=0.02)  # no exception
    events: list[flags.FlagEvent] = []
    source.subscribe(events.append)
    try:
        assert source.decide("kiwi.meal_plan", "u") is flags.OFF
        assert source.version == 0, "no flags read yet"
        [missing] = events
        assert (missing.level, missing.operation) == ("error", "flags.missing")
        assert missing.message == (
            f"{path}: file not found; every task runs legacy until it appears"
        )
        replace(path, "kiwi.meal_plan: {serve: 0, shadow: 100}\n")
        wait_for(lambda: source.decide("kiwi.meal_plan", "u").compare, 2)
    finally:
        source.close()
    assert [(e.level, e.version) for e in events] == [("error", 0), ("info", 1)]


def test_file_flags_required_raise_for_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        flags.FileFlags(tmp_path / "flags.yaml", required=True)


def test_from_env_with_a_missing_flags_file_runs_legacy_then_takes_the_flags(
    sim: Simulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "flags.yaml"
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("CF_ORCH_URL", sim.url)
    monkeypatch.setenv("SHIM_FLAGS", str(path))
    monkeypatch.setenv("SHIM_LOG", str(log))
    monkeypatch.delenv("SHIM_FLAGS_REQUIRED", raising=False)
    with caplog.at_level(logging.WARNING, logger="shim"):
        s = Shim.from_env()  # at import, as an app's module would: no exception
    assert s.enabled is True, "a real Shim, waiting for its flags"

    @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="p"))
    def plan() -> str:
        return "legacy"

    try:
        assert [plan() for _ in range(3)] == ["legacy"] * 3
        s.flush()
        assert records(log) == [], "every task off: nothing compared"
        [warning] = [r.getMessage() for r in caplog.records]
        assert "flags.missing" in warning and str(path) in warning
        assert s.stats()["internal_errors"] == {"flags.missing": 1}
        [error] = records(log, "shim.error")
        assert error["operation"] == "flags.missing" and str(path) in error["error"]

        replace(path, "kiwi.meal_plan: {serve: 0, shadow: 100}\n")
        wait_for(lambda: s.flags.decide("kiwi.meal_plan", None).compare, 2)
        assert plan() == "legacy"
    finally:
        s.close()
    assert len(records(log)) == 1, "compared once the file appeared"
    assert len(caplog.records) == 1, "the file appearing is no warning"


@pytest.mark.parametrize("how", ["env", "keyword"])
def test_flags_required_makes_a_missing_file_fatal(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CF_ORCH_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SHIM_FLAGS", str(tmp_path / "flags.yaml"))
    monkeypatch.setenv("SHIM_LOG", str(tmp_path / "log.jsonl"))
    if how == "env":
        monkeypatch.setenv("SHIM_FLAGS_REQUIRED", "1")
    with pytest.raises(ConfigError, match="file not found"):
        Shim.from_env(**({"flags_required": True} if how == "keyword" else {}))


@pytest.mark.parametrize("how", ["env", "keyword"])
def test_flags_required_makes_an_unset_shim_flags_fatal(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CF_ORCH_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("SHIM_FLAGS", raising=False)
    monkeypatch.setenv("SHIM_LOG", str(tmp_path / "log.jsonl"))
    if how == "env":
        monkeypatch.setenv("SHIM_FLAGS_REQUIRED", "1")
    with pytest.raises(ConfigError, match="SHIM_FLAGS: not set"):
        Shim.from_env(**({"flags_required": True} if how == "keyword" else {}))


def test_flags_required_must_be_a_yes_or_no(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CF_ORCH_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SHIM_FLAGS_REQUIRED", "sometimes")
    with pytest.raises(ConfigError, match="SHIM_FLAGS_REQUIRED: expected 1 or 0"):
        Shim.from_env()


def test_shim_flags_unset_runs_legacy_and_names_the_missing_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CF_ORCH_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("SHIM_FLAGS", raising=False)
    monkeypatch.delenv("SHIM_FLAGS_REQUIRED", raising=False)
    monkeypatch.setenv("SHIM_LOG", str(tmp_path / "log.jsonl"))
    with caplog.at_level(logging.WARNING, logger="shim"):
        s = Shim.from_env()
    s.close()
    assert s.enabled is False
    [warning] = caplog.records
    assert "SHIM_FLAGS is not set" in warning.getMessage()
    [error] = records(tmp_path / "log.jsonl", "shim.error")
    assert error["operation"] == "flags.missing" and "SHIM_FLAGS" in error["error"]


SCRIPT = """
import shim
s = shim.Shim.from_env()
@s.shadow(product="kiwi", task="meal_plan", request=lambda: shim.TaskRequest(prompt="p"))
def plan():
    return "legacy"
print(plan())
s.close()
"""


def test_a_missing_flags_file_is_one_line_on_stderr(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CF_ORCH_URL": "http://127.0.0.1:9",
        "SHIM_FLAGS": str(tmp_path / "flags.yaml"),
        "SHIM_LOG": str(tmp_path / "log.jsonl"),
    }
    env.pop("SHIM_FLAGS_REQUIRED", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "legacy\n"
    [line] = done.stderr.splitlines()
    assert "flags.missing" in line and "flags.yaml: file not found" in line
