"""Comparators on real-looking kiwi outputs: what is signal, what is noise."""

from __future__ import annotations

import json
import random
from typing import Any

import pydantic
import pytest

from shim import comparators
from shim.comparators import (
    KIWI_RECIPE,
    JsonOutput,
    ModelNames,
    TextOutput,
    extract_json,
    normalise,
    shape,
)
from shim.sim import generate

PLAN = [
    {"day": 0, "meal_type": "dinner", "recipe_id": 4411, "suggestion": "Tomato lentil soup"},
    {"day": 1, "meal_type": "lunch", "recipe_id": None, "suggestion": "Greek salad wraps"},
]
RECEIPT = generate("receipt", random.Random(4))


def plan_text(plan: Any, *, indent: int | None = 2) -> str:
    return json.dumps(plan, indent=indent)


def mutate(plan: list[dict[str, Any]], fn: Any) -> list[dict[str, Any]]:
    out = json.loads(json.dumps(plan))
    for row in out:
        fn(row)
    return out


MATCHES = [
    ("fenced vs bare", plan_text(PLAN), f"```json\n{plan_text(PLAN)}\n```"),
    ("prose around the JSON", plan_text(PLAN), f"Here is your plan:\n{plan_text(PLAN)}\nEnjoy!"),
    ("key order", {"a": 1, "b": [1, 2]}, {"b": [3], "a": 2}),
    ("other words, same shape", PLAN, mutate(PLAN, lambda r: r.update(suggestion="Pesto"))),
    ("compact vs pretty", plan_text(PLAN, indent=None), plan_text(PLAN)),
    ("null where the other has a value", PLAN, mutate(PLAN, lambda r: r.update(recipe_id=7))),
]

MISMATCHES = [
    (
        "missing key",
        PLAN,
        mutate(PLAN, lambda r: r.pop("recipe_id")),
        "[].recipe_id: missing in candidate",
    ),
    (
        "int -> str",
        PLAN,
        mutate(PLAN, lambda r: r.update(recipe_id=str(r["recipe_id"]))),
        "[].recipe_id: number -> str",
    ),
    (
        "list of objects -> list of strings",
        PLAN,
        [r["suggestion"] for r in PLAN],
        "[]: object -> str",
    ),
    (
        "renamed key",
        RECEIPT,
        {**{k: v for k, v in RECEIPT.items() if k != "totals"}, "total": RECEIPT["totals"]},
        ".totals: missing in candidate",
    ),
    (
        "nested type change",
        RECEIPT,
        {**RECEIPT, "items": [{**RECEIPT["items"][0], "quantity": "2"}]},
        ".items[].quantity: number -> str",
    ),
    (
        "not JSON at all",
        PLAN,
        "Sorry, I can't plan meals today.",
        "$: candidate output is not JSON",
    ),
]


@pytest.mark.parametrize(("name", "legacy", "candidate"), MATCHES, ids=[m[0] for m in MATCHES])
def test_noise_matches(name: str, legacy: Any, candidate: Any) -> None:
    result = JsonOutput().compare(legacy, candidate)
    assert result.match is True, result.diff
    assert result.diff is None


@pytest.mark.parametrize(
    ("name", "legacy", "candidate", "path"), MISMATCHES, ids=[m[0] for m in MISMATCHES]
)
def test_signal_mismatches_with_a_readable_path(
    name: str, legacy: Any, candidate: Any, path: str
) -> None:
    result = JsonOutput().compare(legacy, candidate)
    assert result.match is False
    assert result.diff is not None and path in result.diff


def test_wrapping_is_recorded_and_can_be_made_strict() -> None:
    fenced = f"```json\n{plan_text(PLAN)}\n```"
    lenient = JsonOutput().compare(plan_text(PLAN), fenced)
    assert lenient.extra == {"wrapping": {"legacy": "bare", "candidate": "fenced"}}
    strict = JsonOutput(strict_wrapping=True).compare(plan_text(PLAN), fenced)
    assert strict.match is False and strict.diff == ("$: bare JSON -> fenced JSON",)


