"""Kiwi-shaped model outputs, in the formats kiwi's prompts ask for and its parsers read.

Text varies from call to call inside a stable structure, so comparators see what they
see in production: equal shapes, different words. Drift (:mod:`._drift`) breaks the
shape on purpose.

=================  ===========================================================  =======
kind               format (what kiwi's parser reads)                            travels
=================  ===========================================================  =======
meal_plan          a bare JSON array of ``{day 0-6, meal_type, recipe_id,        JSON in
                   suggestion}``, no fence (kiwi: strict ``json.loads``)         text
recipe             ``Title: ...`` / ``Ingredients: a, b, c`` / ``Directions:``   text
                   with numbered lines / ``Notes: ...``
timing             two integers on two lines, prep minutes then cook minutes     text
receipt            ``{merchant, transaction, items, totals, confidence}``; the   JSON
                   items' ``total_price`` add up to ``totals.subtotal``
barcode            a packet's label: ``{product_name, brand, serving_size_g,     JSON
                   calories, ..., ingredient_names, allergens, confidence}``
recipe_card        a scanned card: ``{title, subtitle, servings, cook_time,      JSON
                   source_note, ingredients[{name, qty, unit, raw}], steps,
                   notes, confidence, warnings}``
recipe_card_ocr    the same card as OCR'd plain text (docuvision's ``/extract``) text
chat, caption      anything else a text or vision model is asked
=================  ===========================================================  =======
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from ._corpus import DISHES, INGREDIENTS, LABELS, MERCHANTS, NOTES, PAYMENTS, PRODUCTS, SOURCES
from ._corpus import STEPS as STEP_TEXTS
from ._drift import DRIFT_KINDS, OUTPUT_KINDS, DriftKind, apply_drift

__all__ = [
    "DRIFT_KINDS",
    "OUTPUT_KINDS",
    "DriftKind",
    "apply_drift",
    "as_text",
    "asks_for_timing",
    "extract_kind",
    "generate",
    "kind_for",
]

_BY_TASK = {
    "meal_plan": "meal_plan",
    "recipe_generation": "recipe",
    "ocr": "receipt",
    "barcode_scan": "barcode",
    "recipe_scan": "recipe_card",
    "judge": "judge",
}

_TIMING = re.compile(r"(?=.*\bprep)(?=.*\bcook)(?=.*\b(minute|integer))", re.I | re.S)


def kind_for(task: str, modality: str = "text") -> str:
    """The output kind the simulator produces for ``product.task``."""
    name = task.rpartition(".")[2]
    return _BY_TASK.get(name, "caption" if modality == "vision" else "chat")


def asks_for_timing(system: str | None) -> bool:
    """Whether a system prompt asks for prep and cook minutes (kiwi's timing estimate,
    which shares the meal plan's text node)."""
    return bool(system) and _TIMING.match(system or "") is not None


def extract_kind(task: str | None) -> str:
    """What a document node's ``/extract`` reads for ``task``: a receipt as JSON text
    for OCR (and when the allocation names no task), a recipe card as plain text for
    recipe scans."""
    if task is None:
        return "receipt"
    kind = kind_for(task, "vision")
    return "recipe_card_ocr" if kind == "recipe_card" else kind


def generate(kind: str, rng: random.Random) -> Any:
    """A fresh output of ``kind``: a str for text kinds, else a JSON value."""
    value = _GENERATORS[kind](rng)
    if OUTPUT_KINDS[kind] == "json_text":
        return json.dumps(value, indent=2)
    return value


def as_text(output: Any) -> str:
    """An output as a model's text: itself if a string, else JSON."""
    return output if isinstance(output, str) else json.dumps(output, indent=2)


def _meal_plan(rng: random.Random) -> list[dict[str, Any]]:
    days = sorted(rng.sample(range(7), rng.randint(5, 7)))
    return [
        {
            "day": day,
            "meal_type": "dinner",
            "recipe_id": rng.randint(1000, 9999) if rng.random() < 0.6 else None,
            "suggestion": rng.choice(DISHES).title(),
        }
        for day in days
    ]


def _recipe(rng: random.Random) -> str:
    ingredients = [raw for *_, raw in rng.sample(INGREDIENTS, rng.randint(4, 8))]
    steps = rng.sample(STEP_TEXTS, rng.randint(3, 6))
    return (
        f"Title: {rng.choice(DISHES).title()}\n"
        f"Ingredients: {', '.join(ingredients)}\n"
        "Directions:\n"
        + "".join(f"{n}. {s}\n" for n, s in enumerate(steps, 1))
        + f"Notes: {rng.choice(NOTES)}\n"
    )


def _timing(rng: random.Random) -> str:
    return f"{rng.choice([5, 10, 15, 20, 25])}\n{rng.choice([0, 10, 20, 30, 45, 60])}"


def _receipt(rng: random.Random) -> dict[str, Any]:
    name, address, phone = rng.choice(MERCHANTS)
    items: list[dict[str, Any]] = []
    for product, category in rng.sample(PRODUCTS, rng.randint(1, 5)):
        qty = rng.randint(1, 3)
        price = round(rng.uniform(0.5, 6.0), 2)
        items.append(
            {
                "name": product,
                "quantity": qty,
                "unit_price": price,
                "total_price": round(qty * price, 2),
                "category": category,
                "tax_code": rng.choice(["A", "B", None]),
                "discount": 0.0,
            }
        )
    subtotal = round(sum(i["total_price"] for i in items), 2)
    tax = round(subtotal * 0.05, 2)
    total = round(subtotal + tax, 2)
    payment = rng.choice(PAYMENTS)
    paid = float(-(-total // 5) * 5) if payment == "Cash" else total
    scores = [round(rng.uniform(0.8, 0.99), 2) for _ in range(3)]
    return {
        "merchant": {"name": name, "address": address, "phone": phone},
        "transaction": {
            "date": f"2026-11-{rng.randint(1, 28):02d}",
            "time": f"{rng.randint(8, 21):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            "receipt_number": f"R{rng.randint(100000, 999999)}",
            "register": str(rng.randint(1, 8)),
            "cashier": rng.choice(["SAM", "ALEX", "JO", None]),
        },
        "items": items,
        "totals": {
            "subtotal": subtotal,
            "tax": tax,
            "discount": 0.0,
            "total": total,
            "payment_method": payment,
            "amount_paid": paid,
            "change": round(paid - total, 2),
        },
        "confidence": {
            "overall": round(min(scores), 2),
            "merchant": scores[0],
            "items": scores[1],
            "totals": scores[2],
        },
    }


def _barcode(rng: random.Random) -> dict[str, Any]:
    name, brand, ingredients, allergens = rng.choice(LABELS)
    fat = round(rng.uniform(0.5, 15.0), 1)
    carbs = round(rng.uniform(1.0, 40.0), 1)
    protein = round(rng.uniform(0.5, 12.0), 1)
    return {
        "product_name": name,
        "brand": brand,
        "serving_size_g": rng.choice([15, 30, 40, 100, 125, 250]),
        "calories": round(9 * fat + 4 * carbs + 4 * protein),
        "fat_g": fat,
        "saturated_fat_g": round(fat * rng.uniform(0.1, 0.5), 1),
        "carbs_g": carbs,
        "sugar_g": round(carbs * rng.uniform(0.05, 0.6), 1),
        "fiber_g": round(rng.uniform(0.0, 6.0), 1),
        "protein_g": protein,
        "sodium_mg": rng.randint(0, 600),
        "ingredient_names": list(ingredients),
        "allergens": list(allergens),
        "confidence": round(rng.uniform(0.7, 0.97), 2),
    }


def _recipe_card(rng: random.Random) -> dict[str, Any]:
    chosen = rng.sample(INGREDIENTS, rng.randint(3, 7))
    return {
        "title": rng.choice(DISHES).title(),
        "subtitle": rng.choice([None, "A weeknight favourite"]),
        "servings": rng.choice(["2", "4", "4-6", "8"]),
        "cook_time": rng.choice(["15 min", "25 min", "1 hour", None]),
        "source_note": rng.choice(SOURCES),
        "ingredients": [
            {"name": name, "qty": qty, "unit": unit, "raw": raw} for qty, unit, name, raw in chosen
        ],
        "steps": rng.sample(STEP_TEXTS, rng.randint(2, 5)),
        "notes": rng.choice([None, *NOTES]),
        "confidence": rng.choice(["high", "high", "medium"]),
        "warnings": [],
    }


def _recipe_card_ocr(rng: random.Random) -> str:
    card = _recipe_card(rng)
    lines = [card["title"].upper()]
    if card["source_note"]:
        lines.append(card["source_note"])
    lines.append(f"Serves: {card['servings']}")
    if card["cook_time"]:
        lines.append(f"Cook time: {card['cook_time']}")
    lines += ["Ingredients:", *(i["raw"] for i in card["ingredients"])]
    lines += ["Directions:", *(f"{n}. {s}" for n, s in enumerate(card["steps"], 1))]
    if card["notes"]:
        lines.append(f"Notes: {card['notes']}")
    return "".join(f"{line}\n" for line in lines)


def _chat(rng: random.Random) -> str:
    return f"Try the {rng.choice(DISHES)} tonight; it uses {rng.choice(INGREDIENTS)[2]}."


def _caption(rng: random.Random) -> dict[str, Any]:
    return {
        "caption": f"A photo of {rng.choice(DISHES)}",
        "confidence": round(rng.uniform(0.6, 0.99), 3),
    }


_GENERATORS = {
    "meal_plan": _meal_plan,
    "recipe": _recipe,
    "timing": _timing,
    "receipt": _receipt,
    "barcode": _barcode,
    "recipe_card": _recipe_card,
    "recipe_card_ocr": _recipe_card_ocr,
    "chat": _chat,
    "caption": _caption,
}
