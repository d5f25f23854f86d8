"""What ``shim report`` and ``promote --evidence`` are given: a file named twice is
read once, a count that is not a plain whole number is a bad line named with its file,
and a log truncated while it is checked for long lines is never a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shim.analysis.log_lines import has_long_line
from shim.analysis.report import build_report
from shim.analysis.report_counts import MAX_COUNT
from shim.analysis.report_files import LogFiles

from .test_hostile_logs import lines, problems, rows

DROP = {"event": "shim.dropped", "schema": 1, "product": "kiwi", "task": "a", "reason": "x"}


def drop_line(count: str) -> str:
    """A drop record whose ``count`` is the JSON text ``count``."""
    return json.dumps({**DROP, "count": 0}).replace('"count": 0', f'"count": {count}') + "\n"


# -- a file named twice -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["dot-slash", "glob-and-name", "link", "same-twice"])
def test_a_log_named_twice_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Was: ``a.jsonl ./a.jsonl`` (or a glob and a name it matches) counted every
    record twice, and a file named twice that DuckDB could not read stopped the report
    with StopIteration."""
    monkeypatch.chdir(tmp_path)
    Path("a.jsonl").write_text(lines(rows(10)))
    os.symlink("a.jsonl", "b.jsonl")
    twice = {
        "dot-slash": ["a.jsonl", "./a.jsonl"],
        "glob-and-name": ["*.jsonl", "a.jsonl"],
        "link": ["a.jsonl", "b.jsonl"],
        "same-twice": ["a.jsonl", "a.jsonl"],
    }[how]
    report = build_report(twice)
    assert report["records"] == 10 and report["tasks"][0]["n"] == 10
    assert report["problems"] == []
    with LogFiles(twice) as found:
        # the first name given (the glob's first match)
        assert [name for name, _ in found.files] == [twice[0].replace("*", "a")]
        found.drop(found.paths[0], "gone")
        found.drop(found.paths[0] if found.paths else "a.jsonl", "gone")  # no StopIteration
        assert found.files == []


def test_promote_evidence_counts_a_log_named_twice_once(tmp_path: Path) -> None:
    from shim.analysis.policy import Policy
    from shim.ops.evidence import stage_evidence

    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults: {min_soak: 0, min_pairs: 30}\n")
    log = tmp_path / "ev.jsonl"
    log.write_text(lines(rows(40)))
    found = stage_evidence("kiwi.a", "shadow", [str(log), str(log)], Policy.load(policy))
    assert found.n == 40


# -- counts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "count", ["1e400", str(10**30), str(MAX_COUNT + 1), "[1]", '"12"', "1.5", "1.0", "true", "{}"]
)
def test_a_count_that_is_not_a_plain_whole_number_is_a_bad_line(tmp_path: Path, count: str) -> None:
    """Was: DuckDB read ``count`` as a BIGINT, coercing "12" to 12, 1.5 to 2, true to
    1, and 1e400 or 10**30 to nothing: never a bad line, never named."""
    log = tmp_path / "log.jsonl"
    log.write_text(lines(rows(3)) + drop_line("4") + drop_line(count))
    report = build_report([str(log)])
    [task] = report["tasks"]
    assert task["dropped"] == 4
    assert report["bad_lines"] == 1 and report["records"] == 4
    assert problems(report) == {(str(log), "bad_count"): 1}


