"""Record sinks and the recorder: whole lines, several writers, rotation, drop counts."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from shim import FileSink
from shim.comparators import ModelNames
from shim.records.recorder import Recorder
from shim.records.sinks import PartialWrite, StreamSink


def _append(path: str, writer: int, lines: int) -> None:
    sink = FileSink(path)
    for start in range(0, lines, 50):
        sink.write(
            [
                json.dumps({"writer": writer, "n": n, "pad": "x" * 300}) + "\n"
                for n in range(start, min(lines, start + 50))
            ]
        )
    sink.close()


def test_several_processes_append_whole_lines(tmp_path: Path) -> None:
    path = str(tmp_path / "log.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append, args=(path, w, 2000)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert len(rows) == 8000
    for writer in range(4):
        assert [r["n"] for r in rows if r["writer"] == writer] == list(range(2000))


def test_sink_follows_external_rotation(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    sink = FileSink(path, check_every=0.0)
    sink.write(["one\n"])
    os.rename(path, tmp_path / "log.jsonl.1")
    sink.write(["two\n"])
    sink.close()
    assert (tmp_path / "log.jsonl.1").read_text() == "one\n"
    assert path.read_text() == "two\n"


def test_recorder_writes_envelopes_and_aggregated_drops(tmp_path: Path) -> None:
    errors: list[str] = []
    recorder = Recorder(
        FileSink(tmp_path / "log.jsonl"),
        names=ModelNames(),
        on_error=lambda op, exc: errors.append(op),
    )
    recorder.event("shim.breaker", "kiwi", "ocr", **{"from": "closed", "to": "open"})
    for _ in range(7):
        recorder.dropped("kiwi", "ocr", "queue_full")
    recorder.dropped("kiwi", "ocr", "budget", 3)
    assert recorder.close(5)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert list(rows[0])[:5] == ["event", "schema", "ts", "product", "task"]
    assert rows[0]["to"] == "open"
    drops = {r["reason"]: r["count"] for r in rows if r["event"] == "shim.dropped"}
    assert drops == {"queue_full": 7, "budget": 3}
    assert errors == []


def test_every_line_is_valid_json_whatever_the_fields_hold(tmp_path: Path) -> None:
    """NaN and infinities become null, a lone surrogate is escaped, odd types are
    written as their repr: no value makes a line that a JSON reader refuses."""
    recorder = Recorder(
        FileSink(tmp_path / "log.jsonl"), names=ModelNames(), on_error=lambda op, exc: None
    )
    odd = object()
    recorder.event("shim.x", "kiwi", "ocr", ratio=float("nan"), top=float("inf"), n=1.5)
    recorder.event("shim.x", "kiwi", "ocr", error="bad \ud800 byte")
    recorder.event("shim.x", "kiwi", "ocr", thing=odd, keys={1: "a"}, text="día ✓")
    # Both at once: the surrogate takes the line to the fallback encoder, which must
    # not write NaN either (nor fail on it), however deep it sits.
    nested = {"ratios": [1.0, float("nan"), (float("-inf"),)], "deep": {"x": float("inf")}}
    recorder.event("shim.x", "kiwi", "ocr", error="bad \ud800", ratio=float("nan"), **nested)
    assert recorder.close(5)
    raw = (tmp_path / "log.jsonl").read_bytes().decode("utf-8")
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(c)) for line in raw.splitlines()]
    assert (rows[0]["ratio"], rows[0]["top"], rows[0]["n"]) == (None, None, 1.5)
    assert rows[1]["error"] == "bad \ud800 byte"
    assert (rows[3]["error"], rows[3]["ratio"]) == ("bad \ud800", None)
    assert (rows[3]["ratios"], rows[3]["deep"]) == ([1.0, None, [None]], {"x": None})
    assert (rows[2]["thing"], rows[2]["keys"], rows[2]["text"]) == (repr(odd), {"1": "a"}, "día ✓")
    assert "día ✓" in raw  # non-ASCII text is written as is, not escaped


def test_a_full_recorder_writes_what_it_turned_away_as_dropped() -> None:
    """An event that finds the recorder full is not queued; the log says so in a
    ``shim.dropped`` record of its task (reason ``recorder_full``)."""
    stream = io.StringIO()
    busy, release = threading.Event(), threading.Event()

    def observe(record: Mapping[str, Any]) -> None:
        if record["event"] == "shim.flags":  # hold the recorder's thread on the first event
            busy.set()
            release.wait(5)

    recorder = Recorder(
        StreamSink(stream),
        names=ModelNames(),
        on_error=lambda op, exc: None,
        capacity=1,
        observe=observe,
    )
    recorder.event("shim.flags", "kiwi", "ocr", n=1)
    assert busy.wait(5)
    recorder.event("shim.flags", "kiwi", "ocr", n=2)  # the one place is still taken
    release.set()
    assert recorder.close(5)
    rows = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["n"] for r in rows if r["event"] == "shim.flags"] == [1]
    [drop] = [r for r in rows if r["event"] == "shim.dropped"]
    assert (drop["product"], drop["task"], drop["reason"], drop["count"]) == (
        "kiwi",
        "ocr",
        "recorder_full",
        1,
    )


def test_write_errors_are_counted_and_reported(tmp_path: Path) -> None:
    class Broken:
        def write(self, lines: object) -> None:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    seen: list[tuple[str, str]] = []
    recorder = Recorder(
        Broken(), names=ModelNames(), on_error=lambda op, exc: seen.append((op, str(exc)))
    )
    recorder.event("shim.flags", None, None, level="info")
    recorder.flush(5)
    assert recorder.write_errors == 1
    assert seen == [("write", "[Errno 28] No space left on device")]
    recorder.close(5)


def test_an_unusable_log_path_never_stops_the_program(tmp_path: Path) -> None:
    """A log path under a file: writes fail and are counted; once fixed, records resume."""
    blocker = tmp_path / "logs"
    blocker.write_text("not a directory")
    errors: list[str] = []
    recorder = Recorder(
        FileSink(blocker / "log.jsonl"),
        names=ModelNames(),
        on_error=lambda op, exc: errors.append(f"{op}: {type(exc).__name__}"),
    )
    recorder.event("shim.flags", None, None, level="info", n=1)
    assert recorder.flush(5)
    assert recorder.write_errors == 1
    assert errors in (["write: FileExistsError"], ["write: NotADirectoryError"])
    blocker.unlink()
    blocker.mkdir()
    recorder.event("shim.flags", None, None, level="info", n=2)
    assert recorder.close(5)
    rows = [json.loads(line) for line in (blocker / "log.jsonl").read_text().splitlines()]
    assert [r["n"] for r in rows] == [1, 2], "the line held while the path failed is kept"
    assert recorder.lost == 0


class Flaky:
    """A sink that fails while ``down``, writing only the first ``partial`` lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.down = True
        self.partial = 0

    def write(self, lines: list[str]) -> None:
        if self.down:
            done = min(self.partial, len(lines) - 1)
            self.lines += lines[:done]
            if done:
                raise PartialWrite(done, OSError(28, "No space left on device"))
            raise OSError(28, "No space left on device")
        self.lines += lines

    def close(self) -> None:
        pass


