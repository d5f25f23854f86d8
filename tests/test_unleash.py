"""The Unleash backend: compiled flags agree with the SDK; promote and roll back through
the Admin API of a real server (started by `make test`, see scripts/with-unleash.sh)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shim import flags
from shim.flags.store import Setting, UnleashAdminStore, setting_of

from .shimkit import wait_for

PERCENTS = (0, 1, 5, 25, 50, 99, 100)


def rollout(name: str, percent: int, *, enabled: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "enabled": enabled,
        "type": "release",
        "strategies": [
            {
                "name": "flexibleRollout",
                "constraints": extra.pop("constraints", []),
                "parameters": {
                    "rollout": str(percent),
                    "stickiness": "default",
                    "groupId": name,
                    **extra,
                },
            }
        ],
    }


def offline_client(features: list[dict[str, Any]], tmp_path: Path) -> Any:
    from UnleashClient import UnleashClient  # type: ignore[attr-defined]
    from UnleashClient.cache import FileCache
    from UnleashClient.utils import InstanceAllowType

    cache = FileCache("task-shim-test", directory=str(tmp_path))
    cache.bootstrap_from_dict({"version": 1, "features": features})
    client = UnleashClient(
        url="http://127.0.0.1:9/api",
        app_name="task-shim-test",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
    client.initialize_client(fetch_toggles=False)
    return client


def test_plain_rollouts_decide_exactly_as_the_sdk(tmp_path: Path) -> None:
    features = [rollout(f"kiwi.t{p}.serve", p) for p in PERCENTS]
    features += [rollout("kiwi.off.serve", 80, enabled=False)]
    client = offline_client(features, tmp_path)
    rules = flags.compile_features(features)
    assert rules.engines == {}, "plain rollouts need no SDK call"
    for name in [f"kiwi.t{p}" for p in PERCENTS] + ["kiwi.off"]:
        for i in range(10_000 if name == "kiwi.t25" else 1_500):
            sticky = f"user-{i}"
            assert rules.decide(name, sticky).serve == client.is_enabled(
                f"{name}.serve", {"userId": sticky}
            ), (name, sticky)
    client.destroy()


def test_richer_flags_are_left_to_the_sdk_engine(tmp_path: Path) -> None:
    constrained = rollout(
        "kiwi.vip.serve",
        100,
        constraints=[{"contextName": "userId", "operator": "IN", "values": ["alice"]}],
    )
    other_group = rollout("kiwi.grp.serve", 50, groupId="shared")
    features = [constrained, other_group, {"name": "shim.kill", "enabled": False, "strategies": []}]
    client = offline_client(features, tmp_path)
    from shim.flags._unleash import _unleash_context

    rules = flags.compile_features(
        features,
        lambda flag: lambda sticky: client.is_enabled(flag, _unleash_context(sticky, "default")),
    )
    assert set(rules.engines) == {"kiwi.vip.serve", "kiwi.grp.serve"}
    assert rules.decide("kiwi.vip", "alice").serve is True
    assert rules.decide("kiwi.vip", "bob").serve is False
    for i in range(500):
        sticky = f"u{i}"
        assert rules.decide("kiwi.grp", sticky).serve == client.is_enabled(
            "kiwi.grp.serve", {"userId": sticky}
        )
    assert rules.state.kill is False
    killed = flags.compile_features(
        [{"name": "shim.kill", "enabled": True, "strategies": []}, rollout("kiwi.a.serve", 100)]
    )
    assert killed.state.kill is True and killed.decide("kiwi.a", "u") is flags.OFF
    client.destroy()


def test_unreachable_server_means_every_task_off_with_a_warning() -> None:
    source = flags.UnleashFlags(url="http://127.0.0.1:9/api", api_token="x", refresh_interval=1)
    events: list[flags.FlagEvent] = []
    source.subscribe(events.append)
    assert source.decide("kiwi.meal_plan", "u") is flags.OFF
    assert [e.level for e in events] == ["warning"]
    assert "every task is off (legacy)" in events[0].message
    source.close()


# -- against a real server -----------------------------------------------------------

needs_server = pytest.mark.skipif(
    not os.environ.get("UNLEASH_ADMIN_TOKEN") or not os.environ.get("UNLEASH_URL"),
    reason="needs a running Unleash server: run through `make test` (scripts/with-unleash.sh)",
)


@pytest.fixture
def product() -> str:
    """A product name no other test uses, so flags on the shared server never collide."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin() -> Iterator[UnleashAdminStore]:
    store = UnleashAdminStore(
        os.environ["UNLEASH_URL"],
        os.environ["UNLEASH_ADMIN_TOKEN"],
        environment=os.environ.get("UNLEASH_ENVIRONMENT", "development"),
    )
    yield store
    store.close()


@pytest.fixture
def client_flags() -> Iterator[flags.UnleashFlags]:
    source = flags.UnleashFlags(
        url=os.environ["UNLEASH_URL"], api_token=os.environ["UNLEASH_API_TOKEN"], refresh_interval=1
    )
    yield source
    source.close()


def shim_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shim", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SHIM_FLAGS": "unleash", **(env or {})},
    )


