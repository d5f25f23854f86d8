"""shim rollout: a plan walked on its own, on always-valid evidence; rollback on a
breach, respect for a human's change, restart without losing or double-counting, and
webhooks that hear every transition."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from shim.analysis.policy import Policy
from shim.base.errors import ConfigError
from shim.flags.store import FileStore
from shim.ops.logtail import LogTail
from shim.ops.rollout import Rollout
from shim.ops.rollout_guard import approve
from shim.ops.rollout_plan import Plan

from .test_report import record

TASK = "kiwi.meal_plan"
PLAN = {
    "steps": [
        {"serve": 0, "shadow": 100, "soak": 60, "min_pairs": 200},
        {"serve": 10, "shadow": 100, "soak": 60, "min_pairs": 200},
        {"serve": 100, "shadow": 10},
    ]
}
STAGES = {0: "shadow", 1: "canary", 2: "live"}
#: Promotion lines a few hundred clean pairs can show with always-valid bounds (the
#: built-in 0.5 point error line needs about 4,000 pairs with none failing).
POLICY = Policy.model_validate({"defaults": {"max_error_increase": 0.08, "max_mismatch": 0.08}})


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Traffic:
    """Comparison records of the task, appended to the log as the app would."""

    def __init__(self, log: Path, seed: int = 1, clock: Callable[[], float] = time.time) -> None:
        self.log, self.rng, self.clock = log, random.Random(seed), clock

    def add(
        self,
        n: int,
        stage: str,
        cand_err: float = 0.0,
        speed: float = 1.0,
        change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        rows = []
        for _ in range(n):
            row = record(
                TASK, self.rng, legacy_err=0.0, cand_err=cand_err, mismatch=0.0, speed=speed
            )
            row["stage"] = stage
            row["ts"] = stamp(self.clock())
            if change is not None:
                change(row)
            rows.append(json.dumps(row))
        with self.log.open("a") as out:
            out.write("\n".join(rows) + "\n")


def stamp(seconds: float) -> str:
    """A record's ``ts`` for a time in seconds since the epoch."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def setup(
    tmp_path: Path, plan: dict[str, Any] = PLAN, **kw: Any
) -> tuple[Rollout, Clock, Traffic, FileStore, LogTail]:
    flags = tmp_path / "flags.yaml"
    flags.write_text(f"{TASK}: {{serve: 0, shadow: 100}}\n")
    log = tmp_path / "comparisons.jsonl"
    log.touch()
    store, clock = FileStore(flags), Clock()
    kw.setdefault("policy", POLICY)
    rollout = Rollout(TASK, Plan.model_validate(plan), store, log, clock=clock, **kw)
    rollout.decide()  # started: the first step's soak runs from here
    return rollout, clock, Traffic(log, clock=clock), store, LogTail([log])


def step_of(store: FileStore) -> tuple[int, int]:
    flags = store.read([TASK]).tasks[TASK]
    return flags.serve, flags.shadow


def look(rollout: Rollout, tail: LogTail) -> Any:
    for rec in tail.poll():
        rollout.take(rec)
    return rollout.decide()


