"""Kiwi's receipt OCR: cf-docuvision first, the local vision model otherwise.

``try_docuvision(image)`` is the cf-orch call site. Before the migration it allocates a
cf-docuvision node directly and posts the image to the node's ``/extract``; any
failure, or no text, is ``None`` and the receipt goes to the local model. Wrapped as
``kiwi.ocr``: the task path sends the image (``images=``, hint ``text``) and maps the
task result to the same ``str | None``. A legacy ``None`` is a legacy failure (the
shim's default soft-failure rule), never a match.

``VisionLanguageOCR.extract_receipt_data`` is what the app calls; it is not wrapped.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from shim import TaskRequest
from shim.comparators import KIWI_RECEIPT

from .docuvision_client import DocuvisionClient
from .local_llm import LocalVision
from .migration import image_b64, orch_url, shim
from .orch_client import OrchClient

__all__ = ["RECEIPT_PROMPT", "VisionLanguageOCR", "parse_json_from_text", "try_docuvision"]

log = logging.getLogger(__name__)

_SERVICE = "cf-docuvision"
_MODEL_CANDIDATES = ["cf-docuvision"]
_TTL_S = 60.0
_CALLER = "kiwi-ocr"

RECEIPT_PROMPT = (
    "You are a receipt OCR specialist. Return a single JSON object: merchant {name, "
    "address, phone}; transaction {date YYYY-MM-DD, time HH:MM:SS, receipt_number, "
    "register, cashier}; items [{name, quantity, unit_price, total_price, category, "
    "tax_code, discount}]; totals {subtotal, tax, discount, total, payment_method, "
    "amount_paid, change}; confidence {overall, merchant, items, totals} (0.0-1.0). "
    "Extract ALL items, use null for unknown fields, prices as numbers, JSON only."
)
_SKELETON: dict[str, Any] = {
    "merchant": {},
    "transaction": {},
    "items": [],
    "totals": {},
    "confidence": {"overall": 0.1},
}


@shim.shadow(
    product="kiwi",
    task="ocr",
    request=lambda image_path: TaskRequest(  # a vision node reads the prompt, a
        prompt=RECEIPT_PROMPT,  # document node the image and the hint
        images=(image_b64(image_path),),
        params={"hint": "text"},
    ),
    response=lambda result: result.text or None,
    output=KIWI_RECEIPT,  # shapes, and the content field by field (money within 1 %)
    legacy_model=_MODEL_CANDIDATES[0],
)
def try_docuvision(image_path: str | Path | bytes) -> str | None:
    """The receipt's text from a cf-docuvision node, or None (no cf-orch, a failure, or
    nothing read)."""
    cf_orch_url = orch_url()
    if not cf_orch_url:
        return None
    try:
        with OrchClient(cf_orch_url).allocate(
            _SERVICE, model_candidates=_MODEL_CANDIDATES, ttl_s=_TTL_S, caller=_CALLER
        ) as alloc:
            if alloc is None:
                return None
            result = DocuvisionClient(alloc.url).extract_text(image_path)
            return result.text or None
    except Exception as exc:
        log.debug("docuvision fast path failed, falling back to the local VLM: %s", exc)
        return None


class VisionLanguageOCR:
    """Receipt data from an image: docuvision's text when it parses, else the local VLM."""

    def __init__(self, vision: LocalVision | None = None) -> None:
        self._vision = vision or LocalVision()

    def extract_receipt_data(self, image_path: str | Path | bytes) -> dict[str, Any]:
        """``{merchant, transaction, items, totals, confidence, raw_text, ...}``, or the
        same keys with ``error`` when extraction failed."""
        text = try_docuvision(image_path)
        if text:
            parsed = parse_json_from_text(text)
            if parsed.get("items") or parsed.get("merchant"):
                parsed["raw_text"] = text
                return _validate(parsed)
        try:
            text = self._vision.read([image_path], RECEIPT_PROMPT)
            parsed = parse_json_from_text(text)
            parsed["raw_text"] = text
            return _validate(parsed)
        except Exception as exc:
            log.error("receipt extraction failed", exc_info=True)
            return {
                "error": str(exc),
                **{k: v for k, v in _SKELETON.items() if k != "confidence"},
                "confidence": {"overall": 0.0},
                "warnings": [f"Extraction failed: {exc}"],
            }


def parse_json_from_text(text: str) -> dict[str, Any]:
    """The JSON object from the first ``{`` to the last ``}``, mended once (trailing
    commas, single quotes); the empty skeleton when nothing parses. Never raises."""
    found = re.search(r"\{.*\}", text, re.S)
    if found is None:
        return copy.deepcopy(_SKELETON)
    for candidate in (found.group(0), _fix_json(found.group(0))):
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return dict(value)
    return copy.deepcopy(_SKELETON)


def _fix_json(text: str) -> str:
    return re.sub(r",\s*([}\]])", r"\1", text).replace("'", '"')


def _validate(result: dict[str, Any]) -> dict[str, Any]:
    """Kiwi's checks, in place: missing sections, item totals, subtotal, date."""
    warnings: list[str] = []
    for key in ("merchant", "transaction", "items", "totals", "confidence"):
        if key not in result:
            result[key] = [] if key == "items" else {}
            warnings.append(f"Missing required field: {key}")
    items, totals = result["items"], result["totals"]
    if not items:
        warnings.append("No items found on receipt")
    for item in items:
        if item.get("total_price") is None and item.get("unit_price") and item.get("quantity"):
            item["total_price"] = item["unit_price"] * item["quantity"]
    if items and totals:
        calculated = sum(item.get("total_price") or 0 for item in items)
        if abs(calculated - (totals.get("subtotal") or 0)) > 0.10:
            warnings.append(f"Total mismatch: items sum to {calculated:.2f}")
            totals["calculated_subtotal"] = calculated
    date = (result.get("transaction") or {}).get("date")
    if date:
        try:
            datetime.strptime(date, "%Y-%m-%d")
        except (TypeError, ValueError):
            warnings.append(f"Invalid date format: {date}")
    if warnings:
        result["warnings"] = warnings
    if not result["confidence"]:
        result["confidence"] = dict.fromkeys(("overall", "merchant", "items", "totals"), 0.5)
    return result
