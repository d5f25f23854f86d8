"""Kiwi's streamed recipe: ``POST /recipes/stream-token`` authorises a stream of the
recipe's completion with the coordinator, and the browser reads it from there.

:func:`stream_recipe_chunks` is that flow as one streaming call site, an async
generator of the recipe's text chunks, wrapped for ``kiwi.recipe_generation``: legacy
is the coordinator's stream (``/proxy/authorize``, then ``/proxy/stream``), compared
with the task path's recipe once the stream ends (``KIWI_RECIPE``, section by section),
with the time to its first chunk in the record. Where the flags say the task path
serves, the browser gets the node's stream as it comes; one that breaks after its
first chunk raises kiwi's ``CoordinatorError`` (502), as kiwi's own stream would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from shim import TaskRequest
from shim.comparators import KIWI_RECIPE

from .coordinator_proxy import (
    CoordinatorError,
    StreamTokenResult,
    coordinator_authorize,
    stream_chunks,
)
from .llm_recipe import RecipeRequest, build_recipe_prompt
from .migration import shim

__all__ = ["stream_recipe", "stream_recipe_chunks", "stream_token"]


async def stream_token(req: RecipeRequest) -> StreamTokenResult:
    """Kiwi's stream-token route: where and with which token the browser streams the
    recipe. Raises ``CoordinatorError`` (``status_code`` 401, 429 or 503)."""
    return await coordinator_authorize(
        prompt=build_recipe_prompt(req), caller="kiwi-recipe", ttl_s=300
    )


@shim.shadow(
    product="kiwi",
    task="recipe_generation",
    request=lambda req: TaskRequest(prompt=build_recipe_prompt(req)),
    response=lambda result: result.text,
    output=KIWI_RECIPE,
    # served by the task path, a stream that breaks mid-way is kiwi's own error
    stream_error=lambda exc: CoordinatorError(str(exc), status_code=502),
)
async def stream_recipe_chunks(req: RecipeRequest) -> AsyncIterator[str]:
    """The recipe's text as the browser receives it, chunk by chunk: a token, then the
    stream's chunks."""
    async for chunk in stream_chunks(await stream_token(req)):
        yield chunk


async def stream_recipe(req: RecipeRequest) -> str:
    """The whole streamed recipe."""
    return "".join([chunk async for chunk in stream_recipe_chunks(req)])