def decisions(log: Path, every: bool = False) -> list[dict[str, Any]]:
    """The rollout's records (without ``every``: its transitions, no take-up or hold)."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    rows = [r for r in rows if r["event"] == "shim.rollout"]
    return rows if every else [r for r in rows if r["action"] not in ("take_up", "hold")]


def test_healthy_traffic_walks_the_plan_to_the_end(tmp_path: Path) -> None:
    rollout, clock, traffic, store, tail = setup(tmp_path)
    for index in range(2):
        assert look(rollout, tail).action == "hold"  # no pairs, no soak yet
        traffic.add(300, STAGES[index])
        clock.now += 30
        held = look(rollout, tail)
        assert held.action == "hold" and any("soaked 30 of 60 s" in r for r in held.reasons)
        clock.now += 40
        moved = look(rollout, tail)
        assert moved.action == "advance" and moved.step == index + 1
    assert step_of(store) == (100, 10)
    # the last step is watched like any other: its soak and pairs before it completes
    held = look(rollout, tail)
    assert held.action == "hold" and held.reasons == ("soaked 0 of 600 s", "0 of 300 pairs")
    traffic.add(300, "live")
    clock.now += 601
    done = look(rollout, tail)
    assert done.action == "complete" and done.done
    rows = decisions(tmp_path / "comparisons.jsonl")
    assert [r["action"] for r in rows] == ["advance", "advance", "complete"]
    first = rows[0]
    assert first["from"]["serve"] == 0 and first["to"]["serve"] == 10 and first["step"] == 1
    assert rows[-1]["step"] == 2
    # completed: a controller started again (a scheduler's next run) says so, done
    again = Rollout(TASK, rollout.plan, store, tmp_path / "comparisons.jsonl", clock=clock)
    after = look(again, LogTail([tmp_path / "comparisons.jsonl"]))
    assert after.action == "complete" and after.done and "completed" in after.reasons[0]
    assert first["evidence"]["pairs"] == 300 and first["automatic"] is True


def test_a_regression_rolls_back_to_off_or_to_the_plans_step(tmp_path: Path) -> None:
    rollout, clock, traffic, store, tail = setup(tmp_path)
    traffic.add(300, "shadow")
    clock.now += 120
    assert look(rollout, tail).action == "advance"
    traffic.add(300, "canary", cand_err=0.2)
    decided = look(rollout, tail)
    assert decided.action == "rollback" and decided.done
    assert "candidate error rate higher" in decided.reasons[0]
    assert step_of(store) == (0, 0)

    other = tmp_path / "other"
    other.mkdir()
    plan = PLAN | {"on_breach": {"step": 0}}
    rollout, clock, traffic, store, tail = setup(other, plan)
    traffic.add(300, "shadow")
    clock.now += 120
    look(rollout, tail)
    traffic.add(300, "canary", speed=2.0)  # the task path twice as slow
    decided = look(rollout, tail)
    assert decided.action == "rollback" and "task path slower" in decided.reasons[0]
    assert step_of(store) == (0, 100)


def slow_tail(row: dict[str, Any]) -> None:
    """The task path's slowest tenth (legacy's times are 800 ms log-normal, sd 0.4)
    half as slow again: its p95 1.5 times legacy's, its typical time the same."""
    if row["legacy"]["latency_ms"] > 800 * math.exp(1.2816 * 0.4):
        row["candidate"]["latency_ms"] *= 1.5


def dearer(row: dict[str, Any]) -> None:
    """The task path resolves to a model priced twice as high."""
    row["candidate"]["model"] = "big"
    for side in ("legacy", "candidate"):
        row[side]["usage"] = {"input_tokens": 400, "output_tokens": 300}


def worse_content(row: dict[str, Any]) -> None:
    """Answers shaped alike whose content scores 0.7 against legacy's."""
    row["quality"] = {"method": "json_fields", "score": 0.7}


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (slow_tail, "task path slower in the tail: p95 at least"),
        (dearer, "task path dearer"),
        (worse_content, "quality 0.700 (at most 0.7"),
    ],
)
def test_a_slower_tail_or_a_dearer_path_rolls_back(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], said: str
) -> None:
    policy = Policy.model_validate(
        POLICY.model_dump()
        | {
            "defaults": POLICY.defaults.model_dump() | {"max_cost_ratio": 1.25, "min_quality": 0.9},
            "prices": {
                "m": {"input_per_1k": 0.01, "output_per_1k": 0.03},
                "big": {"input_per_1k": 0.02, "output_per_1k": 0.06},
            },
        }
    )
    rollout, clock, traffic, store, tail = setup(tmp_path, policy=policy)
    traffic.add(300, "shadow")
    clock.now += 120
    assert look(rollout, tail).action == "advance"
    for _ in range(40):  # a look every 100 pairs, as a controller polling would
        traffic.add(100, "canary", change=change)
        decided = look(rollout, tail)
        if decided.action != "hold":
            break
    assert decided.action == "rollback", decided
    [reason] = decided.reasons
    assert reason.startswith(said), reason
    assert step_of(store) == (0, 0)


