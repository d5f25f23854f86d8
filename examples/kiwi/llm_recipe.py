"""Kiwi's LLM recipe generator (levels 3 and 4): a prompt from the pantry, a recipe as
``Title:`` / ``Ingredients:`` / ``Directions:`` / ``Notes:`` text, parsed.

``_call_llm(prompt)`` is the cf-orch call site. Before the migration it allocates a
vllm node with kiwi's Ouro candidates, enters the allocation by hand, chats with the
node's OpenAI API and exits; without cf-orch it asks the local router. Any failure is
``""``, which the shim counts as a legacy failure. Wrapped (as a method) as
``kiwi.recipe_generation``, compared section by section with ``KIWI_RECIPE``; sticky
by the user in ``shim.context``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shim import TaskRequest
from shim.comparators import KIWI_RECIPE

from .local_llm import LocalRouter
from .migration import nodes, orch_url, shim
from .orch_client import OrchClient

__all__ = [
    "LLMRecipeGenerator",
    "RecipeRequest",
    "RecipeResult",
    "RecipeSuggestion",
    "build_recipe_prompt",
    "parse_recipe",
]

log = logging.getLogger(__name__)

_MODEL_CANDIDATES = ["Ouro-2.6B-Thinking", "Ouro-1.4B"]
_SERVICE = "vllm"
_TTL_S = 300.0
_CALLER = "kiwi-recipe"
_FORMAT = """Reply in plain text, no markdown, in exactly this format:
Title: <name of the dish>
Ingredients: <comma-separated list>
Directions:
1. <first step>
2. <second step>
3. <continue for each step>
Notes: <optional tips>"""
_SECTIONS = ("title", "ingredients", "directions", "notes")
_QUANTITY = re.compile(
    r"^[\d/.\s]+(cups?|tbsps?|tsps?|g|kg|ml|l|oz|lbs?|cloves?|cans?|handful of)?\s+", re.I
)


@dataclass(frozen=True, slots=True)
class RecipeRequest:
    """What the user asked for: level 3 (from the pantry) or 4 (a wildcard)."""

    pantry_items: list[str]
    level: int = 3
    constraints: list[str] = field(default_factory=list)
    allergies: list[str] = field(default_factory=list)
    style: str | None = None


@dataclass(frozen=True, slots=True)
class RecipeSuggestion:
    """One generated recipe, as the app shows it."""

    title: str
    missing_ingredients: list[str]
    directions: list[str]
    notes: str
    level: int
    is_wildcard: bool


@dataclass(frozen=True, slots=True)
class RecipeResult:
    """The suggestions (none when the model gave nothing) and the flavour gaps."""

    suggestions: list[RecipeSuggestion]
    element_gaps: list[str]


def build_recipe_prompt(req: RecipeRequest, gaps: Sequence[str] = ()) -> str:
    """The level-3 prompt (the pantry, minus allergens) or the short level-4 one."""
    if req.level == 4:
        return (
            "Invent a mystery dish that uses a few of these: "
            f"{', '.join(req.pantry_items[:10])}. "
            f"Constraints: {', '.join(req.constraints) or 'none'}.\n{_FORMAT}"
        )
    allergic = {a.lower() for a in req.allergies}
    pantry = [p for p in req.pantry_items if p.lower() not in allergic]
    lines = [
        "Write one recipe that a home cook can make from this pantry.",
        f"Pantry: {', '.join(pantry)}",
        f"Dietary constraints: {', '.join(req.constraints) or 'none'}",
    ]
    if req.allergies:
        lines.append(f"IMPORTANT - must NOT contain: {', '.join(req.allergies)}")
    if gaps:
        lines.append(f"Missing elements to add: {', '.join(gaps)}")
    if req.style:
        lines.append(f"Cuisine style: {req.style}")
    return "\n".join([*lines, _FORMAT])


class LLMRecipeGenerator:
    """Recipes from an LLM: a vllm node on cf-orch, else the local router."""

    def _get_llm_context(self) -> Any:
        """An allocation context (not entered), or ``nullcontext(None)`` without cf-orch."""
        cf_orch_url = orch_url()
        if cf_orch_url:
            try:
                return OrchClient(cf_orch_url).allocate(
                    _SERVICE, model_candidates=_MODEL_CANDIDATES, ttl_s=_TTL_S, caller=_CALLER
                )
            except Exception as exc:
                log.debug("recipe: no cf-orch client: %s", exc)
        return contextlib.nullcontext(None)

    @shim.shadow(
        product="kiwi",
        task="recipe_generation",
        request=lambda self, prompt: TaskRequest(prompt=prompt),
        response=lambda result: result.text,
        legacy_model=_MODEL_CANDIDATES[0],
        output=KIWI_RECIPE,  # sections and lists, not JSON
    )
    def _call_llm(self, prompt: str) -> str:
        """The model's reply to ``prompt``, or "" on any failure."""
        ctx = self._get_llm_context()
        try:
            try:
                alloc = ctx.__enter__()
            except Exception as exc:
                log.debug("recipe: allocation failed, using the local router: %s", exc)
                ctx, alloc = None, None
            if alloc is None:
                return LocalRouter().complete(prompt)
            base = alloc.url.rstrip("/") + "/v1"
            model = alloc.model or "__auto__"
            if model == "__auto__":
                model = nodes.get(f"{base}/models").json()["data"][0]["id"]
            reply = nodes.post(
                f"{base}/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": prompt}]},
            )
            reply.raise_for_status()
            return str(reply.json()["choices"][0]["message"]["content"] or "")
        except Exception:
            log.error("LLM call failed", exc_info=True)
            return ""
        finally:
            if ctx is not None:
                with contextlib.suppress(Exception):
                    ctx.__exit__(None, None, None)

    def generate(self, req: RecipeRequest, gaps: list[str] | None = None) -> RecipeResult:
        """One suggestion parsed from the model's reply, or none."""
        gaps = list(gaps or [])
        reply = self._call_llm(build_recipe_prompt(req, gaps))
        if not reply:
            return RecipeResult(suggestions=[], element_gaps=gaps)
        parsed = parse_recipe(reply)
        directions = [
            re.sub(r"^(\d+[.)]|[-*])\s*", "", line).strip()
            for line in str(parsed["directions"]).splitlines()
        ]
        pantry = {p.lower() for p in req.pantry_items}
        missing = [
            item
            for item in parsed["ingredients"]
            if item.lower() not in pantry and _QUANTITY.sub("", item).lower() not in pantry
        ]
        suggestion = RecipeSuggestion(
            title=str(parsed["title"]) or "LLM Recipe",
            missing_ingredients=missing,
            directions=[d for d in directions if d],
            notes=str(parsed["notes"]),
            level=req.level,
            is_wildcard=req.level == 4,
        )
        return RecipeResult(suggestions=[suggestion], element_gaps=gaps)


def parse_recipe(text: str) -> dict[str, Any]:
    """``{title, ingredients (a list), directions (newline-joined), notes}`` from the
    four sections; markdown emphasis is ignored, other headers are plain lines."""
    found: dict[str, list[str]] = {name: [] for name in _SECTIONS}
    current: str | None = None
    for raw in text.splitlines():
        line = re.sub(r"\*{1,2}([^*]+)\*{1,2}", r"\1", raw).strip()
        head, colon, rest = line.partition(":")
        if colon and head.lower() in _SECTIONS:
            current = head.lower()
            line = rest.strip()
        elif current is None:
            if line and ":" not in line and 2 <= len(line.split()) <= 10 and not found["title"]:
                found["title"].append(line)
            continue
        if line and current is not None:
            found[current].append(line)
    ingredients = " ".join(found["ingredients"]).split(",")
    return {
        "title": " ".join(found["title"]),
        "ingredients": [i.strip() for i in ingredients if i.strip()],
        "directions": "\n".join(found["directions"]),
        "notes": " ".join(found["notes"]),
    }
