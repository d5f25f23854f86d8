"""Structural drift: the ways a model on the task path may change the shape of its output.

Each kind of drift breaks, or strains, the parser kiwi runs on that output:

- ``fence``: the output wrapped in a markdown code fence;
- ``prose``: a sentence before and after it;
- ``missing_key``: one key (JSON) or one section (text) left out;
- ``renamed_key``: one key or section heading renamed (``recipe_id`` -> ``recipeId``,
  ``Directions:`` -> ``Steps:``);
- ``type_change``: one value changes type (a number becomes a string, a list section
  becomes one run-on line, an inline list becomes bullets).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Literal

__all__ = ["CONTENT_DRIFT_KINDS", "DRIFT_KINDS", "OUTPUT_KINDS", "DriftKind", "apply_drift"]

DriftKind = Literal["fence", "prose", "missing_key", "renamed_key", "type_change", "values"]
#: The structural kinds (a profile's default): each breaks or strains a parser.
DRIFT_KINDS: tuple[DriftKind, ...] = ("fence", "prose", "missing_key", "renamed_key", "type_change")
#: Drift in content only: the shape stays, the values are wrong (numbers 5-30 % off,
#: words swapped); structure comparators see nothing, content scores do.
CONTENT_DRIFT_KINDS: tuple[DriftKind, ...] = ("values",)

#: How each output kind travels: JSON inside text (what a text model writes), a JSON
#: value (what a vision service returns), or plain text.
OUTPUT_KINDS: dict[str, Literal["json_text", "json_value", "text"]] = {
    "meal_plan": "json_text",
    "recipe": "text",
    "timing": "text",
    "receipt": "json_value",
    "barcode": "json_value",
    "recipe_card": "json_value",
    "recipe_card_ocr": "text",
    "chat": "text",
    "caption": "json_value",
}


def apply_drift(output: Any, kind: str, drift: DriftKind, rng: random.Random) -> Any:
    """``output`` (of ``kind``) with one change of type ``drift``: structural, or in its
    values only (``values``)."""
    travel = OUTPUT_KINDS[kind]
    if drift == "values":
        if travel == "text":
            return _reworded(str(output), rng)
        value = json.loads(output) if travel == "json_text" else output
        value = _revalued(value, rng)
        return json.dumps(value, indent=2) if travel == "json_text" else value
    if kind == "timing":
        return _drift_timing(str(output), drift)
    if travel == "text":
        return _drift_text(str(output), drift, rng)
    value = json.loads(output) if travel == "json_text" else output
    if drift in ("fence", "prose"):
        body = json.dumps(value, indent=2)
        if drift == "fence":
            return f"```json\n{body}\n```"
        return f"Sure! Here is what I found:\n\n{body}\n\nLet me know if you need anything else."
    value = _drift_json(value, drift, rng)
    return json.dumps(value, indent=2) if travel == "json_text" else value


def _drift_json(value: Any, drift: DriftKind, rng: random.Random) -> Any:
    # A list of records drifts in every record, as a model that changed its habits would.
    records = [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
    target = records[0] if records else value
    if not isinstance(target, dict) or not target:
        return value
    key = rng.choice(sorted(target))
    for record in records or [value]:
        if key not in record:
            continue
        if drift == "missing_key":
            del record[key]
        elif drift == "renamed_key":
            record[_renamed(key)] = record.pop(key)
        else:
            record[key] = _retyped(record[key])
    return value


def _renamed(key: str) -> str:
    camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), key)
    return camel if camel != key else f"{key}_value"


def _retyped(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return [value]
    if value is None:
        return "none"
    return json.dumps(value)


# -- text -----------------------------------------------------------------------------

_HEADING = re.compile(r"^([A-Z][A-Za-z ]{0,30}):")
_RENAMES = {
    "Directions": "Steps",
    "Ingredients": "What you need",
    "Notes": "Tips",
    "Title": "Recipe",
}


def _blocks(text: str) -> list[list[str]]:
    """The text's lines grouped by section: a heading line and the lines under it
    (the first block holds whatever comes before the first heading)."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if _HEADING.match(line):
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return [b for b in blocks if b]