def test_a_last_step_that_compares_nothing_completes_on_its_soak(tmp_path: Path) -> None:
    plan = {"steps": [PLAN["steps"][0], {"serve": 100, "shadow": 0, "soak": 30}]}
    rollout, clock, traffic, store, tail = setup(tmp_path, plan)
    traffic.add(300, "shadow")
    clock.now += 120
    assert look(rollout, tail).action == "advance" and step_of(store) == (100, 0)
    assert look(rollout, tail).reasons == ("soaked 0 of 30 s",)
    clock.now += 31
    assert look(rollout, tail).action == "complete"


def test_a_human_change_meanwhile_stops_the_rollout_and_is_kept(tmp_path: Path) -> None:
    rollout, _, _, store, tail = setup(tmp_path)
    look(rollout, tail)
    (tmp_path / "flags.yaml").write_text(f"{TASK}: {{serve: 0, shadow: 0}}\n")  # a rollback
    decided = look(rollout, tail)
    assert decided.action == "stopped" and decided.done
    assert step_of(store) == (0, 0), "theirs is the last word"
    with pytest.raises(Exception, match="has ended"):
        rollout.decide()


def test_a_restarted_controller_takes_up_the_same_step_with_the_same_evidence(
    tmp_path: Path,
) -> None:
    rollout, clock, traffic, store, tail = setup(tmp_path)
    traffic.add(300, "shadow")
    clock.now += 120
    assert look(rollout, tail).action == "advance"
    traffic.add(150, "canary")
    held = look(rollout, tail)
    assert held.action == "hold" and rollout.tests.errors.n == 150
    # killed here; a new one reads the whole log from its start
    log = tmp_path / "comparisons.jsonl"
    again = Rollout(TASK, rollout.plan, store, log, clock=clock, policy=POLICY)
    fresh = LogTail([tmp_path / "comparisons.jsonl"])
    held = look(again, fresh)
    assert held.action == "hold" and held.step == 1
    assert again.tests.errors.n == 150, "the step's pairs, once each"
    traffic.add(100, "canary")
    clock.now += 70
    assert look(again, fresh).action == "advance"
    assert again.tests.errors.n == 0 and step_of(store) == (100, 10)


def test_evidence_from_many_logs_is_taken_by_when_it_was_made(tmp_path: Path) -> None:
    """Decisions in one log, the app's comparisons in another: read back file by file,
    the comparisons of an earlier rung in the same stage (canary 5 %, then canary 25 %)
    come after the change that ended it, and are left out by their time."""
    plan = {"steps": [PLAN["steps"][0], *({"serve": p, "shadow": 100} for p in (5, 25, 100))]}
    plan["steps"][1] |= {"soak": 60, "min_pairs": 200}
    rollout, clock, _, store, _ = setup(tmp_path, plan)
    app_log = tmp_path / "app.jsonl"
    traffic = Traffic(app_log, clock=clock)
    tail = LogTail([tmp_path / "comparisons.jsonl", app_log])
    for stage, pairs in (("shadow", 300), ("canary", 300)):
        clock.now += 1
        traffic.add(pairs, stage)
        clock.now += 120
        assert look(rollout, tail).action == "advance"
    clock.now += 1
    traffic.add(100, "canary")
    assert look(rollout, tail).step == 2 and rollout.tests.errors.n == 100
    again = Rollout(TASK, rollout.plan, store, tmp_path / "comparisons.jsonl", clock=clock,
                    policy=POLICY)  # fmt: skip
    held = look(again, LogTail([tmp_path / "comparisons.jsonl", app_log]))
    assert held.step == 2 and again.tests.errors.n == 100, "25 %'s pairs, not 5 %'s"


