"""Kiwi-shaped model outputs, and the structural drift a task path may add to them.

Text varies from call to call inside a stable structure, so comparators see what they
see in production: equal shapes, different words. Drift breaks the shape on purpose.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Literal

__all__ = ["DRIFT_KINDS", "OUTPUT_KINDS", "DriftKind", "apply_drift", "generate", "kind_for"]

DriftKind = Literal["fence", "prose", "missing_key", "renamed_key", "type_change"]
DRIFT_KINDS: tuple[DriftKind, ...] = ("fence", "prose", "missing_key", "renamed_key", "type_change")

# How each output kind travels: JSON inside text (what a text model writes), a JSON
# value (what a vision service returns), or sectioned text.
OUTPUT_KINDS: dict[str, Literal["json_text", "json_value", "text"]] = {
    "meal_plan": "json_text",
    "recipe": "text",
    "receipt": "json_value",
    "barcode": "json_value",
    "recipe_card": "json_value",
    "chat": "text",
    "caption": "json_value",
}

_BY_TASK = {
    "meal_plan": "meal_plan",
    "recipe_generation": "recipe",
    "ocr": "receipt",
    "barcode_scan": "barcode",
    "recipe_scan": "recipe_card",
}

_DISHES = [
    "lemon garlic chickpea skillet",
    "miso glazed salmon",
    "tomato lentil soup",
    "spinach feta omelette",
    "black bean tacos",
    "peanut noodle bowl",
    "roasted veg traybake",
    "overnight oats",
    "chicken fried rice",
    "pesto pasta",
    "sweet potato curry",
    "greek salad wraps",
    "mushroom risotto",
    "banana pancakes",
]
_INGREDIENTS = [
    "1 can chickpeas",
    "2 cloves garlic",
    "1 lemon",
    "200 g spinach",
    "1 onion",
    "2 tbsp olive oil",
    "400 g chopped tomatoes",
    "1 tsp cumin",
    "150 g rice",
    "2 eggs",
    "100 g feta",
    "1 sweet potato",
    "250 ml stock",
    "1 tbsp soy sauce",
    "a handful of basil",
    "salt and pepper",
]
_STEPS = [
    "Heat the oil in a wide pan over medium heat.",
    "Soften the onion for 5 minutes.",
    "Add the garlic and spices and cook for a minute.",
    "Stir in the tomatoes.",
    "Simmer until thickened, about 15 minutes.",
    "Fold in the greens until wilted.",
    "Season to taste.",
    "Finish with lemon and herbs and serve warm.",
]
_NOTES = [
    "Keeps 3 days in the fridge.",
    "Swap spinach for kale if that is what you have.",
    "Freezes well in portions.",
    "Uses up the open tin of tomatoes in the pantry.",
]
_MERCHANTS = [
    ("Green Basket Market", "12 Mill Lane"),
    ("FreshCo", "88 High Street"),
    ("Corner Pantry", "3 Station Road"),
    ("Harvest Foods", "210 Elm Avenue"),
]
_PRODUCTS = [
    ("Oat Milk 1L", "Oatly", "dairy alternatives"),
    ("Chopped Tomatoes 400g", "Mutti", "tinned goods"),
    ("Basmati Rice 1kg", "Tilda", "grains"),
    ("Greek Yoghurt 500g", "Fage", "dairy"),
    ("Peanut Butter 340g", "Pip & Nut", "spreads"),
]
_MEALS = ["breakfast", "lunch", "dinner", "snack"]


def kind_for(task: str, modality: str = "text") -> str:
    """The output kind the simulator produces for ``product.task``."""
    name = task.rpartition(".")[2]
    return _BY_TASK.get(name, "caption" if modality == "vision" else "chat")


def generate(kind: str, rng: random.Random) -> Any:
    """A fresh output of ``kind``: a str for text kinds, else a JSON value."""
    value = _GENERATORS[kind](rng)
    if OUTPUT_KINDS[kind] == "json_text":
        return json.dumps(value, indent=2)
    return value


def _meal_plan(rng: random.Random) -> list[dict[str, Any]]:
    plan = []
    for day in range(7):
        for meal in rng.sample(_MEALS[:3], rng.randint(1, 3)):
            dish = rng.choice(_DISHES)
            style = rng.choice(["quick", "batch", "light"])
            plan.append(
                {
                    "day": day,
                    "meal_type": meal,
                    "recipe_id": rng.randint(1000, 9999) if rng.random() < 0.7 else None,
                    "suggestion": f"{dish.capitalize()} ({style})",
                }
            )
    return plan


def _recipe(rng: random.Random) -> str:
    ingredients = rng.sample(_INGREDIENTS, rng.randint(4, 8))
    steps = rng.sample(_STEPS, rng.randint(3, 6))
    return (
        f"Title: {rng.choice(_DISHES).title()}\n\n"
        "Ingredients:\n" + "".join(f"- {i}\n" for i in ingredients) + "\n"
        "Directions:\n" + "".join(f"{n}. {s}\n" for n, s in enumerate(steps, 1)) + "\n"
        f"Notes:\n{rng.choice(_NOTES)}\n"
    )


def _receipt(rng: random.Random) -> dict[str, Any]:
    name, address = rng.choice(_MERCHANTS)
    items: list[dict[str, Any]] = []
    for product, _brand, _cat in rng.sample(_PRODUCTS, rng.randint(1, 5)):
        qty = rng.randint(1, 3)
        price = round(rng.uniform(0.5, 6.0), 2)
        items.append(
            {"name": product, "quantity": qty, "unit_price": price, "total": round(qty * price, 2)}
        )
    subtotal = round(sum(i["total"] for i in items), 2)
    tax = round(subtotal * 0.05, 2)
    return {
        "merchant": {"name": name, "address": address},
        "transaction": {
            "date": f"2026-11-{rng.randint(1, 28):02d}",
            "time": f"{rng.randint(8, 21):02d}:{rng.randint(0, 59):02d}",
            "receipt_number": f"R{rng.randint(100000, 999999)}",
        },
        "items": items,
        "totals": {"subtotal": subtotal, "tax": tax, "total": round(subtotal + tax, 2)},
        "confidence": round(rng.uniform(0.82, 0.99), 3),
    }


def _barcode(rng: random.Random) -> dict[str, Any]:
    digits = [rng.randint(0, 9) for _ in range(12)]
    check = (10 - sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10) % 10
    name, brand, category = rng.choice(_PRODUCTS)
    return {
        "code": "".join(map(str, digits)) + str(check),
        "format": "EAN-13",
        "product": {"name": name, "brand": brand, "category": category},
    }


def _recipe_card(rng: random.Random) -> dict[str, Any]:
    return {
        "title": rng.choice(_DISHES).title(),
        "ingredients": rng.sample(_INGREDIENTS, rng.randint(3, 7)),
        "directions": rng.sample(_STEPS, rng.randint(2, 5)),
    }


def _chat(rng: random.Random) -> str:
    return f"Try the {rng.choice(_DISHES)} tonight; it uses {rng.choice(_INGREDIENTS)}."


def _caption(rng: random.Random) -> dict[str, Any]:
    return {
        "caption": f"A photo of {rng.choice(_DISHES)}",
        "confidence": round(rng.uniform(0.6, 0.99), 3),
    }


_GENERATORS = {
    "meal_plan": _meal_plan,
    "recipe": _recipe,
    "receipt": _receipt,
    "barcode": _barcode,
    "recipe_card": _recipe_card,
    "chat": _chat,
    "caption": _caption,
}


# -- drift -----------------------------------------------------------------------------


def apply_drift(output: Any, kind: str, drift: DriftKind, rng: random.Random) -> Any:
    """``output`` (of ``kind``) with one structural change of type ``drift``."""
    travel = OUTPUT_KINDS[kind]
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


_SECTION = re.compile(r"^(\w[\w ]*):[ \t]*(.*)$", re.M)


def _drift_text(text: str, drift: DriftKind, rng: random.Random) -> str:
    if drift == "fence":
        return f"```markdown\n{text}```"
    headings = [m.group(1) for m in _SECTION.finditer(text)]
    if drift == "prose" or not headings:
        return f"Of course! Here's a recipe you might enjoy.\n\n{text}\nHappy cooking!"
    heading = rng.choice(headings)
    if drift == "renamed_key":
        renamed = {
            "Directions": "Steps",
            "Ingredients": "What you need",
            "Notes": "Tips",
            "Title": "Recipe",
        }.get(heading, heading.upper())
        return re.sub(rf"^{re.escape(heading)}:", f"{renamed}:", text, count=1, flags=re.M)
    blocks = re.split(r"\n\n", text.strip())
    if drift == "missing_key":
        kept = [b for b in blocks if not b.startswith(f"{heading}:")]
        return "\n\n".join(kept) + "\n"
    # type_change: a list section turns into one run-on line
    out = []
    for block in blocks:
        head, _, body = block.partition("\n")
        items = [re.sub(r"^(-|\d+\.)\s*", "", line) for line in body.splitlines() if line]
        out.append(f"{head} {', '.join(items)}" if len(items) > 1 else block)
    return "\n\n".join(out) + "\n"
