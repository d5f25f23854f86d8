"""Comparators for task-shim: model choice, latency and output structure.

Each compares what the legacy path and the task path produced for one call, without
I/O, so that records can be assembled anywhere.
"""

from ._allocation import AllocationOutput, allocation_view, held_value
from ._latency import latency_delta, latency_ratio, percentile, ratio_interval
from ._model import ModelCheck, ModelNames, normalise
from ._output import (
    Comparator,
    JsonOutput,
    OutputComparator,
    Structure,
    TextOutput,
    readable_path,
    sections,
)
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
    "OutputComparator",
    "Structure",
    "TextOutput",
    "allocation_view",
    "extract_json",
    "held_value",
    "latency_delta",
    "latency_ratio",
    "normalise",
    "percentile",
    "ratio_interval",
    "readable_path",
    "sections",
    "shape",
]
