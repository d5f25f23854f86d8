"""Allocation steps without I/O: ask for a node, hold it, give it back.

``allocate_steps`` asks with exactly kiwi's body and learns the node's model when the
answer does not name one; ``release_steps`` gives the allocation back and never raises;
``holding`` runs other steps while an allocation is held, releasing it if they fail.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

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
    """The allocation's node URL and the headers a call to it carries."""
    node = alloc.url.rstrip("/")
    return node, node_headers(ex, node, alloc.allocation_id)


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
        model = yield from holding(ex, alloc, listed_model(*node_of(ex, alloc)))
        alloc = granted(ex, answer.model_copy(update={"model": model}), started)
    return alloc


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
    else:
        try:
            reply = yield Call(
                "DELETE",
                f"{ex.base}/api/services/{alloc.service}/allocations/{alloc.allocation_id}",
                None,
                ex.auth,
                release=True,
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if reply.status >= 300:
                error = f"coordinator answered {reply.status}: {detail(reply.content)}"
    if error is not None:
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
