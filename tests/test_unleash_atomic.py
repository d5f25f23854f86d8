"""Promote and rollback on a real Unleash server are one read-modify-write too: a lock
between shim processes (the feature ``shim.ops.lock``), a tested JSON Patch and a
read-back against edits outside shim. The server comes from scripts/with-unleash.sh."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim.base.errors import ShimError
from shim.flags.store import Setting, UnleashAdminStore
from shim.ops.promote import promote, rollback

pytestmark = pytest.mark.skipif(
    not os.environ.get("UNLEASH_ADMIN_TOKEN") or not os.environ.get("UNLEASH_URL"),
    reason="needs a running Unleash server: run through `make test` (scripts/with-unleash.sh)",
)

LOCK = "shim.ops.lock"


_OPEN: list[UnleashAdminStore] = []


def store(**kw: Any) -> UnleashAdminStore:
    """A new admin store (a connection of its own); closed after the test."""
    opened = UnleashAdminStore(
        os.environ["UNLEASH_URL"],
        os.environ["UNLEASH_ADMIN_TOKEN"],
        environment=os.environ.get("UNLEASH_ENVIRONMENT", "development"),
        **kw,
    )
    _OPEN.append(opened)
    return opened


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def admin_http() -> httpx.Client:
    base = os.environ["UNLEASH_URL"].rstrip("/").removesuffix("/api")
    return httpx.Client(base_url=base, headers={"Authorization": os.environ["UNLEASH_ADMIN_TOKEN"]})


@pytest.fixture
def task() -> str:
    """A task no other test uses, so flags on the shared server never collide."""
    return f"t{uuid.uuid4().hex[:10]}.meal_plan"


def changes(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def assert_chain(log: Path, task: str, start: tuple[int, int]) -> list[dict[str, Any]]:
    """The records, replayed in log order from ``start``, end where the server is."""
    rows = changes(log)
    current = start
    for row in rows:
        assert (row["from"]["serve"], row["from"]["shadow"]) == current, row
        current = (row["to"]["serve"], row["to"]["shadow"])
    final = store().read([task]).tasks[task]
    assert (final.serve, final.shadow) == current
    return rows


def race(actions: list[Callable[[], Any]]) -> None:
    barrier = threading.Barrier(len(actions))
    errors: list[BaseException] = []

    def run(action: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            action()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_rollbacks_racing_promotes_are_never_lost(task: str, tmp_path: Path) -> None:
    """Each round, a rollback and two forced promotes at once, each with its own
    connection as separate processes would have; 8 rounds (each change is ~15 HTTP
    calls, so 40 rounds would take a minute)."""
    for round_ in range(8):
        store().apply({task: Setting(5, 100)})
        log = tmp_path / f"log{round_}.jsonl"

        def forced(change: Any) -> dict[str, Any]:
            return {"forced": True, "evidence": None}

        race(
            [
                functools.partial(rollback, store(), [task], [task], log=log),
                *[
                    functools.partial(promote, store(), task, [task], gate=forced, log=log)
                    for _ in range(2)
                ],
            ]
        )
        rows = assert_chain(log, task, (5, 100))
        assert [r["event"] for r in rows].count("shim.rollback") == 1, round_
        assert len(rows) == 3, f"round {round_}: every action applied and recorded"


@pytest.mark.subprocess
def test_rollback_and_promote_processes_racing_keep_the_records_true(
    task: str, tmp_path: Path
) -> None:
    store().apply({task: Setting(5, 100)})
    log = tmp_path / "log.jsonl"
    env = {**os.environ, "SHIM_FLAGS": "unleash"}
    base = [sys.executable, "-m", "shim"]
    commands = [
        [*base, "rollback", task, "--log", str(log)],
        [*base, "promote", task, "--force", "--log", str(log)],
    ] * 3
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for c in commands
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), outputs
    rows = assert_chain(log, task, (5, 100))
    said = sum(o.count(f"rolled back {task}") for o, _ in outputs)
    assert said == [r["event"] for r in rows].count("shim.rollback") >= 1
    assert [r["event"] for r in rows].count("shim.promote") == 3


def test_an_edit_outside_shim_between_read_and_write_is_planned_again(
    task: str, tmp_path: Path
) -> None:
    """Someone sets the rollout in the UI after shim read it: the tested patch fails,
    and shim plans again from what is there, so the record says what it replaced."""
    store().apply({task: Setting(5, 100)})
    outside = admin_http()
    moved: list[str] = []

    def edit_first_patch(request: httpx.Request) -> None:
        if request.method == "PATCH" and not moved:
            moved.append(request.url.path)
            features = f"/api/admin/projects/default/features/{task}.serve"
            path = f"{features}/environments/development/strategies"
            [strategy] = outside.get(path).json()
            patch = [{"op": "replace", "path": "/parameters/rollout", "value": "50"}]
            assert outside.patch(f"{path}/{strategy['id']}", json=patch).status_code == 200

    base = os.environ["UNLEASH_URL"].rstrip("/").removesuffix("/api")
    http = httpx.Client(
        base_url=base,
        headers={"Authorization": os.environ["UNLEASH_ADMIN_TOKEN"]},
        event_hooks={"request": [edit_first_patch]},
    )
    log = tmp_path / "log.jsonl"
    done = promote(
        store(http=http), task, [task], gate=lambda c: {"forced": True, "evidence": None}, log=log
    )
    http.close()
    assert moved, "the outside edit happened"
    [row] = changes(log)
    assert (row["from"]["serve"], row["to"]["serve"]) == (50, 100), "planned from 50 %, not 5 %"
    assert done[0] is not None and done[0].before == Setting(50, 100)
    assert store().read([task]).tasks[task].serve == 100
    outside.close()


def test_a_held_lock_makes_others_wait_then_say_who_holds_it(task: str) -> None:
    store().apply({task: Setting(5, 100)})
    http = admin_http()
    holder = {"holder": "alice@ops pid 1", "expires": time.time() + 60}
    body = {"name": LOCK, "type": "operational", "description": json.dumps(holder)}
    assert http.post("/api/admin/projects/default/features", json=body).status_code == 201
    try:
        started = time.monotonic()
        with pytest.raises(ShimError, match=r"held by alice@ops pid 1"):
            rollback(store(lock_timeout=0.5), [task], [task])
        assert time.monotonic() - started >= 0.5
        assert store().read([task]).tasks[task].serve == 5, "nothing written without the lock"
    finally:
        http.delete(f"/api/admin/projects/default/features/{LOCK}")
        http.delete(f"/api/admin/archive/{LOCK}")
    assert [c.after for c in rollback(store(), [task], [task])] == [Setting(0, 100)]
    assert http.get(f"/api/admin/projects/default/features/{LOCK}").status_code == 404
    http.close()


def test_a_lock_left_by_a_dead_process_lapses(task: str) -> None:
    store().apply({task: Setting(5, 100)})
    http = admin_http()
    holder = {"holder": "crashed@ops pid 2", "expires": time.time() - 1}
    body = {"name": LOCK, "type": "operational", "description": json.dumps(holder)}
    assert http.post("/api/admin/projects/default/features", json=body).status_code == 201
    assert [c.after for c in rollback(store(lock_timeout=2), [task], [task])] == [Setting(0, 100)]
    assert http.get(f"/api/admin/projects/default/features/{LOCK}").status_code == 404
    http.close()
