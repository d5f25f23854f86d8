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
    _CLIENTS.append(http)  # closed after the test, whatever happens in it
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


def plant_lock(http: httpx.Client, holder: dict[str, Any]) -> None:
    """Create the lock as another process would (a released lock waits in the archive
    until the next taker deletes it: deleted here first)."""
    http.delete(f"/api/admin/archive/{LOCK}")
    body = {"name": LOCK, "type": "operational", "description": json.dumps(holder)}
    assert http.post("/api/admin/projects/default/features", json=body).status_code == 201


def archived_locks(http: httpx.Client) -> list[dict[str, Any]]:
    search = {"archived": "IS:true", "query": LOCK}
    features = http.get("/api/admin/search/features", params=search).json()["features"]
    return [f for f in features if f["name"] == LOCK]


def test_a_released_lock_waits_in_the_archive_for_the_next_taker(task: str) -> None:
    """Unleash 7.5 runs its lifecycle handlers up to a second after a feature is created
    or archived, and one whose feature is deleted meanwhile ends the server: the lock is
    only archived on release, and deleted by the next change to take it."""
    with admin_http() as http:
        store().apply({task: Setting(5, 100)})
        assert http.get(f"/api/admin/projects/default/features/{LOCK}").status_code == 404
        first = archived_locks(http)
        assert len(first) == 1, "released into the archive"
        rollback(store(), [task], [task])
        second = archived_locks(http)
        assert len(second) == 1, "one lock in the archive"
        assert second[0]["createdAt"] != first[0]["createdAt"], "deleted, then taken anew"
        assert store().read([task]).tasks[task].serve == 0


def test_a_held_lock_makes_others_wait_then_say_who_holds_it(task: str) -> None:
    store().apply({task: Setting(5, 100)})
    http = admin_http()
    plant_lock(http, {"holder": "alice@ops pid 1", "expires": time.time() + 60})
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
    plant_lock(http, {"holder": "crashed@ops pid 2", "expires": time.time() - 1})
    assert [c.after for c in rollback(store(lock_timeout=2), [task], [task])] == [Setting(0, 100)]
    assert http.get(f"/api/admin/projects/default/features/{LOCK}").status_code == 404
    http.close()


# -- what shim wrote is put back before it plans again -------------------------------

FEATURES = "/api/admin/projects/default/features"


def hooked(
    request: Callable[[httpx.Request], None] | None = None,
    response: Callable[[httpx.Response], None] | None = None,
) -> httpx.Client:
    """An admin client whose requests (or responses) run ``request`` (``response``)
    first: the point where something else happens to the server."""
    base = os.environ["UNLEASH_URL"].rstrip("/").removesuffix("/api")
    client = httpx.Client(
        base_url=base,
        headers={"Authorization": os.environ["UNLEASH_ADMIN_TOKEN"]},
        event_hooks={
            "request": [request] if request else [],
            "response": [response] if response else [],
        },
    )
    _CLIENTS.append(client)
    return client


_CLIENTS: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def set_rollout(flag: str, percent: int | str) -> None:
    """Change a flag's rollout as the UI would: no lock, no test."""
    outside = hooked()
    path = f"{FEATURES}/{flag}/environments/development/strategies"
    [strategy] = outside.get(path).json()
    patch = [{"op": "replace", "path": "/parameters/rollout", "value": str(percent)}]
    assert outside.patch(f"{path}/{strategy['id']}", json=patch).status_code == 200


def forced(change: Any) -> dict[str, Any]:
    return {"forced": True, "evidence": None}


@pytest.mark.parametrize("gated", [False, True])
def test_a_read_back_that_differs_puts_back_shims_write_then_climbs_one_rung(
    task: str, tmp_path: Path, gated: bool
) -> None:
    """Someone halves the shadow flag between shim's write of serve 25 % and its
    read-back: shim used to plan again from its own write and climb to 50 % (ungated),
    or leave 25 % unrecorded and climb again (gated). One command, one rung, recorded."""
    store().apply({task: Setting(5, 100)})
    seen = {"patched": False, "edited": False}

    def edit_after_the_write(request: httpx.Request) -> None:
        if request.method == "PATCH" and f"/{task}.serve/" in request.url.path:
            seen["patched"] = True
        elif request.method == "GET" and seen["patched"] and not seen["edited"]:
            seen["edited"] = True
            set_rollout(f"{task}.shadow", 50)

    log = tmp_path / "log.jsonl"
    done = promote(
        store(http=hooked(edit_after_the_write)),
        task,
        [task],
        gate=forced if gated else None,
        log=log,
    )
    assert seen["edited"], "the outside edit happened"
    assert store().read([task]).tasks[task].serve == 25, "one rung: 5 % -> 25 %, not 50 %"
    [row] = assert_chain(log, task, (5, 50))
    assert (row["from"]["serve"], row["to"]["serve"]) == (5, 25)
    assert done[0] is not None and done[0].before == Setting(5, 50)


