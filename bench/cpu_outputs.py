"""The outputs ``bench/cpu.py`` measures: what legacy returns and what the stand-in
coordinator answers (a 2 KB JSON meal plan as text, 4 KB of sectioned recipe text, a
receipt dict), each with the comparator its call site uses."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shim.comparators import KIWI_RECEIPT, KIWI_RECIPE, JsonOutput, TextOutput

DISHES = ("lentil soup", "chickpea curry", "mushroom risotto", "vegetable stir fry")
DISHES += ("baked salmon with greens", "black bean tacos", "tomato and basil pasta")


def meal_plan(rng: random.Random) -> str:
    """A week of three meals as JSON text (~2 KB), as kiwi's router returns it."""
    plan = [
        {
            "day": day,
            "meal_type": meal,
            "recipe_id": rng.randint(1000, 9999),
            "suggestion": rng.choice(DISHES).title(),
        }
        for day in range(7)
        for meal in ("breakfast", "lunch", "dinner")
    ]
    return json.dumps(plan, indent=1)


def recipe(rng: random.Random) -> str:
    """Kiwi's sectioned recipe text, ~4 KB."""
    words = [
        "stir",
        "the",
        "onions",
        "until",
        "soft",
        "then",
        "add",
        "the",
        "garlic",
        "and",
        "season",
        "well",
    ]
    steps = [" ".join(rng.choices(words, k=40)).capitalize() + "." for _ in range(17)]
    ingredients = ", ".join(rng.choice(DISHES) for _ in range(12))
    return (
        f"Title: {rng.choice(DISHES).title()}\nIngredients: {ingredients}\nDirections:\n"
        + "".join(f"{n}. {s}\n" for n, s in enumerate(steps, 1))
        + "Notes: keeps for three days in the fridge.\n"
    )


def receipt(rng: random.Random) -> dict[str, Any]:
    """What kiwi's receipt OCR returns: merchant, transaction, items, totals."""
    items = [
        {
            "name": rng.choice(DISHES),
            "quantity": rng.randint(1, 3),
            "unit_price": round(rng.uniform(0.5, 6), 2),
            "total_price": round(rng.uniform(0.5, 18), 2),
            "category": "produce",
            "tax_code": rng.choice(["A", "B", None]),
            "discount": 0.0,
        }
        for _ in range(5)
    ]
    return {
        "merchant": {"name": "Corner Grocer", "address": "1 Main St", "phone": "555-0100"},
        "transaction": {"date": "2026-11-02", "time": "12:01:02", "receipt_number": "R123456"},
        "items": items,
        "totals": {"subtotal": 20.5, "tax": 1.02, "total": 21.52, "payment_method": "Card"},
        "confidence": {"overall": 0.91, "merchant": 0.95, "items": 0.91, "totals": 0.93},
    }


@dataclass(frozen=True)
class Kind:
    name: str
    task: str
    make: Callable[[random.Random], Any]
    comparator: Any
    response: Callable[[Any], Any]


#: Kiwi's recipe structure alone (sections, list-ness), as the target was set on it.
RECIPE_STRUCTURE = TextOutput(sections=KIWI_RECIPE.sections, lists=KIWI_RECIPE.lists)

KINDS = (
    Kind("meal_plan", "meal_plan", meal_plan, JsonOutput(), lambda r: r.text),
    Kind("recipe", "recipe_generation", recipe, RECIPE_STRUCTURE, lambda r: r.text),
    Kind("receipt", "ocr", receipt, JsonOutput(), lambda r: r.output),
    # the same outputs with their content scored (kiwi's defaults), beside them
    Kind("recipe_scored", "recipe_generation", recipe, KIWI_RECIPE, lambda r: r.text),
    Kind("receipt_scored", "ocr", receipt, KIWI_RECEIPT, lambda r: r.output),
)
