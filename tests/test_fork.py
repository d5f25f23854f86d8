"""A forked child (a pre-fork server's worker) gets working threads, clients and flags."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from shim import TaskRequest
from shim.sim import Simulator

from .shimkit import make_shim, records, wait_for

#: Python 3.12+ warns that a fork with threads running may deadlock the child: these
#: tests fork with the shim's threads running on purpose, to show that it does not.
FORKS_WITH_THREADS = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)


@FORKS_WITH_THREADS
def test_a_forked_child_compares_and_its_records_are_written(
    sim: Simulator, tmp_path: Path
) -> None:
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 0, shadow: 100}\n")

    @s.shadow(product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=str(i)))
    def plan(i: int) -> int:
        return i

    plan(0)  # the parent's threads and connections are up before the fork
    assert s.flush(10)
    pid = os.fork()
    if pid == 0:  # the child: its own dispatcher, recorder, poller and connections
        code = 1
        try:
            assert [plan(i) for i in range(1, 6)] == [1, 2, 3, 4, 5]
            (tmp_path / "flags.yaml").write_text("kiwi.meal_plan: {serve: 0, shadow: 0}\n")
            deadline = time.monotonic() + 5
            while s.flags.decide("kiwi.meal_plan", "u").compare:
                if time.monotonic() > deadline:
                    raise AssertionError("the child's flags never reloaded")
                time.sleep(0.02)
            s.close(timeout=10)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The child turned shadowing off in the shared file; the parent follows, then its
    # next call is not compared.
    wait_for(lambda: not s.flags.decide("kiwi.meal_plan", "u").compare)
    plan(6)
    s.close(timeout=10)
    rows = records(tmp_path / "log.jsonl")
    assert len(rows) == 6, "1 before the fork and 5 in the child, none lost"
    assert all(r["candidate"]["ok"] for r in rows)


_POOL: dict[str, Any] = {}


def _pool_call(i: int) -> int:
    return int(_POOL["plan"](i))


@FORKS_WITH_THREADS
def test_a_multiprocessing_pool_of_forked_workers(sim: Simulator, tmp_path: Path) -> None:
    import multiprocessing

    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {serve: 0, shadow: 100}\n")

    @s.shadow(product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=str(i)))
    def plan(i: int) -> int:
        return i * 2

    _POOL["plan"] = plan
    plan(0)
    assert s.flush(10)
    pool = multiprocessing.get_context("fork").Pool(2)
    assert pool.map(_pool_call, range(1, 9)) == [i * 2 for i in range(1, 9)]
    pool.close()
    pool.join()  # workers leave normally: their shims close and write what they compared
    s.close(timeout=10)
    rows = records(tmp_path / "log.jsonl")
    assert sorted(r["candidate"]["ok"] for r in rows) == [True] * 9, "1 parent + 8 workers"


def _worker_shim(url: str, directory: str) -> None:
    """A pool worker's initializer: the worker makes its own Shim, as an app's module
    does when forkserver or spawn imports it anew."""
    s = make_shim(url, Path(directory), "kiwi.meal_plan: {serve: 0, shadow: 100}\n")

    @s.shadow(product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=str(i)))
    def plan(i: int) -> int:
        return i * 2

    _POOL["plan"] = plan


def test_forkserver_workers_that_make_their_own_shim_write_what_they_compared(
    sim: Simulator, tmp_path: Path
) -> None:
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    pool = context.Pool(2, initializer=_worker_shim, initargs=(sim.url, str(tmp_path)))
    assert pool.map(_pool_call, range(1, 9)) == [i * 2 for i in range(1, 9)]
    pool.close()
    pool.join()  # workers leave through os._exit: their finaliser closes their Shims
    rows = records(tmp_path / "log.jsonl")
    assert sorted(r["candidate"]["ok"] for r in rows) == [True] * 8
