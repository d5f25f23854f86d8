"""Operator actions are atomic and honest: promote, rollback and the automatic rollback
are one read-modify-write under one lock, through symlinks too; duplicate keys are
errors everywhere; promotion evidence comes from the task's current stage, soaked."""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shim import flags
from shim.analysis.policy import Policy
from shim.base.errors import ConfigError
from shim.cli import ramp
from shim.cli.app import app
from shim.flags.store import FileStore
from shim.sim import Profile

from .test_report import record

runner = CliRunner()
TASK = "kiwi.meal_plan"


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def rows(log: Path, *events: str) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    found = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in found if not events or r["event"] in events]


def assert_chain(log: Path, path: Path, start: tuple[int, int]) -> list[dict[str, Any]]:
    """Replaying the records in log order from ``start`` gives the file's final state:
    each record's ``from`` is what the previous one left, and nothing happened unrecorded."""
    changes = rows(log, "shim.promote", "shim.rollback")
    current = start
    for change in changes:
        seen = (change["from"]["serve"], change["from"]["shadow"])
        assert seen == current, f"a {change['event']} record says {seen}, the flags were {current}"
        current = (change["to"]["serve"], change["to"]["shadow"])
    final = flags.load_flags_file(path).tasks[TASK]
    assert (final.serve, final.shadow) == current, "the file is what the last record says"
    return changes


def _quiet(action: Callable[[], None]) -> Callable[[], None]:
    """Run a CLI verb in a thread; a typer.Exit on success paths is not an error."""
    import click

    def run() -> None:
        try:
            action()
        except click.exceptions.Exit as exc:
            if exc.exit_code:
                raise

    return run


def _promote(path: Path, log: Path) -> None:
    ramp.promote(
        TASK,
        serve=None,
        shadow=None,
        ramp="1,5,25,50,100",
        flags=path,
        log=log,
        assignments=None,
        evidence=None,
        policy=None,
        force=True,
        dry_run=False,
    )


def _rollback(path: Path, log: Path) -> None:
    ramp.rollback(TASK, all_tasks=False, flags=path, log=log, assignments=None, dry_run=False)


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


def test_rollbacks_racing_promotes_are_never_lost_40_times_in_a_row(tmp_path: Path) -> None:
    """Each round: a task at serve 5 %, one rollback and three forced promotes at once.
    The rollback's record must be what it applied, and the file what the records say."""
    for round_ in range(40):
        path = tmp_path / f"flags{round_}.yaml"
        path.write_text(f"{TASK}: {{serve: 5, shadow: 100}}\n")
        log = tmp_path / f"log{round_}.jsonl"
        race(
            [
                _quiet(functools.partial(_rollback, path, log)),
                *[_quiet(functools.partial(_promote, path, log)) for _ in range(3)],
            ]
        )
        changes = assert_chain(log, path, (5, 100))
        [rollback] = [c for c in changes if c["event"] == "shim.rollback"]
        assert rollback["to"]["serve"] == 0, f"round {round_}"
        assert len(changes) == 4, f"round {round_}: every action applied and recorded"


def test_automatic_rollbacks_racing_promotes_are_never_lost(tmp_path: Path) -> None:
    """shim watch --auto-rollback's rollback is the same read-modify-write under the lock."""
    from shim.ops.watch import Breach, auto_rollback

    breach = Breach(TASK, "canary", ("task-path errors",), 3, 3, 200)
    for round_ in range(40):
        path = tmp_path / f"flags{round_}.yaml"
        path.write_text(f"{TASK}: {{serve: 5, shadow: 100}}\n")
        log = tmp_path / f"log{round_}.jsonl"
        store = FileStore(path)
        race(
            [
                functools.partial(auto_rollback, breach, store, log),
                *[_quiet(functools.partial(_promote, path, log)) for _ in range(2)],
            ]
        )
        changes = assert_chain(log, path, (5, 100))
        [rollback] = [c for c in changes if c["event"] == "shim.rollback"]
        assert rollback["automatic"] is True and rollback["to"]["serve"] == 0
        assert rollback["reason"].startswith(f"{TASK} breached in stage canary")


def test_automatic_rollback_of_a_task_at_serve_0_does_nothing(tmp_path: Path) -> None:
    """A breach seen after someone else rolled the task back writes no second record."""
    from shim.ops.watch import Breach, auto_rollback

    path = tmp_path / "flags.yaml"
    path.write_text(f"{TASK}: {{serve: 0, shadow: 100}}\n")
    log = tmp_path / "log.jsonl"
    assert auto_rollback(Breach(TASK, "canary", ("x",), 3, 3, 200), FileStore(path), log) is None
    assert rows(log) == []


