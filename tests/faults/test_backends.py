"""Faults outside the coordinator: the flags file, the log path, the Unleash server.
The caller keeps getting legacy's own result; the shim keeps its last good flags and
holds its records until it can write them; each fault is recorded and recovers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shim import Shim, flags
from shim.flags.store import Setting, UnleashAdminStore

from ..conftest import KIWI
from ..shimkit import Driver, make_shim, records, wait_for
from ..test_hostile_files import BOMB
from .conftest import Row
from .misbehave import Misbehaving, free_port

ROOT = Path(__file__).resolve().parents[2]


class Calls:
    """A sync call site on ``shim`` whose every result is checked to be legacy's own."""

    def __init__(self, shim: Shim, **shadow: Any) -> None:
        self.made: list[object] = []
        self.n = 0

        def legacy() -> object:
            self.made.append(out := object())
            return out

        self.site = Driver("sync").wrap(shim, legacy, **shadow)

    def __call__(self, n: int) -> None:
        for _ in range(n):
            assert self.site() is self.made[-1]
            self.n += 1


def _flag_events(log: Path, shim: Shim, level: str) -> list[dict[str, Any]]:
    shim.flush()
    return [r for r in records(log, "shim.flags") if r["level"] == level]


def _unreadable(path: Path) -> None:
    path.unlink()
    path.mkdir()  # reading a directory fails, whoever the reader is (root included)


FLAG_FAULTS: dict[str, Callable[[Path], Any]] = {
    "flags file deleted": Path.unlink,
    "flags file corrupted (shadow: 250)": lambda p: p.write_text(
        "kiwi.meal_plan: {serve: 0, shadow: 250}\n"
    ),
    "flags file half-written": lambda p: p.write_text("kiwi.meal_plan: {serve: 0, sha"),
    "flags file unreadable (a directory)": _unreadable,
    f"flags file replaced by a YAML alias bomb ({len(BOMB)} bytes, 9**9 values)": (
        lambda p: p.write_text(BOMB)
    ),
}


@pytest.mark.parametrize("name", list(FLAG_FAULTS))
def test_flags_file_fault(name: str, sim: Any, tmp_path: Path, fault_row: Row) -> None:
    log = tmp_path / "log.jsonl"
    shim = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    path = Path(shim.flags.path)  # type: ignore[attr-defined]
    calls = Calls(shim)
    calls(10)
    FLAG_FAULTS[name](path)
    wait_for(lambda: _flag_events(log, shim, "error"), 5)
    calls(10)  # the last good flags stay in force: still shadowing
    shim.flush()
    assert len(records(log)) == 20
    [error] = _flag_events(log, shim, "error")
    assert "keeping the last good flags" in error["message"]

    if path.is_dir():
        path.rmdir()
    path.write_text("kiwi.meal_plan: {serve: 0, shadow: 0}\n")
    took = wait_for(lambda: not shim.flags.decide("kiwi.meal_plan", None).compare, 5)
    calls(10)
    shim.close()
    assert len(records(log)) == 20, "the new flags (shadow 0) are in force"
    fault_row(
        name,
        f"legacy result, same object, {calls.n}/{calls.n}",
        f"20/20 comparisons (last good flags kept); shim.flags error: "
        f"`{error['message'].split(': ', 1)[-1][:60]}`",
        f"{took:.2f} s to the fixed file's flags (poll 0.05 s)",
    )


