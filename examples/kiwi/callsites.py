"""Kiwi's cf-orch call sites, each wrapped with task-shim.

Every function here was a plain legacy call: an explicit model and service type sent to
``POST /api/inference`` (or an allocation from ``/api/services/{service}/allocate``).
The decorator leaves that path exactly as it was and lets the flags move each task,
call by call, onto ``POST /api/inference/task``:

- ``TextRouter.complete(system, user, ...)``: the sync text router (recipe_generation)
- ``plan_week(pantry, user_id=...)``: parses the model's JSON meal plan (meal_plan)
- ``generate_recipe(dish, pantry, user_id=...)``: sectioned recipe text
- ``scan_receipt(image_b64)``: receipt OCR returning a dict (ocr, vision)
- ``scan_barcode(image_b64)``: async barcode scan (barcode_scan, vision)
- ``recipe_stream(user_id)``: async stream authorisation, a context manager that holds
  a text node while the stream runs (recipe_generation)
- ``receipt_node(receipts)``: a context manager that yields a vision allocation (ocr)

Configuration comes from the environment (``CF_ORCH_URL``, ``SHIM_FLAGS``, ``SHIM_LOG``,
``SHIM_REGISTRY``, ``SHIM_ASSIGNMENTS``), as in production.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx

from comparators import KIWI_RECIPE
from shim import Shim, TaskRequest, TaskResult

shim = Shim.from_env()

_orch = httpx.Client(base_url=os.environ["CF_ORCH_URL"], timeout=30.0)
_aorch: dict[int, httpx.AsyncClient] = {}


def _async_client() -> httpx.AsyncClient:
    """One async client per event loop (an httpx.AsyncClient belongs to its loop)."""
    loop = id(asyncio.get_running_loop())
    client = _aorch.get(loop)
    if client is None:
        client = _aorch[loop] = httpx.AsyncClient(base_url=os.environ["CF_ORCH_URL"])
    return client


async def aclose() -> None:
    """Before an event loop ends: finish its comparisons, close its HTTP client."""
    await shim.aflush()
    client = _aorch.pop(id(asyncio.get_running_loop()), None)
    if client is not None:
        await client.aclose()


def close() -> None:
    """At shutdown: write every comparison, close the HTTP clients."""
    shim.close()
    _orch.close()


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

RECIPE_SYSTEM = "You write recipes: Title, Ingredients, Directions, Notes."


@shim.shadow(
    product="kiwi",
    task="recipe_generation",
    request=lambda dish, pantry, *, user_id: TaskRequest(
        prompt=f"{dish}, using: {', '.join(pantry)}", system=RECIPE_SYSTEM
    ),
    response=lambda result: result.text,
    legacy_model="ByteDance/Ouro-1.4B",
    output=KIWI_RECIPE,
    key=lambda dish, pantry, *, user_id: user_id,
)
def generate_recipe(dish: str, pantry: list[str], *, user_id: str) -> str:
    """A recipe as sectioned text: ``Title:``, ``Ingredients:`` (a list), ``Directions:``
    (numbered steps), ``Notes:``."""
    text = _legacy(
        "ByteDance/Ouro-1.4B",
        "recipe_generation",
        prompt=f"{dish}, using: {', '.join(pantry)}",
        system=RECIPE_SYSTEM,
    )
    return str(text)


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
    reply = await _async_client().post(
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


@shim.shadow(
    product="kiwi",
    task="ocr",
    allocation=True,  # the call site yields an allocation; the shim compares allocations
    request=lambda receipts: TaskRequest(prompt="Read these receipts.", params={"n": receipts}),
    legacy_model=lambda alloc: alloc["model"],
)
@contextmanager
def receipt_node(receipts: int) -> Iterator[dict[str, Any]]:
    """A document-vision node held for a batch of receipts, released on exit:
    ``{url, allocation_id, service, model, ...}``."""
    reply = _orch.post(
        "/api/services/cf-docuvision/allocate", json={"model": "docuvision-receipts"}
    )
    reply.raise_for_status()
    alloc: dict[str, Any] = reply.json()
    try:
        yield alloc
    finally:
        _orch.delete(f"/api/services/cf-docuvision/allocations/{alloc['allocation_id']}")


@shim.shadow(
    product="kiwi",
    task="recipe_generation",
    allocation=True,
    request=lambda user_id: TaskRequest(prompt="Stream a recipe.", system=RECIPE_SYSTEM),
    legacy_model=lambda alloc: alloc["model"],
    key=lambda user_id: user_id,
)
@asynccontextmanager
async def recipe_stream(user_id: str) -> AsyncIterator[dict[str, Any]]:
    """Authorise a recipe stream, async: a text node held while the user's stream runs
    (the app streams from ``url`` with ``allocation_id``), released when it ends."""
    client = _async_client()
    reply = await client.post("/api/services/vllm/allocate", json={"model": "ByteDance/Ouro-1.4B"})
    reply.raise_for_status()
    grant: dict[str, Any] = reply.json()
    try:
        yield grant
    finally:
        await client.delete(f"/api/services/vllm/allocations/{grant['allocation_id']}")
