"""A node for a product's task, held while the caller works: kiwi's ``task_allocate``
signature with the body it replaces.

Call sites that talk to a node themselves (the recipe scanner posts pages to a
cf-docuvision node's ``/extract``) ask ``allocate_for(product, task, service_hint=...)``
for an :class:`~examples.kiwi.task_inference.Allocation`. Before the migration the body
allocates the hinted service directly, with the candidates kiwi hardcoded for it.

Wrapped once for every task: ``product``, ``task`` and ``service_hint`` come from the
call's arguments, so each call is decided, compared and recorded under its own task.
When the task path serves, the shim allocates with ``POST /api/inference/task`` (kiwi's
body) and yields an ``Allocation`` too (built from the return annotation), released when
the ``with`` block ends. Once every task is live, ``allocate_for`` becomes
``task_inference.task_allocate``: same arguments, same allocation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shim import TaskRequest

from .migration import orch_url, shim
from .orch_client import OrchClient
from .task_inference import Allocation

__all__ = ["LEGACY_MODELS", "allocate_for"]

#: The model candidates kiwi sent for each service before the task endpoint.
LEGACY_MODELS: dict[str, list[str]] = {
    "cf-docuvision": ["cf-docuvision"],
    "cf-vision": ["qwen2.5-vl-7b-instruct"],
    "cf-text": ["qwen2.5-3b-instruct"],
    "vllm": ["Ouro-2.6B-Thinking", "Ouro-1.4B"],
}


def _legacy_model(alloc: Allocation) -> str | None:
    candidates = LEGACY_MODELS.get(alloc.service)
    return candidates[0] if candidates else None


@shim.shadow(
    product=lambda product, task, **_: product,
    task=lambda product, task, **_: task,
    allocation=True,  # a context manager yielding an Allocation
    request=lambda product, task, **_: TaskRequest(),
    legacy_model=_legacy_model,
    service_hint=lambda product, task, *, service_hint, **_: service_hint,
)
@contextmanager
def allocate_for(
    product: str, task: str, *, service_hint: str, ttl_s: float = 120.0
) -> Iterator[Allocation]:
    """A ``service_hint`` node for ``product.task``, released when the block ends.

    Raises (on entry) when cf-orch is not configured or has no node to give.
    """
    client = OrchClient(orch_url())
    with client.allocate(
        service_hint,
        model_candidates=LEGACY_MODELS.get(service_hint),
        ttl_s=ttl_s,
        caller=f"{product}-{task.replace('_', '-')}",
    ) as node:
        yield Allocation(url=node.url, allocation_id=node.allocation_id, service=node.service)
