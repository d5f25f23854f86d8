"""``shim report`` (and ``promote --evidence``, ``watch``) tolerate a bad file or a bad
line: a line over the limit, a truncated ``.gz``, a name with ``[`` in it, a negative
count. Each is counted and named in the report, never fatal to the whole of it."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shim.analysis.log_lines import MAX_LINE_BYTES, clean_copy
from shim.analysis.report import build_report
from shim.cli.app import app
from shim.ops.watch import follow

from .test_report import record

runner = CliRunner()

#: Just over the documented limit: skipped, whatever DuckDB could have read.
OVER = MAX_LINE_BYTES + 1024


@pytest.fixture(autouse=True)
def _drop_huge_logs(tmp_path: Path) -> Iterator[None]:
    """The suite's closing secret scan reads every log left in the temporary folder:
    the tens of MB of synthetic lines here go after their test instead."""
    yield
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size > 1 << 20:
            path.unlink()


def rows(n: int, task: str = "kiwi.a", seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [record(task, rng, legacy_err=0, cand_err=0, mismatch=0, speed=1) for _ in range(n)]


def lines(items: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in items)


def huge_line(size: int = OVER) -> str:
    """A comparison whose coordinator-supplied ``model`` is ``size`` bytes long."""
    big = rows(1, seed=9)[0]
    big["candidate"]["model"] = "m" * size
    return json.dumps(big) + "\n"


def problems(report: dict[str, Any]) -> dict[tuple[str | None, str], int]:
    return {(p["file"], p["kind"]): p["lines"] for p in report["problems"]}


def test_a_line_over_the_limit_is_skipped_counted_and_named(tmp_path: Path) -> None:
    """Was: one line over 16 MB (DuckDB's object size) failed the whole report."""
    log = tmp_path / "big.jsonl"
    log.write_text(lines(rows(20)) + huge_line(2 * OVER) + lines(rows(20, seed=2)))
    other = tmp_path / "fine.jsonl"
    other.write_text(lines(rows(10, seed=3)))
    report = build_report([str(log), str(other)])
    assert report["records"] == 50 and report["tasks"][0]["n"] == 50
    assert problems(report) == {(str(log), "oversized_lines"): 1}
    assert "16 MiB" in report["problems"][0]["message"]
    table = runner.invoke(app, ["report", str(log)])
    assert table.exit_code == 0, table.output
    assert "skipped" in table.output and "big.jsonl" in table.output


def test_the_limit_is_exact_not_what_duckdb_happens_to_read(tmp_path: Path) -> None:
    """A line just over the documented limit is skipped; one at it is read."""
    log = tmp_path / "log.jsonl"
    at_limit = rows(1, seed=5)[0]
    at_limit["candidate"]["model"] = ""
    pad = MAX_LINE_BYTES - len(json.dumps(at_limit))
    at_limit["candidate"]["model"] = "m" * pad
    assert len(json.dumps(at_limit)) == MAX_LINE_BYTES
    log.write_text(lines(rows(3)) + huge_line() + json.dumps(at_limit) + "\n")
    report = build_report([str(log)])
    assert report["records"] == 4
    assert problems(report) == {(str(log), "oversized_lines"): 1}


def test_a_huge_line_in_a_gzip_log_is_skipped_too(tmp_path: Path) -> None:
    log = tmp_path / "big.jsonl.gz"
    with gzip.open(log, "wt", compresslevel=1) as out:
        out.write(lines(rows(5)) + huge_line(2 * OVER + 1) + lines(rows(5, seed=2)))
    report = build_report([str(log)])
    assert report["records"] == 10
    assert problems(report) == {(str(log), "oversized_lines"): 1}


def test_clean_copy_never_holds_a_huge_line(tmp_path: Path) -> None:
    """Over-long lines are discarded chunk by chunk, not read whole into memory."""
    log = tmp_path / "big.jsonl"
    log.write_text(lines(rows(2)) + huge_line(3 * OVER) + lines(rows(2, seed=2)))
    tracemalloc.start()
    try:
        copied = clean_copy(log, tmp_path / "clean.jsonl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for a {3 * OVER / 2**20:.0f} MiB line"
    assert (copied.oversized, copied.truncated) == (1, False)
    assert (tmp_path / "clean.jsonl").read_text() == lines(rows(2)) + lines(rows(2, seed=2))


def test_a_truncated_gzip_keeps_what_decompressed(tmp_path: Path) -> None:
    """Was: 'Unexpected end of GZIP stream' failed the whole report (logrotate still
    compressing)."""
    whole = gzip.compress(lines(rows(2000)).encode())
    cut = tmp_path / "rotating.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    fine = tmp_path / "current.jsonl"
    fine.write_text(lines(rows(100, seed=2)))
    report = build_report([str(cut), str(fine)])
    assert 100 + 500 < report["records"] < 2100
    assert problems(report) == {(str(cut), "truncated_gzip"): 0}
    assert report["bad_lines"] <= 1, "at most the line the cut went through"
    result = runner.invoke(app, ["report", str(cut), str(fine), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["problems"][0]["kind"] == "truncated_gzip"


def test_a_corrupt_gzip_keeps_what_decompressed(tmp_path: Path) -> None:
    """A whole member, then one whose first block is invalid (DuckDB: 'Failed to
    decode gzip stream'): the first member's records are counted."""
    broken_member = b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"\xff" * 100
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(lines(rows(2000)).encode()) + broken_member)
    report = build_report([str(bad)])
    assert report["records"] == 2000
    assert [(p["file"], p["kind"]) for p in report["problems"]] == [(str(bad), "corrupt_gzip")]
    assert "invalid block type" in report["problems"][0]["message"]


def test_a_file_that_cannot_be_read_at_all_is_left_out_and_named(tmp_path: Path) -> None:
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_text(lines(rows(5)))
    fine = tmp_path / "fine.jsonl"
    fine.write_text(lines(rows(4, seed=2)))
    report = build_report([str(not_gzip), str(fine)])
    assert report["records"] == 4
    assert [(p["file"], p["kind"]) for p in report["problems"]] == [(str(not_gzip), "corrupt_gzip")]


def test_a_name_with_brackets_is_a_file_not_a_pattern(tmp_path: Path) -> None:
    """Was: 'log[1].jsonl: no log matches this pattern'."""
    literal = tmp_path / "log[1].jsonl"
    literal.write_text(lines(rows(7)))
    (tmp_path / "log1.jsonl").write_text(lines(rows(3, seed=2)))
    assert build_report([str(literal)])["records"] == 7
    starred = tmp_path / "all*.jsonl"
    starred.write_text(lines(rows(4)))
    (tmp_path / "all-other.jsonl").write_text(lines(rows(3, seed=2)))
    assert build_report([str(starred)])["records"] == 4, "an existing path is read as named"
    assert build_report([str(tmp_path / "log[0-9].jsonl")])["records"] == 3, "still a glob"
    result = runner.invoke(app, ["report", str(literal), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["records"] == 7


def test_promote_evidence_reads_a_bracketed_a_truncated_and_a_huge_log(tmp_path: Path) -> None:
    """Was: 'no such evidence log' and 'cannot read the evidence'."""
    flag_file = tmp_path / "flags.yaml"
    flag_file.write_text("kiwi.a: {shadow: 100}\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults: {min_soak: 0, min_pairs: 30}\n")
    bracketed = tmp_path / "ev[1].jsonl"
    bracketed.write_text(lines(rows(40)) + huge_line())
    whole = gzip.compress(lines(rows(400, seed=2)).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    args = ["promote", "kiwi.a", "--flags", str(flag_file), "--policy", str(policy)]
    args += ["--assignments", str(tmp_path / "none.yaml"), "--dry-run", "--force"]
    for log, least in ((bracketed, 40), (tmp_path / "cut.jsonl.gz", 100)):
        result = runner.invoke(app, [*args, "--evidence", str(log)])
        assert result.exit_code == 0, result.output
        assert "would promote kiwi.a: shadow" in result.output
        found = re.search(r"evidence: (\d+) pairs in stage shadow", result.output)
        assert found and least <= int(found[1]) <= 400, result.output


def test_a_negative_drop_count_is_refused_not_subtracted(tmp_path: Path) -> None:
    """Was: a shim.dropped record with count -50 lowered the task's dropped total."""
    drop = {"event": "shim.dropped", "schema": 1, "product": "kiwi", "task": "a"}
    log = tmp_path / "log.jsonl"
    log.write_text(
        lines(rows(10))
        + lines([{**drop, "reason": "queue_full", "count": 5}])
        + lines([{**drop, "reason": "queue_full", "count": -50}])
        + lines([{**drop, "event": "shim.error", "operation": "compare", "count": -3}])
    )
    report = build_report([str(log)])
    [task] = report["tasks"]
    assert task["dropped"] == 5 and task["shim_errors"] == 0
    assert report["bad_lines"] == 2 and report["records"] == 11
    assert problems(report) == {(str(log), "negative_count"): 2}
    table = runner.invoke(app, ["report", str(log)])
    assert "negative" in table.output


def test_every_contract_key_is_kept_and_problems_is_empty_on_a_clean_log(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(lines(rows(10)))
    result = runner.invoke(app, ["report", str(log), "--format", "json"])
    data = json.loads(result.stdout)
    assert set(data) >= {"schema", "records", "bad_lines", "tasks", "problems"}
    assert data["problems"] == []
    assert "skipped" not in runner.invoke(app, ["report", str(log)]).output


def test_watch_skips_a_huge_line_without_holding_it(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(lines([{"n": 1}]) + '{"n": "' + "x" * (3 * OVER) + '"}\n' + lines([{"n": 2}]))
    tracemalloc.start()
    try:
        seen = [row["n"] for row in follow(log, from_start=True, once=True)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == [1, 2]
    # What a line within the limit needs (it is parsed whole), never the whole line.
    assert peak < 2.5 * MAX_LINE_BYTES < 3 * OVER, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("count", ["-1", "-9223372036854775808"])
def test_a_negative_count_in_any_drop_is_never_a_crash(tmp_path: Path, count: str) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(
        lines(rows(3)) + '{"event": "shim.dropped", "schema": 1, "product": "kiwi", "task": "a", '
        f'"reason": "x", "count": {count}}}\n'
    )
    report = build_report([str(log)])
    assert report["tasks"][0]["dropped"] == 0 and report["bad_lines"] == 1


def test_a_log_rotated_away_mid_report_is_named_not_fatal(tmp_path: Path) -> None:
    """A file that goes between finding it and copying it is left out, as unreadable."""
    from shim.analysis.report_files import LogFiles

    gone, kept = tmp_path / "gone.jsonl", tmp_path / "kept.jsonl"
    gone.write_text(lines(rows(2)))
    kept.write_text(lines(rows(2, seed=2)))
    with LogFiles([str(gone), str(kept)]) as found:
        gone.unlink()
        assert found.clean_rest()
        assert [n for n, _ in found.files] == [str(kept)]
        assert [(p.file, p.kind) for p in found.problems] == [(str(gone), "unreadable")]
        assert "No such file" in found.problems[0].message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_log_that_cannot_be_opened_is_named_not_a_crash(tmp_path: Path) -> None:
    locked, fine = tmp_path / "locked.jsonl", tmp_path / "fine.jsonl"
    locked.write_text(lines(rows(2)))
    locked.chmod(0)
    fine.write_text(lines(rows(3, seed=2)))
    report = build_report([str(locked), str(fine)])
    assert report["records"] == 3
    assert [(p["file"], p["kind"]) for p in report["problems"]] == [(str(locked), "unreadable")]


def test_status_passes_over_a_huge_line_and_reads_the_breaker_after_it(tmp_path: Path) -> None:
    """``shim status`` reads breaker states past a line over the limit, never whole."""
    from shim.ops.status import breaker_states

    log = tmp_path / "log.jsonl"
    breaker = {"event": "shim.breaker", "product": "kiwi", "task": "ocr", "to": "open"}
    with log.open("wb") as out:
        out.write(b'{"event": "shim.breaker", "model": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n')
        out.write(json.dumps(breaker).encode() + b"\n")
    assert breaker_states(log) == {"kiwi.ocr": "open"}


def test_one_bad_gz_copies_only_itself(tmp_path: Path) -> None:
    """Was: one truncated ``.gz`` made every log (plain ones too, already checked for
    long lines) be copied to the temporary folder. Each file is probed; only the bad
    one is copied, and the report still reads them all."""
    from shim.analysis.report_files import LogFiles

    plain = [tmp_path / f"plain{i}.jsonl" for i in range(3)]
    for i, path in enumerate(plain):
        path.write_text(lines(rows(10, seed=i)))
    good, bad = tmp_path / "good.jsonl.gz", tmp_path / "cut.jsonl.gz"
    good.write_bytes(gzip.compress(lines(rows(10, seed=7)).encode()))
    whole = gzip.compress(lines(rows(200, seed=8)).encode())
    bad.write_bytes(whole[: len(whole) // 2])
    names = [str(p) for p in (*plain, good, bad)]
    with LogFiles(names) as found:
        assert found.clean_rest()
        copied = [name for name, path in found.files if path != name]
        assert copied == [str(bad)]
        assert not found.clean_rest(), "nothing left with a fault"
    report = build_report(names)
    assert problems(report) == {(str(bad), "truncated_gzip"): 0}
    assert 40 < report["records"] < 250


def test_promote_evidence_names_what_it_skipped(tmp_path: Path) -> None:
    """Was: a promote decided on partial evidence (a line over the limit, a truncated
    ``.gz``) without a word. The evidence lists what was left out, the command prints
    it, and the ``shim.promote`` record keeps it."""
    from shim.analysis.policy import Policy
    from shim.ops.evidence import stage_evidence

    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults: {min_soak: 0, min_pairs: 30}\n")
    bracketed = tmp_path / "ev[1].jsonl"
    bracketed.write_text(lines(rows(40)) + huge_line())
    whole = gzip.compress(lines(rows(400, seed=2)).encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    found = stage_evidence("kiwi.a", "shadow", [str(bracketed), str(cut)], Policy.load(policy))
    assert {(p.file, p.kind) for p in found.problems} == {
        (str(bracketed), "oversized_lines"),
        (str(cut), "truncated_gzip"),
    }
    assert found.summary()["problems"][0]["file"] in (str(bracketed), str(cut))

    flag_file = tmp_path / "flags.yaml"
    flag_file.write_text("kiwi.a: {shadow: 100}\n")
    ops = tmp_path / "ops.jsonl"
    args = ["promote", "kiwi.a", "--flags", str(flag_file), "--policy", str(policy)]
    args += ["--assignments", str(tmp_path / "none.yaml"), "--force", "--log", str(ops)]
    result = runner.invoke(app, [*args, "--evidence", str(cut)])
    assert result.exit_code == 0, result.output
    assert f"{cut}: the gzip stream ends early" in " ".join(result.output.split())
    [row] = [json.loads(line) for line in ops.read_text().splitlines()]
    assert row["event"] == "shim.promote"
    assert [p["kind"] for p in row["evidence"]["problems"]] == ["truncated_gzip"]
