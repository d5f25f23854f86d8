"""Kiwi's task-based allocation: ask cf-orch's task endpoint for a node, release it after.

This is what kiwi's ``app/services/task_inference.py`` does, written for this project
from the protocol fact sheet:

- ``POST {CF_ORCH_URL}/api/inference/task`` with exactly
  ``{"product", "task", "payload": {}}`` (no TTL, no caller, no header), timeout 30 s;
- the answer is an allocation ``{"url", "allocation_id", "service"?, ...}``; a
  coordinator before cf-orch#63 sends no ``service``, so the caller supplies
  ``service_hint``;
- on exit, always, ``DELETE {CF_ORCH_URL}/api/services/{service}/allocations/{id}``
  (timeout 10 s); a failed release is logged, never raised.

It uses the module-level ``httpx.post`` / ``httpx.delete``, as kiwi does, so tests can
patch them here. It is synchronous: from async code, enter it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

__all__ = ["Allocation", "TaskNotRegistered", "task_allocate"]


@functools.cache
def _tls() -> ssl.SSLContext:
    # One TLS context for this module's short-lived clients: httpx otherwise builds one
    # per client (tens of milliseconds of CPU each, under the GIL).
    return httpx.create_ssl_context()


_log = logging.getLogger(__name__)

_ALLOCATE_TIMEOUT_S = 30.0
_RELEASE_TIMEOUT_S = 10.0


class TaskNotRegistered(Exception):
    """The coordinator answered 404: it has no assignment for this product and task.

    Fall back to a direct allocation (:class:`examples.kiwi.orch_client.OrchClient`).
    """


@dataclass(frozen=True)
class Allocation:
    """A node the coordinator allocated for a task: talk to it at ``url``."""

    url: str
    allocation_id: str
    service: str


def _orch_url() -> str:
    return os.environ.get("CF_ORCH_URL", "").rstrip("/")


@contextmanager
def task_allocate(
    product: str, task: str, *, service_hint: str, ttl_s: float = 120.0
) -> Iterator[Allocation]:
    """Allocate a node for ``product.task`` through the task endpoint; release on exit.

    All the work happens when the context is entered (creating it does nothing).
    ``ttl_s`` is accepted for kiwi's callers and not sent: the coordinator's task
    endpoint takes none. Raises, on enter:

    - ``RuntimeError`` naming ``CF_ORCH_URL`` when it is not set (no request made);
    - ``RuntimeError("cf-orch unreachable: ...")`` on a transport error or timeout;
    - :class:`TaskNotRegistered` on 404;
    - ``RuntimeError("... HTTP <code> ...")`` on any other non-2xx answer;
    - ``RuntimeError("... malformed response ...")`` when the answer is not JSON or
      lacks ``url`` / ``allocation_id`` (or is not a JSON object, which kiwi lets
      escape as a TypeError).
    """
    del ttl_s  # part of kiwi's signature; the task endpoint takes no TTL
    base = _orch_url()
    if not base:
        raise RuntimeError("CF_ORCH_URL is not set")
    try:
        resp = httpx.post(
            f"{base}/api/inference/task",
            json={"product": product, "task": task, "payload": {}},
            timeout=_ALLOCATE_TIMEOUT_S,
            verify=_tls(),
        )
    except httpx.RequestError as exc:
        raise RuntimeError(f"cf-orch unreachable: {exc}") from exc
    if resp.status_code == 404:
        raise TaskNotRegistered(
            f"{product}.{task} is not registered with cf-orch: add it to the coordinator's "
            "assignments (cf-orch#61/#62) and reload it, or allocate directly"
        )
    if not resp.is_success:
        raise RuntimeError(
            f"cf-orch /api/inference/task failed: HTTP {resp.status_code} — {resp.text[:200]}"
        )
    try:
        data = resp.json()
        alloc = Allocation(
            url=data["url"],
            allocation_id=data["allocation_id"],
            service=data.get("service") or service_hint,
        )
    except (KeyError, TypeError, ValueError) as exc:  # not JSON, not an object, no url
        raise RuntimeError(
            "cf-orch /api/inference/task returned malformed response: "
            f"{exc!r} — body: {resp.text[:200]}"
        ) from exc
    try:
        yield alloc
    finally:
        # A lost release is not the caller's problem: the allocation expires on the
        # coordinator's TTL.
        try:
            released = httpx.delete(
                f"{base}/api/services/{alloc.service}/allocations/{alloc.allocation_id}",
                timeout=_RELEASE_TIMEOUT_S,
                verify=_tls(),
            )
        except Exception as exc:
            _log.debug("cf-orch task allocation release failed (non-fatal): %s", exc)
        else:
            if not released.is_success:
                _log.debug(
                    "cf-orch task allocation release failed (non-fatal): HTTP %s",
                    released.status_code,
                )
