"""``shim report`` with plain arguments runs without typer (shim.cli.report): the same
output and exit code as the typer verb, and the command line's start-up left out."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from shim.analysis.policy import Policy
from shim.cli import main
from shim.cli.app import app
from shim.cli.console import EXIT_INTERRUPTED, run_guarded
from shim.cli.report import OPTIONS, ReportArgs, parse_plain

runner = CliRunner()


def comparison(rng: random.Random, task: str, cand_err: float) -> dict[str, Any]:
    legacy_ms = rng.uniform(500, 1500)
    ok = rng.random() >= cand_err
    return {
        "event": "shim.comparison",
        "schema": 1,
        "ts": "2026-11-26T12:00:00Z",
        "product": "kiwi",
        "task": task,
        "stage": "shadow",
        "served_by": "legacy",
        "legacy": {"ok": True, "latency_ms": legacy_ms, "model": "m"},
        "candidate": {"ok": ok, "latency_ms": legacy_ms * 0.9, "model": "m"},
        "model": {"verdict": "same", "routing_error": False},
        "structure": {"match": True if ok else None, "candidate_valid": True},
    }


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A task that is fine and one whose task path fails a third of its calls (ROLLBACK)."""
    rng = random.Random(5)
    rows = [comparison(rng, "good", 0.0) for _ in range(400)]
    rows += [comparison(rng, "failing", 0.3) for _ in range(400)]
    path = tmp_path_factory.mktemp("logs") / "comparisons.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    return path


def plain(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``shim`` as the console script runs it, on ``args``: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


@pytest.mark.parametrize(
    ("extra", "exit_code"),
    [
        (["--format", "json"], 1),
        (["--format=json", "--task", "kiwi.good"], 0),
        (["--format", "markdown", "--stage", "shadow"], 1),
        ([], 1),  # the table
        (["--format", "json", "--since", "2026-11-26", "--until", "2026-11-27"], 1),
        (["--format", "yaml"], 2),
        (["--format", "html"], 2),
        (["--task", "kiwi.nope"], 2),
    ],
)
def test_plain_arguments_print_what_the_typer_verb_prints(
    log: Path, extra: list[str], exit_code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without typer, the same output (stdout and stderr) and the same exit code (1 for
    the ROLLBACK task, 2 for arguments or filters that are wrong)."""
    assert parse_plain([str(log), *extra]) is not None
    code, out, err = plain(["report", str(log), *extra], capsys)
    verb = runner.invoke(app, ["report", str(log), *extra])
    assert (code, out, err) == (verb.exit_code, verb.stdout, verb.stderr)
    assert code == exit_code


def test_a_missing_log_and_stdin_without_typer(
    tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "typo.jsonl")
    code, out, err = plain(["report", missing, "--format", "json"], capsys)
    verb = runner.invoke(app, ["report", missing, "--format", "json"])
    assert (code, out, err) == (verb.exit_code, verb.stdout, verb.stderr)
    assert code == 2 and "no such log file" in err
    with log.open() as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        code, out, _ = plain(["report", "-", "--format", "json", "--task", "kiwi.good"], capsys)
    assert code == 0 and json.loads(out)["tasks"][0]["n"] == 400


def test_html_and_a_policy_file_without_typer(
    tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  min_pairs: 100\n  rollback_error_increase: 0.5\n")
    page = tmp_path / "report.html"
    args = ["report", str(log), "--format", "html", "--out", str(page), "--policy", str(policy)]
    code, out, _ = plain(args, capsys)
    assert code == 0  # the policy's lenient rollback line: no ROLLBACK
    assert out.strip() == f"wrote {page}" and "kiwi.failing" in page.read_text()
    policy.write_text("defaults:\n  min_pairs: 0\n")
    code, _, err = plain(["report", str(log), "--policy", str(policy)], capsys)
    assert code == 2 and "min_pairs" in err


@pytest.mark.parametrize(
    "args",
    [
        [],  # no log: typer says what is missing
        ["--help"],
        ["LOG", "--help"],
        ["LOG", "--format"],  # no value
        ["LOG", "--format", "json", "--format", "table"],  # given twice
        ["LOG", "--frmat", "json"],
        ["LOG", "-f", "json"],
        ["LOG", "--task", "--format"],
        ["LOG", "--policy", "MISSING"],  # typer says the file does not exist
        ["LOG", "--policy", "."],
        ["LOG", "--out", "."],
    ],
)
def test_anything_else_is_left_to_typer(args: list[str], tmp_path: Path) -> None:
    """What typer would refuse or answer otherwise (help) is not read without it."""
    given = [str(tmp_path / "x.jsonl") if a == "LOG" else a for a in args]
    given = [str(tmp_path / "nothing.yaml") if a == "MISSING" else a for a in given]
    assert parse_plain(given) is None


def test_plain_arguments_read_as_typer_reads_them() -> None:
    """Options anywhere, ``--opt=value``, ``-`` for stdin, ``--`` before logs that look
    like options; each option the verb has, and no other."""
    assert parse_plain(["--task", "kiwi.a", "a.jsonl", "-", "--format=json", "--", "--b"]) == (
        ReportArgs(("a.jsonl", "-", "--b"), fmt="json", task="kiwi.a")
    )
    verb = typer.main.get_command(app).commands["report"]  # type: ignore[attr-defined]
    typer_options = {o for p in verb.params for o in p.opts if o.startswith("--")}
    # --help is not a parameter; --export takes two values and is left to typer
    assert typer_options == set(OPTIONS) | {"--export"}
    assert parse_plain(["a.jsonl", "--export", "parquet", "a.parquet"]) is None


def test_the_built_in_policy_has_no_prices() -> None:
    """build_report reads the logs before it makes the built-in policy, with no prices."""
    assert Policy().prices == {}


@pytest.mark.subprocess
def test_shim_report_loads_no_command_line_framework(log: Path) -> None:
    """``shim report LOG --format json`` loads neither typer, click nor rich, nor another
    verb's modules: a big log's report was a quarter start-up (bench/report.py)."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('typer', 'click', 'rich', 'httpx', 'fastapi', 'uvicorn', 'deepdiff') or "
        "m.startswith(('shim.cli.app', 'shim.cli.options', 'shim.cli.logs', "
        "'shim.cli.check_status', 'shim.cli.ramp', 'shim.cli.sim_demo', 'shim.ops', "
        "'shim.sim', 'shim.core', 'shim.client'))), file=sys.stderr))\n"
        f"sys.argv = ['shim', 'report', {str(log)!r}, '--format', 'json']\n"
        "from shim.cli import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr  # kiwi.failing: ROLLBACK
    assert json.loads(done.stdout)["records"] == 800
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_ctrl_c_ends_the_command_quietly_with_130(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as ended:
        run_guarded(interrupted)
    assert ended.value.code == EXIT_INTERRUPTED == 130
    assert "Traceback" not in capsys.readouterr().err
