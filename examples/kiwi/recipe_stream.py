"""Kiwi's streamed recipe: ``POST /recipes/stream-token`` authorises a stream of the
recipe's completion with the coordinator, and the browser reads it from there.

Not wrapped: streaming call sites are later work (the shim would compare time to first
token and chunks, not a finished value). Until then it calls
``coordinator_authorize`` as kiwi does, on every stage of the other tasks' flags.
"""

from __future__ import annotations

from .coordinator_proxy import StreamTokenResult, coordinator_authorize, read_stream
from .llm_recipe import RecipeRequest, build_recipe_prompt

__all__ = ["stream_recipe", "stream_token"]


async def stream_token(req: RecipeRequest) -> StreamTokenResult:
    """Kiwi's stream-token route: where and with which token the browser streams the
    recipe. Raises ``CoordinatorError`` (``status_code`` 401, 429 or 503)."""
    return await coordinator_authorize(
        prompt=build_recipe_prompt(req), caller="kiwi-recipe", ttl_s=300
    )


async def stream_recipe(req: RecipeRequest) -> str:
    """The whole recipe as the browser receives it: a token, then the stream's text."""
    return await read_stream(await stream_token(req))
