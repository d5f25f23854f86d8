"""Kiwi's prep and cook time estimate for a recipe, through the meal-plan router.

Not wrapped: it shares the planner's router, so one allocation serves both.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["TIMING_SYSTEM", "estimate_timing"]

log = logging.getLogger(__name__)

TIMING_SYSTEM = (
    "Estimate the recipe's prep_time (active minutes) and cook_time (minutes). Reply with "
    "only two integers on separate lines, prep first. If unsure, reply 0 and 0."
)


def estimate_timing(
    recipe_name: str, ingredients: list[str], router: Any
) -> tuple[int | None, int | None]:
    """``(prep, cook)`` minutes, None for an unknown one; never raises."""
    if router is None:
        return None, None
    listed = "\n".join(f"- {item}" for item in ingredients[:15])
    try:
        reply = router.complete(
            system=TIMING_SYSTEM,
            user=f"Recipe: {recipe_name}\n\nIngredients:\n{listed}",
            max_tokens=16,
            temperature=0.0,
        )
        lines = reply.strip().splitlines()
        prep = int(lines[0]) if lines else 0
        cook = int(lines[1]) if len(lines) > 1 else 0
    except Exception as exc:
        log.debug("LLM timing estimate failed: %s", exc)
        return None, None
    if not prep and not cook:
        return None, None
    return prep or None, cook or None
