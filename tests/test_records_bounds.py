"""Records under pressure: a disk that fills mid-line, outputs whose copy is slow,
queues that would hold hundreds of megabytes, and a coordinator that answers with
megabytes where a model name goes. Every line stays whole, every loss counted, the
caller never waits, memory stays bounded."""

from __future__ import annotations

import errno
import io
import json
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from shim import TaskRequest, TaskResult, Timeouts
from shim.comparators import ModelNames
from shim.records.recorder import Recorder
from shim.records.sinks import StreamSink
from shim.records.values import FIELD_CHARS
from shim.sim import Profile, Simulator
from shim.testing import TestShim

from .shimkit import log_rows, make_shim, wait_for

# -- whole lines after a failed write ------------------------------------------------------

DISK_FULL = """
import json, os, resource, signal, sys
from shim import FileSink
from shim.comparators import ModelNames
from shim.records.recorder import Recorder

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the size limit: EFBIG, not death
path = sys.argv[1]
errors = []
r = Recorder(FileSink(path), names=ModelNames({}), on_error=lambda op, exc: errors.append(op))
for n in range(3):
    r.event("shim.test", "kiwi", "meal_plan", n=n, pad="x" * 100)
assert r.flush(5)
# The file may grow by 50 more bytes: the next line goes out half, then the disk is "full".
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 50, resource.RLIM_INFINITY))
r.event("shim.test", "kiwi", "meal_plan", n=3, pad="x" * 100)
assert r.flush(5)
assert r.write_errors == 1, r.write_errors
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
r.event("shim.test", "kiwi", "meal_plan", n=4, pad="x" * 100)
assert r.flush(5)  # room again: the cut line is finished, then the next
r.close(5)
print(json.dumps({"written": r.written, "lost": r.lost, "unwritten": r.unwritten}))
"""


def test_a_disk_full_short_write_leaves_only_whole_lines(tmp_path: Path) -> None:
    """A real short write (the file size limit stands in for a full disk): the line it
    cut is finished when there is room again; none is glued to another, none lost,
    and stats() say so."""
    path = tmp_path / "log.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    rows, bad = log_rows(path.read_text())
    assert bad == 0
    assert [r["n"] for r in rows if r["event"] == "shim.test"] == [0, 1, 2, 3, 4]
    assert stats == {"written": 5, "lost": 0, "unwritten": 0}


class _FullStream(io.StringIO):
    """A stream on a disk with ``room`` characters left: a write past it writes what
    fits, then fails (ENOSPC), saying how much went out only if ``says``."""

    def __init__(self, says: bool) -> None:
        super().__init__()
        self.room: int | None = None
        self.says = says

    def write(self, text: str) -> int:
        if self.room is not None and len(text) > self.room:
            fits, self.room = self.room, 0
            super().write(text[:fits])
            if self.says:
                raise BlockingIOError(errno.ENOSPC, "No space left on device", fits)
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(text)


@pytest.mark.parametrize("says", [True, False], ids=["stream-says-how-much", "stream-does-not"])
def test_a_stream_that_fails_mid_line_never_glues_two_lines(says: bool) -> None:
    """The stream says how much went out: the line is finished. It does not: the cut
    line is ended where it was cut (one bad line), and the record is written whole."""
    stream = _FullStream(says)
    r = Recorder(StreamSink(stream), names=ModelNames({}), on_error=lambda op, exc: None)
    for n in range(3):
        r.event("shim.test", "kiwi", "meal_plan", n=n, pad="x" * 100)
    assert r.flush(5)
    stream.room = 40
    r.event("shim.test", "kiwi", "meal_plan", n=3, pad="x" * 100)
    assert r.flush(5)
    assert r.write_errors == 1
    stream.room = None
    assert r.flush(5)
    r.close(5)
    rows, bad = log_rows(stream.getvalue())
    assert [row["n"] for row in rows] == [0, 1, 2, 3]
    assert bad == (0 if says else 1)
    assert (r.written, r.lost, r.unwritten) == (4, 0, 0)


# -- the copy of the legacy value ----------------------------------------------------------


class _SlowCopy:
    """An output of the app's own class whose pickling takes 50 ms; notes the threads
    it was pickled on."""

    pickled_on: ClassVar[set[int]] = set()

    def __init__(self, text: str) -> None:
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        _SlowCopy.pickled_on.add(threading.get_ident())
        time.sleep(0.05)
        return (_SlowCopy, (self.text,))

    def __repr__(self) -> str:
        return f"_SlowCopy({self.text!r})"


def test_a_slow_copy_of_the_legacy_value_is_not_the_callers_wait() -> None:
    with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=lambda request: "soup") as s:

        @s.shadow(product="kiwi", task="meal_plan", request=lambda q: TaskRequest(prompt=q))
        def plan(q: str) -> Any:
            return _SlowCopy(q)

        _SlowCopy.pickled_on = set()
        value = plan("dinner")
        rows = s.comparisons
    assert threading.get_ident() not in _SlowCopy.pickled_on
    assert _SlowCopy.pickled_on, "it was copied, on a worker"
    assert value.text == "dinner"
    assert rows[-1]["legacy"]["ok"] and rows[-1]["legacy"]["output_sha256"] is not None
    assert "render_error" not in rows[-1]["legacy"]