def _heading(block: list[str]) -> str | None:
    match = _HEADING.match(block[0])
    return match.group(1) if match else None


def _drift_text(text: str, drift: DriftKind, rng: random.Random) -> str:
    if drift == "fence":
        return f"```markdown\n{text.rstrip()}\n```\n"
    blocks = _blocks(text)
    headed = [b for b in blocks if _heading(b)]
    if drift == "prose" or not headed:
        return f"Of course! Here's a recipe you might enjoy.\n\n{text.rstrip()}\n\nHappy cooking!\n"
    if drift == "type_change":
        return _lines([_retyped_block(b) for b in blocks])
    victim = rng.choice(headed)
    heading = _heading(victim) or ""
    if drift == "missing_key":
        return _lines([b for b in blocks if b is not victim])
    renamed = _RENAMES.get(heading, heading.upper())
    victim[0] = f"{renamed}:{victim[0][len(heading) + 1 :]}"
    return _lines(blocks)


def _retyped_block(block: list[str]) -> list[str]:
    """A list section changes form: an inline comma list becomes bullets, a numbered
    or bulleted list becomes one run-on line."""
    heading = _heading(block)
    if heading is None:
        return block
    rest = block[0][len(heading) + 1 :].strip()
    items = [re.sub(r"^(-|\*|\d+[.)])\s*", "", line).strip() for line in block[1:] if line.strip()]
    if len(items) > 1:
        return [f"{heading}: {' '.join(items)}"]
    if rest.count(",") >= 2 and not items:
        return [f"{heading}:", *(f"- {part.strip()}" for part in rest.split(","))]
    return block


def _lines(blocks: list[list[str]]) -> str:
    return "".join(f"{line}\n" for block in blocks for line in block)


def _drift_timing(text: str, drift: DriftKind) -> str:
    """Two integers on two lines (prep, cook), changed as a chatty model would."""
    prep, _, cook = text.strip().partition("\n")
    if drift == "fence":
        return f"```\n{prep}\n{cook}\n```"
    if drift == "prose":
        return f"Prep takes about {prep} minutes and cooking about {cook} minutes."
    if drift == "missing_key":
        return f"{prep}\n"
    if drift == "renamed_key":
        return f"prep: {prep}\ncook: {cook}\n"
    return f"{prep} min\n{cook} min\n"


# -- content --------------------------------------------------------------------------

_WORDS = ("salt", "pepper", "onion", "garlic", "butter", "lemon", "bake", "simmer")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_MARKER = re.compile(r"\s*(?:[-*•]|\d+[.)])\s+")


def _off(number: float, rng: random.Random) -> float:
    return number * (1 + rng.choice((-1, 1)) * rng.uniform(0.05, 0.3))


def _revalued(value: Any, rng: random.Random) -> Any:
    """The value with the same keys and types, its numbers 5-30 % off and a word of each
    text swapped."""
    if isinstance(value, dict):
        return {k: _revalued(v, rng) for k, v in value.items()}
    if isinstance(value, list):
        return [_revalued(v, rng) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return max(value + 1, round(_off(value, rng))) if value >= 0 else round(_off(value, rng))
    if isinstance(value, float):
        return round(_off(value, rng), 2)
    if isinstance(value, str):
        return _reworded(value, rng)
    return value


def _reworded(text: str, rng: random.Random) -> str:
    """The text with its numbers off and about a third of its words swapped; headings
    (``Title:``) and list markers (``1.``, ``-``) stay."""
    out = []
    for line in text.splitlines():
        keep = _HEADING.match(line) or _MARKER.match(line)
        head, body = (line[: keep.end()], line[keep.end() :]) if keep else ("", line)
        words = body.split(" ")
        for i, word in enumerate(words):
            if word.isalpha() and rng.random() < 0.35:
                words[i] = rng.choice([w for w in _WORDS if w != word.lower()])
        body = _NUMBER.sub(lambda m: f"{_off(float(m.group()), rng):.0f}", " ".join(words))
        out.append(head + body)
    changed = "\n".join(out) + ("\n" if text.endswith("\n") else "")
    if changed == text:  # nothing to swap: say something else
        changed = text + " " + rng.choice(_WORDS)
    return changed
