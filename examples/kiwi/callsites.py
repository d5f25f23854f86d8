"""Kiwi's cf-orch call sites, each wrapped with task-shim.

Every function here was a plain legacy call: an explicit model and service type sent to
``POST /api/inference``. The decorator leaves that path exactly as it was and lets the
flags move each task, call by call, onto ``POST /api/inference/task``.

Configuration comes from the environment (``CF_ORCH_URL``, ``SHIM_FLAGS``, ``SHIM_LOG``,
``SHIM_REGISTRY``, ``SHIM_ASSIGNMENTS``), as in production.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

from comparators import KIWI_RECIPE
from shim import Shim, TaskRequest, TaskResult

shim = Shim.from_env()

_orch = httpx.Client(base_url=os.environ["CF_ORCH_URL"], timeout=30.0)
_aorch: dict[int, httpx.AsyncClient] = {}


def _legacy(model: str, task: str, **body: Any) -> Any:
    # "product"/"task" only tell the simulator which kiwi shape to answer with.
    reply = _orch.post(
        "/api/inference", json={"model": model, "product": "kiwi", "task": task, **body}
    )
    reply.raise_for_status()
    return reply.json()["output"]


class TextRouter:
    """Kiwi's text router: one entry point for free-text generation."""

    model = "ByteDance/Ouro-1.4B"  # hardcoded on the vllm service until the migration

    @shim.shadow(
        product="kiwi",
        task="recipe_generation",
        request=lambda self, system, user, **params: TaskRequest(
            prompt=user, system=system, params=params
        ),
        response=lambda result: result.text,
        legacy_model=model,
        output=KIWI_RECIPE,  # sections and lists, not JSON
        key=lambda self, system, user, **params: params.get("user_id"),
    )
    def complete(self, system: str, user: str, **params: Any) -> str:
        """Recipe text with Title / Ingredients / Directions / Notes."""
        return str(_legacy(self.model, "recipe_generation", prompt=user, system=system))


router = TextRouter()


def _plan(result: TaskResult) -> list[dict[str, Any]]:
    plan = json.loads(result.text)  # what the legacy parser does with the model's text
    if not isinstance(plan, list):
        raise ValueError("meal plan is not a JSON array")
    return plan


@shim.shadow(
    product="kiwi",
    task="meal_plan",
    request=lambda pantry, *, user_id: TaskRequest(
        system="You plan a week of meals from a pantry. Answer with a JSON array.",
        prompt="Pantry: " + ", ".join(pantry),
    ),
    response=_plan,
    legacy_model="qwen2.5-3b-instruct",
    key=lambda pantry, *, user_id: user_id,
)
def plan_week(pantry: list[str], *, user_id: str) -> list[dict[str, Any]]:
    """A week's plan: ``[{day, meal_type, recipe_id, suggestion}, ...]``."""
    text = _legacy(
        "qwen2.5-3b-instruct",
        "meal_plan",
        system="You plan a week of meals from a pantry. Answer with a JSON array.",
        prompt="Pantry: " + ", ".join(pantry),
    )
    plan: list[dict[str, Any]] = json.loads(text)
    return plan


@shim.shadow(
    product="kiwi",
    task="ocr",
    request=lambda image_b64: TaskRequest(
        prompt="Read this receipt.", payload={"image_b64": image_b64}
    ),
    legacy_model="docuvision-receipts",
)
def scan_receipt(image_b64: str) -> dict[str, Any]:
    """Receipt OCR on the document-vision service: ``{merchant, items, totals, ...}``."""
    receipt: dict[str, Any] = _legacy(
        "docuvision-receipts", "ocr", payload={"image_b64": image_b64}
    )
    return receipt


@shim.shadow(
    product="kiwi",
    task="barcode_scan",
    request=lambda image_b64: TaskRequest(
        prompt="Decode this barcode.", payload={"image_b64": image_b64}
    ),
    legacy_model="florence-2-large",
)
async def scan_barcode(image_b64: str) -> dict[str, Any]:
    """Barcode lookup, async: ``{code, format, product}``."""
    import asyncio

    loop = id(asyncio.get_running_loop())
    client = _aorch.get(loop)
    if client is None:
        client = _aorch[loop] = httpx.AsyncClient(base_url=os.environ["CF_ORCH_URL"])
    reply = await client.post(
        "/api/inference",
        json={
            "model": "florence-2-large",
            "product": "kiwi",
            "task": "barcode_scan",
            "payload": {"image_b64": image_b64},
        },
    )
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()["output"]
    return result