@pytest.mark.subprocess
def test_rollback_and_promote_processes_racing_keep_the_records_true(tmp_path: Path) -> None:
    """Separate `shim rollback` and `shim promote` processes, started together."""
    path = tmp_path / "flags.yaml"
    path.write_text(f"{TASK}: {{serve: 5, shadow: 100}}\n")
    log = tmp_path / "log.jsonl"
    base = [sys.executable, "-m", "shim"]
    tail = ["--flags", str(path), "--log", str(log)]
    commands = [[*base, "rollback", TASK, *tail], [*base, "promote", TASK, "--force", *tail]] * 5
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), outputs
    changes = assert_chain(log, path, (5, 100))
    said = sum(o.count(f"rolled back {TASK}") for o, _ in outputs)
    assert said == sum(c["event"] == "shim.rollback" for c in changes) >= 1
    assert sum(c["event"] == "shim.promote" for c in changes) == 5


# -- symlinks -------------------------------------------------------------------------


def test_promote_through_a_symlink_edits_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "config" / "flags.yaml"
    real.parent.mkdir()
    real.write_text(f"# reviewed\n{TASK}: {{serve: 0, shadow: 100}}\n")
    link = tmp_path / "flags.yaml"
    link.symlink_to(os.path.relpath(real, tmp_path))
    code, out = invoke("promote", TASK, "--flags", str(link), "--force")
    assert code == 0, out
    assert link.is_symlink(), "the link stays a link"
    assert real.read_text() == f"# reviewed\n{TASK}: {{serve: 1, shadow: 100}}\n"
    assert invoke("rollback", TASK, "--flags", str(link))[0] == 0
    assert link.is_symlink() and flags.load_flags_file(real).tasks[TASK].serve == 0
    assert (real.parent / ".flags.yaml.lock").exists(), "the lock sits by the file it guards"


# -- duplicate keys -------------------------------------------------------------------

DUPLICATE = f"{TASK}: {{serve: 50, shadow: 100}}\nkiwi.ocr: {{serve: 0}}\n{TASK}: {{serve: 0}}\n"


