"""Content scores: FieldRules on JSON, TextSimilarity on text, and the ``quality``
object a comparison record carries (issue 20)."""

from __future__ import annotations

import copy
import json
import random
from decimal import Decimal
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
from shim.sim import generate
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


def test_a_wrong_total_costs_a_receipt_more_than_a_wrong_item_name() -> None:
    """The issue's case: totals 5 % off on every receipt must fail a 0.95 bar; a total
    weighs four item fields, and a doubled total is as wrong as a missing one."""
    legacy = receipt()
    far = copy.deepcopy(legacy)
    far["totals"]["total"] = round(legacy["totals"]["total"] * 1.05, 2)
    assert score(KIWI_RECEIPT, legacy, far) < 0.9
    doubled = copy.deepcopy(legacy)
    doubled["totals"]["total"] = legacy["totals"]["total"] * 2
    renamed = copy.deepcopy(legacy)
    renamed["items"][0]["name"] = "something else entirely"
    assert score(KIWI_RECEIPT, legacy, doubled) < score(KIWI_RECEIPT, legacy, renamed) < 1.0


def test_receipt_items_are_paired_by_name_in_any_order() -> None:
    legacy = receipt()
    reversed_items = copy.deepcopy(legacy)
    reversed_items["items"].reverse()
    assert score(KIWI_RECEIPT, legacy, reversed_items) == 1.0


def test_weights_must_be_positive_numbers() -> None:
    with pytest.raises(ValueError, match=r"weights\['totals.total'\] must be a positive number"):
        FieldRules(weights={"totals.total": 0})


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


class Returns:
    """A scorer that returns ``found`` as it is."""

    method = "returns"

    def __init__(self, found: Any) -> None:
        self.found = found

    def score(self, legacy: Any, candidate: Any) -> Any:
        return self.found


def compared(
    comparator: Any, legacy: Any, answer: Any, noise_sample: float = 0.0
) -> tuple[dict[str, Any], list[str]]:
    """One shadowed ocr call (legacy returns a fresh copy of ``legacy``, the task path
    ``answer``): its comparison record, and the operation of each error it counted."""
    flags = {"kiwi.ocr": {"shadow": 100}}
    with TestShim(flags, answer=lambda req: answer, noise_sample=noise_sample) as s:

        @s.shadow(
            product="kiwi",
            task="ocr",
            request=lambda: TaskRequest(prompt="scan"),
            response=lambda r: r.output,
            output=comparator,
        )
        def scan() -> dict[str, Any]:
            return copy.deepcopy(legacy)

        scan()
        [row] = s.comparisons
        errors = [r for r in s.records if r["event"] == "shim.error"]
        return row, [r["operation"] for r in errors for _ in range(r.get("count", 1))]


def test_the_record_carries_quality() -> None:
    legacy = receipt()
    worse = copy.deepcopy(legacy)
    worse["totals"]["total"] *= 1.05
    row, errors = compared(KIWI_RECEIPT, legacy, worse)
    assert row["structure"]["match"] is True  # the same shape
    assert row["quality"]["method"] == "json_fields"
    assert 0.8 < row["quality"]["score"] < 0.9  # a total weighs ten fields
    assert "totals.total" in row["quality"]["detail"]["worst"]
    assert not errors


@pytest.mark.parametrize(
    ("scorer", "error"),
    [
        (Broken(), "ValueError: no score today"),
        (Returns(0.5), "TypeError: score() returned float, not a Quality"),
        (Returns(Quality("returns", "high")), "TypeError: a score of str, not a number"),  # type: ignore[arg-type]
        (Returns(Quality("returns", float("nan"))), "ValueError: a score of NaN"),
    ],
)
def test_a_scorer_that_fails_is_counted_and_the_structure_verdict_stands(
    scorer: Any, error: str
) -> None:
    row, errors = compared(JsonOutput(quality=scorer), receipt(), receipt())
    assert row["structure"]["match"] is True
    assert row["quality"] == {"method": scorer.method, "score": None, "detail": {"error": error}}
    assert errors == ["quality"]


