"""Kiwi's one Shim, built from the environment, and the process's shutdown hooks.

Every call-site module decorates with this ``shim``. Configuration is production's:
``CF_ORCH_URL``, ``CF_LICENSE_KEY``, ``SHIM_FLAGS``, ``SHIM_LOG``, ``SHIM_REGISTRY``,
``SHIM_ASSIGNMENTS``. With ``CF_ORCH_URL`` unset (kiwi's local mode) the Shim is
disabled: each wrapped call site runs its legacy body and nothing else.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx

from shim import Shim

__all__ = ["TLS", "aclose", "close", "image_b64", "nodes", "orch_url", "shim"]

shim = Shim.from_env()

#: One TLS context for the example's short-lived HTTP clients: httpx builds a new one
#: for every client otherwise (tens of milliseconds of CPU each, under the GIL).
TLS = httpx.create_ssl_context()

#: One connection pool for the sync calls to allocated nodes' OpenAI APIs (kiwi makes a
#: client per call; a pool halves the CPU each call costs). Closed by :func:`close`.
nodes = httpx.Client(timeout=120.0, verify=TLS)


def orch_url() -> str:
    """``CF_ORCH_URL`` without a trailing slash, or "" in local mode (read per call, as
    kiwi does, so a call site follows the environment it runs in)."""
    return os.environ.get("CF_ORCH_URL", "").rstrip("/")


def image_b64(image: str | Path | bytes) -> str:
    """An image (a path or its bytes) as base64 of its bytes, unchanged."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")


def close() -> None:
    """At shutdown: write every comparison still queued, close the node pool."""
    shim.close()
    nodes.close()


async def aclose() -> None:
    """At the end of a long-lived event loop (an ASGI app's shutdown): finish the
    comparisons started on it now (with asyncio.run per job this is not needed: the
    loop's end waits for them)."""
    await shim.aflush()
