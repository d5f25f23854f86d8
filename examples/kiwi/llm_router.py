"""Kiwi's meal-plan router: an LLM for the planner, held on a cf-text node.

``get_meal_plan_router()`` returns ``(router, ctx)`` with ``ctx`` already entered: the
caller keeps it open while it uses the router (for the plan, then the timing estimate)
and then calls ``ctx.__exit__(None, None, None)``, which releases the node. Before the
migration the tiers are: a direct allocation of cf-text, else the local router.

Wrapped with ``allocation="entered"``: when the task path serves, the node comes from
``POST /api/inference/task`` (``kiwi.meal_plan``) and the returned ``ctx`` releases it;
in shadow, legacy's pair is returned as is and the task path's allocation is compared
with it and released at once.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager
from typing import Any

from .local_llm import LOCAL_MODEL, LocalRouter
from .migration import nodes, orch_url, shim
from .orch_client import OrchClient

__all__ = ["OrchTextRouter", "get_meal_plan_router"]

log = logging.getLogger(__name__)

_SERVICE_TYPE = "cf-text"
_TTL_S = 120.0
_CALLER = "kiwi-meal-plan"

_TIMEOUT_S = 60.0


class OrchTextRouter:
    """The local router's interface over an allocated cf-text node's OpenAI API."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url.rstrip("/")
        self.model = self._node_model()  # an allocation holds one model: ask once

    def _node_model(self) -> str:
        """The node's model: the first of ``/v1/models``, else "local"."""
        try:
            reply = nodes.get(f"{self._base_url}/v1/models", timeout=_TIMEOUT_S)
            reply.raise_for_status()
            return str(reply.json()["data"][0]["id"])
        except Exception:
            return LOCAL_MODEL

    def complete(
        self,
        system: str = "",
        user: str = "",
        max_tokens: int = 512,
        temperature: float = 0.7,
        **_kwargs: Any,
    ) -> str:
        """One chat completion: the system message (if any) and the user's."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        reply = nodes.post(
            f"{self._base_url}/v1/chat/completions",
            timeout=_TIMEOUT_S,
            json={
                "model": self.model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": temperature,
            },
        )
        reply.raise_for_status()
        return str(reply.json()["choices"][0]["message"]["content"] or "")


def _router_model(legacy: Any) -> str | None:
    """The model legacy's router talks to (the pair's router, or the router itself)."""
    router = legacy[0] if isinstance(legacy, tuple) else legacy
    return getattr(router, "model", None)


@shim.shadow(
    product="kiwi",
    task="meal_plan",
    allocation="entered",  # returns (router, ctx), ctx entered and holding the node
    response=lambda alloc: OrchTextRouter(alloc.url),  # the task path's node -> a router
    legacy_model=_router_model,  # the model legacy's router talks to
    service_hint=_SERVICE_TYPE,  # cf-text: where to release when the coordinator won't say
)
def get_meal_plan_router() -> tuple[OrchTextRouter | LocalRouter, AbstractContextManager[Any]]:
    """``(router, ctx)`` for the meal planner; ``ctx`` is entered: exit it when done.

    A direct allocation of cf-text when ``CF_ORCH_URL`` is set, else (or when that
    fails) the local router with a ``nullcontext``.
    """
    cf_orch_url = orch_url()
    if cf_orch_url:
        try:
            ctx = OrchClient(cf_orch_url).allocate(_SERVICE_TYPE, ttl_s=_TTL_S, caller=_CALLER)
            alloc = ctx.__enter__()
            if alloc is not None:
                return OrchTextRouter(alloc.url), ctx
            ctx.__exit__(None, None, None)
        except Exception as exc:
            log.debug("meal plan: cf-orch allocation failed, using the local router: %s", exc)
    return LocalRouter(), contextlib.nullcontext(None)
