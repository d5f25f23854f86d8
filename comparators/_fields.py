"""JSON content, field by field: :class:`FieldRules` scores how close the candidate's
values are to legacy's, with rules per path.

Paths are written as :class:`~shim.comparators.JsonOutput`'s ``ignore`` paths: ``$``
for the whole value, ``totals.total`` for a key, ``items[]`` for the elements of a
list and ``items[].name`` for a key of each (``[].day`` when the value is a list).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ._quality import WORST, Quality, similarity

__all__ = ["FieldRules"]

# Per path: (sum of the leaf scores, how many leaves).
_Tally = dict[str, list[float]]


@dataclass(frozen=True, eq=False)  # compared and hashed as itself: it holds dicts
class FieldRules:
    """Field-level score of two JSON values: the mean over their leaves (each number,
    string, boolean or null) of how close the candidate's leaf is to legacy's.

    - Numbers (ints, floats, Decimals): 1 within ``tolerance`` (relative; ``tolerances``
      per path; values within 1e-12 of each other are equal too), else the tolerance
      over the relative difference: a total 5 % off scores 0.2 with a 1 % tolerance,
      1.5 % off 0.67, and with the default tolerance a number that is off scores about
      0. Infinities, NaN and ints too large for a float: equal or 0.
    - Strings: lexical similarity of the normalised text (``exact`` paths: equal or 0).
    - Booleans and nulls, and values of different types: equal or 0.
    - Objects: by key, in any order; a key only one side has scores 0 for each leaf
      under it.
    - Lists (and tuples): by position, or aligned by a key (``align``: list path -> the field, or
      fields, that identify an element, such as ``{"$": ("day", "meal_type")}``; text
      keys match case-blind, numbers by value); elements whose key finds no partner
      are paired with the other side's leftovers in order (a name read slightly wrong
      is still compared field by field), and an element left without a partner scores
      0 for each leaf under it.
    - An object or list against a scalar scores 0 for each leaf of the larger side.
    - ``ignore``: paths left out; ``weights``: path -> how many leaves each of its
      leaves counts for (1 by default), so that a receipt's total can weigh more than
      one of its item names.

    The record's ``detail`` has ``fields`` (leaves scored) and ``worst``: the paths
    scoring lowest, with their mean score.
    """

    tolerance: float = 1e-6
    tolerances: Mapping[str, float] = field(default_factory=dict)
    align: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    exact: Iterable[str] = ()
    ignore: Iterable[str] = ()
    weights: Mapping[str, float] = field(default_factory=dict)
    method: str = "json_fields"
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _ignored: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the path sets are made once, not per pair (frozen: set through object)
        object.__setattr__(self, "_exact", frozenset(self.exact))
        object.__setattr__(self, "_ignored", frozenset(self.ignore))
        for path, weight in self.weights.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"FieldRules weights[{path!r}] must be a positive number")

    def score(self, legacy: Any, candidate: Any) -> Quality:
        """How close ``candidate``'s values are to ``legacy``'s."""
        tally: _Tally = {}
        self._walk(legacy, candidate, "$", tally)
        weights = self.weights
        total = sum(t[0] * weights.get(path, 1.0) for path, t in tally.items())
        weighed = sum(t[1] * weights.get(path, 1.0) for path, t in tally.items())
        leaves = sum(t[1] for t in tally.values())
        score = total / weighed if weighed else 1.0
        means = sorted((t[0] / t[1], path) for path, t in tally.items() if t[0] < t[1])
        worst = {path: round(mean, 3) for mean, path in means[:WORST]}
        return Quality(self.method, score, {"fields": int(leaves), "worst": worst})

    def _walk(self, a: Any, b: Any, path: str, tally: _Tally) -> None:
        if path in self._ignored:
            return
        kind_a, kind_b = type(a), type(b)
        if kind_a in _SCALARS and kind_a is kind_b and a == b:  # most leaves: equal
            _add(tally, path, 1.0, 1)
            return
        if (kind_a is dict and kind_b is dict) or (isinstance(a, dict) and isinstance(b, dict)):
            for key in {**a, **b}:
                child = _key(path, key)
                if child in self._ignored:
                    continue
                if key in a and key in b:
                    self._walk(a[key], b[key], child, tally)
                else:
                    self._unpaired(a[key] if key in a else b[key], child, tally)
            return
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            element = _element(path)
            for x, y in self._pairs(a, b, path):
                if x is _NONE or y is _NONE:
                    self._unpaired(y if x is _NONE else x, element, tally)
                else:
                    self._walk(x, y, element, tally)
            return
        if isinstance(a, _CONTAINERS) or isinstance(b, _CONTAINERS):  # against a scalar
            _add(tally, path, 0.0, max(self._leaves(a, path), self._leaves(b, path)))
            return
        _add(tally, path, self._leaf(a, b, path), 1)

    def _leaf(self, a: Any, b: Any, path: str) -> float:
        if path in self._exact:
            return 1.0 if type(a) is type(b) and a == b else 0.0
        if _is_number(a) and _is_number(b):
            return _closeness(a, b, self.tolerances.get(path, self.tolerance))
        if isinstance(a, str) and isinstance(b, str):
            return similarity(a, b)
        return 1.0 if type(a) is type(b) and a == b else 0.0

    def _pairs(self, a: Sequence[Any], b: Sequence[Any], path: str) -> Iterable[tuple[Any, Any]]:
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
        left: list[Any] = []
        for item in a:
            found = partners.get(_identity(item, names))
            if found:
                yield item, found.pop(0)
            else:
                left.append(item)
        # what found no partner by its key (a name read slightly wrong) is paired with
        # the other side's leftovers in order, and scored field by field
        rest = [item for found in partners.values() for item in found]
        for i in range(max(len(left), len(rest))):
            yield (left[i] if i < len(left) else _NONE), (rest[i] if i < len(rest) else _NONE)

    def _unpaired(self, value: Any, path: str, tally: _Tally) -> None:
        """Each leaf of a value the other side lacks scores 0."""
        _add(tally, path, 0.0, self._leaves(value, path))

    def _leaves(self, value: Any, path: str) -> int:
        """How many leaves ``value`` at ``path`` has, ignored paths left out (an empty
        object or list counts as one)."""
        if isinstance(value, dict):
            found = (self._leaves(v, _key(path, k)) for k, v in value.items())
            return sum(found) or 1
        if isinstance(value, list | tuple):
            element = _element(path)
            return sum(self._leaves(v, element) for v in value) or 1
        return 0 if path in self._ignored else 1


_NONE = object()  # no partner


_CONTAINERS = (dict, list, tuple)
#: Leaves that are equal exactly when ``==`` says so and their types match (a float
#: NaN is not equal to itself, and so goes on to the number rules).
_SCALARS = frozenset({str, int, float, bool, type(None)})
_ABS_TOLERANCE = 1e-12  # float noise around zero, where a relative tolerance cannot help


def _is_number(value: Any) -> bool:
    if type(value) is float or type(value) is int:  # the common case, without an ABC check
        return True
    return isinstance(value, numbers.Real | Decimal) and not isinstance(value, bool)


def _closeness(a: Any, b: Any, tolerance: float) -> float:
    """1 within ``tolerance`` (relative), else ``tolerance`` over the relative
    difference; what a float cannot hold (infinities, NaN, ints past its range): equal
    (NaN on both sides too) or 0."""
    try:
        x, y = float(a), float(b)
    except OverflowError:
        return 1.0 if a == b else 0.0
    if not (math.isfinite(x) and math.isfinite(y)):
        # NaN on both sides is the same answer (no value), as are equal infinities
        return 1.0 if a == b or (math.isnan(x) and math.isnan(y)) else 0.0
    if math.isclose(x, y, rel_tol=tolerance, abs_tol=_ABS_TOLERANCE):
        return 1.0
    return min(1.0, tolerance * max(abs(x), abs(y)) / abs(x - y))


def _identity(item: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    """What pairs an element with its partner: its ``names`` fields, text case-blind
    and numbers by value (``1`` and ``1.0``); a missing field is not a null one."""
    if not isinstance(item, dict):
        return ("element", repr(item))
    return tuple(_key_value(item[name]) if name in item else ("missing",) for name in names)


def _key_value(value: Any) -> tuple[str, Any]:
    if isinstance(value, str):
        return ("text", value.strip().casefold())
    if _is_number(value):  # 1, 1.0 and Decimal(1) are one key; 2**53 and 2**53 + 1 two
        return ("number", value)
    return ("other", repr(value))


def _key(path: str, key: Any) -> str:
    return str(key) if path == "$" else f"{path}.{key}"


def _element(path: str) -> str:
    return "[]" if path == "$" else f"{path}[]"


def _add(tally: _Tally, path: str, score: float, leaves: int) -> None:
    slot = tally.get(path)
    if slot is None:
        tally[path] = [score * leaves, float(leaves)]
    else:
        slot[0] += score * leaves
        slot[1] += leaves
