"""Content scores: FieldRules on JSON, TextSimilarity on text, and the ``quality``
object a comparison record carries (issue 20)."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from shim import TaskRequest
from shim.comparators import (
    KIWI_MEAL_PLAN,
    KIWI_RECEIPT,
    KIWI_RECIPE,
    FieldRules,
    JsonOutput,
    Quality,
    TextOutput,
    TextSimilarity,
    similarity,
)
from shim.sim._outputs import generate
from shim.testing import TestShim


def receipt() -> dict[str, Any]:
    return generate("receipt", random.Random(3))


def meal_plan() -> list[dict[str, Any]]:
    plan = generate("meal_plan", random.Random(3))
    return json.loads(plan) if isinstance(plan, str) else plan


def score(comparator: Any, legacy: Any, candidate: Any) -> float:
    quality = comparator.compare(legacy, candidate).quality
    assert quality is not None and quality.score is not None
    return float(quality.score)


def test_a_total_5_percent_off_scores_below_one_0_1_percent_off() -> None:
    legacy = receipt()
    far, near = copy.deepcopy(legacy), copy.deepcopy(legacy)
    far["totals"]["total"] = round(legacy["totals"]["total"] * 1.05, 2)
    near["totals"]["total"] = legacy["totals"]["total"] * 1.001
    assert score(KIWI_RECEIPT, legacy, far) < score(KIWI_RECEIPT, legacy, near) == 1.0
    detail = KIWI_RECEIPT.compare(legacy, far).quality
    assert detail is not None and "totals.total" in detail.detail["worst"]


def test_reordered_keys_and_float_noise_score_one() -> None:
    legacy = receipt()
    shuffled = json.loads(json.dumps(legacy))
    shuffled = {k: shuffled[k] for k in reversed(list(shuffled))}
    shuffled["totals"] = dict(reversed(list(legacy["totals"].items())))
    shuffled["totals"]["subtotal"] = legacy["totals"]["subtotal"] + 1e-12
    assert score(KIWI_RECEIPT, legacy, shuffled) == 1.0
    assert score(JsonOutput(quality=FieldRules()), {"a": 0.1 + 0.2}, {"a": 0.3}) == 1.0


def test_the_same_output_scores_one_and_the_receipt_number_is_exact() -> None:
    legacy = receipt()
    assert score(KIWI_RECEIPT, legacy, copy.deepcopy(legacy)) == 1.0
    other = copy.deepcopy(legacy)
    other["transaction"]["receipt_number"] = legacy["transaction"]["receipt_number"][:-1] + "X"
    quality = KIWI_RECEIPT.compare(legacy, other).quality
    assert quality is not None and quality.detail["worst"] == {"transaction.receipt_number": 0.0}


def test_meal_plan_meals_are_paired_by_day_and_meal_not_position() -> None:
    legacy = meal_plan()
    text = json.dumps(legacy)
    assert score(KIWI_MEAL_PLAN, text, json.dumps(list(reversed(legacy)))) == 1.0
    fewer = json.dumps(legacy[:-3])
    assert score(KIWI_MEAL_PLAN, text, fewer) == pytest.approx(1 - 3 / len(legacy), abs=0.02)
    changed = copy.deepcopy(legacy)
    changed[0]["recipe_id"] = 1001  # an id is exact: a neighbouring id is another recipe
    legacy[0]["recipe_id"] = 1000
    text = json.dumps(legacy)
    assert score(KIWI_MEAL_PLAN, text, json.dumps(changed)) < 1.0


def test_strings_by_similarity_missing_keys_and_types() -> None:
    rules = JsonOutput(quality=FieldRules())
    assert 0.5 < score(rules, {"name": "Apples"}, {"name": "apples!"}) < 1.0
    assert score(rules, {"a": 1, "b": 2}, {"a": 1}) == 0.5  # b's leaf has no partner
    assert score(rules, {"a": True}, {"a": 1}) == 0.0
    assert score(rules, {"a": {"x": 1, "y": 2}}, {}) == 0.0
    ignored = JsonOutput(quality=FieldRules(ignore=("confidence",)))
    assert score(ignored, {"v": 1, "confidence": 0.9}, {"v": 1, "confidence": 0.1}) == 1.0
    assert score(ignored, {"v": 1, "confidence": 0.9}, {"v": 1}) == 1.0  # even one-sided


def test_an_empty_or_unreadable_candidate_scores_zero_and_both_empty_not_at_all() -> None:
    legacy = json.dumps(meal_plan())
    assert score(KIWI_MEAL_PLAN, legacy, "") == 0.0
    assert score(KIWI_MEAL_PLAN, legacy, "I cannot plan meals today.") == 0.0
    assert KIWI_MEAL_PLAN.compare("", "").quality is None
    assert JsonOutput().compare(legacy, legacy).quality is None  # no scorer, no score


def test_recipe_text_is_scored_section_by_section() -> None:
    legacy = "Title: Soup\nIngredients: leeks, potatoes\nDirections:\n1. Chop.\n2. Simmer.\n"
    assert score(KIWI_RECIPE, legacy, legacy.replace("1. Chop.", "- chop.")) == 1.0
    no_steps = "Title: Soup\nIngredients: leeks, potatoes\n"
    quality = KIWI_RECIPE.compare(legacy, no_steps).quality
    assert quality is not None and quality.detail["worst"] == {"Directions": 0.0}
    assert quality.score is not None and 0.0 < quality.score < 0.8
    whole = TextOutput(quality=TextSimilarity())
    assert score(whole, "Hello  World", "hello world") == 1.0
    assert similarity("abc", "xyz") == 0.0


class Broken:
    method = "broken"

    def score(self, legacy: Any, candidate: Any) -> Quality:
        raise ValueError("no score today")


def test_the_record_carries_quality_and_a_scorer_that_raises_is_counted() -> None:
    legacy = receipt()
    worse = copy.deepcopy(legacy)
    worse["totals"]["total"] *= 1.05
    for comparator, expect in (
        (KIWI_RECEIPT, "json_fields"),
        (JsonOutput(quality=Broken()), "broken"),
    ):
        with TestShim({"kiwi.ocr": {"shadow": 100}}, answer=lambda req: worse) as s:

            @s.shadow(
                product="kiwi",
                task="ocr",
                request=lambda: TaskRequest(prompt="scan"),
                response=lambda r: r.output,
                output=comparator,
            )
            def scan() -> dict[str, Any]:
                return legacy

            assert scan() is legacy
            [row] = s.comparisons
            assert row["structure"]["match"] is True  # same shape either way
            assert row["quality"]["method"] == expect
            errors = [r for r in s.records if r["event"] == "shim.error"]
        if expect == "json_fields":
            assert 0.9 < row["quality"]["score"] < 1.0
            assert "totals.total" in row["quality"]["detail"]["worst"]
            assert not errors
        else:
            assert row["quality"]["score"] is None
            assert "no score today" in row["quality"]["detail"]["error"]
            assert [e["operation"] for e in errors] == ["quality"]


def test_a_noise_run_records_legacy_against_itself() -> None:
    legacy = receipt()
    with TestShim({"kiwi.ocr": {"shadow": 100}}, answer=lambda req: legacy, noise_sample=1.0) as s:

        @s.shadow(
            product="kiwi",
            task="ocr",
            request=lambda: TaskRequest(prompt="scan"),
            response=lambda r: r.output,
            output=KIWI_RECEIPT,
        )
        def scan() -> dict[str, Any]:
            return copy.deepcopy(legacy)

        scan()
        [row] = s.comparisons
    assert row["structure"]["noise"]["score"] == 1.0
    assert row["quality"]["score"] == 1.0
