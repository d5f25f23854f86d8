"""Output comparators: do the two paths' outputs have the same structure?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._shape import diff_shapes, extract_json, shape

__all__ = ["JsonOutput", "OutputComparator", "Structure"]

#: How many differences a record keeps; the rest are counted.
MAX_DIFFS = 8


@dataclass(frozen=True, slots=True)
class Structure:
    """The ``structure`` part of a comparison record."""

    match: bool | None
    legacy_valid: bool | None
    candidate_valid: bool | None
    diff: tuple[str, ...] | None

    def as_record(self) -> dict[str, Any]:
        """The JSON object the record carries."""
        return {
            "match": self.match,
            "legacy_valid": self.legacy_valid,
            "candidate_valid": self.candidate_valid,
            "diff": list(self.diff) if self.diff is not None else None,
        }


@runtime_checkable
class OutputComparator(Protocol):
    """Compares the legacy and candidate outputs of one call (both as the call site
    returns them)."""

    def compare(self, legacy: Any, candidate: Any) -> Structure:
        """The structural verdict for one pair of outputs."""
        ...


@dataclass(frozen=True, slots=True)
class JsonOutput:
    """JSON-aware structure: parse JSON out of text outputs (bare, fenced, in prose),
    then compare shapes and wrapping. Plain text on both sides matches; a value is valid
    when it is JSON or, as text, holds JSON. ``expect_json=False`` accepts plain text as
    valid.
    """

    expect_json: bool = True

    def compare(self, legacy: Any, candidate: Any) -> Structure:
        """The structural verdict for one pair of outputs."""
        l_wrap, l_val = _as_json(legacy)
        c_wrap, c_val = _as_json(candidate)
        l_ok, c_ok = l_wrap != "none", c_wrap != "none"
        if not l_ok and not c_ok:
            # Text on both sides: nothing structural to compare at this level.
            valid = not self.expect_json or None
            return Structure(match=True, legacy_valid=valid, candidate_valid=valid, diff=None)
        if l_ok != c_ok:
            side = "candidate" if l_ok else "legacy"
            return Structure(
                match=False,
                legacy_valid=l_ok,
                candidate_valid=c_ok,
                diff=(f"$: {side} output is not JSON",),
            )
        diffs = diff_shapes(shape(l_val), shape(c_val))
        if l_wrap != c_wrap:
            # A parser that took the legacy output chokes on JSON wrapped another way.
            diffs.insert(0, f"$: {l_wrap} JSON -> {c_wrap} JSON")
        if not diffs:
            return Structure(match=True, legacy_valid=True, candidate_valid=True, diff=None)
        kept = diffs[:MAX_DIFFS]
        if len(diffs) > MAX_DIFFS:
            kept.append(f"... {len(diffs) - MAX_DIFFS} more")
        return Structure(match=False, legacy_valid=True, candidate_valid=True, diff=tuple(kept))


def _as_json(value: Any) -> tuple[str, Any]:
    if isinstance(value, str):
        return extract_json(value)
    if isinstance(value, bytes):
        return extract_json(value.decode("utf-8", "replace"))
    return "bare", value
