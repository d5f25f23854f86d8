"""What a judge model reads and answers: the pairwise prompt, and its verdict read back.

A judge compares two answers to one request, shown as ``A`` and ``B`` in an order the
caller picks, and answers which is better, or that they are equally good. The prompt
is plain text with delimited answers, so any text model registered as a task on the
coordinator can be the judge; the verdict is read from a small JSON object
(``{"winner": "A"}``), or failing that from a lone ``A``, ``B`` or ``tie``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

__all__ = [
    "JUDGE_RUBRIC",
    "Slot",
    "as_judged_text",
    "judge_prompt",
    "judged_answers",
    "read_winner",
]

Slot = Literal["A", "B", "tie"]

#: The default rubric: equivalence first (what a migration asks), then correctness.
JUDGE_RUBRIC = (
    "You compare two answers that two models gave to the same request. Judge content, "
    "not formatting or key order: facts, numbers, names, completeness and whether the "
    "answer does what was asked. If both are equally good (or equally bad), it is a tie."
)

_ANSWER = "[Answer {slot}]\n{text}\n[End of answer {slot}]"
_REPLY = (
    'Reply with one JSON object and nothing else: {"winner": "A"}, {"winner": "B"} '
    'or {"winner": "tie"}.'
)
_SPLIT = re.compile(
    r"\[Answer A\]\n(?P<a>.*?)\n\[End of answer A\]\n\n\[Answer B\]\n(?P<b>.*?)\n"
    r"\[End of answer B\]",
    re.S,
)
#: How much of a judge's answer is read for its verdict.
_READ_CHARS = 20_000
_BARE = re.compile(r"^\W*(A|B|tie)\W*$", re.I)


def as_judged_text(value: Any) -> str:
    """An output as the judge reads it: text as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=repr)


def judge_prompt(rubric: str, first: Any, second: Any, request: str | None = None) -> str:
    """The prompt that asks a judge to compare ``first`` (answer A) with ``second``
    (answer B), with the request that both answer when it is known."""
    parts = [rubric]
    if request:
        parts.append(f"[Request]\n{request}\n[End of request]")
    parts.append(_ANSWER.format(slot="A", text=as_judged_text(first)))
    parts.append(_ANSWER.format(slot="B", text=as_judged_text(second)))
    parts.append(_REPLY)
    return "\n\n".join(parts)


def judged_answers(prompt: str) -> tuple[str, str] | None:
    """Answers A and B out of a prompt :func:`judge_prompt` made; None for any other."""
    found = _SPLIT.search(prompt)
    return None if found is None else (found["a"], found["b"])


def read_winner(answer: Any) -> Slot:
    """The slot a judge's answer names: a lone ``A``, ``B`` or ``tie``, else the *last*
    JSON object with a ``winner`` in it (a judge that repeats the reply's format before
    its verdict names the verdict last). Raises ValueError, quoting the start of the
    answer, when it names none."""
    if isinstance(answer, dict):
        found = _winner(answer)
        if found is not None:
            return found
    else:
        text = str(answer)[:_READ_CHARS].strip()
        bare = _BARE.match(text)
        if bare:
            return _slot(bare[1])
        last = None
        decoder = json.JSONDecoder()
        at = text.find("{")
        while at >= 0:
            try:
                value, end = decoder.raw_decode(text, at)
            except ValueError:
                at = text.find("{", at + 1)
                continue
            last = _winner(value) or last
            at = text.find("{", end)
        if last is not None:
            return last
    raise ValueError(f"the judge named no winner (A, B or tie): {str(answer)[:80]!r}")


def _winner(value: Any) -> Slot | None:
    if isinstance(value, dict) and isinstance(value.get("winner"), str):
        winner = value["winner"].strip()
        if winner.upper() in ("A", "B") or winner.lower() == "tie":
            return _slot(winner)
    return None


def _slot(name: str) -> Slot:
    return "tie" if name.lower() == "tie" else ("A" if name.upper() == "A" else "B")
