"""Kiwi's client for a cf-docuvision node: an image in, the text it reads out.

Written for this project from the protocol fact sheet (kiwi's
``app/services/ocr/docuvision_client.py``, newer wire contract):
``POST {base_url}/extract`` with ``{"image_b64", "hint"}``; the answer's ``raw_text``
is the text, ``metadata.confidence`` the confidence. HTTP errors propagate
(``httpx.HTTPStatusError``).
"""

from __future__ import annotations

import base64
import functools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["DocuvisionClient", "DocuvisionResult"]


@functools.cache
def _tls() -> ssl.SSLContext:
    # One TLS context for this module's short-lived clients: httpx otherwise builds one
    # per client (tens of milliseconds of CPU each, under the GIL).
    return httpx.create_ssl_context()


@dataclass
class DocuvisionResult:
    """What a docuvision node read: ``text``, its ``confidence`` if it gave one, and the
    whole answer as ``raw``."""

    text: str
    confidence: float | None = None
    raw: dict[str, Any] | None = None


class DocuvisionClient:
    """A docuvision node at ``base_url`` (an allocation's ``url``).

    Hints: ``"text"`` (dense prose, receipts, recipe cards), ``"table"``, ``"form"``,
    ``"auto"``.
    """

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _body(self, image: str | Path | bytes, hint: str) -> dict[str, str]:
        # The file's bytes as they are: the node decodes the image format itself.
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return {"image_b64": base64.b64encode(data).decode("ascii"), "hint": hint}

    @staticmethod
    def _result(resp: httpx.Response) -> DocuvisionResult:
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        metadata = data.get("metadata") or {}
        return DocuvisionResult(
            text=data.get("raw_text", ""), confidence=metadata.get("confidence"), raw=data
        )

    def extract_text(self, image: str | Path | bytes, hint: str = "text") -> DocuvisionResult:
        """Read ``image`` (a file path, or the image's raw bytes)."""
        with httpx.Client(timeout=self.timeout, verify=_tls()) as client:
            resp = client.post(f"{self.base_url}/extract", json=self._body(image, hint))
        return self._result(resp)

    async def extract_text_async(
        self, image: str | Path | bytes, hint: str = "text"
    ) -> DocuvisionResult:
        """:meth:`extract_text` for async code."""
        body = self._body(image, hint)
        async with httpx.AsyncClient(timeout=self.timeout, verify=_tls()) as client:
            resp = await client.post(f"{self.base_url}/extract", json=body)
        return self._result(resp)
