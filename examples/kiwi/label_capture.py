"""Kiwi's label capture: after a barcode kiwi does not know, a vision model reads the
product's nutrition label into a dict.

Kiwi reads labels with a vision model in process today, not through cf-orch; this is
the async shape its cf-orch clients offer (``allocate_async``), for ``kiwi.barcode_scan``
once the label read moves onto the coordinator, and the one async call site here.

``extract_label(image)`` is async. Before the migration it allocates a cf-vision node
directly and sends the photo as an ``image_url`` data-URL part to the node's chat API;
any failure is a zero-confidence placeholder, so the app asks the user to review it.
Wrapped as ``kiwi.barcode_scan``: the task path sends the photo (``images=``) with the
same prompt and parses the reply the same way. The placeholder is a legacy failure
(``soft_failure=``: confidence 0), never a match.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx

from shim import TaskRequest

from .local_llm import LocalVision
from .migration import TLS, image_b64, orch_url, shim
from .orch_client import OrchClient

__all__ = ["LABEL_PROMPT", "extract_label", "parse_label", "placeholder_label"]

log = logging.getLogger(__name__)

_SERVICE = "cf-vision"
_MODEL_CANDIDATES = ["florence-2-large"]
_TTL_S = 60.0
_CALLER = "kiwi-label-capture"
_NUMBERS = (
    "serving_size_g",
    "calories",
    "fat_g",
    "saturated_fat_g",
    "carbs_g",
    "sugar_g",
    "fiber_g",
    "protein_g",
    "sodium_mg",
)
LABEL_PROMPT = (
    "Read this product's nutrition label. Reply with one JSON object only: "
    f"product_name, brand, {', '.join(_NUMBERS)} (numbers or null), ingredient_names "
    "(a list), allergens (a list), confidence (0.0-1.0, how sure you are)."
)


def placeholder_label() -> dict[str, Any]:
    """What the app gets when the label could not be read: empty, confidence 0."""
    return {
        "product_name": None,
        "brand": None,
        **dict.fromkeys(_NUMBERS),
        "ingredient_names": [],
        "allergens": [],
        "confidence": 0.0,
        "needs_review": True,
    }


def parse_label(text: str) -> dict[str, Any]:
    """The model's label JSON, fences stripped, lists forced, confidence clamped to 0..1;
    the placeholder when it does not parse."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        label = json.loads(text)
        if not isinstance(label, dict):
            raise ValueError("the label is not a JSON object")
        for key in ("ingredient_names", "allergens"):
            value = label.get(key)
            label[key] = value if isinstance(value, list) else [] if value is None else [value]
        label["confidence"] = min(1.0, max(0.0, float(label.get("confidence") or 0.0)))
    except (TypeError, ValueError) as exc:
        log.debug("label reply did not parse: %s", exc)
        return placeholder_label()
    label["needs_review"] = label["confidence"] < 0.7
    return label


@shim.shadow(
    product="kiwi",
    task="barcode_scan",
    request=lambda image: TaskRequest(prompt=LABEL_PROMPT, images=(image_b64(image),)),
    response=lambda result: parse_label(result.text),
    legacy_model=_MODEL_CANDIDATES[0],
    soft_failure=lambda label: label.get("confidence", 0) == 0,
)
async def extract_label(image: bytes) -> dict[str, Any]:
    """The label's fields (``product_name``, nutrients, ``allergens``, ``confidence``,
    ``needs_review``); a zero-confidence placeholder on any failure."""
    cf_orch_url = orch_url()
    if not cf_orch_url:
        return parse_label(LocalVision().read([image], LABEL_PROMPT))
    content = [
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image_b64(image)}"}},
        {"type": "text", "text": LABEL_PROMPT},
    ]
    try:
        async with (
            OrchClient(cf_orch_url).allocate_async(
                _SERVICE, model_candidates=_MODEL_CANDIDATES, ttl_s=_TTL_S, caller=_CALLER
            ) as alloc,
            httpx.AsyncClient(timeout=60.0, verify=TLS) as http,
        ):
            reply = await http.post(
                f"{alloc.url.rstrip('/')}/v1/chat/completions",
                json={
                    "model": alloc.model or "local",
                    "messages": [{"role": "user", "content": content}],
                    "max_tokens": 512,
                    "temperature": 0.0,
                },
            )
            reply.raise_for_status()
            return parse_label(str(reply.json()["choices"][0]["message"]["content"] or ""))
    except Exception as exc:
        log.debug("label capture failed: %s", exc)
        return placeholder_label()
