"""Words the simulated models write with: dishes, ingredients, steps, shops, products."""

from __future__ import annotations

from typing import cast

__all__ = [
    "DISHES",
    "INGREDIENTS",
    "LABELS",
    "MERCHANTS",
    "NOTES",
    "PAYMENTS",
    "PRODUCTS",
    "SOURCES",
    "STEPS",
]

DISHES = [
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
    "skillet cornbread",
]


def _table(text: str) -> list[tuple[str | None, ...]]:
    """Rows of a ``|``-separated table, cells stripped; ``-`` is a cell left empty."""
    rows = [line.split("|") for line in text.strip().splitlines()]
    return [tuple(None if c.strip() == "-" else c.strip() for c in row) for row in rows]


#: (quantity, unit, generic name, as a recipe card prints it); no commas, so that
#: kiwi's comma-split ingredient line keeps each one whole.
INGREDIENTS = cast(
    list[tuple[str | None, str | None, str, str]],
    _table(
        """
        1   | can    | chickpeas        | 1 can chickpeas
        2   | cloves | garlic           | 2 cloves garlic
        1   | -      | lemon            | 1 lemon
        200 | g      | spinach          | 200 g fresh spinach
        1   | -      | onion            | 1 onion
        2   | tbsp   | olive oil        | 2 tbsp olive oil
        400 | g      | chopped tomatoes | 400 g tin chopped tomatoes
        1   | tsp    | cumin            | 1 tsp ground cumin
        150 | g      | rice             | 150 g basmati rice
        2   | -      | egg              | 2 eggs
        100 | g      | feta             | 100 g feta
        1   | -      | sweet potato     | 1 large sweet potato
        250 | ml     | stock            | 250 ml vegetable stock
        1   | tbsp   | soy sauce        | 1 tbsp soy sauce
        1/2 | cup    | basil            | 1/2 cup basil leaves
        1   | cup    | cornmeal         | 1 c. yellow cornmeal
        -   | -      | salt and pepper  | salt and pepper to taste
        """
    ),
)

STEPS = [
    "Heat the oil in a wide pan over medium heat.",
    "Soften the onion for 5 minutes.",
    "Add the garlic and spices and cook for a minute.",
    "Stir in the tomatoes.",
    "Simmer until thickened, about 15 minutes.",
    "Fold in the greens until wilted.",
    "Season to taste.",
    "Finish with lemon and herbs and serve warm.",
]

NOTES = [
    "Keeps 3 days in the fridge.",
    "Swap spinach for kale if that is what you have.",
    "Freezes well in portions.",
    "Uses up the open tin of tomatoes in the pantry.",
]

SOURCES = ["Grandma's card", "Church cookbook, p. 42", "Clipped from the paper", None]

MERCHANTS = [
    ("Green Basket Market", "12 Mill Lane", "555-0142"),
    ("FreshCo", "88 High Street", "555-0199"),
    ("Corner Pantry", "3 Station Road", None),
    ("Harvest Foods", "210 Elm Avenue", "555-0123"),
]

PAYMENTS = ["Debit", "Credit", "Cash"]

#: (receipt line, category)
PRODUCTS = [
    ("OAT MILK 1L", "dairy alternatives"),
    ("CHOPPED TOMATOES 400G", "canned goods"),
    ("BASMATI RICE 1KG", "grains"),
    ("GREEK YOGHURT 500G", "dairy"),
    ("PEANUT BUTTER 340G", "spreads"),
    ("BANANAS", "produce"),
    ("SOURDOUGH LOAF", "bakery"),
]

#: (product name, brand, ingredients, allergens) of a packet's label
LABELS = [
    ("Crunchy Peanut Butter", "Pip & Nut", ["peanuts", "sea salt"], ["peanuts"]),
    ("Oat Drink Barista", "Oatly", ["water", "oats", "rapeseed oil", "salt"], ["oats"]),
    ("Chopped Tomatoes", "Mutti", ["tomatoes", "tomato juice"], []),
    ("Greek Style Yoghurt", "Fage", ["pasteurised milk", "live cultures"], ["milk"]),
    ("Wholewheat Fusilli", "Barilla", ["durum wheat semolina"], ["wheat", "gluten"]),
]