def test_flags_file_missing_at_start(sim: Any, tmp_path: Path, fault_row: Row) -> None:
    log = tmp_path / "log.jsonl"
    path = tmp_path / "flags.yaml"
    shim = Shim(
        sim.url,
        flags=flags.FileFlags(path, poll_interval=0.05),
        log_path=log,
        registry=KIWI / "orch" / "model_registry.yaml",
        assignments=KIWI / "orch" / "assignments.yaml",
    )
    shim._owns_flags = True
    calls = Calls(shim)
    calls(10)  # every task off: legacy serves, nothing compared
    shim.flush()
    assert records(log) == []
    [error] = records(log, "shim.error")
    assert error["operation"] == "flags.missing"
    assert shim.stats()["internal_errors"] == {"flags.missing": 1}

    path.write_text("kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    took = wait_for(lambda: shim.flags.decide("kiwi.meal_plan", None).compare, 5)
    calls(10)
    shim.close()
    assert len(records(log)) == 10, "compared from the moment the file appeared"
    fault_row(
        "flags file missing at start",
        f"legacy result, same object, {calls.n}/{calls.n}",
        "0 comparisons while missing (every task off), then 10/10; one shim.error "
        "`flags.missing` and one warning",
        f"{took:.2f} s from the file appearing to its flags (poll 0.05 s)",
    )


def _full_device(path: Path) -> None:
    path.symlink_to("/dev/full")  # every write fails with ENOSPC


def _a_directory(path: Path) -> None:
    path.mkdir()  # cannot be opened for writing, whoever the writer is


LOG_FAULTS: dict[str, Callable[[Path], None]] = {
    "log disk full (/dev/full)": _full_device,
    "log path unwritable (a directory)": _a_directory,
}


@pytest.mark.parametrize("name", list(LOG_FAULTS))
def test_log_path_fault(name: str, sim: Any, tmp_path: Path, fault_row: Row) -> None:
    log = tmp_path / "log.jsonl"
    LOG_FAULTS[name](log)
    shim = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    calls = Calls(shim)
    calls(20)
    assert not shim.flush(), "nothing could be written"
    stats = shim.stats()
    assert stats["records_unwritten"] >= 20 and stats["records_lost"] == 0
    assert stats["internal_errors"] == {"write": 1}, "an outage is reported once"

    if log.is_dir():
        log.rmdir()
    else:
        log.unlink()  # space again: the path now names a file on a disk with room
    fixed = time.monotonic()
    wait_for(lambda: shim.flush(0.1), 5)
    took = time.monotonic() - fixed
    calls(5)
    shim.close()
    rows = records(log)
    assert len(rows) == 25 and len({r["call_id"] for r in rows}) == 25, "nothing lost"
    assert shim.stats()["records_lost"] == 0
    fault_row(
        name,
        f"legacy result, same object, {calls.n}/{calls.n}",
        "20 comparisons held in memory while failing, then written; 25/25 in the log, "
        "0 lost; 1 write error logged",
        f"{took:.2f} s after the path works (retried every 0.5 s, reopened within 1 s)",
    )


# -- a real Unleash server, killed and restarted ------------------------------------

needs_server = pytest.mark.skipif(
    not os.environ.get("UNLEASH_ADMIN_TOKEN") or not os.environ.get("UNLEASH_URL"),
    reason="needs a running Unleash server: run through `make test` (scripts/with-unleash.sh)",
)


class UnleashNode:
    """A second unleash-server process on the shared database, on a port of its own,
    that the test may kill."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "UNLEASH_PORT": str(self.port),
            "UNLEASH_PG_PORT": os.environ.get("UNLEASH_PG_PORT", "55432"),
            "UNLEASH_PG_USER": "unleash",
            "UNLEASH_PG_PASSWORD": "unleash",
            "UNLEASH_PG_DATABASE": "unleash",
        }

    def start(self) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(
            ["node", "server.mjs"],  # scripts/unleash.sh put it beside unleash-server
            cwd=ROOT / ".cache" / "unleash",
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.healthy, 60)
        return time.monotonic() - started

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
                return b"GOOD" in reply.read()
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def node() -> Iterator[UnleashNode]:
    node = UnleashNode()
    node.start()
    yield node
    node.kill()


@needs_server
def test_unleash_server_killed_and_restarted(
    node: UnleashNode, tmp_path: Path, fault_row: Row
) -> None:
    product = f"t{uuid.uuid4().hex[:10]}"
    task = f"{product}.meal_plan"
    admin = UnleashAdminStore(
        os.environ["UNLEASH_URL"], os.environ["UNLEASH_ADMIN_TOKEN"], environment="development"
    )
    coordinator = Misbehaving()
    source = flags.UnleashFlags(
        url=f"{node.url}/api", api_token=os.environ["UNLEASH_API_TOKEN"], refresh_interval=1
    )
    log = tmp_path / "log.jsonl"
    shim = Shim(
        coordinator.url,
        flags=source,
        log_path=log,
        registry=KIWI / "orch" / "model_registry.yaml",
        assignments=KIWI / "orch" / "assignments.yaml",
    )
    try:
        calls = Calls(shim, product=product)
        admin.apply({task: Setting(0, 100)})
        wait_for(lambda: source.decide(task, None).compare, 15)
        calls(10)

        node.kill()
        down = wait_for(lambda: _flag_events(log, shim, "warning"), 10)
        calls(10)  # the last flags stay in force
        shim.flush()
        assert len(records(log)) == 20
        assert all(r["candidate"]["ok"] for r in records(log))

        restarted = time.monotonic()
        boot = node.start()
        wait_for(lambda: len(_flag_events(log, shim, "info")) >= 2, 10)
        back = time.monotonic() - restarted
        admin.apply({task: Setting(0, 0)})
        # (The restarted node's first refreshes can take a while on a loaded machine.)
        changed = wait_for(lambda: not source.decide(task, None).compare, 30)
        calls(10)
    finally:
        shim.close()
        source.close()
        coordinator.close()
        admin.apply({task: Setting(0, 0)})
        admin.close()
    assert len(records(log)) == 20
    # Each outage is said once, and each return: after the first fetch, warnings and
    # "answers again" alternate (a restarting server may flap once more), ending up.
    # (A first fetch that fails on a loaded machine is said too, at version 0: before it.)
    outages = [
        r
        for r in records(log, "shim.flags")
        if r["version"] > 0
        and ("did not answer" in r["message"] or "answers again" in r["message"])
    ]
    assert [r["level"] for r in outages] == ["warning", "info"] * (len(outages) // 2)
    assert outages and "keeping the last flags" in outages[0]["message"]
    fault_row(
        "Unleash server killed (SIGKILL) and restarted",
        f"legacy result, same object, {calls.n}/{calls.n}",
        "20/20 comparisons (last flags kept while down); shim.flags warning "
        f"{down:.1f} s after the kill, info when it answered again",
        f"{back:.1f} s from restart to flags flowing (server boot {boot:.1f} s); "
        f"a flag change then took {changed:.1f} s",
    )
