"""JSON outputs: do the two paths' outputs have the same structure?

What breaks a parser downstream is structure, not words: a missing or renamed key, a
type change, a list of objects that became a list of strings. :class:`JsonOutput`
compares the shapes of JSON outputs (found in bare, fenced or prose-wrapped text) and,
with a scorer (:class:`~shim.comparators.FieldRules`), how close their content is.
(Text outputs: :mod:`._text`.)
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from ._quality import Quality, Scorer, method_of, scored
from ._shape import extract_json, label, shape
from ._structure import Structure, capped, emptiness

__all__ = ["JsonOutput", "readable_path"]

_STEP = re.compile(r"\[(\d+|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]")


def readable_path(deepdiff_path: str, shape_: Any = None) -> str:
    """A deepdiff path into a shape, as people read data: ``root[1]['recipe_id']`` on
    the shape of a list of objects is ``[].recipe_id`` (a list's shape is
    ``["list", element]``, so its slot 1 is "every element")."""
    out, current = "", shape_
    for step in (m.group(1) for m in _STEP.finditer(deepdiff_path)):
        if step.isdigit():
            if isinstance(current, list) and step == "1":
                out += "[]"
                current = current[1] if len(current) > 1 else None
            else:
                out += f"[{step}]"
                current = None
        else:
            key = step[1:-1]
            out += f".{key}"
            current = current.get(key) if isinstance(current, dict) else None
    return out or "$"


def _unify(a: Any, b: Any) -> tuple[Any, Any]:
    """Shapes with ``null`` on one side taken as the other side's type: a value that
    happens to be null in this sample is not a change of structure."""
    if a == "null" or a == "empty":
        return b, b
    if b == "null" or b == "empty":
        return a, a
    if isinstance(a, dict) and isinstance(b, dict):
        pairs = {k: _unify(a[k], b[k]) for k in a.keys() & b.keys()}
        return (
            {k: pairs[k][0] if k in pairs else v for k, v in a.items()},
            {k: pairs[k][1] if k in pairs else v for k, v in b.items()},
        )
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 2:
        x, y = _unify(a[1], b[1])
        return ["list", x], ["list", y]
    return a, b


def _drop(s: Any, path: Sequence[str]) -> Any:
    """A shape without the part at ``path`` (steps: keys, or ``[]`` for list elements)."""
    if not path:
        return "ignored"
    head, rest = path[0], path[1:]
    if head == "[]" and isinstance(s, list) and len(s) == 2:
        return ["list", _drop(s[1], rest)]
    if isinstance(s, dict) and head in s:
        if not rest:
            return {k: v for k, v in s.items() if k != head}
        return {**s, head: _drop(s[head], rest)}
    return s


def _split(path: str) -> list[str]:
    return [p for p in re.split(r"\.|(\[\])", path) if p]


@functools.cache
def _adapter(schema: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(schema)


@dataclass(frozen=True)
class JsonOutput:
    """JSON-aware structure for one call site.

    JSON is taken from the output as it is, or from text (bare, in a code fence, inside
    prose: the first top-level object or array). Shapes (keys, types, list elements
    merged) are compared; a difference is listed with a readable path such as
    ``[].recipe_id: number -> str``. Key order and list order never matter to a shape.

    - ``schema``: a pydantic model (or any type pydantic validates) or a JSON Schema
      dict; each side's validity against it is recorded.
    - ``ignore``: paths left out of the comparison (``[].suggestion``, ``totals.tax``).
    - ``values``: also compare values, with ``tolerance`` (relative) for numbers and,
      with ``ignore_order``, lists as multisets.
    - ``strict_wrapping``: JSON wrapped differently (bare vs fenced vs prose) is a
      mismatch; by default it matches and the record says how each side was wrapped.
    - ``quality``: a scorer of the parsed values' content (:class:`FieldRules`): the
      record's ``quality``. A side that is empty or not JSON scores 0.
    """

    schema: Any = None
    ignore: Iterable[str] = ()
    values: bool = False
    tolerance: float = 1e-6
    ignore_order: bool = True
    strict_wrapping: bool = False
    expect_json: bool = True
    quality: Scorer | None = None

    def __post_init__(self) -> None:
        if isinstance(self.schema, dict):
            _jsonschema()  # missing: say so at start-up, not once per pair in the log

    def compare(self, legacy: Any, candidate: Any) -> Structure:
        """The structural verdict for one pair of outputs."""
        if (empty := emptiness(legacy, candidate, self.quality)) is not None:
            return empty
        l_wrap, l_val = _as_json(legacy)
        c_wrap, c_val = _as_json(candidate)
        l_ok, c_ok = l_wrap != "none", c_wrap != "none"
        extra: dict[str, Any] = {}
        if l_wrap != c_wrap and l_ok and c_ok:
            extra["wrapping"] = {"legacy": l_wrap, "candidate": c_wrap}
        if not l_ok and not c_ok:
            valid = None if self.expect_json else True
            return Structure(True, valid, valid, None, extra)
        if l_ok != c_ok:
            side = "candidate" if l_ok else "legacy"
            diff = (f"$: {side} output is not JSON",)
            unread = None  # one side's content cannot be read: nothing alike
            if self.quality is not None:
                unread = Quality(method_of(self.quality), 0.0, {"not_json": side})
            return Structure(False, l_ok, c_ok, diff, extra, unread)
        if (empty := emptiness(l_val, c_val, self.quality)) is not None:  # "[]" or "null" as text
            return empty
        l_valid = self._valid(l_val)
        c_valid = self._valid(c_val)
        diffs = self._shape_diff(l_val, c_val)
        if self.values and not diffs:
            diffs = _value_diff(
                l_val,
                c_val,
                self.tolerance,
                self.ignore_order,
                {tuple(_split(p)) for p in self.ignore},
            )
        if self.strict_wrapping and l_wrap != c_wrap:
            diffs.insert(0, f"$: {l_wrap} JSON -> {c_wrap} JSON")
        if l_valid is not None and c_valid is not None and l_valid and not c_valid:
            diffs.append("$: candidate fails the schema")
        quality = scored(self.quality, l_val, c_val)
        return Structure(
            not diffs, l_valid, c_valid, capped(diffs) if diffs else None, extra, quality
        )

    def _shape_diff(self, legacy: Any, candidate: Any) -> list[str]:
        a, b = shape(legacy), shape(candidate)
        for path in self.ignore:
            a, b = _drop(a, _split(path)), _drop(b, _split(path))
        if a == b:
            return []
        a, b = _unify(a, b)
        if a == b:
            return []
        from deepdiff import DeepDiff  # lazily: it imports numpy (~150 ms)

        found = DeepDiff(a, b, view="tree")
        diffs = []
        for item in found.get("dictionary_item_removed", []):
            diffs.append(f"{readable_path(item.path(), a)}: missing in candidate")
        for item in found.get("dictionary_item_added", []):
            diffs.append(f"{readable_path(item.path(), b)}: only in candidate")
        for kind in ("values_changed", "type_changes"):
            for item in found.get(kind, []):
                path = readable_path(item.path(), a)
                if isinstance(item.t1, dict) and isinstance(item.t2, dict):
                    # deepdiff reports an emptied object as one change; list its keys
                    where = "" if path == "$" else path
                    diffs += [
                        f"{where}.{k}: missing in candidate" for k in item.t1 if k not in item.t2
                    ]
                    diffs += [
                        f"{where}.{k}: only in candidate" for k in item.t2 if k not in item.t1
                    ]
                    continue
                diffs.append(f"{path}: {label(item.t1)} -> {label(item.t2)}")
        return list(dict.fromkeys(diffs))

    def _valid(self, value: Any) -> bool | None:
        if self.schema is None:
            return True
        if isinstance(self.schema, dict):
            return _json_schema_valid(self.schema, value)
        try:
            _adapter(self.schema).validate_python(value)
        except pydantic.ValidationError:
            return False
        return True


def _as_json(value: Any) -> tuple[str, Any]:
    if isinstance(value, str):
        return extract_json(value)
    if isinstance(value, bytes):
        return extract_json(value.decode("utf-8", "replace"))
    if isinstance(value, pydantic.BaseModel):
        return "bare", value.model_dump(mode="json")
    return "bare", value


def _jsonschema() -> Any:
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            "JsonOutput(schema={...}) with a JSON Schema needs the jsonschema package: "
            "pip install 'task-shim[schema]' (or pass a pydantic model as schema)"
        ) from exc
    return jsonschema


def _json_schema_valid(schema: dict[str, Any], value: Any) -> bool:
    return bool(_jsonschema().Draft202012Validator(schema).is_valid(value))


def _value_diff(
    a: Any,
    b: Any,
    tolerance: float,
    ignore_order: bool,
    ignored: set[tuple[str, ...]],
    path: tuple[str, ...] = (),
) -> list[str]:
    if path in ignored:
        return []
    where = "".join(p if p == "[]" or p.startswith("[") else f".{p}" for p in path) or "$"
    if (
        isinstance(a, bool)
        or isinstance(b, bool)
        or not (isinstance(a, int | float) and isinstance(b, int | float))
    ):
        if isinstance(a, dict) and isinstance(b, dict):
            out: list[str] = []
            for key in a.keys() & b.keys():
                out += _value_diff(
                    a[key], b[key], tolerance, ignore_order, ignored, (*path, str(key))
                )
            return out
        if isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return [f"{where}: {len(a)} items -> {len(b)}"]
            if ignore_order:
                unmatched = list(b)
                for item in a:
                    hit = next(
                        (
                            i
                            for i, other in enumerate(unmatched)
                            if not _value_diff(
                                item, other, tolerance, ignore_order, ignored, (*path, "[]")
                            )
                        ),
                        None,
                    )
                    if hit is None:
                        return [f"{where}[]: an item has no equal in candidate"]
                    unmatched.pop(hit)
                return []
            out = []
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                out += _value_diff(x, y, tolerance, ignore_order, ignored, (*path, f"[{i}]"))
            return out
        return [] if a == b else [f"{where}: value differs"]
    return (
        [] if math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance) else [f"{where}: {a} -> {b}"]
    )