@needs_server
def test_promote_and_rollback_through_the_cli(
    product: str, admin: UnleashAdminStore, client_flags: flags.UnleashFlags, tmp_path: Path
) -> None:
    task = f"{product}.meal_plan"
    # A task not in assignments.yaml must exist on the server before it can be promoted.
    assert shim_cli("promote", task).returncode == 2
    admin.apply({task: Setting(0, 0)})
    log = tmp_path / "changes.jsonl"
    steps = []
    for _ in range(3):
        done = shim_cli("promote", task, "--log", str(log), "--force")
        assert done.returncode == 0, done.stderr
        steps.append(done.stdout.strip())
    assert steps[-1].endswith("-> canary (serve 5 %, shadow 100 %)")
    assert admin.read().tasks[task].serve == 5
    wait_for(
        lambda: (
            client_flags.rules.state.tasks.get(task) is not None
            and client_flags.rules.state.tasks[task].serve == 5
        ),
        timeout=10,
    )
    dry = shim_cli("rollback", task, "--dry-run")
    assert dry.stdout.startswith("would roll back") and admin.read().tasks[task].serve == 5
    done = shim_cli("rollback", task, "--log", str(log))
    assert done.returncode == 0, done.stderr
    assert admin.read().tasks[task].serve == 0
    assert admin.read().tasks[task].shadow == 100
    events = [__import__("json").loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["shim.promote"] * 3 + ["shim.rollback"]
    assert events[-1]["from"]["serve"] == 5 and events[-1]["to"]["serve"] == 0
    assert events[-1]["who"] and events[-1]["backend"].startswith("Unleash ")


@needs_server
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["promote", "kiwi.meal_plan", "--serve", "101"], {}, "--serve must be a percentage"),
        (["promote", "nope"], {}, "is not a task name"),
        (["promote", "kiwi.meal_plan"], {"UNLEASH_ADMIN_TOKEN": ""}, "needs UNLEASH_ADMIN_TOKEN"),
        (
            ["promote", "kiwi.meal_plan"],
            {"UNLEASH_URL": "http://127.0.0.1:9/api"},
            "is the server up",
        ),
        (["rollback", "--all"], {"UNLEASH_ADMIN_TOKEN": "*:*.wrong"}, "refused the admin token"),
    ],
)
def test_bad_input_is_a_clear_exit_2(args: list[str], env: dict[str, str], message: str) -> None:
    done = shim_cli(*args, env=env)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "wrong" not in done.stderr, "tokens never appear in messages"


@needs_server
def test_file_and_server_decide_alike_for_10000_ids(
    product: str, admin: UnleashAdminStore, client_flags: flags.UnleashFlags, tmp_path: Path
) -> None:
    settings = {f"{product}.p{p}": Setting(p, 100 - p) for p in (1, 10, 30, 50, 77)}
    admin.apply(settings)
    wait_for(
        lambda: all(
            (client_flags.rules.state.tasks.get(t) or flags.TaskFlags()).serve == s.serve
            and client_flags.rules.state.tasks[t].shadow == s.shadow
            for t, s in settings.items()
        ),
        timeout=15,
    )
    path = tmp_path / "flags.yaml"
    path.write_text(
        "".join(f"{t}: {{serve: {s.serve}, shadow: {s.shadow}}}\n" for t, s in settings.items())
    )
    file_flags = flags.FileFlags(path)
    sdk = client_flags._client
    for task in settings:
        for i in range(10_000):
            sticky = f"user-{i}"
            from_file = file_flags.decide(task, sticky)
            assert from_file == client_flags.decide(task, sticky)
            if i % 10 == 0:  # the SDK's own engine, on a sample (it costs ~30 us a call)
                assert from_file.serve == sdk.is_enabled(f"{task}.serve", {"userId": sticky})
    file_flags.close()


@needs_server
def test_rollback_reaches_a_running_process_within_2_5_seconds(
    product: str, admin: UnleashAdminStore, client_flags: flags.UnleashFlags
) -> None:
    task = f"{product}.meal_plan"
    took = []
    for _ in range(5):
        admin.apply({task: Setting(100, 0)})
        wait_for(lambda: client_flags.decide(task, "u").serve, timeout=15)
        started = time.monotonic()
        assert shim_cli("rollback", task).returncode == 0
        wait_for(lambda: not client_flags.decide(task, "u").serve, timeout=10)
        took.append(time.monotonic() - started)  # the command itself included
    print(f"rollback to legacy: median {statistics.median(took):.2f} s, max {max(took):.2f} s")
    # ~1 s for the server to publish, up to 1 s of refresh, and the CLI's own start-up:
    # the median is held to 2.5 s; a loaded machine (the rest of the suite) may add to
    # the slowest one.
    assert statistics.median(took) <= 2.5, took
    assert max(took) <= 3.5, took


