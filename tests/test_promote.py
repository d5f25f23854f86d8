"""shim promote / rollback on a flags file: the ramp, comments kept, atomic, locked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shim import flags
from shim.cli.app import app
from shim.flags.store import FileStore, Setting, edit_flags_text, next_rung

runner = CliRunner()

KIWI_FLAGS = """\
# kiwi's flags (reviewed in git)
kiwi.meal_plan:         {serve: 0,  shadow: 100}   # planner
kiwi.recipe_generation: {serve: 10, shadow: 50, stickiness: user_id}
kiwi.ocr:
  serve: 0       # vision
  shadow: 0
"""


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_the_ramp() -> None:
    rungs = [Setting(0, 0)]
    while (step := next_rung(rungs[-1])) is not None:
        rungs.append(step)
    assert [(s.serve, s.shadow) for s in rungs] == [
        (0, 0),
        (0, 100),
        (1, 100),
        (5, 100),
        (25, 100),
        (50, 100),
        (100, 100),
    ]
    assert next_rung(Setting(3, 40), ramp=(10, 100)) == Setting(10, 40)


def test_promote_climbs_and_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(KIWI_FLAGS)
    log = tmp_path / "changes.jsonl"
    outputs = [
        invoke("promote", "kiwi.ocr", "--flags", str(path), "--log", str(log), "--force")
        for _ in range(3)
    ]
    assert [code for code, _ in outputs] == [0, 0, 0]
    assert outputs[-1][1].strip() == (
        "promoted kiwi.ocr: canary (serve 1 %, shadow 100 %) -> canary (serve 5 %, shadow 100 %)"
    )
    text = path.read_text()
    assert text.startswith("# kiwi's flags (reviewed in git)\n")
    assert "  serve: 5       # vision\n" in text
    assert "kiwi.meal_plan:         {serve: 0,  shadow: 100}   # planner\n" in text
    state = flags.load_flags_file(path)
    assert (state.tasks["kiwi.ocr"].serve, state.tasks["kiwi.ocr"].shadow) == (5, 100)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["from"]["stage"], r["to"]["stage"]) for r in rows] == [
        ("off", "shadow"),
        ("shadow", "canary"),
        ("canary", "canary"),
    ]


def test_explicit_percentages_dry_run_and_live(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(KIWI_FLAGS)
    code, out = invoke(
        "promote", "kiwi.meal_plan", "--serve", "100", "--flags", str(path), "--dry-run", "--force"
    )
    assert code == 0 and out.startswith("would promote kiwi.meal_plan")
    assert path.read_text() == KIWI_FLAGS
    assert (
        invoke("promote", "kiwi.meal_plan", "--serve", "100", "--flags", str(path), "--force")[0]
        == 0
    )
    code, out = invoke("promote", "kiwi.meal_plan", "--flags", str(path))
    assert code == 1 and "already live" in out
    assert flags.load_flags_file(path).tasks["kiwi.meal_plan"].stickiness == "default"
    assert "stickiness: user_id" in path.read_text(), "other tasks untouched"


def test_rollback_one_and_all(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(KIWI_FLAGS)
    invoke("promote", "kiwi.meal_plan", "--serve", "25", "--flags", str(path), "--force")
    code, out = invoke("rollback", "--all", "--flags", str(path))
    assert code == 0
    assert "rolled back kiwi.meal_plan" in out and "rolled back kiwi.recipe_generation" in out
    state = flags.load_flags_file(path)
    assert [(t, f.serve, f.shadow) for t, f in state.tasks.items()] == [
        ("kiwi.meal_plan", 0, 100),
        ("kiwi.recipe_generation", 0, 50),
        ("kiwi.ocr", 0, 0),
    ]
    code, out = invoke("rollback", "kiwi.ocr", "--flags", str(path))
    assert code == 0 and "nothing to roll back" in out


def test_new_task_from_assignments_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(KIWI_FLAGS)
    assert invoke("promote", "kiwi.barcode_scan", "--flags", str(path))[0] == 0
    assert path.read_text().endswith("kiwi.barcode_scan: {serve: 0, shadow: 100}\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["promote", "kiwi.soup"], "unknown task 'kiwi.soup'"),
        (["promote", "Kiwi"], "is not a task name"),
        (["promote", "kiwi.ocr", "--serve", "-1"], "--serve must be a percentage"),
        (["promote", "kiwi.ocr", "--shadow", "101"], "--shadow must be a percentage"),
        (["promote", "kiwi.ocr", "--ramp", "5,1"], "--ramp must be rising"),
        (["rollback"], "name one task or pass --all"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(KIWI_FLAGS)
    code, out = invoke(*args, "--flags", str(path))
    assert code == 2
    assert message in out
    assert path.read_text() == KIWI_FLAGS


def test_missing_or_broken_flags_file_exits_2(tmp_path: Path) -> None:
    code, out = invoke("promote", "kiwi.ocr", "--flags", str(tmp_path / "none.yaml"))
    assert code == 2 and "no such flags file" in out
    broken = tmp_path / "broken.yaml"
    broken.write_text("kiwi.ocr: {serve: 500}\n")
    code, out = invoke("promote", "kiwi.ocr", "--flags", str(broken))
    assert code == 2 and "broken.yaml:1: kiwi.ocr.serve" in out


def test_concurrent_edits_are_serialised_by_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("kiwi.ocr: {serve: 0, shadow: 0}\n")
    store = FileStore(path)
    errors: list[BaseException] = []

    def bump(n: int) -> None:
        try:
            for i in range(25):
                store.apply({f"kiwi.t{n}": Setting(i, 100 - i)})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    state = flags.load_flags_file(path)
    assert {t: (f.serve, f.shadow) for t, f in state.tasks.items()} == {
        "kiwi.ocr": (0, 0),
        **{f"kiwi.t{n}": (24, 76) for n in range(4)},
    }


WRITER = """
import sys
from shim.flags.store import FileStore, Setting
store = FileStore(sys.argv[1])
i = 0
while True:
    i = (i + 1) % 100
    store.apply({"kiwi.ocr": Setting(i, 100 - i), "kiwi.pad" + str(i % 7): Setting(i, i)})
"""


def test_kill_9_mid_write_leaves_the_old_file_or_the_new(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("# header\nkiwi.ocr: {serve: 0, shadow: 100}\n")
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        time.sleep(0.3 + attempt * 0.07)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = flags.load_flags_file(path)  # always parses
        ocr = state.tasks["kiwi.ocr"]
        assert ocr.serve + ocr.shadow == 100
        assert path.read_text().startswith("# header\n")
    leftovers = [
        p.name
        for p in tmp_path.iterdir()
        if p.name.startswith(".flags.yaml.") and not p.name.endswith(".lock")
    ]
    assert len(leftovers) <= 8, "at most one stray temp file per killed write"


def test_block_style_entries_are_edited_in_place() -> None:
    text = "kiwi.ocr:   # vision\n  stickiness: user_id\n  serve: 5\n"
    new = edit_flags_text("f.yaml", text, {"kiwi.ocr": Setting(25, 100)})
    assert new == "kiwi.ocr:   # vision\n  shadow: 100\n  stickiness: user_id\n  serve: 25\n"