def test_counts_up_to_the_cap_are_counted(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(lines(rows(3)) + drop_line("0") + drop_line(str(MAX_COUNT)))
    report = build_report([str(log)])
    assert report["tasks"][0]["dropped"] == MAX_COUNT
    assert report["bad_lines"] == 0 and report["problems"] == []


def test_refused_counts_name_each_file_they_are_in(tmp_path: Path) -> None:
    """Was: ``negative_count`` had ``"file": null``: with several logs, no telling
    which one to look at."""
    first, second, clean = (tmp_path / f"{n}.jsonl" for n in ("first", "second", "clean"))
    first.write_text(lines(rows(3)) + drop_line("-5") + drop_line("-1"))
    second.write_text(lines(rows(3, seed=2)) + drop_line("-2") + drop_line('"7"'))
    clean.write_text(lines(rows(3, seed=3)))
    report = build_report([str(first), str(second), str(clean)])
    assert problems(report) == {
        (str(first), "negative_count"): 2,
        (str(second), "negative_count"): 1,
        (str(second), "bad_count"): 1,
    }
    assert report["bad_lines"] == 4


def test_a_refused_count_in_a_bracketed_file_is_named_as_given(tmp_path: Path) -> None:
    """The report reads such a file through a link; the problem names the file."""
    log = tmp_path / "log[1].jsonl"
    log.write_text(lines(rows(3)) + drop_line("-1"))
    assert problems(build_report([str(log)])) == {(str(log), "negative_count"): 1}


# -- a log truncated while it is checked ---------------------------------------------------


def test_a_log_truncated_while_checked_for_long_lines_is_no_crash(tmp_path: Path) -> None:
    """Was: the check mapped the log into memory; logrotate's ``copytruncate`` shrinking
    it mid-scan killed the process with SIGBUS (exit 135). Reads come back short now:
    the answer is "copy it", and the copy reads what is there."""
    log = tmp_path / "log.jsonl"
    log.write_bytes((b"x" * 99 + b"\n") * 1000)
    reads: list[tuple[int, int]] = []

    def read(fd: int, size: int, at: int) -> bytes:
        reads.append((size, at))
        if len(reads) == 2:
            os.truncate(log, 0)  # copytruncate, between two reads
        return os.pread(fd, size, at)

    assert has_long_line(log, 1000, read=read) is True
    assert len(reads) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ((b"x" * 99 + b"\n") * 1000, False),
        ((b"x" * 99 + b"\n") * 500 + b"y" * 1001 + b"\n" + (b"x" * 99 + b"\n") * 500, True),
        ((b"x" * 99 + b"\n") * 500 + b"y" * 1000 + b"\n" + (b"x" * 99 + b"\n") * 500, False),
        ((b"x" * 99 + b"\n") * 500 + b"y" * 1001, True),
        (b"y" * 1000 + b"\n" + b"z" * 1000, False),
        (b"y" * 300_000, True),
    ],
)
def test_the_long_line_check_reads_windows_exactly(
    tmp_path: Path, content: bytes, expected: bool
) -> None:
    """A line of exactly the limit is within it; one byte more is over (the check
    reads backwards in blocks smaller than the limit)."""
    log = tmp_path / "log.jsonl"
    log.write_bytes(content)
    assert has_long_line(log, 1000) is expected
    assert has_long_line(log, 200_000) is (len(content) > 200_001 and b"\n" not in content)


# -- what a report with the built-in policy loads ------------------------------------------


def test_the_built_in_policy_reads_no_yaml(tmp_path: Path) -> None:
    """``shim report`` without ``--policy`` neither imports PyYAML nor reads YAML: the
    built-in policy is made, not loaded (YAML was a third of the policy's import)."""
    import subprocess
    import sys

    log = tmp_path / "a.jsonl"
    log.write_text(lines(rows(3)))
    script = (
        "import sys\n"
        "from shim.analysis.report import build_report\n"
        f"report = build_report([{str(log)!r}])\n"
        "assert report['records'] == 3, report['records']\n"
        "print(sorted(m for m in sys.modules if m == 'yaml' or m.startswith('yaml.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_a_report_of_logs_that_cannot_be_found_starts_no_import_thread(
    tmp_path: Path,
) -> None:
    """The imports that run beside DuckDB's read start only once it reads: logs that
    are not there are a ReportError, not a thread joined before it started."""
    import threading

    from shim.analysis.report import ReportError

    before = threading.active_count()
    with pytest.raises(ReportError):
        build_report([str(tmp_path / "missing.jsonl")])
    assert threading.active_count() == before