@needs_server
def test_shim_from_env_serves_by_the_servers_flags(
    product: str,
    admin: UnleashAdminStore,
    sim: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shim import Shim, TaskRequest

    task = f"{product}.meal_plan"
    monkeypatch.setenv("CF_ORCH_URL", sim.url)
    monkeypatch.setenv("SHIM_FLAGS", "unleash")
    monkeypatch.setenv("UNLEASH_REFRESH_INTERVAL", "1")
    monkeypatch.setenv("SHIM_LOG", str(tmp_path / "log.jsonl"))
    s = Shim.from_env()
    assert isinstance(s.flags, flags.UnleashFlags)

    # The simulator only knows kiwi's tasks: serve kiwi's model under this test's product.
    @s.shadow(
        product=product,
        task="meal_plan",
        request=lambda: TaskRequest(prompt="x"),
        response=lambda r: "task",
    )
    def plan() -> str:
        return "legacy"

    assert plan() == "legacy"
    admin.apply({task: Setting(100, 0)})
    wait_for(lambda: s.flags.decide(task, None).serve, timeout=15)
    # The task is unknown to the coordinator (404), so serving falls back to legacy
    # and the fallback is recorded.
    assert plan() == "legacy"
    s.close()
    rows = [
        __import__("json").loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()
    ]
    fallback = [r for r in rows if r["event"] == "shim.comparison"]
    assert fallback[0]["served_by"] == "legacy_fallback"
    assert fallback[0]["candidate"]["status"] == 404


def test_flags_arrive_once_an_unreachable_server_answers(tmp_path: Path) -> None:
    """Start with nothing listening; bring up a server that speaks the client API."""
    import json
    import socket
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = flags.UnleashFlags(
        url=f"http://127.0.0.1:{port}/api", api_token="t", refresh_interval=1
    )
    events: list[flags.FlagEvent] = []
    source.subscribe(events.append)
    assert source.decide("kiwi.meal_plan", "u") is flags.OFF
    body = json.dumps({"version": 2, "features": [rollout("kiwi.meal_plan.serve", 100)]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def do_POST(self) -> None:
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    def serve() -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        Thread(target=server.serve_forever, daemon=True).start()
        return server

    server = serve()
    try:
        wait_for(lambda: source.decide("kiwi.meal_plan", "u").serve, timeout=10)
        assert len(events) == 2
        server.shutdown()
        server.server_close()
        # A failed poll is said once, and the last known flags stay in force.
        wait_for(lambda: len(events) == 3, timeout=5)
        assert "did not answer; keeping the last flags (version 1)" in events[2].message
        assert source.decide("kiwi.meal_plan", "u").serve, "last known flags kept"
        server = serve()
        wait_for(lambda: len(events) == 4, timeout=5)
        assert "answers again after" in events[3].message
        assert source.failed_polls >= 1
    finally:
        server.shutdown()
        server.server_close()
        source.close()
    assert [e.level for e in events] == ["warning", "info", "warning", "info"]


@needs_server
def test_a_rollout_walks_and_rolls_back_on_the_server(
    product: str, admin: UnleashAdminStore, client_flags: flags.UnleashFlags, tmp_path: Path
) -> None:
    """``shim rollout`` against the Admin API: it starts the plan, advances on clean
    pairs (seen by the SDK a running app uses), and rolls back a failing step."""
    import json
    import random

    from .test_report import record
    from .test_rollout import stamp

    task = f"{product}.meal_plan"
    admin.apply({task: Setting(0, 0)})
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "steps:\n  - {serve: 0, shadow: 100, soak: 0, min_pairs: 200}\n"
        "  - {serve: 10, shadow: 100, soak: 0, min_pairs: 200}\n  - {serve: 100, shadow: 10}\n"
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  max_error_increase: 0.08\n  max_mismatch: 0.08\n")
    log = tmp_path / "comparisons.jsonl"
    log.touch()  # the app's log, before its first comparison
    rng = random.Random(3)

    def traffic(stage: str, cand_err: float) -> None:
        rows = []
        for _ in range(300):
            row = record(task, rng, legacy_err=0.0, cand_err=cand_err, mismatch=0.0, speed=1.0)
            rows.append(json.dumps(row | {"stage": stage, "ts": stamp(time.time())}))
        with log.open("a") as out:
            out.write("\n".join(rows) + "\n")

    def look() -> tuple[int, dict[str, Any]]:
        args = ("rollout", task, "--plan", str(plan), "--log", str(log), "--policy", str(policy))
        done = shim_cli(*args, "--once", "--json")
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, json.loads(done.stdout.splitlines()[-1])

    assert look()[1]["action"] == "start"
    assert setting_of(admin.read(), task) == Setting(0, 100)
    traffic("shadow", 0.0)
    assert look()[1]["action"] == "advance"
    assert setting_of(admin.read(), task) == Setting(10, 100)
    wait_for(
        lambda: (
            client_flags.rules.state.tasks.get(task) is not None
            and client_flags.rules.state.tasks[task].serve == 10
        ),
        timeout=10,
    )
    traffic("canary", 0.3)
    code, said = look()
    assert code == 1 and said["action"] == "rollback", said
    assert setting_of(admin.read(), task) == Setting(0, 0)
    actions = [json.loads(line).get("action") for line in log.read_text().splitlines()]
    assert [a for a in actions if a] == ["start", "advance", "rollback"]
