"""Comparators for task-shim: model choice, output structure and output content.

Each compares what the legacy path and the task path produced for one call, without
I/O, so that records can be assembled anywhere.
"""

from ._allocation import AllocationOutput, allocation_view, held_value
from ._fields import FieldRules
from ._judge import JUDGE_RUBRIC, as_judged_text, judge_prompt, judged_answers, read_winner
from ._model import ModelCheck, ModelNames, normalise
from ._output import JsonOutput, readable_path
from ._quality import Quality, Scorer, normalise_text, similarity
from ._shape import extract_json, shape
from ._structure import Comparator, Structure
from ._text import TextOutput, TextSimilarity, sections

_RECIPE_SECTIONS = ("Title", "Ingredients", "Directions", "Notes")

#: Kiwi's recipe text: four sections; ``Ingredients`` inline (``a, b, c``, split on
#: commas by kiwi's parser), ``Directions`` numbered steps; content scored section by
#: section.
KIWI_RECIPE = TextOutput(
    sections=_RECIPE_SECTIONS,
    lists=("Directions",),
    quality=TextSimilarity(sections=_RECIPE_SECTIONS),
)

#: Kiwi's meal plan (a JSON array of ``{day, meal_type, recipe_id, suggestion}``):
#: meals paired by day and meal, recipe ids exact, suggestions by similarity.
KIWI_MEAL_PLAN = JsonOutput(
    quality=FieldRules(align={"$": ("day", "meal_type")}, exact=("[].recipe_id",))
)

#: Kiwi's receipt OCR (``{merchant, transaction, items, totals, confidence}``): money
#: within 1 % (a total weighs as much as ten item fields, subtotal and tax five), items
#: paired by name in any order, item and merchant names by similarity, the receipt's
#: number, date and time exact, the model's own confidence left out.
KIWI_RECEIPT = JsonOutput(
    quality=FieldRules(
        align={"items": "name"},
        weights={"totals.total": 10, "totals.subtotal": 5, "totals.tax": 5},
        tolerances=dict.fromkeys(
            (
                "totals.subtotal",
                "totals.tax",
                "totals.total",
                "items[].unit_price",
                "items[].total_price",
            ),
            0.01,
        ),
        exact=("transaction.receipt_number", "transaction.date", "transaction.time"),
        ignore=("confidence",),
    )
)

__all__ = [
    "JUDGE_RUBRIC",
    "KIWI_MEAL_PLAN",
    "KIWI_RECEIPT",
    "KIWI_RECIPE",
    "AllocationOutput",
    "Comparator",
    "FieldRules",
    "JsonOutput",
    "ModelCheck",
    "ModelNames",
    "Quality",
    "Scorer",
    "Structure",
    "TextOutput",
    "TextSimilarity",
    "allocation_view",
    "as_judged_text",
    "extract_json",
    "held_value",
    "judge_prompt",
    "judged_answers",
    "normalise",
    "normalise_text",
    "read_winner",
    "readable_path",
    "sections",
    "shape",
    "similarity",
]
