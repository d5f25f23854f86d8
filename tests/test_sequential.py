"""Always-valid bounds (shim.analysis.sequential): what they hold, and that checking
them after every batch keeps false rollbacks at the stated level."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from shim.analysis.sequential import ALPHA, Paired, Running, Sample, sequence_bounds
from shim.analysis.stage_tests import StageTests


def test_running_figures_are_the_sample_mean_and_variance() -> None:
    rng = random.Random(1)
    xs = [rng.gauss(3, 2) for _ in range(500)]
    run = Running()
    assert sequence_bounds(run) is None
    for x in xs:
        run.add(x)
    assert run.n == 500
    assert run.mean == pytest.approx(statistics.fmean(xs))
    assert run.variance == pytest.approx(statistics.variance(xs))


def test_the_bounds_hold_the_mean_and_narrow_as_pairs_come() -> None:
    rng = random.Random(2)
    run = Running()
    widths = []
    for n in range(1, 20_001):
        run.add(float(rng.random() < 0.1))
        if n in (100, 1000, 10_000, 20_000):
            found = sequence_bounds(run)
            assert found is not None and found[0] < run.mean < found[1]
            widths.append(found[1] - found[0])
    assert widths == sorted(widths, reverse=True)
    # wider than a fixed 95 % interval at the same count: the price of looking always
    fixed = 2 * 1.96 * math.sqrt(run.variance / run.n)
    assert fixed < widths[-1] < 3 * fixed


def test_checked_after_every_50_pairs_a_b_a_a_run_rarely_rolls_back() -> None:
    """40 seeded A/A runs of 2,000 pairs at a line of no difference: the stated 5 %
    bounds the share of runs that ever roll back (here none, or one or two)."""
    rolled = 0
    for seed in range(40):
        rng = random.Random(seed)
        tests = StageTests()
        for i in range(1, 2001):
            tests.add(rng.random() >= 0.05, rng.random() >= 0.05)
            if i % 50 == 0 and tests.breaches(error_increase=0.0, mismatch=None):
                rolled += 1
                break
    assert rolled <= 2, rolled


def test_a_planted_regression_is_caught_and_said_with_its_bound() -> None:
    rng = random.Random(3)
    tests = StageTests()
    caught = None
    for i in range(1, 5001):
        tests.add(rng.random() >= 0.05, rng.random() >= 0.15, rng.random() >= 0.01)
        if i % 50 == 0 and (reasons := tests.breaches(error_increase=0.02, mismatch=0.2)):
            caught = i, reasons
            break
    assert caught is not None and caught[0] <= 1500
    [line] = caught[1]
    assert line.startswith("candidate error rate higher by ")
    # alpha shared by the two lines given: each bound at 97.5 %
    assert "always-valid 97.5 % over" in line and "over the 2.00 % rollback line" in line


def test_latency_quality_and_mismatch_lines() -> None:
    rng = random.Random(4)
    tests = StageTests()
    for _ in range(2000):
        legacy = 100 * rng.lognormvariate(0, 0.3)
        tests.add(True, True, rng.random() >= 0.2, 0.6 + 0.1 * rng.random(), legacy, legacy * 1.6)
    reasons = tests.breaches(
        error_increase=0.02, mismatch=0.05, min_quality=0.9, latency_ratio=1.25, alpha=ALPHA
    )
    assert [r.split(" ")[0] for r in reasons] == ["mismatch", "quality", "task"]
    assert "typical latency ratio 1.60" in reasons[2]
    assert tests.breaches(error_increase=None, mismatch=None) == []


#: legacy's times: log-normal around 100 ms; its p90
P90_MS = 100 * math.exp(1.2816 * 0.4)


def _tail_pairs(seed: int, n: int, tail: float, cost: float = 1.0) -> StageTests:
    """``n`` pairs where the task path's slowest tenth takes ``tail`` times as long
    (its p95 ``tail`` times legacy's, its median the same) and costs ``cost`` times
    as much; checked every 50 pairs at the built-in lines, returned at the first
    breach or the end."""
    rng = random.Random(seed)
    tests = StageTests()
    for i in range(1, n + 1):
        legacy, task = (100 * rng.lognormvariate(0, 0.4) for _ in range(2))
        tokens = rng.randint(200, 800), rng.randint(200, 800)
        tests.add(
            rng.random() >= 0.05,
            rng.random() >= 0.05,
            None,
            None,
            legacy,
            task * tail if task > P90_MS else task,
            tokens[0] * 1e-6,
            tokens[1] * 1e-6 * cost,
        )
        if i % 50 == 0 and tests.breaches(**LINES):
            break
    return tests


LINES = {
    "error_increase": 0.02,
    "mismatch": None,
    "latency_ratio": 1.10,
    "p95_ratio": 1.25,
    "cost_ratio": 1.25,
}


def test_quantile_bounds_hold_the_true_quantile_at_every_look() -> None:
    """Over 200 runs of 2,000 draws, looked at every 50: the bounds leave the true
    p95 in at most alpha of the runs, and narrow to a few percent of it."""
    true = math.exp(1.6449)  # a log-normal(0, 1)'s p95
    missed = 0
    for seed in range(200):
        rng = random.Random(seed)
        sample = Sample()
        for i in range(1, 2001):
            sample.add(rng.lognormvariate(0, 1))
            if i % 50 == 0:
                found = sample.quantile_bounds(0.95)
                assert found is not None
                if not found[0] <= true <= found[1]:
                    missed += 1
                    break
    assert missed <= 200 * ALPHA, missed
    assert Sample().quantile_bounds(0.95) is None
    low, high = found
    assert 0.75 * true < low < true < high < 1.35 * true
    one = Sample()
    one.add(5.0)
    assert one.quantile_bounds(0.95) == (0.0, math.inf)  # one draw says nothing


def test_a_slower_tail_alone_rolls_back_on_the_p95_line() -> None:
    tests = _tail_pairs(5, 10_000, tail=1.5)
    reasons = tests.breaches(**LINES)
    assert [r.split(":")[0] for r in reasons] == ["task path slower in the tail"]
    assert "over the 1.25 line" in reasons[0] and tests.latency.n < 4000
    # the typical ratio stays under its 1.10 line: that test alone would not roll back
    assert 1.0 < math.exp(tests.latency.mean) < 1.10
    assert tests.breaches(**LINES | {"p95_ratio": None}) == []


def test_a_dearer_task_path_rolls_back_on_the_cost_line_whatever_the_currency() -> None:
    tests = _tail_pairs(6, 10_000, tail=1.0, cost=1.5)
    [reason] = tests.breaches(**LINES)
    assert reason.startswith("task path dearer: cost per call 1.")
    assert tests.cost.n < 1000
    # the same pairs in another unit: the same decision at the same count
    scaled = Paired()
    plain = Paired()
    rng = random.Random(7)
    for _ in range(300):
        x, y = rng.uniform(1, 3), rng.uniform(1, 2)
        plain.add(x, y)
        scaled.add(x * 1e-7, y * 1e-7)
    a, b = plain.excess(1.25), scaled.excess(1.25)
    assert a is not None and b is not None
    assert a == pytest.approx(b)
    first_free = Paired()
    first_free.add(1.0, 0.0)  # a stage's first legacy call cost nothing: no unit yet
    assert first_free.n == 0 and first_free.excess(1.0) is None


def test_a_a_traffic_with_every_test_on_rarely_rolls_back() -> None:
    """A/A at lines of no difference for all five tests, 40 runs of 2,000 pairs."""
    aa = LINES | {"error_increase": 0.0, "latency_ratio": 1.0, "p95_ratio": 1.0, "cost_ratio": 1.0}
    rolled = 0
    for seed in range(40):
        rng = random.Random(100 + seed)
        tests = StageTests()
        for i in range(1, 2001):
            legacy, task = (100 * rng.lognormvariate(0, 0.4) for _ in range(2))
            cost = rng.uniform(1, 3), rng.uniform(1, 3)
            ok = rng.random() >= 0.05, rng.random() >= 0.05
            tests.add(*ok, None, None, legacy, task, *cost)
            if i % 50 == 0 and tests.breaches(**aa):
                rolled += 1
                break
    assert rolled <= 2, rolled


def test_a_latency_too_small_to_divide_by_leaves_the_latency_gate_standing() -> None:
    """5e-324 ms is positive and finite, but a time over it is not: it is left out,
    and the typical latency ratio still rolls back and reads as JSON."""
    import json

    rng = random.Random(9)
    tests = StageTests()
    tests.add(True, True, None, None, 5e-324, 100.0)
    tests.add(True, True, None, None, 100.0, 5e-324)
    for _ in range(300):
        legacy = 100 * rng.lognormvariate(0, 0.3)
        tests.add(True, True, None, None, legacy, legacy * 1.2)
    assert tests.latency.n == 300
    [reason] = tests.breaches(error_increase=None, mismatch=None, latency_ratio=1.1)
    assert reason.startswith("task path slower: typical latency ratio 1.20")
    json.dumps(tests.summary(), allow_nan=False)


def test_rare_events_pass_a_rate_line_no_more_often_than_alpha() -> None:
    """A mismatch rate right at its 1 % line, looked at every 50 pairs for 3,000:
    the promotion gate passes in at most alpha of the runs (a rare event's sample
    variance is 0 before the first one; the gate takes the line's own)."""
    passed = 0
    for seed in range(200):
        rng = random.Random(500 + seed)
        tests = StageTests()
        for i in range(1, 3001):
            tests.add(True, True, rng.random() >= 0.01)
            lines = {"error_increase": None, "latency_ratio": None, "min_quality": None}
            if i % 50 == 0 and not tests.shortfalls(mismatch=0.01, **lines):
                passed += 1
                break
    assert passed <= 200 * ALPHA, passed
