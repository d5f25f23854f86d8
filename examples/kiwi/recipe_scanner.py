"""Kiwi's recipe photo scan: up to four photos of one recipe -> a structured card.

``call_vision_backend`` holds a cf-docuvision node for the scan (``allocate_for("kiwi",
"recipe_scan", service_hint="cf-docuvision")``, the wrapped allocation call site),
reads each page from the node's ``/extract`` and has the local router structure the
text; without cf-orch, or when that fails, the local vision model reads the photos.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .docuvision_client import DocuvisionClient
from .local_llm import LocalRouter, LocalVision
from .migration import orch_url
from .node_allocation import allocate_for
from .task_inference import TaskNotRegistered

__all__ = [
    "MAX_IMAGES",
    "RecipeScanner",
    "ScannedIngredient",
    "ScannedRecipeResult",
    "call_vision_backend",
    "parse_scanner_json",
]

log = logging.getLogger(__name__)

MAX_IMAGES = 4
Image = str | Path | bytes
Progress = Callable[[str, str], None]

_SCHEMA = (
    "Return a single JSON object: title, subtitle (or null), servings (a string such "
    'as "4-6", or null), cook_time (or null), source_note (or null), ingredients (an '
    "array of {name: generic lowercase name, qty: a string or null, unit: null for "
    "countable items, raw: the line verbatim}), steps (ordered strings), notes (or "
    'null), confidence ("high", "medium" or "low"), warnings (strings). JSON only, no '
    'fences. If the images are not a recipe, return {"error": "not_a_recipe"}.'
)
EXTRACTION_PROMPT = "These photos show one recipe, possibly over several pages. " + _SCHEMA
_STRUCTURING_SYSTEM = (
    "You are a recipe data extractor. Return ONLY valid JSON, no markdown or code fences."
)


@dataclass
class ScannedIngredient:
    """One ingredient line of the card."""

    name: str
    qty: str | None = None
    unit: str | None = None
    raw: str | None = None
    in_pantry: bool = False


@dataclass
class ScannedRecipeResult:
    """The scanned card, cross-referenced with the pantry."""

    title: str | None
    servings: str | None
    cook_time: str | None
    ingredients: list[ScannedIngredient]
    steps: list[str]
    notes: str | None
    pantry_match_pct: int
    confidence: str
    warnings: list[str]


def _build_ocr_extraction_prompt(ocr_text: str) -> str:
    return (
        "This is OCR text of one recipe; expect scanning artefacts. "
        f"{_SCHEMA}\n\nOCR Text:\n{ocr_text}"
    )


def call_vision_backend(
    image_paths: Sequence[Image], prompt: str, progress_cb: Progress | None = None
) -> str:
    """The model's JSON text for the photos: cf-orch, else the local vision model."""
    progress = progress_cb or (lambda status, message: None)
    errors: list[str] = []
    if orch_url():
        try:
            progress("allocating", "Waiting for a document reader")
            with allocate_for(
                "kiwi", "recipe_scan", service_hint="cf-docuvision", ttl_s=120.0
            ) as alloc:
                progress("scanning", "Reading the pages")
                pages = []
                for number, path in enumerate(image_paths, 1):
                    text = DocuvisionClient(alloc.url).extract_text(path, hint="text").text
                    several = len(image_paths) > 1
                    pages.append(f"(Page {number} of the same recipe)\n{text}" if several else text)
                ocr = "\n\n".join(pages)
                if not ocr.strip():
                    raise ValueError("the document reader found no text")
                progress("structuring", "Structuring the recipe")
                reply = LocalRouter().complete(
                    _build_ocr_extraction_prompt(ocr), system=_STRUCTURING_SYSTEM
                )
                if reply.strip():
                    return reply
        except TaskNotRegistered:
            log.debug("kiwi.recipe_scan is not in the coordinator's assignments")
        except Exception as exc:
            log.debug("recipe scan on cf-orch failed: %s", exc)
            errors.append(f"cf-orch: {exc}")
    try:
        return LocalVision().read(list(image_paths), prompt)
    except Exception as exc:
        errors.append(f"local VLM: {exc}")
    raise RuntimeError("No vision backend configured for recipe scanning. " + "; ".join(errors))


def parse_scanner_json(raw_text: str) -> dict[str, Any]:
    """The card's JSON object from a model's reply: thinking blocks and code fences
    removed, else the first balanced object. Raises ValueError when there is none or
    the images were not a recipe."""
    text = re.sub(r"<think(ing)?>.*?</think(ing)?>", "", raw_text.strip(), flags=re.S | re.I)
    fenced = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        start = text.find("{")
        try:
            value = json.JSONDecoder().raw_decode(text[start:])[0] if start >= 0 else None
        except json.JSONDecodeError:
            value = None
        if value is None:
            raise ValueError(f"Could not parse JSON from VLM output: {raw_text[:100]}") from None
    if isinstance(value, dict) and value.get("error") == "not_a_recipe":
        raise ValueError("not_a_recipe: the photos do not show a recipe")
    if not isinstance(value, dict):
        raise ValueError(f"Could not parse JSON from VLM output: {raw_text[:100]}")
    return value


class RecipeScanner:
    """Photos of a recipe -> :class:`ScannedRecipeResult`."""

    def scan(
        self,
        image_paths: Sequence[Image],
        pantry_names: list[str] | None = None,
        progress_cb: Progress | None = None,
    ) -> ScannedRecipeResult:
        """Read, parse and cross-reference one recipe (1 to 4 photos)."""
        if not image_paths:
            raise ValueError("At least one image is required")
        if len(image_paths) > MAX_IMAGES:
            raise ValueError(f"Maximum {MAX_IMAGES} images per scan (got {len(image_paths)})")
        card = parse_scanner_json(call_vision_backend(image_paths, EXTRACTION_PROMPT, progress_cb))
        ingredients = [
            ScannedIngredient(
                name=str(i.get("name") or "unknown").strip(),
                qty=None if i.get("qty") is None else str(i["qty"]),
                unit=None if i.get("unit") is None else str(i["unit"]),
                raw=None if i.get("raw") is None else str(i["raw"]),
            )
            for i in card.get("ingredients") or []
            if isinstance(i, dict)
        ]
        tokens = [t for name in pantry_names or [] for t in name.lower().split() if len(t) >= 4]
        for item in ingredients:
            name = item.name.lower()
            item.in_pantry = any(t in name or name in t for t in tokens)
        matched = sum(i.in_pantry for i in ingredients)
        return ScannedRecipeResult(
            title=card.get("title") or None,
            servings=None if card.get("servings") is None else str(card["servings"]),
            cook_time=None if card.get("cook_time") is None else str(card["cook_time"]),
            ingredients=ingredients,
            steps=[str(s) for s in card.get("steps") or [] if s],
            notes=card.get("notes") or None,
            pantry_match_pct=round(matched / len(ingredients) * 100) if ingredients else 0,
            confidence=str(card.get("confidence") or "medium"),
            warnings=list(card.get("warnings") or []),
        )
