"""What ``shim report`` says of the calls the shim dropped: how many beside the pairs, by
reason, and for the reasons that call for it, what to change (a full queue: workers
for the task path's latency)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from shim import Limits
from shim.analysis.report import build_report
from shim.analysis.report_format import markdown
from shim.analysis.report_html import render_html
from shim.analysis.report_verdict import dropped_line
from shim.cli.app import app
from shim.sim import Profile, Simulator

from .shimkit import Driver, dropped, make_shim, records

runner = CliRunner()
SHADOW = "kiwi.meal_plan: {serve: 0, shadow: 100}\n"


def test_a_slow_task_path_with_too_few_workers_is_named_with_what_to_change(
    sim: Simulator, tmp_path: Path
) -> None:
    """A coordinator that answers in 100 ms, two workers and a queue of five: most of
    200 calls cannot be compared. The report says how many beside the pairs, that the
    workers could not keep up, the task path's latency they waited on, and what to set;
    in the table, Markdown and HTML alike."""
    sim.set_profile(Profile(seed=1, defaults={"latency_ms": 100, "latency_p99_ms": 100}))
    s = make_shim(sim.url, tmp_path, SHADOW, limits=Limits(workers=2, queue_size=5))
    wrapped = Driver("sync").wrap(s, lambda i: i)
    for i in range(200):
        wrapped(i)
    s.close(timeout=60)
    log = tmp_path / "log.jsonl"
    compared, lost = len(records(log)), dropped(log, "queue_full")
    assert compared + lost == 200 and lost > 100

    out = runner.invoke(app, ["report", str(log), "--format", "json"])
    [task] = json.loads(out.stdout)["tasks"]
    line = dropped_line(task)
    assert line is not None
    assert line.startswith(f"kiwi.meal_plan: {lost:,} dropped beside {compared:,} pairs; ")
    assert f"queue_full {lost:,}: the workers could not keep up" in line
    p95 = task["latency_ms"]["candidate"]["p95"]
    assert 100 <= p95 < 1000, "the simulator's latency, as the client saw it"
    assert f"({p95:,.0f} ms at p95 here)" in line
    assert "Limits(workers=...) about shadowed calls/s x that latency" in line

    table = runner.invoke(app, ["report", str(log)], terminal_width=400)
    assert line in " ".join(table.output.split()), table.output
    data = build_report([str(log)])
    assert line.replace("_", "\\_") in markdown(data), "Markdown escapes the underscore"
    assert line.replace("'", "&#x27;") in render_html(data)


def _task(dropped: dict[str, int], n: int = 100, p95: float | None = None) -> dict:
    latency = {"candidate": {"p50": p95, "p95": p95, "p99": p95}}
    return {"task": "kiwi.ocr", "n": n, "dropped_by_reason": dropped, "latency_ms": latency}


def test_reasons_come_most_first_and_only_some_carry_advice() -> None:
    line = dropped_line(_task({"shutdown": 2, "breaker_open": 30, "unrenderable": 1}))
    assert line == (
        "kiwi.ocr: 33 dropped beside 100 pairs; "
        "breaker_open 30: the task path kept failing, and the breaker stopped calling it; "
        "shutdown 2: unfinished when the Shim closed; unrenderable 1"
    )
    assert dropped_line(_task({})) is None
    assert dropped_line(_task({"queue_full": 0})) is None
    one = dropped_line(_task({"serve_full": 7}, n=1))
    assert one is not None and one.startswith("kiwi.ocr: 7 dropped beside 1 pair; serve_full 7:")


def test_the_latency_named_is_read_at_its_scale() -> None:
    """A task path of a few ms keeps its digits; one with no latency names none."""
    fast = dropped_line(_task({"queue_full": 5}, p95=0.42))
    assert fast is not None and "(0.42 ms at p95 here)" in fast
    slow = dropped_line(_task({"queue_full": 5}, p95=1234.5))
    assert slow is not None and "(1,234 ms at p95 here)" in slow
    none = dropped_line(_task({"queue_full": 5}, n=0))
    assert none is not None and "latency, so give" in none and "at p95" not in none
    for latency in (None, {"candidate": None}, {"candidate": {"p95": float("nan")}}):
        odd = {**_task({"queue_full": 5}), "latency_ms": latency}
        found = dropped_line(odd)
        assert found is not None and "at p95" not in found