def test_values_with_tolerance_order_and_ignored_paths() -> None:
    values = JsonOutput(values=True, tolerance=1e-6)
    assert values.compare({"p": 0.1, "l": [1, 2]}, {"l": [2, 1], "p": 0.1000001}).match
    assert values.compare({"p": 0.1}, {"p": 0.2}).diff == (".p: 0.1 -> 0.2",)
    ordered = JsonOutput(values=True, ignore_order=False)
    assert ordered.compare({"l": [1, 2]}, {"l": [2, 1]}).match is False
    ignoring = JsonOutput(values=True, ignore=("totals.tax", "transaction"))
    changed = {
        **RECEIPT,
        "totals": {**RECEIPT["totals"], "tax": 99.0},
        "transaction": {"date": "x", "time": "y", "receipt_number": "z"},
    }
    assert ignoring.compare(RECEIPT, changed).match is True
    assert (
        JsonOutput(ignore=("[].recipe_id",))
        .compare(PLAN, mutate(PLAN, lambda r: r.pop("recipe_id")))
        .match
        is True
    )


class PlanEntry(pydantic.BaseModel):
    day: int = pydantic.Field(ge=0, le=6)
    meal_type: str
    recipe_id: int | None
    suggestion: str


def test_schema_validity_of_each_side() -> None:
    schema = JsonOutput(schema=list[PlanEntry])
    good = schema.compare(PLAN, PLAN)
    assert (good.legacy_valid, good.candidate_valid, good.match) == (True, True, True)
    bad = schema.compare(PLAN, mutate(PLAN, lambda r: r.update(day=9)))
    assert (bad.legacy_valid, bad.candidate_valid, bad.match) == (True, False, False)
    assert bad.diff == ("$: candidate fails the schema",)


def test_diff_summary_is_capped_for_the_log() -> None:
    result = JsonOutput().compare({f"k{i}": 1 for i in range(20)}, {})
    assert result.diff is not None and len(result.diff) == 9
    assert result.diff[-1] == "... 12 more"


def test_recipe_sections_and_list_ness() -> None:
    from shim.sim._outputs import apply_drift

    recipe = generate("recipe", random.Random(2))
    same = KIWI_RECIPE.compare(recipe, generate("recipe", random.Random(9)))
    assert same.match is True and same.legacy_valid and same.candidate_valid
    assert 0.2 < same.extra["length_ratio"] < 5
    dropped = KIWI_RECIPE.compare(recipe, recipe.replace("Notes:", "Remarks:"))
    assert dropped.diff == ("Notes: missing in candidate",) and not dropped.candidate_valid
    flattened = KIWI_RECIPE.compare(
        recipe, apply_drift(recipe, "recipe", "type_change", random.Random(1))
    )
    assert flattened.diff == ("Ingredients: text -> list", "Directions: list -> text")
    assert flattened.legacy_valid and not flattened.candidate_valid
    markdown = "## Title\nSoup\n## Ingredients\nwater, salt\n## Directions\n1. boil\n## Notes\nhot"
    assert (
        TextOutput(("Title", "Directions"), ("Directions",)).compare(recipe, markdown).match is True
    )


NAMES = ModelNames(
    {
        "qwen2.5-3b-instruct": ["Qwen/Qwen2.5-3B-Instruct"],
        "qwen2.5-vl-7b-instruct": [],
        "llama3.2-3b-instruct": [],
    },
    expected={"kiwi.meal_plan": "qwen2.5-3b-instruct", "kiwi.ocr": "qwen2.5-vl-7b-instruct"},
    allowed_services={
        "kiwi.meal_plan": frozenset({"cf-text", "vllm"}),
        "kiwi.ocr": frozenset({"cf-vision"}),
    },
)


