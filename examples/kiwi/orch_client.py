"""Direct allocation, kiwi's fallback tier: a node for a service, by model candidates.

This is what circuitforge-core's ``CFOrchClient`` does for kiwi, written for this
project from the protocol fact sheet:

- ``POST {coordinator}/api/services/{service}/allocate`` with exactly
  ``{"model_candidates": [...], "ttl_s": float, "caller": str}`` (timeout 120 s), with
  ``Authorization: Bearer <key>`` when a key is given or ``CF_LICENSE_KEY`` is set;
- the answer must carry ``allocation_id``, ``node_id``, ``gpu_id`` and ``url``;
  ``model``, ``started``, ``warm`` are optional; the allocation's ``service`` is the one
  asked for;
- on exit, always, ``DELETE .../api/services/{service}/allocations/{id}`` with the
  same header (timeout 10 s); a failed release is logged, never raised.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["NodeAllocation", "OrchClient"]


@functools.cache
def _tls() -> ssl.SSLContext:
    # One TLS context for this module's short-lived clients: httpx otherwise builds one
    # per client (tens of milliseconds of CPU each, under the GIL).
    return httpx.create_ssl_context()


_log = logging.getLogger(__name__)

_ALLOCATE_TIMEOUT_S = 120.0
_RELEASE_TIMEOUT_S = 10.0


@dataclass
class NodeAllocation:
    """A node allocated directly for a service (kiwi's code calls it ``Allocation``)."""

    allocation_id: str
    service: str
    node_id: str
    gpu_id: int
    model: str | None
    url: str
    started: bool
    warm: bool


class OrchClient:
    """cf-orch's direct-allocation API.

    ::

        client = OrchClient(os.environ["CF_ORCH_URL"])
        with client.allocate("cf-text", ttl_s=120.0, caller="kiwi-meal-plan") as alloc:
            ...  # OpenAI-compatible API at alloc.url + "/v1"

    ``api_key`` is sent as ``Authorization: Bearer``; None takes ``CF_LICENSE_KEY``
    (unset or empty: no header, as a self-hosted coordinator needs none).

    Errors: ``ValueError`` for an empty URL; ``RuntimeError`` for a non-2xx answer;
    transport errors (``httpx.RequestError``) and a malformed answer (``KeyError``,
    ``ValueError``) propagate as they are, as in kiwi's client.
    """

    def __init__(self, coordinator_url: str, api_key: str | None = None) -> None:
        if not coordinator_url:
            raise ValueError("coordinator_url is empty — cf-orch not configured")
        self.coordinator_url = coordinator_url.rstrip("/")
        self._key = api_key if api_key is not None else os.environ.get("CF_LICENSE_KEY", "")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def _allocate_url(self, service: str) -> str:
        return f"{self.coordinator_url}/api/services/{service}/allocate"

    def _release_url(self, alloc: NodeAllocation) -> str:
        return (
            f"{self.coordinator_url}/api/services/{alloc.service}/allocations/{alloc.allocation_id}"
        )

    @staticmethod
    def _body(model_candidates: list[str] | None, ttl_s: float, caller: str) -> dict[str, Any]:
        return {"model_candidates": list(model_candidates or []), "ttl_s": ttl_s, "caller": caller}

    @staticmethod
    def _parse(service: str, resp: httpx.Response) -> NodeAllocation:
        if not resp.is_success:
            raise RuntimeError(
                f"cf-orch allocation failed for {service!r}: "
                f"HTTP {resp.status_code} — {resp.text[:200]}"
            )
        data = resp.json()
        return NodeAllocation(
            allocation_id=data["allocation_id"],
            service=service,
            node_id=data["node_id"],
            gpu_id=data["gpu_id"],
            model=data.get("model"),
            url=data["url"],
            started=data.get("started", False),
            warm=data.get("warm", False),
        )

    @contextmanager
    def allocate(
        self,
        service: str,
        *,
        model_candidates: list[str] | None = None,
        ttl_s: float = 3600.0,
        caller: str = "",
    ) -> Iterator[NodeAllocation]:
        """Allocate a node running ``service`` (the first candidate model the
        coordinator can place; none: the service's default); release it on exit."""
        resp = httpx.post(
            self._allocate_url(service),
            json=self._body(model_candidates, ttl_s, caller),
            headers=self._headers(),
            timeout=_ALLOCATE_TIMEOUT_S,
            verify=_tls(),
        )
        alloc = self._parse(service, resp)
        try:
            yield alloc
        finally:
            try:
                httpx.delete(
                    self._release_url(alloc),
                    headers=self._headers(),
                    timeout=_RELEASE_TIMEOUT_S,
                    verify=_tls(),
                )
            except Exception as exc:  # the allocation expires on its TTL anyway
                _log.debug("cf-orch release failed (non-fatal): %s", exc)

    @asynccontextmanager
    async def allocate_async(
        self,
        service: str,
        *,
        model_candidates: list[str] | None = None,
        ttl_s: float = 3600.0,
        caller: str = "",
    ) -> AsyncIterator[NodeAllocation]:
        """:meth:`allocate` for async code; one client serves the allocation and its
        release."""
        async with httpx.AsyncClient(timeout=_ALLOCATE_TIMEOUT_S, verify=_tls()) as client:
            resp = await client.post(
                self._allocate_url(service),
                json=self._body(model_candidates, ttl_s, caller),
                headers=self._headers(),
            )
            alloc = self._parse(service, resp)
            try:
                yield alloc
            finally:
                try:
                    await client.delete(
                        self._release_url(alloc),
                        headers=self._headers(),
                        timeout=_RELEASE_TIMEOUT_S,
                    )
                except Exception as exc:  # the allocation expires on its TTL anyway
                    _log.debug("cf-orch async release failed (non-fatal): %s", exc)
