"""Many replicas, one rollout: three app processes export their metrics to a real
Prometheus server (tests/promkit.py), and ``shim watch --prometheus`` judges the fleet
from what they counted together."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim.analysis.policy import Policy
from shim.ops.prom_evidence import PromEvidence
from shim.ops.watch import Watch
from shim.sim import Simulator

from .promkit import SCRAPE_MS, Prometheus, free_port, needs_prometheus, prometheus_server
from .shimkit import records

pytestmark = [needs_prometheus, pytest.mark.subprocess]

HERE = Path(__file__).resolve().parent
REPLICAS = 3
#: The latency lines are out of the way: legacy here takes 2 ms, the simulator less.
POLICY = "defaults: {max_latency_ratio_p50: 1000, max_latency_ratio_p95: 1000}\n"


@pytest.fixture(scope="module")
def fleet_ports() -> list[int]:
    return [free_port() for _ in range(REPLICAS)]


@pytest.fixture(scope="module")
def prom(fleet_ports: list[int]) -> Iterator[Prometheus]:
    with prometheus_server(fleet_ports) as server:
        yield server


class Replica:
    """One app process: its log, its metrics port, and how to stop it."""

    def __init__(self, sim: Simulator, tmp: Path, port: int, name: str, **kw: int) -> None:
        self.log = tmp / f"{name}.jsonl"
        cmd = [sys.executable, str(HERE / "fleet_replica.py"), "--orch", sim.url]
        cmd += ["--flags", str(tmp / "flags.yaml"), "--log", str(self.log), "--port", str(port)]
        for key, value in kw.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def done(self) -> str:
        """``done N`` once its calls are made and recorded."""
        return self.finished()[0]

    def finished(self) -> tuple[str, float]:
        """(``done N``, the seconds its calls took)."""
        assert self.proc.stdout is not None
        said, _, seconds = self.proc.stdout.readline().strip().partition(" in ")
        return said, float(seconds.removesuffix(" s"))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def shim_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shim", *args], capture_output=True, text=True, timeout=60
    )


def scraped() -> None:
    """Long enough for Prometheus to have scraped what the replicas hold now."""
    time.sleep(3 * SCRAPE_MS / 1000)


def test_the_fleet_breaches_where_no_replica_does_alone(
    sim: Simulator, prom: Prometheus, fleet_ports: list[int], tmp_path: Path
) -> None:
    """Each replica's share mismatches 9 % of 100 pairs: too few to cross the 2 %
    rollback line on its own evidence; the three together cross it."""
    flags_file = tmp_path / "flags.yaml"
    flags_file.write_text("kiwi.meal_plan: {serve: 10, shadow: 100}\n")
    (tmp_path / "policy.yaml").write_text(POLICY)
    replicas = [
        Replica(sim, tmp_path, port, f"r{i}", calls=100, mismatch_every=12)
        for i, port in enumerate(fleet_ports)
    ]
    try:
        assert [r.done() for r in replicas] == ["done 100"] * REPLICAS
        scraped()
        policy = Policy.load(tmp_path / "policy.yaml")
        for replica in replicas:  # alone, no replica's evidence is enough
            alone = Watch(policy)
            assert [alone.feed(r) for r in records(replica.log)] == [None] * 100
            assert alone.evaluations == 2
        watched = shim_cli(
            *("watch", "--prometheus", prom.url, "--once", "--auto-rollback"),
            *("--policy", str(tmp_path / "policy.yaml"), "--flags", str(flags_file)),
            *("--record", str(tmp_path / "watch.jsonl")),
        )
        assert watched.returncode == 1, watched.stdout + watched.stderr
        assert "BREACH kiwi.meal_plan breached in stage canary" in watched.stderr
        assert "mismatch rate 9.00 %" in watched.stderr and "over 300 pairs" in watched.stderr
        assert "rolled back kiwi.meal_plan: serve 10 % -> 0 %" in watched.stdout
        assert "serve: 0" in flags_file.read_text()
        (recorded,) = records(tmp_path / "watch.jsonl", "shim.rollback")
        assert recorded["automatic"] is True and "mismatch rate 9.00 %" in recorded["reason"]
    finally:
        for replica in replicas:
            replica.kill()


def test_a_rollout_rolls_back_on_the_fleets_evidence(
    sim: Simulator, prom: Prometheus, fleet_ports: list[int], tmp_path: Path
) -> None:
    """`shim rollout --prometheus`: the step's evidence is what every replica counted
    since the step began; its own records still go to its log."""
    flags_file = tmp_path / "flags.yaml"
    flags_file.write_text("kiwi.meal_plan: {serve: 10, shadow: 100}\n")
    (tmp_path / "policy.yaml").write_text(POLICY)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "steps:\n  - {serve: 0, shadow: 100}\n  - {serve: 10, shadow: 100}\non_breach: {step: 0}\n"
    )
    log = tmp_path / "rollout.jsonl"  # made by the controller: its records only
    scraped()  # the last test's replicas are gone from the scrape
    controller = subprocess.Popen(
        [
            *(sys.executable, "-m", "shim", "rollout", "kiwi.meal_plan", "--plan", str(plan)),
            *("--log", str(log), "--flags", str(flags_file)),
            *("--policy", str(tmp_path / "policy.yaml")),
            *("--prometheus", prom.url, "--interval", "0.3", "--json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    replicas: list[Replica] = []
    try:
        deadline = time.monotonic() + 30
        while not any(r.get("action") == "take_up" for r in records(log, "shim.rollout")):
            assert controller.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        replicas = [
            Replica(sim, tmp_path, port, f"c{i}", calls=100, mismatch_every=12)
            for i, port in enumerate(fleet_ports)
        ]
        out, err = controller.communicate(timeout=90)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.communicate()
        for replica in replicas:
            replica.kill()
    assert controller.returncode == 1, out + err
    (back,) = [r for r in records(log, "shim.rollout") if r["action"] == "rollback"]
    assert back["to"] == {"serve": 0, "shadow": 100, "stage": "shadow"}
    assert "mismatch rate" in back["reason"]
    assert "serve: 0" in flags_file.read_text()
    assert not records(log)  # no comparison of its own: the replicas logged theirs


def test_a_fleet_budget_holds_the_fleet_within_10_percent(
    sim: Simulator, fleet_ports: list[int], tmp_path: Path
) -> None:
    """30 comparisons a second for the fleet, shared by 3 replicas that each call 60
    times a second with everything shadowed: together they compare 27 to 33 a second."""
    (tmp_path / "flags.yaml").write_text("kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    replicas = [
        Replica(sim, tmp_path, port, f"b{i}", calls=240, rate=60, fleet_rate=30, replicas=3)
        for i, port in enumerate(fleet_ports)
    ]
    try:
        finished = [r.finished() for r in replicas]
    finally:
        for replica in replicas:
            replica.kill()
    assert [said for said, _ in finished] == ["done 240"] * REPLICAS
    compared = [len(records(r.log)) for r in replicas]
    fleet_rate = sum(n / seconds for n, (_, seconds) in zip(compared, finished, strict=True))
    print(f"fleet shadow rate {fleet_rate:.2f}/s (budget 30/s), per replica {compared}")
    assert 27 <= fleet_rate <= 33, (compared, finished)
    skipped = sum(r["count"] for replica in replicas for r in records(replica.log, "shim.dropped"))
    assert skipped + sum(compared) == 3 * 240  # every call compared or counted as skipped


def test_a_replica_killed_or_restarted_is_counted_once(
    sim: Simulator, prom: Prometheus, fleet_ports: list[int], tmp_path: Path
) -> None:
    (tmp_path / "flags.yaml").write_text("kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    scraped()  # the last test's replicas are gone from the scrape
    evidence = PromEvidence(prom.url)
    evidence.poll()  # what the counters hold now is the starting point
    counted = 0

    def gained() -> int:
        return sum(g.n for (task, stage), g in evidence.poll().items() if stage == "shadow")

    replicas = [
        Replica(sim, tmp_path, port, f"k{i}", calls=40) for i, port in enumerate(fleet_ports)
    ]
    try:
        assert [r.done() for r in replicas] == ["done 40"] * REPLICAS
        scraped()
        counted += gained()
        assert counted == 3 * 40
        replicas[1].kill()  # mid-run: the watcher reads on
        scraped()
        assert prom.up()[f"127.0.0.1:{fleet_ports[1]}"] == 0
        counted += gained()
        assert counted == 3 * 40  # its last pairs are not counted again
        # it comes back on the same port: its counters start again from 0
        replicas[1] = Replica(sim, tmp_path, fleet_ports[1], "k1-again", calls=25)
        assert replicas[1].done() == "done 25"
        scraped()
        counted += gained()
        assert counted == 3 * 40 + 25
        assert evidence.resets >= 1
        logged = sum(len(records(tmp_path / f"{n}.jsonl")) for n in ("k0", "k1", "k2", "k1-again"))
        assert counted == logged
    finally:
        evidence.close()
        for replica in replicas:
            if replica.proc.poll() is None:
                replica.kill()


def test_watch_says_what_is_wrong_with_its_arguments(tmp_path: Path) -> None:
    both = shim_cli("watch", str(tmp_path / "a.jsonl"), "--prometheus", "http://127.0.0.1:9")
    assert both.returncode == 2 and "not both" in both.stderr
    down = shim_cli("watch", "--prometheus", "http://127.0.0.1:9", "--once")
    assert down.returncode == 2 and "cannot ask Prometheus at http://127.0.0.1:9" in down.stderr
