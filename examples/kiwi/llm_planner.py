"""Kiwi's LLM meal planner: a week of suggestions from the pantry, through a router.

Not wrapped: the router it is given is what moves to the task path
(``llm_router.get_meal_plan_router``). Its parser is strict, as kiwi's is: a bare JSON
array or nothing, so a model that adds prose or a code fence yields no plan.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["PLAN_SYSTEM", "PlanSuggestion", "generate_plan"]

log = logging.getLogger(__name__)

PLAN_SYSTEM = (
    "You are a practical meal planner. Suggest a week of the configured meals, using "
    "ingredients that expire soon first, with variety, and respecting dietary notes.\n"
    "Reply with a JSON array only: no prose, no markdown fences. Each item has the keys "
    '"day" (0 = Monday .. 6 = Sunday), "meal_type" ("dinner"), "recipe_id" (an integer, '
    'or null when no known recipe fits) and "suggestion" (the dish\'s name).'
)


@dataclass(frozen=True, slots=True)
class PlanSuggestion:
    """One planned meal: ``day`` 0 is Monday; ``recipe_id`` None for a new dish."""

    day: int
    meal_type: str
    recipe_id: int | None
    suggestion: str


def generate_plan(
    pantry_items: list[str], meal_types: list[str], dietary_notes: str, router: Any
) -> list[PlanSuggestion]:
    """The week's suggestions, or ``[]`` when there is no router or no usable answer."""
    if router is None:
        return []
    pantry = "\n".join(f"- {item}" for item in pantry_items[:50])
    user = (
        f"Meal types: {', '.join(meal_types)}\n"
        f"Dietary notes: {dietary_notes or 'none'}\n\n"
        f"Pantry (partial):\n{pantry}"
    )
    try:
        reply = router.complete(system=PLAN_SYSTEM, user=user, max_tokens=512, temperature=0.7)
        items = json.loads(reply.strip())
        plan = []
        for item in items:
            if not isinstance(item, dict):
                continue
            day = item.get("day")
            if not isinstance(day, int) or not 0 <= day <= 6:
                continue
            plan.append(
                PlanSuggestion(
                    day=day,
                    meal_type=item.get("meal_type", "dinner"),
                    recipe_id=item.get("recipe_id"),
                    suggestion=str(item.get("suggestion", "")),
                )
            )
        return plan
    except Exception as exc:
        log.debug("LLM plan generation failed: %s", exc)
        return []