def test_a_conflict_on_the_shadow_flag_puts_back_the_serve_write(task: str, tmp_path: Path) -> None:
    """serve 5 -> 25 % is written, then the shadow flag's tested patch fails (edited in
    the UI): the record must say what the flags were (serve 5 %), not shim's own 25 %."""
    store().apply({task: Setting(5, 100)})
    edited: list[bool] = []

    def edit_before_the_shadow_write(request: httpx.Request) -> None:
        if request.method == "PATCH" and f"/{task}.shadow/" in request.url.path and not edited:
            edited.append(True)
            set_rollout(f"{task}.shadow", 80)

    log = tmp_path / "log.jsonl"
    promote(
        store(http=hooked(edit_before_the_shadow_write)),
        task,
        [task],
        serve=25,
        shadow=50,
        gate=forced,
        log=log,
    )
    assert edited
    [row] = assert_chain(log, task, (5, 80))
    assert (row["from"]["serve"], row["from"]["shadow"]) == (5, 80)
    assert (row["to"]["serve"], row["to"]["shadow"]) == (25, 50)


def test_an_error_after_a_partial_write_puts_it_back(task: str, tmp_path: Path) -> None:
    """The server stops answering after serve was written: the command fails (exit 2 in
    the CLI), and serve is back where it was, so nothing unrecorded is left serving.
    (The shadow write is refused each time it is tried: a refused connection is tried
    again three times.)"""
    store().apply({task: Setting(5, 100)})
    failed: list[bool] = []

    def fail_the_shadow_write(request: httpx.Request) -> None:
        if request.method == "PATCH" and f"/{task}.shadow/" in request.url.path:
            failed.append(True)
            raise httpx.ConnectError("connection refused", request=request)

    log = tmp_path / "log.jsonl"
    with pytest.raises(ShimError, match=r"ConnectError.*put back"):
        promote(
            store(http=hooked(fail_the_shadow_write)),
            task,
            [task],
            serve=25,
            shadow=50,
            gate=forced,
            log=log,
        )
    assert len(failed) == 4, "tried once and again three times"
    final = store().read([task]).tasks[task]
    assert (final.serve, final.shadow) == (5, 100)
    assert changes(log) == []


# -- the lock -------------------------------------------------------------------------


def lock_description() -> dict[str, Any]:
    reply = hooked().get(f"{FEATURES}/{LOCK}")
    assert reply.status_code == 200, reply.text
    return dict(json.loads(reply.json()["description"]))


def drop_lock() -> None:
    outside = hooked()
    outside.delete(f"{FEATURES}/{LOCK}")
    outside.delete(f"/api/admin/archive/{LOCK}")


def test_the_lock_is_renewed_while_a_change_runs(task: str, tmp_path: Path) -> None:
    """A slow server (0.3 s an answer) and a 1 s lease: the change outlasts the lease it
    started with, so the lease must be extended, or another process would break it."""
    store().apply({task: Setting(5, 100)})
    looks: list[tuple[float, float]] = []
    started: list[float] = []

    def slow(request: httpx.Request) -> None:
        if f"/{LOCK}" in request.url.path or request.url.path.endswith("/features"):
            return  # the lock itself answers at once
        if not started:
            started.append(time.time())
        time.sleep(0.3)  # a slow server, not a wait for work
        if time.time() - started[0] > 1.2:
            looks.append((time.time(), float(lock_description()["expires"])))

    promote(store(http=hooked(slow), lock_ttl=1.0), task, [task], gate=forced)
    assert looks, "the change ran past its first lease"
    assert all(expires > now for now, expires in looks), looks
    assert store().read([task]).tasks[task].serve == 25


