"""What a comparator returns, and what every comparator shares: the ``structure``
part of a comparison record, the comparator protocol, capped diffs and empty outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ._quality import Quality, Scorer, method_of

__all__ = [
    "MAX_DIFFS",
    "MAX_DIFF_CHARS",
    "Comparator",
    "Structure",
    "capped",
    "emptiness",
    "is_empty",
]

#: How many differences a record keeps (the rest are counted), and how long each may be.
MAX_DIFFS = 8
MAX_DIFF_CHARS = 160


@dataclass(frozen=True, slots=True)
class Structure:
    """The ``structure`` part of a comparison record, and the ``quality`` the record
    carries beside it when the comparator scored the content (null: not scored)."""

    match: bool | None
    legacy_valid: bool | None
    candidate_valid: bool | None
    diff: tuple[str, ...] | None
    extra: dict[str, Any] = field(default_factory=dict)
    quality: Quality | None = None

    def as_record(self) -> dict[str, Any]:
        """The JSON object the record carries."""
        return {
            "match": self.match,
            "legacy_valid": self.legacy_valid,
            "candidate_valid": self.candidate_valid,
            "diff": list(self.diff) if self.diff is not None else None,
            **self.extra,
        }


@runtime_checkable
class Comparator(Protocol):
    """Compares the legacy and candidate outputs of one call (both as the call site
    returns them). Runs off the caller's path, on the recorder's thread (the pairs that
    came since its last write, one after another; a comparator shared by several
    Shims may still run on several threads at once, so it keeps no unguarded state);
    if it raises, the shim counts and logs an internal error (a ``shim.error`` record
    for the task), the record's ``structure.match`` is null with the reason in
    ``structure.error``, and the report counts the pair as not compared (no PROMOTE on
    it)."""

    def compare(self, legacy: Any, candidate: Any) -> Structure:
        """The structural verdict for one pair of outputs."""
        ...


def capped(diffs: Sequence[str]) -> tuple[str, ...]:
    """At most :data:`MAX_DIFFS` differences of at most :data:`MAX_DIFF_CHARS` each; the
    rest counted in a last entry."""
    kept = [
        d if len(d) <= MAX_DIFF_CHARS else d[: MAX_DIFF_CHARS - 3] + "..."
        for d in diffs[:MAX_DIFFS]
    ]
    if len(diffs) > MAX_DIFFS:
        kept.append(f"... {len(diffs) - MAX_DIFFS} more")
    return tuple(kept)


def is_empty(value: Any) -> bool:
    """``None``, blank text, an empty list: what a call site that swallowed a failure
    returns."""
    # An empty object is left to the shape diff, which lists the keys it lacks.
    if isinstance(value, str | bytes):
        return not value.strip()
    return value is None or (isinstance(value, list | tuple) and not value)


def emptiness(legacy: Any, candidate: Any, scorer: Scorer | None = None) -> Structure | None:
    """A mismatch when either side is empty (``None``, ``""``, ``[]``), else None;
    with a ``scorer``, one empty side scores 0 (both empty: not scored).

    An empty result has no shape to agree or disagree with: it is what a call site
    returns when it swallowed a failure, so it never counts as a structural match, not
    even against another empty result."""
    empty = [(side, v) for side, v in (("legacy", legacy), ("candidate", candidate)) if is_empty(v)]
    if not empty:
        return None
    diffs = tuple(f"$: {side} output is empty ({value!r})" for side, value in empty)
    quality = None
    if scorer is not None and len(empty) == 1:  # content against none: nothing alike
        quality = Quality(method_of(scorer), 0.0, {"empty": empty[0][0]})
    return Structure(False, not is_empty(legacy), not is_empty(candidate), diffs, {}, quality)
