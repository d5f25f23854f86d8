"""shim report gives a verdict only on evidence: every gate needs its own pairs, rates
add up, and the shim's own errors are counted and shown per task in every format."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shim import Shim, TaskRequest, comparators
from shim.analysis.policy import Gates, Policy
from shim.analysis.report import build_report
from shim.analysis.report_format import markdown
from shim.analysis.report_html import render_html
from shim.cli.app import app
from shim.sim import Simulator

from .shimkit import make_shim, records
from .test_report import record

runner = CliRunner()

SCHEMA_ERROR = "RuntimeError: a JSON Schema needs the jsonschema package: pip install jsonschema"


def unjudged(task: str, rng: random.Random) -> dict[str, Any]:
    """A pair both paths answered whose comparator raised: no structure verdict."""
    row = record(task, rng, legacy_err=0, cand_err=0, mismatch=0, speed=0.8)
    row["structure"] = {"match": None, "legacy_valid": None, "candidate_valid": None, "diff": None}
    return row


def shim_error(task: str | None, operation: str, error: str, **extra: Any) -> dict[str, Any]:
    product, _, name = task.partition(".") if task else (None, "", None)
    return {
        "event": "shim.error",
        "schema": 1,
        "ts": "2026-11-26T12:00:00.000000Z",
        "product": product,
        "task": name,
        "operation": operation,
        "error": error,
        **extra,
    }


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def unjudged_log(tmp_path: Path) -> Path:
    """1,500 pairs, all clean and fast, none structurally compared: the comparator
    raised on each (as JsonOutput(schema=...) does without jsonschema), and each is a
    shim.error record of the task (operation ``compare``)."""
    rng = random.Random(3)
    rows = [unjudged("kiwi.meal_plan", rng) for _ in range(1500)]
    rows += [shim_error("kiwi.meal_plan", "compare", SCHEMA_ERROR) for _ in range(1500)]
    return write(tmp_path / "unjudged.jsonl", rows)


def test_pairs_nobody_compared_are_hold_never_promote(unjudged_log: Path) -> None:
    """The reproduction: 1,500 unjudged pairs gave PROMOTE; they must HOLD, saying how
    many structurally compared pairs are missing and why there are none."""
    [task] = build_report([str(unjudged_log)])["tasks"]
    assert task["verdict"] == "HOLD", task["reasons"]
    assert task["comparator_errors"] == 1500
    assert task["comparator_error_example"] == SCHEMA_ERROR
    [reason] = [r for r in task["reasons"] if r.startswith("structure compared")]
    assert reason.startswith(
        "structure compared on 0 of 1500 pairs: needs 300 more structurally compared pairs"
    )
    assert f"the comparator failed on 1500: {SCHEMA_ERROR}" in reason
    assert task["structure_match_rate"] is None


def test_each_gate_needs_min_pairs_of_its_own_kind(tmp_path: Path) -> None:
    """Enough pairs overall is not enough: 1,000 pairs of which 200 were structurally
    compared still need 100 more of those; a shortfall of latency pairs is named too."""
    rng = random.Random(4)
    rows = [record("kiwi.part", rng, legacy_err=0, cand_err=0, mismatch=0, speed=0.8)]
    rows += [
        record("kiwi.part", rng, legacy_err=0, cand_err=0, mismatch=0, speed=0.8)
        for _ in range(199)
    ]
    rows += [unjudged("kiwi.part", rng) for _ in range(800)]
    for row in rows[:900]:  # only 100 pairs carry both latencies
        row["candidate"]["latency_ms"] = None
    report = build_report([str(write(tmp_path / "part.jsonl", rows))])
    [task] = report["tasks"]
    assert task["verdict"] == "HOLD"
    assert task["comparator_errors"] == 800
    assert any(
        r.startswith("structure compared on 200 of 1000 pairs: needs 100 more") and "800" in r
        for r in task["reasons"]
    ), task["reasons"]
    assert any(
        r.startswith("latency measured on both paths for 100 of 1000 pairs: needs 200 more")
        for r in task["reasons"]
    ), task["reasons"]


def test_a_rollback_still_fires_below_min_pairs(tmp_path: Path) -> None:
    """Evidence rules guard PROMOTE only: clear task-path errors roll back on few pairs."""
    rng = random.Random(5)
    rows = [
        record("kiwi.bad", rng, legacy_err=0, cand_err=0.5, mismatch=0, speed=1) for _ in range(100)
    ]
    [task] = build_report([str(write(tmp_path / "bad.jsonl", rows))])["tasks"]
    assert task["verdict"] == "ROLLBACK" and "error rate is higher" in task["reasons"][0]


def test_match_and_mismatch_rates_add_up_and_the_gate_names_its_rate(tmp_path: Path) -> None:
    """structure_match_rate and mismatch_rate are both over the compared pairs and sum
    to 1; the noise-adjusted figure the gate uses has its own name, in the reason too."""
    rng = random.Random(6)
    rows = []
    for i in range(2000):
        row = record("kiwi.noisy", rng, legacy_err=0, cand_err=0, mismatch=0, speed=0.8)
        if i % 50 == 0:  # 40 mismatches, 30 of them explained by legacy's own noise
            diff = ["$.note: missing in candidate"]
            row["structure"].update(match=False, diff=diff, noise_paths=diff if i % 200 else [])
        rows.append(row)
    [task] = build_report([str(write(tmp_path / "noisy.jsonl", rows))])["tasks"]
    assert task["structure_match_rate"] == pytest.approx(1960 / 2000)
    assert task["mismatch_rate"] == pytest.approx(40 / 2000)
    assert task["structure_match_rate"] + task["mismatch_rate"] == pytest.approx(1)
    assert task["mismatch_rate_adjusted"] == pytest.approx(10 / 2000)
    assert task["noise_explained"] == 30
    assert task["intervals"]["mismatch_rate"]["rate"] == pytest.approx(40 / 2000)
    assert task["intervals"]["mismatch_rate_adjusted"]["rate"] == pytest.approx(10 / 2000)
    [line] = [r for r in task["reasons"] if "mismatch upper bound" in r]
    assert "mismatch_rate_adjusted 0.50 %" in line and "raw 2.00 %" in line, line


def mixed_log(tmp_path: Path) -> Path:
    """kiwi.ok: 400 clean pairs and 3 failing request= calls; kiwi.keyless: only
    key= failures (no comparisons at all); 7 internal errors tied to no task."""
    rng = random.Random(7)
    rows = [
        record("kiwi.ok", rng, legacy_err=0, cand_err=0, mismatch=0, speed=0.8) for _ in range(400)
    ]
    site = {"call_site": "app.plan:week"}
    rows += [
        shim_error(
            "kiwi.ok",
            "call_site.request",
            "TypeError: x",
            callable="request",
            function="app:req",
            **site,
        )
        for _ in range(3)
    ]
    rows += [
        shim_error(
            "kiwi.keyless",
            "call_site.key",
            "KeyError: 'user_id'",
            callable="key",
            function="app:<lambda>",
            **site,
        )
        for _ in range(50)
    ]
    rows += [shim_error(None, "decide", "ValueError: bad rule") for _ in range(7)]
    return write(tmp_path / "mixed.jsonl", rows)


def test_shim_errors_are_counted_per_task_by_operation(tmp_path: Path) -> None:
    """A task with only shim.error records is a HOLD row naming the errors; errors tied
    to no task are counted at the top."""
    report = build_report([str(mixed_log(tmp_path))])
    by = {t["task"]: t for t in report["tasks"]}
    assert set(by) == {"kiwi.ok", "kiwi.keyless"}
    keyless = by["kiwi.keyless"]
    assert (keyless["verdict"], keyless["n"], keyless["shim_errors"]) == ("HOLD", 0, 50)
    assert keyless["shim_errors_by_operation"]["call_site.key"]["count"] == 50
    assert "KeyError: 'user_id'" in keyless["shim_errors_by_operation"]["call_site.key"]["example"]
    assert any("call_site.key" in r and "50" in r for r in keyless["reasons"]), keyless["reasons"]
    assert by["kiwi.ok"]["shim_errors"] == 3
    assert set(by["kiwi.ok"]["shim_errors_by_operation"]) == {"call_site.request"}
    assert report["shim_errors_without_task"]["count"] == 7
    assert report["shim_errors_without_task"]["by_operation"]["decide"]["count"] == 7


def test_every_format_shows_comparator_and_shim_errors(tmp_path: Path) -> None:
    """Table, JSON, Markdown and HTML each carry the new counts."""
    rng = random.Random(8)
    rows = [unjudged("kiwi.meal_plan", rng) for _ in range(20)]
    rows += [shim_error(None, "compare", SCHEMA_ERROR) for _ in range(20)]
    log = tmp_path / "all.jsonl"
    log.write_text(mixed_log(tmp_path).read_text() + "".join(json.dumps(r) + "\n" for r in rows))
    table = runner.invoke(app, ["report", str(log)])
    assert table.exit_code == 0, table.output
    assert "comparator errors" in table.output and "shim errors" in table.output
    assert "27 shim.error records tied to no task: compare 20" in table.output
    assert "call_site.key" in table.output
    data = json.loads(runner.invoke(app, ["report", str(log), "--format", "json"]).stdout)
    by = {t["task"]: t for t in data["tasks"]}
    assert by["kiwi.meal_plan"]["comparator_errors"] == 20
    assert by["kiwi.keyless"]["shim_errors"] == 50
    md = markdown(data)
    assert "comparator errors" in md and "shim errors" in md
    assert "27 shim.error records tied to no task" in md
    page = render_html(data)
    assert "comparator errors" in page and "shim errors" in page and "call_site.key" in page
    assert "27 shim.error records tied to no task" in page


def test_a_raising_comparator_on_a_real_shim_holds_and_says_why(
    sim: Simulator, tmp_path: Path
) -> None:
    """End to end: the records a real Shim writes when its comparator raises make a
    HOLD whose reason carries the comparator's error."""

    class Broken:
        def compare(self, legacy: Any, candidate: Any) -> comparators.Structure:
            raise RuntimeError("comparator bug")

    s: Shim = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n")
    wrapped = s.shadow(
        product="kiwi", task="meal_plan", request=lambda: TaskRequest(), output=Broken()
    )(lambda: "legacy")
    for _ in range(30):
        wrapped()
    s.close()
    policy = Policy(defaults=Gates(min_pairs=20))
    [task] = build_report([str(tmp_path / "log.jsonl")], policy=policy)["tasks"]
    assert task["verdict"] == "HOLD" and task["comparator_errors"] == 30
    assert any(
        "structure compared on 0 of 30 pairs" in r and "RuntimeError: comparator bug" in r
        for r in task["reasons"]
    ), task["reasons"]