def test_a_score_outside_0_1_is_clamped() -> None:
    row, errors = compared(JsonOutput(quality=Returns(Quality("returns", 1.7))), 1, 1)
    assert row["quality"]["score"] == 1.0 and not errors


def test_a_noise_run_records_legacy_against_itself_and_its_failure_is_counted() -> None:
    legacy = receipt()
    row, errors = compared(KIWI_RECEIPT, legacy, legacy, noise_sample=1.0)
    assert row["structure"]["noise"]["score"] == 1.0
    assert row["quality"]["score"] == 1.0
    row, errors = compared(JsonOutput(quality=Broken()), legacy, legacy, noise_sample=1.0)
    assert "score" not in row["structure"]["noise"]
    assert errors == ["quality", "quality"]  # the pair's and the noise run's


def test_numbers_of_every_kind_and_sizes() -> None:
    rules = JsonOutput(quality=FieldRules(tolerance=0.01))
    big = 10**400
    assert score(rules, {"n": big}, {"n": big}) == 1.0  # no OverflowError
    assert score(rules, {"n": big}, {"n": big + 1}) == 0.0  # past a float: equal or 0
    assert score(rules, {"n": Decimal("10.00")}, {"n": Decimal("10.001")}) == 1.0
    # beyond the tolerance: the tolerance over the relative difference (1/11)
    assert score(rules, {"n": Decimal("10")}, {"n": 11.0}) == pytest.approx(0.11)
    assert score(rules, {"n": float("inf")}, {"n": float("inf")}) == 1.0
    assert score(rules, {"n": float("nan")}, {"n": 1.0}) == 0.0
    assert score(rules, {"n": 0.05}, {"n": 0.06}) < 1.0  # relative, not absolute
    assert score(rules, {"n": 0.0}, {"n": 1e-17}) == 1.0  # float noise at zero
    assert score(rules, {"n": (1, 2)}, {"n": [1, 2]}) == 1.0  # a tuple is a list


def test_an_object_against_a_scalar_weighs_as_its_leaves() -> None:
    rules = JsonOutput(quality=FieldRules())
    legacy = {"a": 1, "b": {"x": 1, "y": 2, "z": 3}}
    assert score(rules, legacy, {"a": 1, "b": "gone"}) == score(rules, legacy, {"a": 1}) == 0.25


def test_aligned_keys_match_case_blind_and_by_value_and_missing_is_not_null() -> None:
    rules = JsonOutput(quality=FieldRules(align={"$": "day"}))
    legacy = [{"day": "Mon", "meal": "soup"}, {"day": 2, "meal": "stew"}]
    assert (
        score(rules, legacy, [{"day": 2.0, "meal": "stew"}, {"day": "mon", "meal": "soup"}]) == 1.0
    )
    # a missing key is not a null one: no partner by key, so paired as leftovers, where
    # the field they share scores and the key one side lacks does not
    assert score(rules, [{"day": None, "m": 1}], [{"m": 1}]) == 0.5


def test_aligned_ids_past_a_floats_precision_stay_apart() -> None:
    rules = JsonOutput(quality=FieldRules(align={"$": "id"}))
    legacy = [{"id": 2**53, "v": "a"}, {"id": 2**53 + 1, "v": "b"}]
    assert score(rules, legacy, list(reversed(legacy))) == 1.0


def test_a_section_named_twice_is_scored_once() -> None:
    twice = TextOutput(quality=TextSimilarity(sections=("Title", "title", "Notes")))
    legacy = "Title: Soup\nNotes: hot\n"
    assert score(twice, legacy, legacy) == 1.0
    assert score(twice, legacy, "Title: Soup\nNotes: cold\n") < 1.0


def test_kiwis_comparators_can_be_hashed() -> None:
    """A comparator may be a dict key or a set member (a call site's options are)."""
    assert len({KIWI_RECEIPT, KIWI_MEAL_PLAN, KIWI_RECIPE}) == 3


def test_nan_on_both_sides_is_the_same_answer() -> None:
    nan = float("nan")
    rules = FieldRules()
    assert rules.score({"a": nan}, {"a": nan}).score == 1.0
    assert rules.score({"a": nan}, {"a": 1.0}).score == 0.0
