"""Content scores: how close the candidate's content is to legacy's, in [0, 1].

A comparator that reads content (``JsonOutput(quality=FieldRules(...))``,
``TextOutput(quality=TextSimilarity(...))``) puts a :class:`Quality` on its
:class:`~shim.comparators.Structure`; the record carries it as ``quality``
(``{"method", "score", "detail"}``), and ``shim report`` turns the scores into a mean
with a confidence interval and the ``min_quality`` gate. 1 means equivalent content.

Text is compared with rapidfuzz's normalised Indel similarity: by character for short
texts (case folded, runs of white space made one space, list markers such as ``-`` and
``1.`` dropped), by case-folded word for long ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from rapidfuzz.distance import Indel

__all__ = [
    "WORST",
    "Quality",
    "Scorer",
    "method_of",
    "normalise_text",
    "scored",
    "similarity",
]

#: How many of the lowest-scoring parts (paths, sections) a record's detail names.
WORST = 5


@dataclass(frozen=True, slots=True)
class Quality:
    """One pair's content score: ``method`` (which scorer), ``score`` in [0, 1] or None
    (could not be scored: ``detail["error"]`` says why) and ``detail`` (the worst
    parts). ``failure`` is the exception a scorer raised: the shim counts it (a
    ``shim.error``, operation ``quality``); it is not part of the record."""

    method: str
    score: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    failure: BaseException | None = None

    def as_record(self) -> dict[str, Any]:
        """The JSON object the record carries as ``quality``."""
        score = None if self.score is None else round(self.score, 4)
        return {"method": self.method, "score": score, "detail": self.detail}


@runtime_checkable
class Scorer(Protocol):
    """Scores the content of one pair of outputs, as the comparator read them (JSON
    values for :class:`~shim.comparators.JsonOutput`, text for
    :class:`~shim.comparators.TextOutput`). Runs where the comparator runs; keeps no
    unguarded state."""

    def score(self, legacy: Any, candidate: Any) -> Quality:
        """How close ``candidate``'s content is to ``legacy``'s."""
        ...


def scored(scorer: Scorer | None, legacy: Any, candidate: Any) -> Quality | None:
    """``scorer``'s Quality for the pair (None without a scorer), its score clamped to
    [0, 1]. A scorer that raises, or returns something else than a Quality with a
    number or None as its score, gives a Quality with no score that carries the
    exception, so that the structure verdict stands and the failure is counted."""
    if scorer is None:
        return None
    try:
        found = scorer.score(legacy, candidate)
        if not isinstance(found, Quality):
            raise TypeError(f"score() returned {type(found).__name__}, not a Quality")
        if found.score is None or found.failure is not None:
            return found
        if isinstance(found.score, bool) or not isinstance(found.score, int | float):
            raise TypeError(f"a score of {type(found.score).__name__}, not a number")
        if math.isnan(found.score):
            raise ValueError("a score of NaN")
        clamped = min(1.0, max(0.0, float(found.score)))
        return found if clamped == found.score else replace(found, score=clamped)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
        return Quality(method_of(scorer), None, {"error": error}, failure=exc)


def method_of(scorer: Scorer) -> str:
    """The ``method`` a scorer's records name: its ``method`` attribute, else its class."""
    return str(getattr(scorer, "method", type(scorer).__name__))


_MARKER = re.compile(r"(?m)^\s*(?:[-*•]|\d+[.)])\s+")


def normalise_text(text: str) -> str:
    """Text as compared: list markers dropped, case folded, white space collapsed."""
    return " ".join(_words(text))


def _words(text: str) -> list[str]:
    return _MARKER.sub("", text).casefold().split()


#: Up to this many characters (both texts together), similarity is by character;
#: longer texts are compared word by word (measured on 4 KB recipes: 0.27 ms a pair by
#: character, 0.04 ms by word, plus 0.03 ms a text to split it).
SHORT = 400


def similarity(a: str, b: str) -> float:
    """Lexical similarity of two texts in [0, 1] (1: the same once normalised): the
    normalised Indel similarity of their characters (short texts, such as a name; list
    markers dropped) or of their case-folded words (longer ones, such as a recipe's
    directions, where a list marker is one word among many)."""
    if a == b:
        return 1.0
    if len(a) + len(b) <= SHORT:
        return float(Indel.normalized_similarity(normalise_text(a), normalise_text(b)))
    return float(Indel.normalized_similarity(a.casefold().split(), b.casefold().split()))
