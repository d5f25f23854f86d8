"""Shapes, JSON extraction and the first structure comparator."""

from __future__ import annotations

import pytest

from comparators import JsonOutput, ModelNames, diff_shapes, extract_json, shape


def test_shape_merges_list_elements_and_optional_values() -> None:
    plan = [{"day": 0, "recipe_id": None}, {"day": 1, "recipe_id": 7, "note": "x"}]
    assert shape(plan) == ["list", {"day": "number", "recipe_id": "number", "note": "str"}]
    assert shape([1, "a"]) == ["list", "number|str"]
    assert shape([]) == ["list", "empty"]


@pytest.mark.parametrize(
    ("legacy", "candidate", "diffs"),
    [
        ([{"id": 1}], [{"id": "1"}], ["[].id: number -> str"]),
        ({"a": {"b": 1}}, {"a": {}}, [".a.b: missing in candidate"]),
        ({"a": 1}, {"a": 1, "z": 2}, [".z: only in candidate"]),
        ({"a": 1}, [1], ["$: object -> list"]),
        ([], [{"x": 1}], []),
    ],
)
def test_diff_paths_read_like_the_data(legacy: object, candidate: object, diffs: list[str]) -> None:
    assert diff_shapes(shape(legacy), shape(candidate)) == diffs


@pytest.mark.parametrize(
    ("text", "wrapping", "value"),
    [
        ('{"a": 1}', "bare", {"a": 1}),
        ("```json\n[1, 2]\n```", "fenced", [1, 2]),
        ('Sure! Here it is: {"a": [1]} Enjoy.', "prose", {"a": [1]}),
        ("no json here {oops", "none", None),
    ],
)
def test_extract_json(text: str, wrapping: str, value: object) -> None:
    assert extract_json(text) == (wrapping, value)


def test_json_output_flags_wrapping_and_shape_changes() -> None:
    compare = JsonOutput().compare
    assert compare('[{"a": 1}]', [{"a": 2}]).match is True
    fenced = compare('[{"a": 1}]', '```json\n[{"a": 1}]\n```')
    assert fenced.match is False and fenced.diff == ("$: bare JSON -> fenced JSON",)
    not_json = compare({"a": 1}, "I cannot help with that.")
    assert (not_json.match, not_json.candidate_valid) == (False, False)
    text = compare("Title: Soup", "Title: Stew")
    assert text.match is True and text.legacy_valid is None
    many = compare({f"k{i}": 1 for i in range(20)}, {})
    assert many.diff is not None and len(many.diff) == 9 and many.diff[-1] == "... 12 more"


def test_model_names_use_registry_aliases() -> None:
    names = ModelNames({"qwen2.5-3b-instruct": ["Qwen/Qwen2.5-3B-Instruct"]})
    assert names.verdict("qwen2.5-3b-instruct", "qwen2.5-3b-instruct") == "same"
    assert names.verdict("Qwen/Qwen2.5-3B-Instruct", "qwen2.5-3b-instruct") == "alias"
    assert names.verdict("QWEN2.5-3B-INSTRUCT", "qwen2.5-3b-instruct") == "alias"
    assert names.verdict("llama", "qwen2.5-3b-instruct") == "different"
    assert names.verdict(None, "qwen2.5-3b-instruct") == "unknown"
