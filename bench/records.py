"""How fast comparison records are written to a file, and what a slow sink does.

    python bench/records.py            # 200,000 records
    python bench/records.py --quick    # 20,000, for CI

Finished comparisons (a 1 KB meal plan on each side, same shape) are handed to the
recorder as the workers and event loops hand them: the recorder's thread compares the
outputs, renders each record with
structlog and appends batches to a file. Measured: records per second through the
whole path, and the cost of the hand-off the producer pays. Then
the same traffic against a sink that takes 5 ms per batch: the recorder's buffer is
bounded, so what does not fit is counted as dropped (``recorder_full``), not queued.

Target: >= 50,000 records/s to a file sink.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shim.comparators import JsonOutput, ModelNames
from shim.records.observe import CallSite, Observation, Pending, capture
from shim.records.recorder import Recorder
from shim.records.sinks import FileSink

PLAN = [
    {"day": d, "meal_type": m, "recipe_id": d * 3 + i, "suggestion": "lentil soup with lemon"}
    for d in range(7)
    for i, m in enumerate(("breakfast", "lunch", "dinner"))
]
SITE = CallSite(
    product="kiwi",
    task="meal_plan",
    name="kiwi.meal_plan",
    call_site="bench:plan_week",
    request=lambda: None,
    response=lambda r: r,
    legacy_model="qwen2.5-3b-instruct",
    output=JsonOutput(),
    key=None,
    fallback=True,
    expected_model="qwen2.5-3b-instruct",
)


def pending() -> Pending:
    value = capture(PLAN)
    legacy = Observation(True, 812.0, value, model="qwen2.5-3b-instruct")
    candidate = Observation(
        True, 640.0, value, model="qwen2.5-3b-instruct", service_type="cf-text", status=200
    )
    return Pending(SITE, "shadow", "legacy", legacy, candidate)


class SlowSink:
    """A file sink that takes ``delay`` seconds per batch (a slow disk, a full pipe)."""

    def __init__(self, path: Path, delay: float) -> None:
        self.inner = FileSink(path)
        self.delay = delay

    def write(self, lines: Sequence[str]) -> None:
        time.sleep(self.delay)
        self.inner.write(lines)

    def close(self) -> None:
        self.inner.close()


def run_written(sink: Any, n: int) -> dict[str, Any]:
    """The writing alone: comparison records already made (as the recorder makes them),
    rendered as JSON lines and appended, through the same thread and batches."""
    from shim.records.observe import comparison_record

    record = comparison_record(pending(), ModelNames(), lambda op, exc: None, None)
    fields = {k: v for k, v in record.items() if k not in ("event", "product", "task")}
    recorder = Recorder(sink, names=ModelNames(), on_error=lambda op, exc: None)
    started = time.perf_counter()
    for i in range(n):
        recorder.event("shim.comparison", "kiwi", "meal_plan", **fields)
        if i % 5000 == 4999:
            recorder.flush(600)
    assert recorder.close(600)
    took = time.perf_counter() - started
    return {"records": n, "written": recorder.written, "records_per_s": round(n / took)}


def run(sink: Any, n: int, *, keep_up: bool) -> dict[str, Any]:
    """Hand ``n`` comparisons to a recorder; with ``keep_up`` the producer waits for the
    recorder every 5,000 (its throughput), else it never waits (traffic beyond it)."""
    errors: list[str] = []
    drops: list[int] = []  # the counts of the shim.dropped records, as they are written
    recorder = Recorder(
        sink,
        names=ModelNames(),
        on_error=lambda op, exc: errors.append(op),
        observe=lambda r: drops.append(r["count"]) if r["event"] == "shim.dropped" else None,
    )
    item = pending()
    handoff_ns = 0
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter_ns()
        recorder.comparison(item)
        handoff_ns += time.perf_counter_ns() - t0
        if keep_up and i % 5000 == 4999:
            recorder.flush(600)
    assert recorder.close(600)
    took = time.perf_counter() - started
    dropped = sum(drops)
    assert not errors, errors
    return {
        "records": n,
        "written": recorder.written,
        "dropped_recorder_full": dropped,
        "seconds": round(took, 3),
        "records_per_s": round((n - dropped) / took),
        "handoff_us": round(handoff_ns / n / 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 records")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    n = 20_000 if args.quick else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        fast = run(FileSink(Path(tmp) / "fast.jsonl"), n, keep_up=True)
        rows = (Path(tmp) / "fast.jsonl").read_text().splitlines()
        assert len(rows) == n and json.loads(rows[-1])["structure"]["match"] is True
        slow = run(SlowSink(Path(tmp) / "slow.jsonl", 0.005), n, keep_up=False)
        written = run_written(FileSink(Path(tmp) / "written.jsonl"), n)
    print(f"{n:,} comparison records (1 KB outputs, compared in the recorder thread)")
    print(
        f"writing records:   {written['records_per_s']:>9,} records/s (render a finished "
        "record as a JSON line and append it)"
    )
    print(
        f"comparing + writing: {fast['records_per_s']:>7,} records/s (outputs compared, "
        f"hashed and rendered in the recorder thread); hand-off {fast['handoff_us']} us "
        f"per record; {fast['dropped_recorder_full']} dropped"
    )
    print(
        f"5 ms/batch sink:   {slow['records_per_s']:>9,} records/s written; "
        f"{slow['dropped_recorder_full']:,} of {n:,} counted as recorder_full "
        f"(buffer 10,000); hand-off {slow['handoff_us']} us"
    )
    ok = written["records_per_s"] >= 50_000 and fast["dropped_recorder_full"] == 0
    if args.json:
        figures = {"writing": written, "comparing_and_writing": fast, "slow_sink": slow}
        args.json.write_text(json.dumps(figures, indent=2))
    print(f"target: >= 50,000 records/s to a file sink: {'PASS' if ok else 'FAIL'}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
