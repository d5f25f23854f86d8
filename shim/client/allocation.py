"""Allocation steps without I/O: ask for a node, hold it, give it back.

``allocate_steps`` asks with exactly kiwi's body and learns the node's model when the
answer does not name one; ``release_steps`` gives the allocation back and never raises;
``holding`` runs other steps while an allocation is held, releasing it if they fail.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import TypeVar
from urllib.parse import quote, urlsplit

import structlog

from shim.client.protocol import (
    AllocationReply,
    Call,
    Exchange,
    Reply,
    ask,
    detail,
    listed_model,
    node_headers,
)
from shim.client.task import TaskAllocation

__all__ = ["allocate_steps", "granted", "holding", "node_of", "release_steps"]

_log = structlog.get_logger("shim")
T = TypeVar("T")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def granted(ex: Exchange, answer: AllocationReply, started: float) -> TaskAllocation:
    """The allocation the coordinator granted; ``service`` is the exchange's hint when
    the answer names none, ``latency_ms`` runs from ``started`` to now."""
    return TaskAllocation(
        url=answer.url,
        allocation_id=answer.allocation_id,
        service=answer.service or ex.hint,
        node_id=answer.node_id,
        gpu_id=answer.gpu_id,
        model=answer.model,
        started=answer.started,
        warm=answer.warm,
        latency_ms=(ex.clock() - started) * 1000,
    )


def node_of(ex: Exchange, alloc: TaskAllocation) -> tuple[str, dict[str, str]]:
    """The allocation's node URL and the headers a call to it carries. TaskFailed for a
    URL that paths cannot be appended to: not http(s), no host, a query or fragment
    (which would swallow the path), spaces or control characters."""
    node = alloc.url.rstrip("/")
    if not _appendable(node):
        raise ex.fail(
            "the coordinator's node URL is not an http(s) URL with a host that a path can "
            "be added to (no query, fragment, spaces or control characters)",
            None,
        )
    return node, node_headers(ex, node, alloc.allocation_id)


def _appendable(url: str) -> bool:
    """``url`` is an http(s) URL with a host, that a path can be added to."""
    if _PRINTABLE.fullmatch(url) is None or "?" in url or "#" in url:
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it checks its range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def holding(
    ex: Exchange, alloc: TaskAllocation, steps: Generator[Call, Reply, T]
) -> Generator[Call, Reply, T]:
    """``steps``, run while ``alloc`` is held: if they fail (or are cancelled), the
    allocation is given back before the error goes on."""
    try:
        return (yield from steps)
    except BaseException:
        yield from release_steps(ex, alloc)
        raise


def allocate_steps(ex: Exchange) -> Generator[Call, Reply, TaskAllocation]:
    """Ask for an allocation with exactly kiwi's body; learn its model from the node
    when the answer does not name one. The caller uses the node, then releases it."""
    started = ex.clock()
    body = {"product": ex.product, "task": ex.task, "payload": {}}
    answer, status = yield from ask(ex, body)
    if not isinstance(answer, AllocationReply):
        raise ex.fail("coordinator answered with output, not an allocation", status)
    alloc = granted(ex, answer, started)
    if alloc.model is None:  # a node that lists no models (a document node) leaves it None
        model = yield from holding(ex, alloc, _node_model(ex, alloc))
        alloc = granted(ex, answer.model_copy(update={"model": model}), started)
    return alloc


def _node_model(ex: Exchange, alloc: TaskAllocation) -> Generator[Call, Reply, str | None]:
    """The first model the allocation's node lists; a node URL or id that cannot be
    used fails here, inside :func:`holding`, so the allocation is still given back."""
    return (yield from listed_model(*node_of(ex, alloc)))


def release_steps(ex: Exchange, alloc: TaskAllocation) -> Generator[Call, Reply, None]:
    """Give the allocation back; a failure here is logged and told to the exchange's
    hook, never raised."""
    error: str | None = None
    if not alloc.service:
        error = (
            "the coordinator's answer names no service and no service_hint was given, "
            "so the allocation cannot be released (it lasts until its TTL): "
            "pass service_hint="
        )
    elif not (_segment(alloc.service) and _segment(alloc.allocation_id)):
        error = (
            "the allocation's service or id is empty, '.' or '..', which would send the "
            "release (and the key) to another path: not released (it lasts until its TTL)"
        )
    else:
        service, allocation_id = _segment(alloc.service), _segment(alloc.allocation_id)
        try:
            reply = yield Call(
                "DELETE",
                f"{ex.base}/api/services/{service}/allocations/{allocation_id}",
                None,
                ex.auth,
                release=True,
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if reply.status >= 300:
                said = detail(reply.content, redact=ex.redact)
                error = f"coordinator answered {reply.status}: {said}"
    if error is not None:
        error = ex.redact(error)  # what the log and the hook get: decoded text
        _log.warning(
            "shim.release_failed",
            product=ex.product,
            task=ex.task,
            allocation_id=alloc.allocation_id,
            error=error,
        )
        if ex.hook is not None:
            try:
                ex.hook(ex.product, ex.task, alloc.allocation_id, error)
            except Exception as exc:  # a hook that fails must not turn a release into a raise
                _log.warning("shim.release_hook_failed", error=f"{type(exc).__name__}: {exc}")


def _segment(value: str) -> str:
    """``value`` as one path segment, every reserved character percent-encoded ("/"
    and "?" included); empty for a value that would not stay one segment (empty, "."
    or "..", which a server resolves to the parent path)."""
    if value in ("", ".", ".."):
        return ""
    return quote(value, safe="")
