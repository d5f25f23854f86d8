"""Always-valid bounds (shim.analysis.sequential): what they hold, and that checking
them after every batch keeps false rollbacks at the stated level."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from shim.analysis.sequential import ALPHA, Running, StageTests, sequence_bounds


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
    assert "always-valid 95 % over" in line and "over the 2.00 % rollback line" in line


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
