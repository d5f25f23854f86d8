"""Comparators for task-shim: model choice and output structure.

Each compares what the legacy path and the task path produced for one call, without
I/O, so that records can be assembled anywhere.
"""

from ._allocation import AllocationOutput, allocation_view, held_value
from ._model import ModelCheck, ModelNames, normalise
from ._output import Comparator, JsonOutput, Structure, TextOutput, readable_path, sections
from ._shape import extract_json, shape

#: Kiwi's recipe text: four sections; ``Ingredients`` inline (``a, b, c``, split on
#: commas by kiwi's parser), ``Directions`` numbered steps.
KIWI_RECIPE = TextOutput(
    sections=("Title", "Ingredients", "Directions", "Notes"), lists=("Directions",)
)

__all__ = [
    "KIWI_RECIPE",
    "AllocationOutput",
    "Comparator",
    "JsonOutput",
    "ModelCheck",
    "ModelNames",
    "Structure",
    "TextOutput",
    "allocation_view",
    "extract_json",
    "held_value",
    "normalise",
    "readable_path",
    "sections",
    "shape",
]
