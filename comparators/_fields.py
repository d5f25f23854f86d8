"""JSON content, field by field: :class:`FieldRules` scores how close the candidate's
values are to legacy's, with rules per path.

Paths are written as :class:`~shim.comparators.JsonOutput`'s ``ignore`` paths: ``$``
for the whole value, ``totals.total`` for a key, ``items[]`` for the elements of a
list and ``items[].name`` for a key of each (``[].day`` when the value is a list).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._quality import WORST, Quality, similarity

__all__ = ["FieldRules"]

# Per path: (sum of the leaf scores, how many leaves).
_Tally = dict[str, list[float]]


@dataclass(frozen=True)
class FieldRules:
    """Field-level score of two JSON values: the mean over their leaves (each number,
    string, boolean or null) of how close the candidate's leaf is to legacy's.

    - Numbers: 1 within ``tolerance`` (relative; ``tolerances`` per path), else ``1 -``
      the relative difference (a total 5 % off scores 0.95), never below 0.
    - Strings: lexical similarity of the normalised text (``exact`` paths: equal or 0).
    - Booleans and nulls, and values of different types: equal or 0.
    - Objects: by key, in any order; a key only one side has scores 0 for each leaf
      under it.
    - Lists: by position, or aligned by a key (``align``: list path -> the field, or
      fields, that identify an element, such as ``{"$": ("day", "meal_type")}``); an
      element without a partner scores 0 for each leaf under it.
    - ``ignore``: paths left out.

    The record's ``detail`` has ``fields`` (leaves scored) and ``worst``: the paths
    scoring lowest, with their mean score.
    """

    tolerance: float = 1e-6
    tolerances: Mapping[str, float] = field(default_factory=dict)
    align: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    exact: Iterable[str] = ()
    ignore: Iterable[str] = ()
    method: str = "json_fields"
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _ignored: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the path sets are made once, not per pair (frozen: set through object)
        object.__setattr__(self, "_exact", frozenset(self.exact))
        object.__setattr__(self, "_ignored", frozenset(self.ignore))

    def score(self, legacy: Any, candidate: Any) -> Quality:
        """How close ``candidate``'s values are to ``legacy``'s."""
        tally: _Tally = {}
        self._walk(legacy, candidate, "$", tally)
        total = sum(t[0] for t in tally.values())
        leaves = sum(t[1] for t in tally.values())
        score = total / leaves if leaves else 1.0
        means = sorted((t[0] / t[1], path) for path, t in tally.items() if t[0] < t[1])
        worst = {path: round(mean, 3) for mean, path in means[:WORST]}
        return Quality(self.method, score, {"fields": int(leaves), "worst": worst})

    def _walk(self, a: Any, b: Any, path: str, tally: _Tally) -> None:
        if path in self._ignored:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in {**a, **b}:
                child = _key(path, key)
                if child in self._ignored:
                    continue
                if key in a and key in b:
                    self._walk(a[key], b[key], child, tally)
                else:
                    self._unpaired(a[key] if key in a else b[key], child, tally)
            return
        if isinstance(a, list) and isinstance(b, list):
            for x, y in self._pairs(a, b, path):
                element = _element(path)
                if x is _NONE or y is _NONE:
                    self._unpaired(y if x is _NONE else x, element, tally)
                else:
                    self._walk(x, y, element, tally)
            return
        _add(tally, path, self._leaf(a, b, path), 1)

    def _leaf(self, a: Any, b: Any, path: str) -> float:
        if path in self._exact:
            return 1.0 if type(a) is type(b) and a == b else 0.0
        numbers = (int, float)
        if isinstance(a, numbers) and isinstance(b, numbers):
            if isinstance(a, bool) or isinstance(b, bool):
                return 1.0 if a is b else 0.0
            tolerance = self.tolerances.get(path, self.tolerance)
            if math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance):
                return 1.0
            if not (math.isfinite(a) and math.isfinite(b)):
                return 0.0
            return max(0.0, 1.0 - abs(a - b) / max(abs(a), abs(b)))
        if isinstance(a, str) and isinstance(b, str):
            return similarity(a, b)
        return 1.0 if type(a) is type(b) and a == b else 0.0

    def _pairs(self, a: list[Any], b: list[Any], path: str) -> Iterable[tuple[Any, Any]]:
        """The elements of two lists, paired by position or by the ``align`` key."""
        fields = self.align.get(path)
        if fields is None:
            for i in range(max(len(a), len(b))):
                yield (a[i] if i < len(a) else _NONE), (b[i] if i < len(b) else _NONE)
            return
        names = (fields,) if isinstance(fields, str) else tuple(fields)
        partners: dict[Any, list[Any]] = {}
        for item in b:
            partners.setdefault(_identity(item, names), []).append(item)
        for item in a:
            found = partners.get(_identity(item, names))
            yield item, (found.pop(0) if found else _NONE)
        for rest in partners.values():
            for item in rest:
                yield _NONE, item

    def _unpaired(self, value: Any, path: str, tally: _Tally) -> None:
        """Each leaf of a value the other side lacks scores 0."""
        _add(tally, path, 0.0, _leaves(value))


_NONE = object()  # no partner


def _identity(item: Any, names: tuple[str, ...]) -> Any:
    if not isinstance(item, dict):
        return ("", repr(item))
    return tuple(repr(item.get(name)) for name in names)


def _key(path: str, key: Any) -> str:
    return str(key) if path == "$" else f"{path}.{key}"


def _element(path: str) -> str:
    return "[]" if path == "$" else f"{path}[]"


def _leaves(value: Any) -> int:
    if isinstance(value, dict):
        return sum(map(_leaves, value.values())) or 1
    if isinstance(value, list):
        return sum(map(_leaves, value)) or 1
    return 1


def _add(tally: _Tally, path: str, score: float, leaves: int) -> None:
    slot = tally.get(path)
    if slot is None:
        tally[path] = [score * leaves, float(leaves)]
    else:
        slot[0] += score * leaves
        slot[1] += leaves
