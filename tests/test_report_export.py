"""``shim report --export parquet PATH``: the archive holds every record whole, and a
report of the archive says what the report of the logs said."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from shim.analysis.report import build_report
from shim.analysis.report_export import export_parquet
from shim.analysis.report_files import ReportError
from shim.cli.app import app

from .test_hostile_logs import lines, problems, rows
from .test_report import record

runner = CliRunner()


def same_report(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two reports agree on everything but where their problems were found."""
    a, b = dict(a), dict(b)
    a.pop("problems"), b.pop("problems")
    assert a == b


@pytest.fixture
def logs(tmp_path: Path) -> list[str]:
    rng = random.Random(4)
    worse = [
        record("kiwi.b", rng, legacy_err=0, cand_err=0.2, mismatch=0.1, speed=1) for _ in range(80)
    ]
    plain = tmp_path / "host-a.jsonl"
    plain.write_text(lines(rows(300)) + "not json at all\n" + lines(worse))
    packed = tmp_path / "host-b.jsonl.gz"
    packed.write_bytes(gzip.compress(lines(rows(200, seed=2)).encode()))
    return [str(plain), str(packed)]


def test_a_report_of_the_archive_is_the_report_of_the_logs(logs: list[str], tmp_path: Path) -> None:
    archive = tmp_path / "archive.parquet"
    exported = export_parquet(logs, archive)
    assert (exported.rows, exported.bad_lines, exported.logs) == (581, 1, 2)
    original = build_report(logs)
    assert original["bad_lines"] == 1
    same_report(original, build_report([str(archive)]))
    # every record is kept whole, beside the columns the report reads
    kept = duckdb.sql(f"SELECT record FROM '{archive}' WHERE record IS NOT NULL").fetchall()
    read = [json.loads(line) for line in Path(logs[0]).read_text().splitlines()[:300]]
    assert json.loads(kept[0][0]) in read
    assert sorted(json.loads(r[0])["call_id"] for r in kept) == sorted(
        r["call_id"]
        for log in logs
        for r in (
            json.loads(line)
            for line in (
                gzip.decompress(Path(log).read_bytes()).decode()
                if log.endswith(".gz")
                else Path(log).read_text()
            ).splitlines()
            if line.startswith("{")
        )
    )


def test_archives_and_logs_are_read_as_one(logs: list[str], tmp_path: Path) -> None:
    archive = tmp_path / "host-a.parquet"
    export_parquet(logs[:1], archive)
    same_report(build_report(logs), build_report([str(archive), logs[1]]))
    # and an archive of an archive and a log is the same again
    again = tmp_path / "again.parquet"
    export_parquet([str(archive), logs[1]], again)
    same_report(build_report(logs), build_report([str(again)]))


def test_the_filters_choose_what_is_archived(logs: list[str], tmp_path: Path) -> None:
    archive = tmp_path / "b.parquet"
    export_parquet(logs, archive, task="kiwi.b")
    report = build_report([str(archive)])
    assert [t["task"] for t in report["tasks"]] == ["kiwi.b"]
    assert report["tasks"][0]["n"] == 80
    assert report["bad_lines"] == 1  # a bad line belongs to no task: kept, as a row of nulls


def test_a_broken_archive_is_named_and_the_rest_reported(logs: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    report = build_report([logs[0], str(broken)])
    assert problems(report) == {(str(broken), "unreadable"): 0}
    assert report["records"] == 380


def test_the_cli_archives_and_says_so(logs: list[str], tmp_path: Path) -> None:
    archive = tmp_path / "day.parquet"
    done = runner.invoke(app, ["report", *logs, "--export", "parquet", str(archive)])
    assert done.exit_code == 1, done.output  # kiwi.b's errors: ROLLBACK, as without --export
    assert "archived 580 JSON lines and 1 not JSON (rows of nulls) of 2 log(s)" in done.output
    assert "kiwi.b" in done.output
    again = runner.invoke(app, ["report", str(archive), "--format", "json"])
    assert json.loads(again.output)["records"] == 580


@pytest.mark.parametrize(
    ("export", "message"),
    [
        (["csv", "x.csv"], "--export takes parquet and a path, got 'csv'"),
        (["parquet", "x.csv"], "name the archive *.parquet"),
        (["parquet", "missing/x.parquet"], "no such folder"),
    ],
)
def test_a_wrong_export_is_exit_2_and_writes_nothing(
    logs: list[str], tmp_path: Path, export: list[str], message: str, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, ["report", *logs, "--export", *export])
    assert done.exit_code == 2
    assert message in done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host-a.jsonl", "host-b.jsonl.gz"]


def test_a_failed_export_leaves_the_old_archive_as_it_was(logs: list[str], tmp_path: Path) -> None:
    archive = tmp_path / "day.parquet"
    export_parquet(logs, archive)
    before = archive.read_bytes()
    with pytest.raises(ReportError, match="no such log"):
        export_parquet([str(tmp_path / "gone.jsonl")], archive)
    assert archive.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_standard_input_is_archived_and_reported(logs: list[str], tmp_path: Path) -> None:
    archive = tmp_path / "stdin.parquet"
    done = runner.invoke(
        app,
        ["report", "-", "--export", "parquet", str(archive), "--format", "json"],
        input=Path(logs[0]).read_text(),
    )
    assert done.exit_code == 1, done.output  # kiwi.b rolls back, as from the file
    assert json.loads(done.stdout)["records"] == 380
    assert build_report([str(archive)])["records"] == 380


def test_a_truncated_gz_is_archived_as_far_as_it_reads_and_named(
    logs: list[str], tmp_path: Path
) -> None:
    cut = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(lines(rows(200, seed=5)).encode())
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    archive = tmp_path / "cut.parquet"
    exported = export_parquet([logs[0], str(cut)], archive)
    assert [(p.file, p.kind) for p in exported.problems] == [(str(cut), "truncated_gzip")]
    read = build_report([str(archive)])["records"]
    assert 380 < read < 580  # the plain log whole, and what the cut one gave
    done = runner.invoke(
        app, ["report", logs[0], str(cut), "--export", "parquet", str(archive), "--format", "json"]
    )
    assert [p["kind"] for p in json.loads(done.stdout)["problems"]] == ["truncated_gzip"]


def test_an_archive_with_other_columns_reads_the_same(logs: list[str], tmp_path: Path) -> None:
    """The report reads an archive's records from their whole text: one written when
    the report read fewer fields (a typed column missing) reads as the logs do."""
    archive = tmp_path / "now.parquet"
    export_parquet(logs, archive)
    older = tmp_path / "older.parquet"
    duckdb.sql(
        f"COPY (SELECT * EXCLUDE (judge, quality) FROM '{archive}') TO '{older}' (FORMAT PARQUET)"
    )
    same_report(build_report(logs), build_report([str(older)]))
