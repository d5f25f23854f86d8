"""Half lines in a shared log: a line a full disk cut and that is given up is cut back
out of the file, and a line another process left half written never has ours glued
onto it. The short writes are real: a file size limit in a subprocess stands in for a
full disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shim.comparators import ModelNames
from shim.records.recorder import Recorder
from shim.records.sinks import FileSink

from .shimkit import log_rows

# argv: path, mode. ``close``: give the cut line up at close while the disk is still
# full. ``other``: another writer appends a whole line after the cut one, then the
# disk has room again.
CUT = """
import json, os, resource, signal, sys
from shim import FileSink
from shim.comparators import ModelNames
from shim.records.recorder import Recorder

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the size limit: EFBIG, not death
path, mode = sys.argv[1], sys.argv[2]
r = Recorder(FileSink(path), names=ModelNames({}), on_error=lambda op, exc: None)
for n in range(3):
    r.event("shim.test", "kiwi", "meal_plan", n=n, pad="x" * 100)
assert r.flush(5)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 50, resource.RLIM_INFINITY))
r.event("shim.test", "kiwi", "meal_plan", n=3, pad="x" * 100)
assert r.flush(5)
assert r.write_errors == 1, r.write_errors
if mode == "other":
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b'{"other": 1}\\n')
    os.close(fd)
    r.event("shim.test", "kiwi", "meal_plan", n=4, pad="x" * 100)
    assert r.flush(5)
r.close(5)
print(json.dumps({"written": r.written, "lost": r.lost, "unwritten": r.unwritten}))
"""


def _cut(path: Path, mode: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", CUT, str(path), mode], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    stats: dict[str, int] = json.loads(done.stdout)
    return stats


def _append(path: Path, numbers: range) -> Recorder:
    """Another process's recorder appending to the same log."""
    r = Recorder(FileSink(path), names=ModelNames({}), on_error=lambda op, exc: None)
    for n in numbers:
        r.event("shim.test", "kiwi", "meal_plan", n=n)
    assert r.close(5)
    return r


def test_a_line_cut_by_a_full_disk_and_given_up_at_close_is_cut_back_out(
    tmp_path: Path,
) -> None:
    """Was: close() tried to end the cut line with a newline, which a full disk
    refused; the half line stayed, and the next process's first record was glued onto
    it (one bad line, while that process said 3 written, 0 lost)."""
    path = tmp_path / "log.jsonl"
    first = _cut(path, "close")
    assert path.read_bytes().endswith(b"\n")
    second = _append(path, range(10, 13))
    rows, bad = log_rows(path.read_text())
    assert bad == 0
    assert [r["n"] for r in rows if r["event"] == "shim.test"] == [0, 1, 2, 10, 11, 12]
    # The cut record is lost, and counted so; the next process's three are written.
    assert first == {"written": 3, "lost": 1, "unwritten": 0}
    assert (second.written, second.lost) == (3, 0)


def test_a_cut_line_is_written_whole_when_another_process_appended_after_it(
    tmp_path: Path,
) -> None:
    """Was: the rest of the cut line was appended after the other process's line: a
    bad line of its own, and the record in no whole line. Now it is written whole, and
    the other process's line is never truncated away."""
    path = tmp_path / "log.jsonl"
    stats = _cut(path, "other")
    text = path.read_text()
    rows, bad = log_rows(text)
    assert bad == 1  # the half line, with the other process's line glued onto it
    assert '{"other": 1}' in text
    assert [r["n"] for r in rows if r.get("event") == "shim.test"] == [0, 1, 2, 3, 4]
    assert stats == {"written": 5, "lost": 0, "unwritten": 0}


def test_a_sink_given_a_file_ending_in_a_newline_adds_none(tmp_path: Path) -> None:
    """A whole log gains no empty line."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"n": 0}\n')
    sink = FileSink(path)
    sink.write(['{"n": 1}\n'])
    sink.write(['{"n": 2}\n'])
    sink.close()
    assert path.read_text() == '{"n": 0}\n{"n": 1}\n{"n": 2}\n'
