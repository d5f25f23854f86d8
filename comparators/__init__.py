"""Comparators for task-shim: model choice, latency and output structure.

Each compares what the legacy path and the task path produced for one call, without
I/O, so that records can be assembled anywhere.
"""

from ._model import ModelNames
from ._output import JsonOutput, OutputComparator, Structure
from ._shape import diff_shapes, extract_json, shape

__all__ = [
    "JsonOutput",
    "ModelNames",
    "OutputComparator",
    "Structure",
    "diff_shapes",
    "extract_json",
    "shape",
]
