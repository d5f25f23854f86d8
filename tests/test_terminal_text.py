"""Text from logs and config files reaches the terminal as text: rich markup in a name
is shown, never parsed (no MarkupError, no lost ``[fp8]``), control characters are
shown escaped, never sent raw, and JSON output is strict."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from shim.base.errors import ConfigError, Problem
from shim.base.text import escape_markup, printable, strict_json
from shim.cli.app import EXIT_INTERNAL, EXIT_PIPE, app, main
from shim.cli.options import say

from .conftest import KIWI
from .test_report import record
from .test_watch import stream

runner = CliRunner()

#: What an attacker can put into a product, task or model name in a log.
HOSTILE = ["acme/v[/fp8]", "ocr[/b]", "v[fp8]", "x\x1b]0;title\x07y", "wipe\x1b[2J", ":skull:"]
#: Anything a terminal acts on: ESC, BEL, other C0, DEL, C1 (CSI), bidi overrides.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _strict(text: str) -> Any:
    """``text`` parsed as JSON that has no NaN or Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hostile_log(path: Path, n: int = 5) -> Path:
    """``n`` clean pairs for each hostile task name, with a hostile model too."""
    rng = random.Random(1)
    rows = []
    for name in HOSTILE:
        for _ in range(n):
            row = record("kiwi.t", rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
            row["task"] = name
            row["candidate"]["model"] = "model[fp8]\x1b[2J"
            row["model"]["verdict"] = "odd[/v]\x9b"
            rows.append(row)
    return write(path, rows)


def test_printable_shows_control_characters_escaped() -> None:
    assert printable("kiwi.meal_plan") == "kiwi.meal_plan"
    assert printable("x\x1b]0;title\x07y\x1b[2J") == "x\\x1b]0;title\\x07y\\x1b[2J"
    assert printable("a\x9bb\x7fc\x00") == "a\\x9bb\\x7fc\\x00"
    assert printable("evil\u202egpj.exe") == "evil\\u202egpj.exe"
    assert printable("one\ntwo\r\tthree") == "one\\ntwo\\r\\tthree"
    assert printable("one\ntwo\r", newlines=True) == "one\ntwo\\r"
    assert printable("café 中文 ✓") == "café 中文 ✓", "printable text is left alone"
    assert printable(None) == "None" and printable(3.5) == "3.5"


def test_a_yaml_problem_drops_the_same_control_characters_printable_escapes() -> None:
    """Was: a second, shorter list that let bidirectional controls through into a
    config error (``evil\u202egpj.exe`` shown as ``evilexe.jpg``)."""
    import yaml

    from shim.base.yamlbounds import yaml_problem

    hostile = "bad \u202eexe.gpj\u2066 \u061ckey\u200f\x1b[2J \x9b1m"
    for exc in (ValueError(hostile), yaml.MarkedYAMLError(problem=hostile)):
        shown = yaml_problem(exc)
        assert shown == "bad exe.gpj key [2J 1m", repr(shown)
        assert printable(shown) == shown


def test_escape_markup_renders_a_name_exactly() -> None:
    from rich.console import Console

    console = Console(width=200, highlight=False, force_terminal=False, emoji=False)
    for name in HOSTILE:
        with console.capture() as captured:
            console.print(f"[bold]{escape_markup(name)}[/]")
        assert captured.get().rstrip("\n") == printable(name)


def test_strict_json_turns_non_finite_numbers_into_null() -> None:
    value = {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": {"d": 2}}
    text = strict_json(value)
    assert _strict(text) == {"a": None, "b": [None, None, 1.5], "c": {"d": 2}}
    assert _strict(strict_json(value, indent=2)) == _strict(text)


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_report_shows_hostile_names_exactly_and_escaped(tmp_path: Path, fmt: str) -> None:
    """Was: MarkupError and exit 1 (the ROLLBACK code), or [fp8] dropped, or ESC raw."""
    log = hostile_log(tmp_path / "log.jsonl")
    result = runner.invoke(app, ["report", str(log), "--format", fmt])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 0, result.output
    assert not RAW.search(result.output), repr(result.output)
    # Markdown's own escapes taken off: what is left is the text as shown.
    shown = re.sub(r"\\([\\`*_\[\]<>|~])", r"\1", result.output)
    for name in HOSTILE:
        assert printable(f"kiwi.{name}") in shown
    assert "💀" not in result.output, "an emoji code in a name stays text"
    assert printable("odd[/v]\x9b") in shown


def test_markdown_cells_cannot_break_the_table(tmp_path: Path) -> None:
    rng = random.Random(2)
    rows = []
    for _ in range(3):
        row = record("kiwi.t", rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
        row["task"] = "a|b"
        rows.append(row)
    result = runner.invoke(
        app, ["report", str(write(tmp_path / "l.jsonl", rows)), "--format", "markdown"]
    )
    head, *rows_out = [x for x in result.output.splitlines() if x.startswith("| ")]
    [line] = [x for x in rows_out if "kiwi.a" in x]
    assert "kiwi.a\\|b" in line
    cells = re.compile(r"(?<!\\)\|")
    assert len(cells.split(line)) == len(cells.split(head)), "one cell per column"


#: Names that Markdown would turn into a link, emphasis, code, HTML or a new cell.
MARKDOWN = ["[x](http://evil.test)", "*bold*", "_it_", "`code`", "<img src=x>", "a\\|b", "~~s~~"]


def test_markdown_names_are_text_not_links_or_emphasis(tmp_path: Path) -> None:
    """Was: a task named ``[x](http://...)`` became a link in the pull request, ``*a*``
    emphasis. Rendered as a Markdown table, every name is its own text in one cell."""
    from markdown_it import MarkdownIt

    rng = random.Random(4)
    rows = []
    for name in MARKDOWN:
        row = record("kiwi.t", rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
        row["task"] = name
        row["candidate"]["model"] = f"m{name}"
        rows.append(row)
    result = runner.invoke(
        app, ["report", str(write(tmp_path / "l.jsonl", rows)), "--format", "markdown"]
    )
    assert result.exit_code == 0, result.output
    html = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(result.output)
    for tag in ("<a ", "<em>", "<code>", "<img", "<del>", "<s>"):
        assert tag not in html, (tag, html)
    assert html.count("<strong>") == 1 + 2 * len(MARKDOWN), "the title, each verdict and name"
    cells = re.findall(r"<td>(.*?)</td>", html)
    head = re.findall(r"<th>", html)
    assert len(cells) == len(head) * len(MARKDOWN), "one cell per column"
    from html import escape

    for name in MARKDOWN:
        assert escape(f"kiwi.{name}", quote=False) in cells


def test_report_json_is_strict_even_when_a_ratio_overflows(tmp_path: Path) -> None:
    """Was: ``Infinity`` in the output (and an overflow RuntimeWarning on stderr)."""
    rng = random.Random(1)
    rows = []
    for i in range(400):
        row = record("kiwi.a", rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
        row["legacy"]["latency_ms"] = 1e-300
        row["candidate"]["latency_ms"] = 1e300 if i % 2 else 1e-300
        row["legacy"]["usage"] = {"input_tokens": 1, "output_tokens": 1, "gpu_s": 1e308}
        rows.append(row)
    log = write(tmp_path / "log.jsonl", rows)
    result = runner.invoke(app, ["report", str(log), "--format", "json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    data = _strict(result.stdout)
    [task] = data["tasks"]
    assert task["latency_ratio"]["p95"]["ratio"] is None
    assert task["usage"]["legacy"]["gpu_s"] is None


def test_html_report_escapes_names(tmp_path: Path) -> None:
    from shim.analysis.report import build_report
    from shim.analysis.report_html import render_html

    rng = random.Random(3)
    rows = []
    for name in ("<script>alert(1)</script>", "q'uote", "esc\x1b[2J"):
        for _ in range(3):
            row = record("kiwi.t", rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
            row["task"] = name
            rows.append(row)
    page = render_html(build_report([str(write(tmp_path / "l.jsonl", rows))]))
    assert "<script>" not in page and "q'uote" not in page
    assert "&lt;script&gt;" in page and "q&#x27;uote" in page
    assert not RAW.search(page) and "esc\\x1b[2J" in page


def test_watch_prints_a_hostile_task_escaped(tmp_path: Path) -> None:
    rows = stream(random.Random(3), 400, 400)
    for row in rows:
        row["task"] = "meal[/plan]\x1b[2J"
    log = write(tmp_path / "log.jsonl", rows)
    result = runner.invoke(app, ["watch", str(log), "--once", "--from-start"])
    assert result.exit_code == 1, result.output
    assert "BREACH kiwi.meal[/plan]\\x1b[2J breached" in result.output
    assert not RAW.search(result.output)


def test_status_prints_a_hostile_breaker_state_as_text(tmp_path: Path) -> None:
    """Was: MarkupError (the breaker state is read from the log into a markup cell)."""
    log = tmp_path / "log.jsonl"
    write(log, [{"event": "shim.breaker", "product": "kiwi", "task": "ocr", "to": "[/x]\x1b[2J"}])
    flag_file = tmp_path / "flags[x].yaml"
    flag_file.write_text("kiwi.ocr: {serve: 5}\n")
    result = runner.invoke(app, ["status", "--flags", str(flag_file), "--log", str(log)])
    assert result.exit_code == 0, result.output
    assert "[/x]\\x1b[2J" in result.output and "flags[x].yaml" in result.output
    assert not RAW.search(result.output)


def test_check_prints_a_hostile_model_name_as_text(tmp_path: Path) -> None:
    """Was: MarkupError on a model named ``acme/v[/fp8]`` in the registry."""
    assignments = tmp_path / "assignments.yaml"
    assignments.write_text('assignments:\n  kiwi.meal_plan: "acme/v[/fp8]"\n')
    registry = tmp_path / "registry.yaml"
    registry.write_text('models:\n  "acme/v[/fp8]": {service_type: cf-text, vram_mb: 1}\n')
    args = ["check", "--assignments", str(assignments), "--registry", str(registry)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "acme/v[/fp8]" in result.output


def test_check_problems_show_control_characters_escaped(tmp_path: Path) -> None:
    registry = tmp_path / "registry\x1b[2J.yaml"
    registry.write_text("models:\n  m: {service_type: CF TEXT, vram_mb: 1}\n")
    assignments = KIWI / "orch" / "assignments.yaml"
    args = ["check", "--assignments", str(assignments), "--registry", str(registry)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "registry\\x1b[2J.yaml:2:" in result.output and not RAW.search(result.output)


def test_promote_prints_evidence_from_a_hostile_log_escaped(tmp_path: Path) -> None:
    """The evidence window quotes the comparisons' ``ts``, as the log has it."""
    flag_file = tmp_path / "flags.yaml"
    flag_file.write_text("kiwi.a: {serve: 5, shadow: 100}\n")
    change = {"event": "shim.promote", "schema": 1, "product": "kiwi", "task": "a"}
    rows: list[dict[str, Any]] = [{**change, "ts": "2026-11-26T00:00:00.000000Z"}]
    rng = random.Random(4)
    for _ in range(3):
        row = record("kiwi.a", rng, legacy_err=0, cand_err=0, mismatch=0, speed=1)
        row["stage"], row["ts"] = "canary", "2026-11-27T00:00:00Z\x1b]0;pwned\x07"
        rows.append(row)
    log = write(tmp_path / "log.jsonl", rows)
    args = ["promote", "kiwi.a", "--flags", str(flag_file), "--evidence", str(log), "--force"]
    result = runner.invoke(app, [*args, "--assignments", str(tmp_path / "none.yaml")])
    assert result.exit_code == 0, result.output
    assert "00:00:00Z\\x1b]0;pwned\\x07" in result.output and not RAW.search(result.output)
    rows[0]["ts"] = "2026-11-28\x1b[2J"  # a change record whose ts is not a time
    write(log, rows)
    refused = runner.invoke(app, [*args, "--assignments", str(tmp_path / "none.yaml")])
    assert refused.exit_code == 2
    assert "has ts '2026-11-28\\x1b[2J', which is not a time" in refused.output
    assert "--since" not in refused.output, "was: an option the user never gave"


def test_an_unexpected_error_exits_with_its_own_code_never_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 1 means ROLLBACK (or a failed check): a crash must not look like one."""
    broken = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @broken.command()
    def boom() -> None:
        raise RuntimeError("a bug \x1b[2J")

    @broken.command()
    def fine() -> None:
        raise typer.Exit(1)

    with pytest.raises(SystemExit) as crashed:
        main(["boom"], command=broken)
    assert crashed.value.code == EXIT_INTERNAL != 1
    err = capsys.readouterr().err
    assert "RuntimeError: a bug \\x1b[2J" in err and "Traceback" in err
    assert "internal error" in err and not RAW.search(err)
    with pytest.raises(SystemExit) as exited:
        main(["fine"], command=broken)
    assert exited.value.code == 1, "an exit the command chose is kept"


def test_input_and_output_faults_exit_2_or_141_never_as_a_bug(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that cannot be written, a configuration refused where a verb did not
    expect it, a reader gone: each is said in one line, never a traceback or exit 70."""
    broken = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    target = tmp_path / "gone" / "report.html"

    @broken.command()
    def write() -> None:
        target.write_text("x")

    @broken.command()
    def config() -> None:
        raise ConfigError([Problem("sim", None, None, "require_key: empty; give a key")])

    @broken.command()
    def table() -> None:
        import io

        class Closed(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError(32, "Broken pipe")

        monkeypatch.setattr(sys, "stdout", Closed())
        say("a table row")

    for verb, code, said in [
        ("write", 2, f"{target}: No such file or directory"),
        ("config", 2, "require_key: empty; give a key"),
        ("table", EXIT_PIPE, ""),
    ]:
        with pytest.raises(SystemExit) as exited:
            main([verb], command=broken)
        err = capsys.readouterr().err
        assert exited.value.code == code, (verb, err)
        assert said in err and "Traceback" not in err and "internal error" not in err
