"""Allocations compared: what each path handed the call site to reach a node.

An allocating call site returns an object (kiwi's frozen ``Allocation``, a client's
dataclass, a dict) or a ``(router, ctx)`` pair whose ``ctx`` holds the allocation.
What can differ between the paths is which node and model were granted (the record's
``model`` block) and the shape of what the caller reads; the comparator looks at the
public, JSON-like attributes of each side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pydantic

from ._output import JsonOutput
from ._structure import Structure

__all__ = ["AllocationOutput", "allocation_view", "held_value"]

_SCALARS = (str, int, float, bool, type(None))


def held_value(value: Any) -> Any:
    """The value of a ``(value, ctx)`` pair (``ctx`` a context manager holding what the
    value uses, as kiwi's meal-plan router returns); anything else as it is."""
    if isinstance(value, tuple) and len(value) == 2 and hasattr(value[1], "__exit__"):
        return value[0]
    return value


def allocation_view(value: Any) -> Any:
    """The public, JSON-like attributes of an allocation (or of the first element of a
    ``(value, ctx)`` pair), as a dict; ``None`` stays ``None``."""
    value = held_value(value)
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, pydantic.BaseModel):
        items = value.model_dump(mode="json")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif hasattr(value, "_asdict"):
        items = value._asdict()
    else:
        names = [n for n in dir(value) if not n.startswith("_")]
        items = {}
        for name in names:
            try:
                attr = getattr(value, name)
            except Exception:  # a property that fails is not part of the view
                continue
            if not callable(attr):
                items[name] = attr
    return {k: v for k, v in items.items() if not k.startswith("_") and isinstance(v, _SCALARS)}


@dataclass(frozen=True, slots=True)
class AllocationOutput:
    """Compares two allocations (or routers holding one) by their public attributes;
    a side that got nothing (``None``) never matches one that got an allocation."""

    def compare(self, legacy: Any, candidate: Any) -> Structure:
        """The structural verdict for one pair of allocations."""
        return JsonOutput().compare(allocation_view(legacy), allocation_view(candidate))