def test_run_once_a_minute_by_a_scheduler_it_soaks_and_tells_as_one_controller(
    tmp_path: Path, receiver: tuple[str, list[dict[str, Any]], list[int]]
) -> None:
    """``--once`` from cron: each run is a new controller reading the log. The soak
    counts from the take-up record, not from each run; a step's hold is told once."""
    url, got, _ = receiver
    hook = {"webhook": {"url": url, "timeout": 2, "retries": 0}}
    first, clock, traffic, store, _ = setup(tmp_path, PLAN | hook)
    log = tmp_path / "comparisons.jsonl"

    def run_once() -> Any:
        again = Rollout(TASK, first.plan, store, log, clock=clock, policy=POLICY)
        return look(again, LogTail([log]))

    traffic.add(300, "shadow")
    clock.now += 30
    held = run_once()
    assert held.action == "hold" and held.reasons == ("soaked 30 of 60 s",)
    clock.now += 40
    assert run_once().action == "advance"
    assert run_once().action == "hold"
    assert run_once().action == "hold"
    assert [g["action"] for g in got] == ["take_up", "hold", "advance", "hold"]
    assert [r["action"] for r in decisions(log, every=True)] == [
        "take_up",
        "hold",
        "advance",
        "hold",
    ]


def test_confirm_waits_for_an_approval_of_each_step(tmp_path: Path) -> None:
    rollout, clock, traffic, store, tail = setup(tmp_path, PLAN | {"confirm": True})
    traffic.add(300, "shadow")
    clock.now += 120
    waiting = look(rollout, tail)
    assert waiting.action == "hold" and "waiting for approval of step 1" in waiting.reasons
    assert look(rollout, tail).action == "hold"
    assert [r["action"] for r in decisions(tmp_path / "comparisons.jsonl")] == ["await_approval"]
    approve(TASK, 1, store, tmp_path / "comparisons.jsonl")
    assert look(rollout, tail).action == "advance" and step_of(store) == (10, 100)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]], list[int]]]:
    """A webhook receiver on 127.0.0.1: what it got, and the statuses to answer."""
    got: list[dict[str, Any]] = []
    answers: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers["Content-Length"])
            got.append(json.loads(self.rfile.read(size)))
            self.send_response(answers.pop(0) if answers else 200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", got, answers
    server.shutdown()
    server.server_close()


def test_the_webhook_hears_every_transition_and_a_failing_one_stops_nothing(
    tmp_path: Path, receiver: tuple[str, list[dict[str, Any]], list[int]]
) -> None:
    url, got, answers = receiver
    hook = {"webhook": {"url": url, "timeout": 2, "retries": 1}}
    rollout, clock, traffic, _, tail = setup(tmp_path, PLAN | hook, tell=_quick)
    answers += [500, 500]  # the first advance fails twice: recorded, and on we go
    for stage in ("shadow", "canary"):
        traffic.add(300, stage)
        clock.now += 120
        assert look(rollout, tail).action == "advance"
    assert look(rollout, tail).action == "hold"
    assert look(rollout, tail).action == "hold"  # told once a step, not once a look
    traffic.add(300, "live")
    clock.now += 601
    assert look(rollout, tail).action == "complete"
    told = [g["action"] for g in got]
    assert told == ["take_up", "hold", "advance", "advance", "advance", "hold", "complete"]
    assert got[1]["reason"] == "soaked 0 of 60 s; 0 of 200 pairs" and got[1]["step"] == 0
    assert got[-1]["to"] == {"serve": 100, "shadow": 10, "stage": "live"}
    actions = [r["action"] for r in decisions(tmp_path / "comparisons.jsonl")]
    assert actions == ["advance", "webhook_failed", "advance", "complete"]


def _quick(hook: Any, body: dict[str, Any]) -> str | None:
    from shim.ops.webhook import notify

    return notify(hook, body, sleep=lambda s: None)


def test_a_plan_file_that_is_wrong_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("steps:\n  - {serve: 0, shadow: 100}\n  - {serve: 10, shadow: 100}\n  - [1]\n")
    with pytest.raises(ConfigError, match=r"plan\.yaml:4: steps\[2\]: Input should be a valid"):
        Plan.load(path)
    path.write_text("steps:\n  - {serve: 0, shadow: 100}\n  - {serve: 120, shadow: 10}\n")
    with pytest.raises(ConfigError, match=r"plan.yaml:3: steps\[1\]\.serve: Input should be less"):
        Plan.load(path)
    path.write_text("steps:\n  - {serve: 0, shadow: 100}\non_breach: off\n")
    assert Plan.load(path).on_breach == "off"  # YAML's bare off


def test_the_cli_decides_once_says_so_in_json_and_approves(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shim.cli.app import app

    flags = tmp_path / "flags.yaml"
    flags.write_text(f"{TASK}: {{serve: 0, shadow: 100}}\n")
    log = tmp_path / "comparisons.jsonl"
    Traffic(log).add(300, "shadow")
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "steps:\n  - {serve: 0, shadow: 100, soak: 0, min_pairs: 200}\n"
        "  - {serve: 10, shadow: 100}\nconfirm: true\n"
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  max_error_increase: 0.08\n  max_mismatch: 0.08\n")
    args = ["rollout", TASK, "--plan", str(plan), "--log", str(log), "--flags", str(flags)]
    args += ["--policy", str(policy), "--once", "--json"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    said = json.loads(first.output.splitlines()[-1])
    assert said["action"] == "hold" and said["reasons"] == ["waiting for approval of step 1"]
    approved = runner.invoke(
        app, ["rollout", "approve", TASK, "--step", "1", "--log", str(log), "--flags", str(flags)]
    )
    assert approved.exit_code == 0 and "approved step 1" in approved.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert json.loads(second.output.splitlines()[-1])["action"] == "advance"
    assert f"{TASK}: {{serve: 10, shadow: 100}}" in flags.read_text()
    missing = runner.invoke(app, ["rollout", TASK, "--log", str(log), "--flags", str(flags)])
    assert missing.exit_code == 2 and "--plan is needed" in missing.output


def test_a_breach_never_serves_more_than_the_step_it_breached_in(tmp_path: Path) -> None:
    """on_breach: {step: 1}, breached at step 0: off, not up to step 1."""
    rollout, _, traffic, store, tail = setup(tmp_path, PLAN | {"on_breach": {"step": 1}})
    traffic.add(300, "shadow", cand_err=0.3)
    assert look(rollout, tail).action == "rollback"
    assert step_of(store) == (0, 0)


def test_a_rollback_ends_the_rollout_until_it_is_started_fresh(tmp_path: Path) -> None:
    rollout, clock, traffic, store, tail = setup(tmp_path, PLAN | {"confirm": True})
    log = tmp_path / "comparisons.jsonl"
    traffic.add(300, "shadow")
    clock.now += 120
    look(rollout, tail)
    approve(TASK, 1, store, log)
    assert look(rollout, tail).action == "advance"
    from shim.ops.promote import rollback

    rollback(store, [TASK], [TASK], log=log, reason="by hand")  # a human's
    for fresh in (False, True):
        again = Rollout(TASK, rollout.plan, store, log, clock=clock, policy=POLICY, fresh=fresh)
        tail = LogTail([log])
        decided = look(again, tail)
        if not fresh:  # a scheduler's next --once run: the human's rollback stands
            assert decided.action == "stopped" and "rolled back (by " in decided.reasons[0]
            assert step_of(store) == (0, 100)
    # started fresh at step 0 (serve 0 %, shadow 100 %): step 1's old approval is gone
    traffic.add(300, "shadow")
    clock.now += 120
    decided = look(again, tail)
    assert decided.action == "hold" and "waiting for approval of step 1" in decided.reasons


def test_a_change_no_record_tells_of_stops_a_restarted_rollout(tmp_path: Path) -> None:
    """Flags changed by hand (an edit, the Unleash UI) while no controller ran: one
    started again (or a scheduler's --once) stops, as a running one would; with
    --fresh it takes the task up where it is, its evidence and soak from then on."""
    rollout, clock, traffic, store, tail = setup(tmp_path)
    log = tmp_path / "comparisons.jsonl"
    traffic.add(300, "shadow")
    clock.now += 120
    assert look(rollout, tail).action == "advance"
    traffic.add(300, "canary")
    (tmp_path / "flags.yaml").write_text(f"{TASK}: {{serve: 0, shadow: 100}}\n")  # by hand
    again = Rollout(TASK, rollout.plan, store, log, clock=clock, policy=POLICY)
    stopped = look(again, LogTail([log]))
    assert stopped.action == "stopped" and stopped.done
    assert "not what its rollout last set" in stopped.reasons[0]
    assert step_of(store) == (0, 100)
    fresh = Rollout(TASK, rollout.plan, store, log, clock=clock, policy=POLICY, fresh=True)
    decided = look(fresh, LogTail([log]))
    assert decided.action == "hold" and fresh.tests.errors.n == 0
    assert any("soaked 0 of 60 s" in r for r in decided.reasons)


def test_a_recorded_promote_during_a_rollout_stops_it_and_completed_is_done(
    tmp_path: Path,
) -> None:
    from shim.ops.promote import promote

    rollout, clock, traffic, store, tail = setup(tmp_path)
    log = tmp_path / "comparisons.jsonl"
    traffic.add(300, "shadow")
    clock.now += 120
    assert look(rollout, tail).action == "advance"
    promote(store, TASK, [TASK], serve=25, shadow=100, log=log)
    again = Rollout(TASK, rollout.plan, store, log, clock=clock, policy=POLICY)
    stopped = look(again, LogTail([log]))
    assert stopped.action == "stopped" and "promoted by" in stopped.reasons[0]
    assert step_of(store) == (25, 100)


def test_a_webhook_url_httpx_cannot_use_is_recorded_without_its_token(tmp_path: Path) -> None:
    url = "http://[::1/hook?token=s3cr3t-t0ken"
    rollout, clock, traffic, _, tail = setup(
        tmp_path, PLAN | {"webhook": {"url": url}}, tell=_quick
    )
    traffic.add(300, "shadow")
    clock.now += 120
    assert look(rollout, tail).action == "advance"
    text = (tmp_path / "comparisons.jsonl").read_text()
    assert "webhook_failed" in text and "s3cr3t-t0ken" not in text


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "steps:\n  - {serve: 0, shadow: 100}\n  - {serve: 50, shadow: 100}\n"
            "  - {serve: 10, shadow: 100}\n",
            "plan.yaml:4: steps[2].serve: serves 10 %, less than step 1 (50 %)",
        ),
        (
            "steps:\n  - {serve: 0, shadow: 100}\n  - {serve: 0, shadow: 100}\n",
            "plan.yaml:3: steps[1]: the same as step 0 (serve 0, shadow 100)",
        ),
        (
            "steps:\n  - {serve: 25, shadow: 0}\n",
            "plan.yaml:2: steps[0].serve: the first step must serve 0 %",
        ),
        (
            "steps:\n  - {serve: 0, shadow: 100}\non_breach:\n  step: 2\n",
            "plan.yaml:4: on_breach.step: 2 is past the last step (0)",
        ),
        (
            "steps:\n  - {serve: 0, shadow: 100}\non_breach: 0\n",
            "plan.yaml:3: on_breach: write `on_breach: off`, or `on_breach: {step: N}`",
        ),
        (
            "steps:\n  - {serve: 0, shadow: 100}\nwebhook: {url: ftp://hooks}\n",
            "plan.yaml:3: webhook.url: a URL that starts with http:// or https://",
        ),
    ],
)
def test_what_one_step_says_of_another_is_said_at_its_line(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        Plan.load(path)
    assert said in str(caught.value), str(caught.value)


def test_a_cost_line_without_prices_is_said_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("defaults:\n  min_pairs: 10\n\n  max_cost_ratio: 1.2\n")
    with pytest.raises(ConfigError, match=r"policy\.yaml:4: defaults\.max_cost_ratio: max_cost"):
        Policy.load(path)


def test_the_cli_refuses_what_would_roll_out_nothing_or_twice(tmp_path: Path) -> None:
    """A log that is not there (a typo reads no evidence, and never rolls back), a task
    name that is not one or that nothing knows, a second controller on the same task
    and log, an approval of a step no one waits for: each exit 2, saying why."""
    from typer.testing import CliRunner

    from shim.cli.app import app
    from shim.ops.rollout_guard import controller_lock

    flags = tmp_path / "flags.yaml"
    flags.write_text(f"{TASK}: {{serve: 0, shadow: 100}}\n")
    log = tmp_path / "comparisons.jsonl"
    Traffic(log).add(10, "shadow")
    plan = tmp_path / "plan.yaml"
    plan.write_text("steps:\n  - {serve: 0, shadow: 100}\n  - {serve: 10, shadow: 100}\n")
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, ["rollout", *args, "--flags", str(flags)])

    typo = run(TASK, "--plan", str(plan), "--log", str(tmp_path / "comparisons.jsnl"), "--once")
    assert typo.exit_code == 2 and "comparisons.jsnl: no such log" in typo.output
    assert not (tmp_path / "comparisons.jsnl").exists()
    bad = run("ocr", "--plan", str(plan), "--log", str(log), "--once")
    assert bad.exit_code == 2 and "flags.yaml" not in bad.output, bad.output
    unknown = run("kiwi.nope", "--plan", str(plan), "--log", str(log), "--once")
    assert unknown.exit_code == 2 and "unknown task 'kiwi.nope'" in unknown.output
    assert "kiwi.nope" not in flags.read_text()
    with controller_lock(TASK, log):
        second = run(TASK, "--plan", str(plan), "--log", str(log), "--once")
    assert second.exit_code == 2 and "another `shim rollout kiwi.meal_plan` runs" in second.output
    early = run("approve", TASK, "--step", "1", "--log", str(log))
    assert early.exit_code == 2 and "no step of kiwi.meal_plan's rollout waits" in early.output
    assert run(TASK, "--plan", str(plan), "--log", str(log), "--once").exit_code == 0