def test_check_names_both_lines_of_a_duplicate_task(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(DUPLICATE)
    code, out = invoke("check", "--flags", str(path))
    assert code == 1, out
    assert f"{path}:3: {TASK}: duplicate key (first defined on line 1)" in out


def test_promote_and_rollback_refuse_a_duplicate_task(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(DUPLICATE)
    for verb in (["rollback", TASK], ["promote", TASK, "--force"], ["rollback", "--all"]):
        code, out = invoke(*verb, "--flags", str(path))
        assert code == 2, (verb, out)
        assert f"{path}:3: {TASK}: duplicate key (first defined on line 1)" in out
    assert path.read_text() == DUPLICATE


def test_flags_file_with_a_duplicate_is_an_error_when_loaded_or_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(DUPLICATE)
    with pytest.raises(ConfigError, match=r"flags.yaml:3: kiwi.meal_plan: duplicate key"):
        flags.load_flags_file(path)
    with pytest.raises(ConfigError, match="duplicate key"):
        flags.FileFlags(path, poll_interval=60)
    path.write_text(f"{TASK}: {{serve: 50, shadow: 100}}\n")
    source = flags.FileFlags(path, poll_interval=60)
    events: list[flags.FlagEvent] = []

    def listen(event: flags.FlagEvent) -> None:
        events.append(event)

    source.subscribe(listen)
    try:
        path.write_text(DUPLICATE)
        assert source.reload() is False
        assert source.rules.state.tasks[TASK].serve == 50, "the last good flags stay"
        assert [e.level for e in events] == ["error"]
        assert "flags.yaml:3: kiwi.meal_plan: duplicate key" in events[0].message
    finally:
        source.close()


@pytest.mark.parametrize(
    ("load", "text", "where"),
    [
        (Policy.load, "defaults:\n  min_pairs: 100\n  min_pairs: 5000\n", "3: defaults.min_pairs"),
        (Profile.load, "seed: 1\nseed: 2\n", "2: seed"),
    ],
)
def test_other_yaml_with_a_duplicate_key_is_an_error(
    load: Callable[[Path], Any], text: str, where: str, tmp_path: Path
) -> None:
    """policy.yaml and a simulator profile: the second value used to be dropped silently."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"config.yaml:{where}: duplicate key"):
        load(path)


# -- evidence from the current stage ----------------------------------------------------

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def ts(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def comparisons(stage: str, start: datetime, n: int, every: timedelta) -> list[dict[str, Any]]:
    rng = random.Random(n)
    out = []
    for i in range(n):
        row = record(TASK, rng, legacy_err=0.0, cand_err=0.0, mismatch=0.0, speed=0.9)
        row.update(stage=stage, ts=ts(start + i * every))
        out.append(row)
    return out


def change(
    event: str, at: datetime, before: tuple[int, int], after: tuple[int, int]
) -> dict[str, Any]:
    def setting(s: tuple[int, int]) -> dict[str, Any]:
        return {"serve": s[0], "shadow": s[1], "stage": flags.stage_of(*s)}

    return {
        "event": event,
        "schema": 1,
        "ts": ts(at),
        "product": "kiwi",
        "task": "meal_plan",
        "from": setting(before),
        "to": setting(after),
    }


def write_log(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def evidence_setup(tmp_path: Path, serve: int, records: list[dict[str, Any]]) -> tuple[Path, Path]:
    path = tmp_path / "flags.yaml"
    path.write_text(f"{TASK}: {{serve: {serve}, shadow: 100}}\n")
    return path, write_log(tmp_path / "comparisons.jsonl", records)


def test_shadow_evidence_does_not_promote_a_canary(tmp_path: Path) -> None:
    """Shadow to canary on shadow evidence, then straight on with the same log: refused,
    because nothing was compared in canary since the task changed."""
    shadow = comparisons("shadow", T0, 600, timedelta(seconds=2))
    path, log = evidence_setup(tmp_path, 0, shadow)
    code, out = invoke(
        "promote", TASK, "--flags", str(path), "--evidence", str(log), "--log", str(log)
    )
    assert code == 0, out
    assert flags.load_flags_file(path).tasks[TASK].serve == 1
    code, out = invoke(
        "promote", TASK, "--flags", str(path), "--evidence", str(log), "--log", str(log)
    )
    assert code == 1, out
    assert "refusing to promote kiwi.meal_plan" in out
    assert "no comparisons of this task in stage canary since" in out
    assert flags.load_flags_file(path).tasks[TASK].serve == 1


def test_records_from_before_the_last_change_do_not_count(tmp_path: Path) -> None:
    """canary 1 % -> 5 %: the canary records of 1 % are not evidence for 5 %."""
    records = comparisons("canary", T0, 600, timedelta(seconds=2))
    records.append(change("shim.promote", T0 + timedelta(hours=1), (1, 100), (5, 100)))
    path, log = evidence_setup(tmp_path, 5, records)
    code, out = invoke("promote", TASK, "--flags", str(path), "--evidence", str(log))
    assert code == 1, out
    assert "no comparisons of this task in stage canary since 2026-11-26T13:00:00" in out


def test_a_short_soak_is_refused_with_how_much_longer(tmp_path: Path) -> None:
    """601 good pairs in 2 minutes: the verdict passes, the 10-minute soak does not."""
    records = [change("shim.promote", T0, (0, 100), (1, 100))]
    records += comparisons("canary", T0 + timedelta(seconds=1), 601, timedelta(seconds=0.2))
    path, log = evidence_setup(tmp_path, 1, records)
    code, out = invoke("promote", TASK, "--flags", str(path), "--evidence", str(log))
    assert code == 1, out
    assert "soaked 2 min 0 s of 10 min in stage canary" in out
    assert "soak 8 min more" in out
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  min_soak: 0\n")
    args = ["--flags", str(path), "--evidence", str(log), "--policy", str(policy)]
    code, out = invoke("promote", TASK, *args, "--log", str(tmp_path / "changes.jsonl"))
    assert code == 0, out
    [promoted] = rows(tmp_path / "changes.jsonl")
    assert promoted["evidence"]["stage"] == "canary"
    assert promoted["evidence"]["since"] == ts(T0)


def test_a_soaked_stage_with_enough_pairs_promotes(tmp_path: Path) -> None:
    records = comparisons("shadow", T0, 300, timedelta(seconds=1))  # an older stage
    records.append(change("shim.promote", T0 + timedelta(hours=1), (0, 100), (1, 100)))
    records += comparisons("canary", T0 + timedelta(hours=1, seconds=1), 600, timedelta(seconds=2))
    path, log = evidence_setup(tmp_path, 1, records)
    code, out = invoke(
        "promote", TASK, "--flags", str(path), "--evidence", str(log), "--log", str(log)
    )
    assert code == 0, out
    assert flags.load_flags_file(path).tasks[TASK].serve == 5
    [_, promoted] = rows(log, "shim.promote")
    assert promoted["evidence"]["n"] == 600 and promoted["evidence"]["soak_s"] >= 1198


def test_min_soak_defaults_to_ten_minutes_and_zero_turns_it_off() -> None:
    assert Policy().defaults.min_soak == 600
    assert Policy.model_validate({"defaults": {"min_soak": 0}}).defaults.min_soak == 0


def test_a_canary_without_a_change_record_is_refused_and_names_the_log(tmp_path: Path) -> None:
    """No promote/rollback record for the task in the evidence or --log: the canary
    comparisons of every rung look alike (1 % and 5 %), so none of them may promote."""
    records = comparisons("canary", T0, 600, timedelta(seconds=2))  # good, soaked, 1 % or 5 %?
    path, log = evidence_setup(tmp_path, 5, records)
    code, out = invoke("promote", TASK, "--flags", str(path), "--evidence", str(log))
    assert code == 1, out
    assert "refusing to promote kiwi.meal_plan" in out
    assert "no shim.promote, shim.rollback or shim.rollout record" in out
    assert "shim promote --log" in out and "--force" in out
    assert flags.load_flags_file(path).tasks[TASK].serve == 5, "nothing promoted"
    changes = tmp_path / "changes.jsonl"
    code, out = invoke(
        "promote",
        TASK,
        "--flags",
        str(path),
        "--evidence",
        str(log),
        "--force",
        "--log",
        str(changes),
    )
    assert code == 0, out
    [forced] = rows(changes)
    assert forced["forced"] is True and forced["to"]["serve"] == 25


def test_shadow_without_a_change_record_uses_the_whole_stage_and_says_so(tmp_path: Path) -> None:
    """A shadow stage is one rung: with no change record every shadow comparison counts,
    and the output says which window that was."""
    records = comparisons("shadow", T0, 600, timedelta(seconds=2))
    path, log = evidence_setup(tmp_path, 0, records)
    code, out = invoke("promote", TASK, "--flags", str(path), "--evidence", str(log))
    assert code == 0, out
    assert flags.load_flags_file(path).tasks[TASK].serve == 1
    assert (
        "evidence: 600 pairs in stage shadow, every one in the logs (no change record for "
        "kiwi.meal_plan), 2026-11-26T12:00:00" in out
    )


def test_the_output_names_the_window_after_a_change(tmp_path: Path) -> None:
    records = [change("shim.promote", T0, (0, 100), (1, 100))]
    records += comparisons("canary", T0 + timedelta(seconds=1), 600, timedelta(seconds=2))
    path, log = evidence_setup(tmp_path, 1, records)
    code, out = invoke("promote", TASK, "--flags", str(path), "--evidence", str(log))
    assert code == 0, out
    assert "evidence: 600 pairs in stage canary since 2026-11-26T12:00:00" in out


def test_two_operators_promoting_on_evidence_at_once_climb_one_rung(tmp_path: Path) -> None:
    """What runbooks/rollout.md promises: the first to take the lock climbs; the second
    finds the task moved, reads its evidence again for the new rung (none yet) and is
    refused (exit 1). Two rungs would need --force."""
    import typer

    for round_ in range(5):
        records = [change("shim.promote", T0, (0, 100), (1, 100))]
        records += comparisons("canary", T0 + timedelta(seconds=1), 600, timedelta(seconds=2))
        folder = tmp_path / str(round_)
        folder.mkdir()
        path, log = evidence_setup(folder, 1, records)
        codes: list[int] = []

        def run(path: Path = path, log: Path = log, codes: list[int] = codes) -> None:
            try:
                ramp.promote(
                    TASK,
                    serve=None,
                    shadow=None,
                    ramp="1,5,25,50,100",
                    flags=path,
                    log=log,
                    assignments=None,
                    evidence=[str(log)],
                    policy=None,
                    force=False,
                    dry_run=False,
                )
                codes.append(0)
            except typer.Exit as exc:
                codes.append(exc.exit_code)

        race([run, run])
        assert sorted(codes) == [0, 1], f"round {round_}: one climbs, one is refused"
        assert flags.load_flags_file(path).tasks[TASK].serve == 5, f"round {round_}"
        [promoted] = [r for r in rows(log, "shim.promote") if r["from"]["serve"] == 1]
        assert promoted["to"]["serve"] == 5