def test_a_slow_copy_inside_an_argument_list_is_not_the_callers_wait() -> None:
    with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=lambda request: "soup") as s:

        @s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda items: TaskRequest(prompt=repr(items)),
        )
        def plan(items: list[Any]) -> str:
            return "soup"

        items = [_SlowCopy("a")]
        _SlowCopy.pickled_on = set()
        plan(items)
        items.append("added once the call returned")
        rows = s.comparisons
    assert threading.get_ident() not in _SlowCopy.pickled_on
    assert _SlowCopy.pickled_on, "it was copied, on a worker"
    assert rows[-1]["candidate"]["ok"]


def test_the_callers_containers_are_still_copied_at_the_call() -> None:
    """The app's objects are copied on a worker, but the lists and dicts around them
    are copied on the caller's thread: a list the caller changes once the call returns
    is compared as it was returned."""
    release = threading.Event()

    def answer_later(request: TaskRequest) -> str:
        release.wait(5)
        return "soup"

    capture = __import__("shim").Capture()
    with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=answer_later, capture=capture) as s:

        @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="x"))
        def plan() -> list[Any]:
            return ["first", _SlowCopy("kept")]

        value = plan()
        value.append("appended by the caller")
        release.set()
        [row] = s.comparisons
    assert "appended" not in row["legacy"]["output"]
    assert "kept" in row["legacy"]["output"]


# -- queues bounded in bytes -----------------------------------------------------------------


class _StalledSink:
    """A disk that hangs: the recorder's first write blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[str] = []

    def write(self, lines: Sequence[str]) -> None:
        self.release.wait(30)
        self.lines.extend(lines)

    def close(self) -> None:
        pass


_BIG = "x" * 200_000  # one argument or output of 200 KB


_HELD = 80 * 2**20  # what the queues may hold, with room for the interpreter's own


def _held_within_bounds(calls: int, plan: Any) -> None:
    """``calls`` calls of ``plan`` with a fresh 200 KB list; then what is still
    allocated settles under _HELD (the pump weighs the last jobs in, and drops what
    does not fit, just after the calls return)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            plan([_BIG])

        def held() -> int:
            return int(tracemalloc.get_traced_memory()[0] - before)

        try:
            wait_for(lambda: held() < _HELD)
        except AssertionError:
            raise AssertionError(f"{held() / 2**20:.0f} MiB held") from None
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("stalled", ["recorder", "workers"])
def test_memory_stays_bounded_with_200_kb_arguments(
    stalled: str, sim: Simulator, tmp_path: Path
) -> None:
    """1,000 compared calls with a 200 KB argument (and output) while the recorder
    cannot write, or while the task path hangs: what the queues hold stays under their
    byte limits (32 MiB each), not 200+ MB; the rest is counted as dropped."""
    sink = _StalledSink()
    if stalled == "workers":
        sim.set_profile(Profile(seed=1, defaults={"hang_rate": 1.0}))
    s = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {shadow: 100}\n",
        sink=sink,
        timeouts=Timeouts(shadow=30),
    )

    @s.shadow(product="kiwi", task="meal_plan", request=lambda items: TaskRequest(prompt="x"))
    def plan(items: list[str]) -> list[str]:
        return items

    try:
        _held_within_bounds(1000, plan)

        def queued() -> dict[str, int]:
            return dict(s.stats()["queued_bytes"])

        wait_for(lambda: sum(queued().values()) > 16 * 2**20)
        assert queued()["workers"] <= 33 * 2**20 and queued()["recorder"] <= 33 * 2**20
    finally:
        sink.release.set()
        s.close(timeout=1)
    rows = [json.loads(line) for line in sink.lines]
    compared = sum(r["event"] == "shim.comparison" for r in rows)
    reasons = {r["reason"] for r in rows if r["event"] == "shim.dropped"}
    counted = sum(r["count"] for r in rows if r["event"] == "shim.dropped")
    assert compared + counted == 1000, "each call compared or counted"
    assert reasons & {"queue_full", "recorder_full"}


# -- fields from the coordinator, capped ---------------------------------------------------


def test_a_coordinator_answering_megabytes_where_names_go_makes_a_short_record() -> None:
    huge = "m" * 2_000_000
    answer = TaskResult(
        output="soup",
        model=huge,
        service_type=huge,
        node_id=huge,
        allocation_id=huge,
        latency_ms=1.0,
    )
    with TestShim({"kiwi.meal_plan": {"shadow": 100}}, answer=lambda request: answer) as s:

        @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="x"))
        def plan() -> str:
            return "soup"

        plan()
        [row] = s.comparisons
    assert len(json.dumps(row, ensure_ascii=False)) < 20 * FIELD_CHARS
    cut = "m" * FIELD_CHARS + f"…[cut {2_000_000 - FIELD_CHARS} chars]"
    for field in ("model", "service_type", "node_id"):
        assert row["candidate"][field] == cut
