"""Tell a webhook of a rollout's decision: one JSON POST, a timeout, a few retries.

A receiver that fails (an error status, a refused connection, no answer in time, a URL
that cannot be used) is tried again after 0.5, 1 and 2 s; after the last try the
failure is returned, for the rollout to record, with the URL's user, password and query
left out. It never raises: a rollout does not stop for its webhook.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from shim.ops.rollout_plan import Webhook

__all__ = ["notify"]


def notify(
    hook: Webhook,
    body: dict[str, Any],
    *,
    redact: Callable[[str], str] = str,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """POST ``body`` to the hook; None when it answered 2xx, else what went wrong the
    last time (redacted: the URL may carry a token)."""
    data = redact(json.dumps(body, separators=(",", ":"))).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "task-shim/0.1"}
    secrets = _secrets(hook.url)
    error = "not sent"
    for attempt in range(hook.retries + 1):
        if attempt:
            sleep(min(2.0, 0.5 * 2 ** (attempt - 1)))
        try:
            reply = httpx.post(hook.url, content=data, headers=headers, timeout=hook.timeout)
        except Exception as exc:  # a URL httpx cannot use as well as a refused one
            error = f"{type(exc).__name__}: {exc}"
            continue
        if 200 <= reply.status_code < 300:
            return None
        error = f"answered {reply.status_code}"
    said = f"webhook {_shown(hook.url)}: {error} (after {hook.retries + 1} tries)"
    for secret in secrets:
        said = said.replace(secret, "[redacted]")
    return redact(said)


def _shown(url: str) -> str:
    """The URL without what may be a credential: user and password, query, fragment."""
    head, _, _ = url.partition("?")
    head = head.partition("#")[0]
    scheme, _, rest = head.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _secrets(url: str) -> tuple[str, ...]:
    """What of the URL may be a credential, to keep out of error messages too."""
    query = url.partition("?")[2].partition("#")[0]
    found = [part.partition("=")[2] for part in query.split("&") if "=" in part]
    auth = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    return tuple(s for s in (*found, auth) if len(s) >= 4)
