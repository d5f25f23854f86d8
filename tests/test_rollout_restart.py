"""shim rollout killed mid-step (SIGKILL, no chance to tidy up) and started again:
it takes up the same step with the same evidence, neither lost nor counted twice."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .test_rollout import TASK, Traffic, decisions

PLAN = """\
steps:
  - {serve: 0, shadow: 100, soak: 0, min_pairs: 200}
  - {serve: 10, shadow: 100, soak: 1, min_pairs: 200}
  - {serve: 100, shadow: 10, soak: 0, min_pairs: 100}
"""
POLICY = "defaults:\n  max_error_increase: 0.08\n  max_mismatch: 0.08\n"


class Controller:
    """``shim rollout`` in a process of its own; its lines as they come."""

    def __init__(self, tmp_path: Path) -> None:
        args = [sys.executable, "-m", "shim", "rollout", TASK, "--interval", "0.1"]
        for option, name in (("--plan", "plan.yaml"), ("--log", "comparisons.jsonl")):
            args += [option, str(tmp_path / name)]
        args += ["--flags", str(tmp_path / "flags.yaml"), "--policy", str(tmp_path / "policy.yaml")]
        env = os.environ | {"COLUMNS": "400"}
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None or not self.lines.empty(), seen
                continue
            seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} never said; said: {seen}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_a_controller_killed_mid_step_resumes_it_with_the_same_evidence(tmp_path: Path) -> None:
    (tmp_path / "flags.yaml").write_text(f"{TASK}: {{serve: 0, shadow: 100}}\n")
    (tmp_path / "plan.yaml").write_text(PLAN)
    (tmp_path / "policy.yaml").write_text(POLICY)
    log = tmp_path / "comparisons.jsonl"
    traffic = Traffic(log)
    traffic.add(300, "shadow")

    first = Controller(tmp_path)
    try:
        first.wait_for("advance (step 1 of 2)")
        traffic.add(150, "canary")
        time.sleep(1.0)  # ten looks: read and counted in memory, and now it dies
    finally:
        first.kill()
    assert first.proc.returncode == -signal.SIGKILL

    second = Controller(tmp_path)
    try:
        # the same step, its 150 pairs: none lost, the step's start not taken again
        said = second.wait_for("hold (step 1 of 2)")
        assert "150 of 200 pairs" in said, said
        traffic.add(100, "canary")
        second.wait_for("advance (step 2 of 2)")
    finally:
        second.kill()
    rows = decisions(log)
    assert [r["action"] for r in rows] == ["advance", "advance"]
    assert [r["step"] for r in rows] == [1, 2]
    # the second advance rests on the 250 pairs of step 1: before and after the kill
    assert rows[1]["evidence"]["pairs"] == 250
    assert json.loads(log.read_text().splitlines()[-1])["to"]["serve"] == 100


def test_the_live_view_in_a_terminal_shows_each_gate_against_its_line(tmp_path: Path) -> None:
    """A terminal gets the live table (rich thinks FORCE_COLOR's output is one): the
    step, soak, pairs, each bound against its line, the p95 and cost rollback lines."""
    (tmp_path / "flags.yaml").write_text(f"{TASK}: {{serve: 0, shadow: 100}}\n")
    (tmp_path / "plan.yaml").write_text(PLAN)
    (tmp_path / "policy.yaml").write_text(
        POLICY + "  max_cost_ratio: 1.25\nprices:\n  m: {input_per_1k: 0.01}\n"
    )
    Traffic(tmp_path / "comparisons.jsonl").add(
        100, "shadow", change=lambda row: row["legacy"].update(usage={"input_tokens": 500})
    )
    args = [sys.executable, "-m", "shim", "rollout", TASK, "--once"]
    for option in ("plan", "flags", "policy"):
        args += [f"--{option}", str(tmp_path / f"{option}.yaml")]
    args += ["--log", str(tmp_path / "comparisons.jsonl")]
    env = os.environ | {"FORCE_COLOR": "1", "COLUMNS": "150"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    shown = done.stdout
    assert f"shim rollout {TASK}" in shown
    for row in ("step", "soaked", "time left", "pairs", "error increase (upper)",
                "typical latency ratio (upper)", "p95 latency ratio (lower)",
                "cost per call ratio"):  # fmt: skip
        assert f"│ {row} " in shown, row
    assert "rolls back over 1.25" in shown and "100 of 200 pairs" in shown
