"""What the command line prints never carries a secret the environment configures: a
task name, a model or an error message in a log, a path in an error, in every output
format. One redaction covers all of it, so no verb has to remember."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shim.base.secrets import MASK
from shim.cli.app import app

from .conftest import SECRET, URL_PASSWORD
from .test_report import record

runner = CliRunner()


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CF_LICENSE_KEY", SECRET)
    monkeypatch.setenv("UNLEASH_URL", f"http://ops:{URL_PASSWORD}@unleash.test/api")


def hostile_log(tmp_path: Path) -> Path:
    """A log whose task name, model and errors carry the key and the URL password (not
    named ``.jsonl``: it is the test's input, not a record the shim wrote)."""
    rng = random.Random(3)
    rows = [record("kiwi.a", rng, legacy_err=0, cand_err=0, mismatch=0, speed=1) for _ in range(5)]
    for row in rows:
        row["task"] = f"ocr-{SECRET}"
        row["candidate"]["model"] = f"acme/{URL_PASSWORD}"
        row["legacy"].update(ok=False, error=f"E: bad key {SECRET}")
    log = tmp_path / "input.log"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return log


@pytest.mark.parametrize("fmt", ["table", "json", "markdown"])
def test_shim_report_prints_no_secret_from_a_log(
    tmp_path: Path, fmt: str, secret_env: None
) -> None:
    """A task named after the key (a careless call site) is shown redacted, in every
    format; the JSON stays JSON."""
    result = runner.invoke(app, ["report", "--format", fmt, str(hostile_log(tmp_path))])
    assert result.exit_code in (0, 1), result.output
    assert SECRET[:6] not in result.output and URL_PASSWORD[:6] not in result.output
    assert f"ocr-{MASK}" in result.output.replace("\\[", "[").replace("\\]", "]")
    if fmt == "json":
        [task] = json.loads(result.stdout)["tasks"]
        assert task["task"] == f"kiwi.ocr-{MASK}"


def test_shim_report_writes_no_secret_into_html(tmp_path: Path, secret_env: None) -> None:
    page = tmp_path / "report.html"
    result = runner.invoke(
        app, ["report", "--format", "html", "--out", str(page), str(hostile_log(tmp_path))]
    )
    assert result.exit_code in (0, 1), result.output
    text = page.read_text()
    assert SECRET[:6] not in text and f"ocr-{MASK}" in text


def test_an_error_message_quoting_a_path_prints_no_secret(tmp_path: Path, secret_env: None) -> None:
    """The path a user typed is quoted in the error; the key in it is not."""
    result = runner.invoke(app, ["report", str(tmp_path / f"{SECRET}.jsonl")])
    assert result.exit_code == 2
    assert "no such" in result.output and MASK in result.output
    assert SECRET[:6] not in result.output
    watched = runner.invoke(app, ["watch", str(tmp_path / f"logs-{SECRET}.jsonl")])
    assert watched.exit_code == 2
    assert MASK in watched.output and SECRET[:6] not in watched.output


def test_a_refused_promotion_prints_no_secret(tmp_path: Path, secret_env: None) -> None:
    """A task name from the command line is quoted back, redacted."""
    flags = tmp_path / "flags.yaml"
    flags.write_text("kiwi.ocr: {shadow: 100}\n")
    result = runner.invoke(app, ["promote", f"kiwi.{SECRET}", "--flags", str(flags)])
    assert result.exit_code == 2, result.output
    assert SECRET[:6] not in result.output and MASK in result.output


def test_what_a_verb_prints_past_printable_is_redacted_too(
    capsys: pytest.CaptureFixture[str], secret_env: None
) -> None:
    """The consoles and ``emit`` redact all they write: a verb that forgets
    ``printable`` (a title, a markup string, a raw document) leaks nothing either."""
    from shim.cli.options import emit, err, out

    out.print(f"[bold]key {SECRET}[/]")
    err.print(f"at http://ops:{URL_PASSWORD}@unleash.test/api")
    emit(json.dumps({"key": SECRET, "escaped": json.dumps(SECRET + '"')}))
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert SECRET[:6] not in text and URL_PASSWORD[:6] not in text
        assert MASK in text
    assert json.loads(captured.out.splitlines()[-1])["key"] == MASK


def test_a_secret_that_is_not_utf8_in_the_environment_never_breaks_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte that is not UTF-8 in ``CF_LICENSE_KEY`` (read as a surrogate escape):
    the redaction is built all the same, so the command line still prints."""
    monkeypatch.setenv("CF_LICENSE_KEY", "cf-lic-\udcff-9c2e5b1d")
    result = runner.invoke(app, ["report", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2, result.output
    assert "no such log file" in result.output
