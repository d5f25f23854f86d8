"""Stand-ins for kiwi's local mode: the self-hosted LLM router and the in-process VLM.

Kiwi without cf-orch (``CF_ORCH_URL`` unset, or every cf-orch tier failed) uses the LLM
configured on the machine (``llm.yaml``, Ollama, a BYOK key) and a local Qwen2.5-VL.
This example has no model, so these answer with fixed text in the formats kiwi's
prompts ask for: enough for every call site to work end to end on its local path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LOCAL_MODEL", "LocalRouter", "LocalVision"]

#: What a local reply's model is called in records (there is no cf-orch model).
LOCAL_MODEL = "local"

_PLAN = [
    {"day": 0, "meal_type": "dinner", "recipe_id": 42, "suggestion": "Lentil soup"},
    {"day": 1, "meal_type": "dinner", "recipe_id": None, "suggestion": "Chickpea curry"},
    {"day": 2, "meal_type": "dinner", "recipe_id": 7, "suggestion": "Spinach omelette"},
    {"day": 3, "meal_type": "dinner", "recipe_id": None, "suggestion": "Tomato rice"},
    {"day": 4, "meal_type": "dinner", "recipe_id": None, "suggestion": "Veggie fried rice"},
]
_RECIPE = """Title: Garlic Mushroom Rice
Ingredients: rice, mushrooms, garlic, parsley
Directions:
1. Rinse the rice.
2. Brown the mushrooms with the garlic.
3. Add the rice and water; simmer for 15 minutes.
Notes: Finish with parsley."""
_CARD = {
    "title": "Skillet Cornbread",
    "subtitle": None,
    "servings": "8",
    "cook_time": "25 min",
    "source_note": "Grandma's card",
    "ingredients": [
        {"name": "cornmeal", "qty": "1", "unit": "cup", "raw": "1 c. yellow cornmeal"},
        {"name": "egg", "qty": "2", "unit": None, "raw": "2 eggs"},
    ],
    "steps": ["Heat the skillet in the oven.", "Mix and pour the batter.", "Bake 20 minutes."],
    "notes": None,
    "confidence": "medium",
    "warnings": [],
}
_RECEIPT = {
    "merchant": {"name": "Corner Market", "address": None, "phone": None},
    "transaction": {"date": "2025-11-02", "time": "09:15:00", "receipt_number": None},
    "items": [
        {"name": "Oat milk", "quantity": 1, "unit_price": 3.49, "total_price": 3.49},
        {"name": "Basmati rice", "quantity": 1, "unit_price": 2.10, "total_price": 2.10},
    ],
    "totals": {"subtotal": 5.59, "tax": 0.0, "total": 5.59, "payment_method": "Debit"},
    "confidence": {"overall": 0.9, "merchant": 0.9, "items": 0.9, "totals": 0.9},
}
_LABEL = {
    "product_name": "Rolled Oats",
    "brand": "Harvest",
    "serving_size_g": 40,
    "calories": 150,
    "fat_g": 3.0,
    "saturated_fat_g": 0.5,
    "carbs_g": 27.0,
    "sugar_g": 1.0,
    "fiber_g": 4.0,
    "protein_g": 5.0,
    "sodium_mg": 0,
    "ingredient_names": ["whole grain oats"],
    "allergens": ["oats"],
    "confidence": 0.8,
}


class LocalRouter:
    """The locally configured LLM router. It takes kiwi's two calling conventions:
    ``complete(prompt, system=...)`` (the core router) and ``complete(system=...,
    user=...)`` (the meal-plan adapter's)."""

    model = LOCAL_MODEL

    def complete(
        self, prompt: str = "", system: str | None = None, user: str = "", **_kwargs: Any
    ) -> str:
        """A fixed reply in the format the prompt asks for ("" for anything else)."""
        asked = f"{system or ''}\n{prompt}\n{user}"
        if "recipe data extractor" in asked:
            return _structured_card(prompt)
        if "JSON array" in asked:
            return json.dumps(_PLAN)
        if "two integers" in asked:
            return "15\n30"
        if "Title:" in asked:
            return _RECIPE
        return ""


class LocalVision:
    """The in-process vision-language model: an image and a prompt in, text out."""

    model = LOCAL_MODEL

    def read(self, images: Sequence[str | Path | bytes], prompt: str) -> str:
        """What the local VLM answers for ``prompt``: receipt, recipe card or label JSON."""
        if not images:
            raise ValueError("no image to read")
        if "receipt" in prompt.lower():
            return json.dumps(_RECEIPT)
        if "label" in prompt.lower():
            return json.dumps(_LABEL)
        return json.dumps(_CARD)


def _structured_card(prompt: str) -> str:
    """What a model makes of a recipe card's OCR text: the card's JSON. The stand-in
    reads the plain layout a document reader gives (title, ``Serves:``, ``Cook time:``,
    ``Ingredients:``, numbered ``Directions:``, ``Notes:``)."""
    ocr = prompt.partition("OCR Text:")[2]
    found = re.search(r"\{.*\}", ocr, re.S)
    if found and '"title"' in found.group(0):  # a card printed as JSON, read as is
        return found.group(0)
    lines = [line.strip() for line in ocr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("(Page ")]
    if not lines:
        return json.dumps(_CARD)
    card: dict[str, Any] = {**_CARD, "title": lines[0].title(), "source_note": None}
    card.update(servings=None, cook_time=None, notes=None, ingredients=[], steps=[])
    section = None
    for line in lines[1:]:
        head, colon, rest = line.partition(":")
        key = head.strip().lower() if colon else ""
        if key in ("serves", "cook time", "notes"):
            card[{"serves": "servings", "cook time": "cook_time"}.get(key, key)] = rest.strip()
        elif key in ("ingredients", "directions"):
            section = key
        elif section == "ingredients":
            card["ingredients"].append(_ingredient(line))
        elif section == "directions":
            card["steps"].append(re.sub(r"^\d+[.)]\s*", "", line))
        elif card["source_note"] is None:
            card["source_note"] = line
    return json.dumps(card)


def _ingredient(raw: str) -> dict[str, Any]:
    words = raw.split()
    qty = words.pop(0) if words and words[0][0].isdigit() else None
    unit = words.pop(0) if qty and len(words) > 1 and words[0].lower() in _UNITS else None
    return {"name": " ".join(words).lower() or raw, "qty": qty, "unit": unit, "raw": raw}


_UNITS = {"can", "cans", "cup", "cups", "g", "kg", "ml", "l", "tbsp", "tsp", "cloves", "clove"}
