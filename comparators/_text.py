"""Text outputs: which sections are there and which are lists (:class:`TextOutput`),
and, with a scorer, how close their content is."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._quality import WORST, Quality, Scorer, scored, similarity
from ._structure import Structure, capped, emptiness

__all__ = ["TextOutput", "TextSimilarity", "sections"]


_HEADING = re.compile(r"^\s*(?:#+\s*)?\**([A-Za-z][\w ]{0,40}?)\**\s*:?\s*$|^([A-Z][\w ]{0,40}):")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S")


def sections(text: str) -> dict[str, list[str]]:
    """Headings (``Title:``, ``## Directions``, ``**Notes**``) and the lines under each."""
    return {name: list(lines) for name, lines in _sections(text).items()}


@functools.lru_cache(maxsize=32)
def _sections(text: str) -> dict[str, tuple[str, ...]]:
    """:func:`sections`, kept for the texts seen last: the structure check and the
    content score of one pair both read them (a text's hash is computed once)."""
    return {name: tuple(lines) for name, lines in _parse(text).items()}


def _parse(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match and (match.group(1) or match.group(2)):
            current = (match.group(1) or match.group(2)).strip().casefold()
            found.setdefault(current, [])
            rest = line.split(":", 1)[1].strip() if ":" in line else ""
            if rest:
                found[current].append(rest)
        elif current is not None and line.strip():
            found[current].append(line)
    return found


@dataclass(frozen=True)
class TextOutput:
    """Structure of text output: which sections are there, and which are lists.

    ``sections`` are the headings expected (case does not matter), ``lists`` those whose
    body must be a bulleted or numbered list. A side is valid when every expected
    section is there and each list section is a list; the pair matches when both sides
    have the same expected sections, each with the same list-ness (an inline
    ``Ingredients: a, b`` that became a bulleted list breaks a parser that splits on
    commas as surely as numbered steps that became one line). The record also carries
    ``length_ratio`` (candidate length over legacy length), and with ``quality`` (a
    scorer such as :class:`TextSimilarity`) the record's ``quality``.
    """

    sections: Sequence[str] = ()
    lists: Sequence[str] = ()
    quality: Scorer | None = None

    def compare(self, legacy: Any, candidate: Any) -> Structure:
        """The structural verdict for one pair of outputs."""
        if (empty := emptiness(legacy, candidate, self.quality)) is not None:
            return empty
        l_text, c_text = str(legacy), str(candidate)
        l_secs, c_secs = _sections(l_text), _sections(c_text)
        diffs: list[str] = []
        for name in self.sections:
            key = name.casefold()
            if key in l_secs and key not in c_secs:
                diffs.append(f"{name}: missing in candidate")
            elif key in c_secs and key not in l_secs:
                diffs.append(f"{name}: only in candidate")
        for name in self.sections:  # a section that changes list-ness breaks its parser
            key = name.casefold()
            if key in l_secs and key in c_secs:
                l_list, c_list = _is_list(l_secs[key]), _is_list(c_secs[key])
                if l_list != c_list:
                    diffs.append(
                        f"{name}: {'list' if l_list else 'text'} -> {'list' if c_list else 'text'}"
                    )
        ratio = round(len(c_text) / len(l_text), 3) if l_text else None
        return Structure(
            not diffs,
            self._valid(l_secs),
            self._valid(c_secs),
            capped(diffs) if diffs else None,
            {"length_ratio": ratio},
            scored(self.quality, l_text, c_text),
        )

    def _valid(self, found: Mapping[str, Sequence[str]]) -> bool:
        return all(s.casefold() in found for s in self.sections) and all(
            _is_list(found.get(s.casefold(), [])) for s in self.lists
        )


def _is_list(lines: Sequence[str]) -> bool:
    return bool(lines) and all(_LIST_ITEM.match(line) for line in lines)


@dataclass(frozen=True)
class TextSimilarity:
    """Lexical similarity of text outputs; with ``sections``, section by section.

    With ``sections`` (headings, as :class:`~shim.comparators.TextOutput` names them),
    each section legacy has is scored against the candidate's section of that name (0
    when the candidate lacks it), weighted by the length of legacy's section; the detail
    names the lowest-scoring sections. Text without any of the sections, and text when
    no sections are given, is scored whole.
    """

    sections: Sequence[str] = ()
    method: str = "text_similarity"

    def score(self, legacy: Any, candidate: Any) -> Quality:
        """How close ``candidate``'s text is to ``legacy``'s."""
        l_text, c_text = str(legacy), str(candidate)
        if self.sections:
            l_secs, c_secs = _sections(l_text), _sections(c_text)
            unique = {name.casefold(): name for name in self.sections}  # each once
            names = [name for key, name in unique.items() if key in l_secs]
            if names:
                scores: dict[str, float] = {}
                weights: dict[str, int] = {}
                for name in names:
                    body = "\n".join(l_secs[name.casefold()])
                    other = c_secs.get(name.casefold())
                    scores[name] = 0.0 if other is None else similarity(body, "\n".join(other))
                    weights[name] = max(1, len(body))
                total = sum(weights.values())
                mean = sum(scores[n] * weights[n] for n in names) / total
                worst = sorted((s, n) for n, s in scores.items() if s < 1.0)[:WORST]
                return Quality(self.method, mean, {"worst": {n: round(s, 3) for s, n in worst}})
        return Quality(self.method, similarity(l_text, c_text), {})