def test_a_raising_key_on_a_real_shim_is_a_row_not_an_empty_table(
    sim: Simulator, tmp_path: Path
) -> None:
    """End to end: key= raising on every call leaves no comparison at all; the report
    still shows the task, HOLD, naming the failing callable."""
    s: Shim = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n")
    wrapped = s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda user: TaskRequest(prompt=user),
        key=lambda user: user["id"],
    )(lambda user: "legacy")
    for _ in range(5):
        wrapped("no-dict")
    s.close()
    assert records(tmp_path / "log.jsonl") == []
    result = runner.invoke(app, ["report", str(tmp_path / "log.jsonl")])
    assert result.exit_code == 0, result.output
    assert "kiwi.meal_plan" in result.output and "HOLD" in result.output
    assert "call_site.key" in result.output


CONTRACT = {
    "task",
    "n",
    "verdict",
    "reasons",
    "legacy_error_rate",
    "candidate_error_rate",
    "structure_match_rate",
    "model_verdicts",
    "dropped",
    "latency_ms",
}


def test_json_keeps_every_contract_key_on_every_kind_of_row(tmp_path: Path) -> None:
    """Rows of unjudged pairs, of shim errors only and of clean pairs: valid JSON with
    every key of the contract, and the new ones."""
    rng = random.Random(9)
    log = tmp_path / "kinds.jsonl"
    extra = [unjudged("kiwi.meal_plan", rng) for _ in range(5)]
    log.write_text(mixed_log(tmp_path).read_text() + "".join(json.dumps(r) + "\n" for r in extra))
    result = runner.invoke(app, ["report", str(log), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {"schema", "records", "bad_lines", "tasks", "shim_errors_without_task"}
    assert len(data["tasks"]) == 3
    for task in data["tasks"]:
        assert set(task) >= CONTRACT | {"comparator_errors", "shim_errors", "mismatch_rate"}
        assert task["verdict"] in ("PROMOTE", "HOLD", "ROLLBACK")


def test_a_records_own_structure_error_is_the_example(tmp_path: Path) -> None:
    """A comparison record that says why it has no structure verdict (``structure.error``)
    is what the report quotes, with no shim.error record needed."""
    rng = random.Random(10)
    rows = [unjudged("kiwi.ocr", rng) for _ in range(10)]
    for row in rows:
        row["structure"]["error"] = "ValueError: circular reference"
    [task] = build_report([str(write(tmp_path / "own.jsonl", rows))])["tasks"]
    assert task["comparator_errors"] == 10
    assert task["comparator_error_example"] == "ValueError: circular reference"
    assert any("the comparator failed on 10: ValueError" in r for r in task["reasons"])


def pair(
    task: str, rng: random.Random, *, cand_ok: bool = True, match: bool = True
) -> dict[str, Any]:
    """One clean, fast pair (legacy ok), with the task path's outcome and the structure
    verdict as given: planted exactly, not drawn."""
    row = record(task, rng, legacy_err=0, cand_err=0, mismatch=0, speed=0.8)
    row["candidate"]["ok"] = cand_ok
    row["structure"]["match"] = match if cand_ok else None
    row["structure"]["diff"] = None if match else ["$.x: missing in candidate"]
    return row


def test_a_comparator_failing_on_most_pairs_holds_never_promotes(tmp_path: Path) -> None:
    """400 judged pairs are enough for the mismatch gate, but the 1,100 the comparator
    could not judge make them a biased sample: HOLD (never ROLLBACK), naming the count,
    the share, the limit and the first error; max_unjudged is a policy key."""
    rng = random.Random(11)
    rows = [pair("kiwi.meal_plan", rng) for _ in range(400)]
    rows += [unjudged("kiwi.meal_plan", rng) for _ in range(1100)]
    rows += [shim_error("kiwi.meal_plan", "compare", SCHEMA_ERROR) for _ in range(1100)]
    log = write(tmp_path / "most.jsonl", rows)
    [task] = build_report([str(log)])["tasks"]
    assert task["verdict"] == "HOLD", task["reasons"]
    [line] = [r for r in task["reasons"] if "could not judge" in r]
    assert "1100 of 1500" in line and "73.33 %" in line and "1.00 %" in line, line
    assert "max_unjudged" in line and SCHEMA_ERROR in line, line
    assert "fix the comparator before promoting" in line, line
    lenient = Policy(defaults=Gates(max_unjudged=0.8))
    [task] = build_report([str(log)], policy=lenient)["tasks"]
    assert task["verdict"] == "PROMOTE", task["reasons"]
    assert any("could not judge 1100 of 1500" in r for r in task["reasons"]), "still said"


def test_a_few_unjudged_pairs_do_not_stop_a_promote(tmp_path: Path) -> None:
    """3 unjudged pairs in 1,000 (0.3 %, under the 1 % default) still PROMOTE, saying so."""
    rng = random.Random(12)
    rows = [pair("kiwi.ocr", rng) for _ in range(997)]
    rows += [unjudged("kiwi.ocr", rng) for _ in range(3)]
    [task] = build_report([str(write(tmp_path / "few.jsonl", rows))])["tasks"]
    assert task["verdict"] == "PROMOTE", task["reasons"]
    assert any("could not judge 3 of 1000" in r and "0.30 %" in r for r in task["reasons"])


def test_max_unjudged_is_a_documented_policy_key() -> None:
    """The example policy documents every default, max_unjudged included, at its value."""
    example = Path(__file__).parent.parent / "examples" / "kiwi" / "policy.yaml"
    assert Gates().max_unjudged == 0.01
    assert "max_unjudged: 0.01" in example.read_text()
    assert Policy.load(example).defaults.max_unjudged == 0.01


def test_a_hold_says_how_many_more_pairs_would_pass_the_error_gate(tmp_path: Path) -> None:
    """300 clean pairs: the error bound (0.89 %) misses 0.5 % only for want of pairs,
    which the reason counts (zero errors pass at about 540 pairs)."""
    rng = random.Random(13)
    rows = [pair("kiwi.few", rng) for _ in range(300)]
    [task] = build_report([str(write(tmp_path / "clean.jsonl", rows))])["tasks"]
    assert task["verdict"] == "HOLD"
    [line] = [r for r in task["reasons"] if r.startswith("error rate difference")]
    assert line == (
        "error rate difference upper bound 0.89 % vs 0.50 % allowed; about 240 more pairs "
        "at the observed rates would bring it under"
    )


def test_a_hold_says_how_many_more_pairs_would_pass_the_mismatch_gate(tmp_path: Path) -> None:
    """5 mismatches in 1,000 compared pairs (0.5 %): the bound misses 1 %; the estimate,
    checked against the gate's own interval, is enough and not far more than enough."""
    from shim.analysis.stats import Z_ONE_SIDED_95, wilson

    rng = random.Random(14)
    rows = [pair("kiwi.drift", rng, match=i % 200 != 0) for i in range(1000)]
    [task] = build_report([str(write(tmp_path / "drift.jsonl", rows))])["tasks"]
    assert task["verdict"] == "HOLD"
    [line] = [r for r in task["reasons"] if r.startswith("mismatch upper bound")]
    found = re.search(r"; about ([\d,]+) more structurally compared pairs at the observed", line)
    assert found, line
    total = 1000 + int(found.group(1).replace(",", ""))

    def bound(n: int) -> float:
        return (wilson(round(0.005 * n), n, z=Z_ONE_SIDED_95) or (0, 0, 1))[2]

    assert bound(total) <= 0.01 < bound(int(total * 0.85)), (total, line)


def test_a_hold_at_a_rate_over_the_limit_says_more_pairs_will_not_help(tmp_path: Path) -> None:
    """A task path failing on 0.6 % of calls against legacy's 0 %: under the rollback
    line, over the promote limit; no number of pairs at that rate would pass."""
    rng = random.Random(15)
    rows = [pair("kiwi.worse", rng, cand_ok=i % 500 not in (1, 2, 3)) for i in range(1000)]
    [task] = build_report([str(write(tmp_path / "worse.jsonl", rows))])["tasks"]
    assert task["verdict"] == "HOLD", task["reasons"]
    [line] = [r for r in task["reasons"] if r.startswith("error rate difference")]
    assert line.endswith(
        "; the observed difference 0.60 % is at or over the limit: more pairs will not help"
    ), line


def test_pairs_needed_search_is_bounded_and_exact() -> None:
    """The search finds the smallest passing count, and gives up at its cap."""
    from shim.analysis.stats import pairs_needed

    assert pairs_needed(lambda n: 1 / n, 300, 0.002) == 500
    assert pairs_needed(lambda n: 1 / n, 300, 0.01) == 300, "already passing"
    assert pairs_needed(lambda n: 0.02, 300, 0.01, cap=10_000) is None


def test_an_untasked_compare_error_is_not_pinned_on_a_task(tmp_path: Path) -> None:
    """Comparator failures are shim.error records of their task now: one tied to no task
    (an older shim's, or another process's) stays untasked, never a task's example."""
    rng = random.Random(16)
    rows = [unjudged("kiwi.meal_plan", rng) for _ in range(10)]
    rows += [shim_error(None, "compare", SCHEMA_ERROR) for _ in range(10)]
    report = build_report([str(write(tmp_path / "untasked.jsonl", rows))])
    [task] = report["tasks"]
    assert task["comparator_errors"] == 10
    assert task["comparator_error_example"] is None
    assert task["shim_errors"] == 0
    assert report["shim_errors_without_task"]["by_operation"]["compare"]["count"] == 10


def test_shim_errors_sum_their_count_and_include_the_comparators(tmp_path: Path) -> None:
    """A task's shim_errors counts its compare records beside its call_site.* ones, and
    a record's ``count`` (several identical errors in one second) is summed, not 1."""
    rng = random.Random(17)
    rows: list[dict[str, Any]] = [unjudged("kiwi.ocr", rng) for _ in range(7)]
    rows += [shim_error("kiwi.ocr", "compare", SCHEMA_ERROR) for _ in range(2)]
    rows.append(shim_error("kiwi.ocr", "compare", SCHEMA_ERROR, count=5))
    rows += [
        shim_error("kiwi.ocr", "call_site.key", "KeyError: 'id'", callable="key", call_site="a:b")
        for _ in range(2)
    ]
    rows.append(shim_error(None, "decide", "ValueError: bad rule", count=4))
    log = write(tmp_path / "counted.jsonl", rows)
    report = build_report([str(log)])
    [task] = report["tasks"]
    assert task["shim_errors"] == 9
    assert task["shim_errors_by_operation"]["compare"]["count"] == 7
    assert task["shim_errors_by_operation"]["call_site.key"]["count"] == 2
    assert task["comparator_error_example"] == SCHEMA_ERROR, "its own compare record's error"
    assert report["shim_errors_without_task"]["count"] == 4
    assert "9 shim.error record(s): compare 7" in "; ".join(task["reasons"])


def side_effects_log(tmp_path: Path) -> Path:
    """kiwi.x: 400 clean pairs, 120 calls held on legacy for side effects (two drop
    records), 17 comparisons dropped for a full queue."""
    rng = random.Random(18)
    rows: list[dict[str, Any]] = [pair("kiwi.x", rng) for _ in range(400)]
    for reason, count in (("side_effects", 100), ("side_effects", 20), ("queue_full", 17)):
        rows.append(
            {
                "event": "shim.dropped",
                "schema": 1,
                "ts": "2026-11-26T12:00:01Z",
                "product": "kiwi",
                "task": "x",
                "reason": reason,
                "count": count,
            }
        )
    return write(tmp_path / "held.jsonl", rows)


HELD = "kiwi.x: 120 calls the flags sent to the task path were served by legacy (side_effects=True)"


def test_side_effect_holds_are_not_lost_comparisons(tmp_path: Path) -> None:
    """Calls legacy served because the call site declared side effects were still
    compared: not in ``dropped``, but counted per task as ``side_effects_held`` and
    said under the table in every format (and nowhere when there are none)."""
    log = side_effects_log(tmp_path)
    data = json.loads(runner.invoke(app, ["report", str(log), "--format", "json"]).stdout)
    [task] = data["tasks"]
    assert task["dropped"] == 17 and task["dropped_by_reason"] == {"queue_full": 17}
    assert task["side_effects_held"] == 120
    table = runner.invoke(app, ["report", str(log)], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert HELD in " ".join(table.output.split()), table.output
    assert HELD.replace("_", "\\_") in markdown(data), "Markdown escapes the underscore"
    assert HELD in render_html(data)
    rng = random.Random(19)
    clean = write(tmp_path / "clean.jsonl", [pair("kiwi.x", rng) for _ in range(10)])
    plain = runner.invoke(app, ["report", str(clean)])
    assert "side_effects" not in plain.output
    [row] = build_report([str(clean)])["tasks"]
    assert row["side_effects_held"] == 0


def test_a_task_with_only_side_effect_holds_is_a_row(tmp_path: Path) -> None:
    """Holds alone (every comparison of the task outside the filters, say) still say
    something of the task: it is a row, as a task with only drops is."""
    log = tmp_path / "only.jsonl"
    log.write_text(
        "".join(
            line + "\n" for line in side_effects_log(tmp_path).read_text().splitlines()[400:402]
        )
    )
    [task] = build_report([str(log)])["tasks"]
    assert (task["task"], task["side_effects_held"], task["n"]) == ("kiwi.x", 120, 0)