def test_a_lost_lock_stops_the_change_before_it_writes(task: str) -> None:
    """Another process broke the lock (this one stalled past its lease): the renewal
    finds the lock is not this process's any more, so nothing is written, and the other
    process's lock is left alone."""
    store().apply({task: Setting(5, 100)})
    stolen: list[bool] = []

    def stall_then_lose_it(request: httpx.Request) -> None:
        if f"/{LOCK}" in request.url.path or request.url.path.endswith("/features"):
            return
        if not stolen:
            stolen.append(True)
            bob = {"holder": "bob@ops pid 3", "expires": time.time() + 60}
            patch = [{"op": "replace", "path": "/description", "value": json.dumps(bob)}]
            assert hooked().patch(f"{FEATURES}/{LOCK}", json=patch).status_code == 200
        time.sleep(0.3)  # a slow server, not a wait for work

    try:
        with pytest.raises(ShimError, match=r"lost the lock.*bob@ops pid 3"):
            rollback(store(http=hooked(stall_then_lose_it), lock_ttl=1.0), [task], [task])
        assert store().read([task]).tasks[task].serve == 5, "nothing written"
        assert lock_description()["holder"] == "bob@ops pid 3", "bob's lock is kept"
    finally:
        drop_lock()


def test_a_release_never_archives_a_lock_another_process_holds(task: str) -> None:
    """This process stalls past its lease after writing; another (which breaks only an
    expired lock) breaks it the moment this one last looks at the lock before
    releasing. The release must not then archive the other's lock."""
    store().apply({task: Setting(5, 100)})
    phase = {"releasing": False}
    archived_while_held_by: list[str] = []

    def another_breaks_an_expired_lock(response: httpx.Response) -> None:
        request = response.request
        if not phase["releasing"] or not request.url.path.endswith(f"/{LOCK}"):
            return
        if request.method not in ("GET", "PATCH") or phase.get("broken"):
            return
        held = lock_description()
        if float(held.get("expires", 0)) < time.time():
            phase["broken"] = True
            drop_lock()
            bob = {"holder": "bob@ops pid 4", "expires": time.time() + 60}
            body = {"name": LOCK, "type": "operational", "description": json.dumps(bob)}
            assert hooked().post(FEATURES, json=body).status_code == 201

    def look_before_archiving(request: httpx.Request) -> None:
        if request.method == "DELETE" and request.url.path == f"{FEATURES}/{LOCK}":
            archived_while_held_by.append(str(lock_description()["holder"]))

    def stall(changed: list[Any]) -> None:
        time.sleep(0.8)  # past the 0.5 s lease: a stalled process, not a wait for work
        phase["releasing"] = True

    http = hooked(look_before_archiving, another_breaks_an_expired_lock)
    try:
        done = store(http=http, lock_ttl=0.5).update(
            lambda state: {task: Setting(0, 100)}, tasks=[task], on_applied=stall
        )
        assert [c.after for c in done] == [Setting(0, 100)]
        assert not any(h.startswith("bob@") for h in archived_while_held_by), "archived bob's lock"
    finally:
        drop_lock()


def test_an_unparseable_task_flag_is_an_error_naming_it(task: str, tmp_path: Path) -> None:
    """A serve flag whose rollout is not a number (Unleash accepts any string) used to
    drop the task: `shim rollback` said "nothing to roll back", exit 0, while it served."""
    store().apply({task: Setting(5, 100)})
    set_rollout(f"{task}.serve", "lots")
    assignments = tmp_path / "assignments.yaml"
    assignments.write_text(f"assignments:\n  {task}: qwen2.5-3b-instruct\n")
    env = {**os.environ, "SHIM_FLAGS": "unleash", "SHIM_LOG": "-"}
    env["SHIM_ASSIGNMENTS"] = str(assignments)  # a known task, as in production
    try:
        for verb in (["rollback", task], ["rollback", "--all"], ["status"]):
            done = subprocess.run(
                [sys.executable, "-m", "shim", *verb],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert done.returncode == 2, (verb, done)
            assert f"{task}.serve: rollout 'lots' is not a percentage" in done.stderr, verb
    finally:
        set_rollout(f"{task}.serve", 5)