@pytest.mark.parametrize(
    ("a", "b", "verdict"),
    [
        ("Qwen/Qwen2.5-3B-Instruct", "qwen2.5-3b-instruct-q4_k_m", "alias"),
        ("qwen2.5-3b-instruct", "QWEN2.5-3B-INSTRUCT", "alias"),
        ("qwen2.5-3b-instruct", "qwen2.5-3b-instruct", "same"),
        ("qwen2.5-3b-instruct", "llama3.2-3b-instruct", "different"),
        ("someorg/Mystery-7B-GGUF-Q8_0", "mystery-7b", "alias"),
        (None, "qwen2.5-3b-instruct", "unknown"),
    ],
)
def test_model_verdicts(a: str | None, b: str | None, verdict: str) -> None:
    assert NAMES.verdict(a, b) == verdict


def test_normalise_strips_org_case_and_quantisation() -> None:
    assert normalise("Qwen/Qwen2.5-3B-Instruct") == "qwen2.5-3b-instruct"
    assert normalise("qwen2.5-3b-instruct-gguf-q4_k_m") == "qwen2.5-3b-instruct"
    assert normalise("meta-llama/Llama-3.2-3B-Instruct-AWQ") == "llama-3.2-3b-instruct"


def test_routing_errors_differ_from_intended_changes() -> None:
    wrong_service = NAMES.check(
        "kiwi.ocr", "docuvision-receipts", "qwen2.5-vl-7b-instruct", "cf-text"
    )
    assert wrong_service.routing_error is True
    assert wrong_service.reason == "kiwi.ocr resolved to service cf-text; it needs cf-vision"
    wrong_model = NAMES.check(
        "kiwi.meal_plan", "qwen2.5-3b-instruct", "llama3.2-3b-instruct", "cf-text"
    )
    assert wrong_model.routing_error is True and wrong_model.verdict == "different"
    intended = NAMES.check("kiwi.ocr", "docuvision-receipts", "qwen2.5-vl-7b-instruct", "cf-vision")
    assert (intended.verdict, intended.routing_error) == ("different", False)
    assert intended.reason == "intended change (the expected model)"
    quantised = NAMES.check(
        "kiwi.meal_plan", "Qwen/Qwen2.5-3B-Instruct", "qwen2.5-3b-instruct-q4_k_m", "cf-text"
    )
    assert (quantised.verdict, quantised.routing_error) == ("alias", False)


def test_shapes_and_extraction() -> None:
    assert shape(PLAN) == [
        "list",
        {"day": "number", "meal_type": "str", "recipe_id": "number", "suggestion": "str"},
    ]
    assert extract_json("```json\n[1]\n```") == ("fenced", [1])
    assert extract_json("nope {") == ("none", None)


def test_json_schema_validity() -> None:
    schema = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["day", "meal_type", "suggestion"],
            "properties": {"day": {"type": "integer"}},
        },
    }
    result = JsonOutput(schema=schema).compare(PLAN, mutate(PLAN, lambda r: r.pop("day")))
    assert (result.legacy_valid, result.candidate_valid) == (True, False)


EMPTIES = {
    "json": (JsonOutput(), [None, [], "", "   ", "[]", "null"]),
    "text": (KIWI_RECIPE, [None, "", "   "]),
    "allocation": (comparators.AllocationOutput(), [None]),
}


@pytest.mark.parametrize("kind", EMPTIES)
def test_an_empty_output_never_counts_as_a_structural_match(kind: str) -> None:
    """What a call site returns when it swallowed a failure has no structure to agree
    with: not an answer's, not another empty result's."""
    comparator, empties = EMPTIES[kind]
    answers = ['[{"day": 0}]', [{"day": 0}], "Title: Soup\nDirections:\n1. Boil"]
    for empty in empties:
        for other in [empty, *answers]:
            verdict = comparator.compare(empty, other)
            assert verdict.match is False, (kind, empty, other)
            assert verdict.diff, (kind, empty, other)