def test_lines_are_held_while_the_sink_fails_and_written_in_order_after(tmp_path: Path) -> None:
    sink, errors = Flaky(), []
    sink.partial = 1
    recorder = Recorder(
        sink, names=ModelNames(), on_error=lambda op, exc: errors.append(op), flush_interval=60
    )
    for n in range(5):
        recorder.event("shim.flags", "kiwi", "ocr", n=n)
        recorder.flush(5)
    sink.partial = 0
    for n in range(5, 8):
        recorder.event("shim.flags", "kiwi", "ocr", n=n)
    recorder.flush(5)
    assert recorder.unwritten > 0 and recorder.write_errors >= 2
    assert errors == ["write"], "an outage is reported once, not per batch"
    sink.down = False
    assert recorder.close(5)
    assert [json.loads(line)["n"] for line in sink.lines] == list(range(8))
    assert recorder.lost == 0 and recorder.unwritten == 0


def test_beyond_capacity_held_lines_are_counted_as_dropped_per_task() -> None:
    sink = Flaky()
    recorder = Recorder(
        sink, names=ModelNames(), on_error=lambda op, exc: None, capacity=10, flush_interval=60
    )
    for n in range(25):
        recorder.event("shim.flags", "kiwi", "ocr", n=n)
        if n % 5 == 4:
            recorder.flush(5)
    assert recorder.unwritten == 10 and recorder.lost == 15
    sink.down = False
    assert recorder.close(5)
    rows = [json.loads(line) for line in sink.lines]
    assert [r["n"] for r in rows if r["event"] == "shim.flags"] == list(range(10))
    [drop] = [r for r in rows if r["event"] == "shim.dropped"]
    assert (drop["task"], drop["reason"], drop["count"]) == ("ocr", "sink_unavailable", 15)