def test_the_evidence_shows_the_bound_the_hold_reads(tmp_path: Path) -> None:
    """The live view and the records show the error bound the gate held on, the same
    figure as the hold's words (a rate's bound takes its line's variance)."""
    rollout, clock, traffic, _, tail = setup(tmp_path)
    traffic.add(60, "shadow")
    clock.now += 120
    held = look(rollout, tail)
    said = [r for r in held.reasons if r.startswith("error increase: upper bound")]
    assert said, held
    shown = rollout.evidence()["error_increase"]["bounds"][1]
    assert f"upper bound {shown:.4f} vs" in said[0]


def test_the_log_is_read_a_chunk_at_a_time_and_a_line_too_long_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shim.ops import logtail

    monkeypatch.setattr(LogTail, "CHUNK", 7)
    monkeypatch.setattr(logtail, "MAX_LINE_BYTES", 40)
    path = tmp_path / "log.jsonl"
    rows = [json.dumps({"i": i}) for i in range(5)]
    rows += [json.dumps({"i": "x" * 100}), json.dumps({"i": 5})]
    path.write_text("\n".join(rows) + '\n{"i": 6')
    tail = LogTail([path])
    assert [r["i"] for r in tail.poll()] == [0, 1, 2, 3, 4, 5]
    with path.open("a") as out:
        out.write("}\n")
    assert [r["i"] for r in tail.poll()] == [6], "the line in progress, once, when whole"
