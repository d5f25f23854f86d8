"""Kiwi's recipe streaming: authorise a stream with the coordinator, read it as a browser
would.

Written for this project from the protocol fact sheet (kiwi's
``app/services/coordinator_proxy.py``). :func:`coordinator_authorize` posts
``{"product": "kiwi", "product_key", "caller", "prompt", "params": {}, "ttl_s"}`` to
``{COORDINATOR_URL}/proxy/authorize`` (timeout 10 s, no header: the key travels in the
body) and returns where and with which token the browser opens the stream. Kiwi's
frontend then opens an EventSource on ``{stream_url}?token={token}``;
:func:`stream_chunks` does the same from Python, chunk by chunk (kiwi's events:
``{"chunk": ...}``, then ``{"done": true}``, or ``{"error": ...}``).

Environment: ``COORDINATOR_URL`` (default ``CF_ORCH_URL``: unlike kiwi, no LAN address
is assumed), ``COORDINATOR_KIWI_KEY`` (the product key).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

__all__ = [
    "CoordinatorError",
    "StreamTokenResult",
    "coordinator_authorize",
    "read_stream",
    "stream_chunks",
]


@functools.cache
def _tls() -> ssl.SSLContext:
    # One TLS context for this module's short-lived clients: httpx otherwise builds one
    # per client (tens of milliseconds of CPU each, under the GIL).
    return httpx.create_ssl_context()


_log = logging.getLogger(__name__)

_AUTHORIZE_TIMEOUT_S = 10.0


class CoordinatorError(Exception):
    """Streaming is not available; ``status_code`` is the HTTP status kiwi's API answers
    with (401 bad key, 429 too many streams, 503 otherwise)."""

    def __init__(self, message: str, status_code: int = 503) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class StreamTokenResult:
    """Where the browser opens the stream, with which one-time token, for how long."""

    stream_url: str
    token: str
    expires_in_s: int


def _coordinator_url() -> str:
    return (os.environ.get("COORDINATOR_URL") or os.environ.get("CF_ORCH_URL", "")).rstrip("/")


async def coordinator_authorize(
    prompt: str, caller: str = "kiwi-recipe", ttl_s: int = 300
) -> StreamTokenResult:
    """Ask the coordinator for a stream of ``prompt``'s completion.

    Raises :class:`CoordinatorError`: 503 when the key or the URL is not configured or
    the coordinator is unreachable; 401 for an invalid key; 429 for too many concurrent
    streams; 503 for a 503 (no GPU) and for any other non-2xx. A 2xx answer that is not
    JSON or lacks a key raises ``ValueError`` / ``KeyError`` as it is, as kiwi's does.
    ``public_stream_url`` (a cloud coordinator's) is preferred over ``stream_url``.
    """
    key = os.environ.get("COORDINATOR_KIWI_KEY", "")
    if not key:
        raise CoordinatorError("COORDINATOR_KIWI_KEY env var is not set — streaming unavailable")
    base = _coordinator_url()
    if not base:
        raise CoordinatorError(
            "COORDINATOR_URL (or CF_ORCH_URL) is not set — streaming unavailable"
        )
    body = {
        "product": "kiwi",
        "product_key": key,
        "caller": caller,
        "prompt": prompt,
        "params": {},
        "ttl_s": ttl_s,
    }
    try:
        async with httpx.AsyncClient(timeout=_AUTHORIZE_TIMEOUT_S, verify=_tls()) as client:
            resp = await client.post(f"{base}/proxy/authorize", json=body)
    except httpx.RequestError as exc:
        _log.warning("coordinator unreachable: %s", exc)
        raise CoordinatorError(f"Coordinator unreachable: {exc}") from exc
    if resp.status_code == 401:
        raise CoordinatorError("Invalid product key", status_code=401)
    if resp.status_code == 429:
        raise CoordinatorError("Too many concurrent streams", status_code=429)
    if resp.status_code == 503:
        raise CoordinatorError("No GPU available for streaming", status_code=503)
    if not resp.is_success:
        raise CoordinatorError(f"Coordinator error {resp.status_code}: {resp.text[:200]}")
    data = resp.json()
    return StreamTokenResult(
        stream_url=data.get("public_stream_url") or data["stream_url"],
        token=data["token"],
        expires_in_s=data["expires_in_s"],
    )


async def stream_chunks(grant: StreamTokenResult, *, timeout: float = 60.0) -> AsyncIterator[str]:
    """Open the stream as kiwi's browser does (GET ``stream_url?token=...``, no header)
    and yield the text of each ``{"chunk": ...}`` event until ``{"done": true}``, as
    kiwi's frontend appends them. Raises :class:`CoordinatorError` with the status when
    the stream is refused (401 unknown token, 410 spent or expired), and with 502 for an
    ``{"error": ...}`` event. Events that are not JSON objects are skipped, as the
    frontend skips them."""
    async with (
        httpx.AsyncClient(timeout=timeout, verify=_tls()) as client,
        client.stream(
            "GET",
            grant.stream_url,
            params={"token": grant.token},
            headers={"Accept": "text/event-stream"},
        ) as resp,
    ):
        if not resp.is_success:
            detail = (await resp.aread()).decode("utf-8", "replace")[:200]
            raise CoordinatorError(
                f"stream refused: HTTP {resp.status_code}: {detail}", resp.status_code
            )
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, event names
            try:
                event = json.loads(line.removeprefix("data:").strip())
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if "error" in event:
                raise CoordinatorError(f"stream failed: {event['error']}", 502)
            if event.get("done"):
                return
            if isinstance(event.get("chunk"), str):
                yield event["chunk"]


async def read_stream(grant: StreamTokenResult, *, timeout: float = 60.0) -> str:
    """The whole text of the stream (:func:`stream_chunks`)."""
    return "".join([chunk async for chunk in stream_chunks(grant, timeout=timeout)])
