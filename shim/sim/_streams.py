"""Recipe streams: kiwi's stream authorisation and the server-sent events it opens.

``POST /proxy/authorize`` ``{product, product_key, caller, prompt, params, ttl_s}``
    answers ``{stream_url, token, expires_in_s}``: 401 for a bad product key (the
    simulator's ``product_key``; when it has none, any non-empty key passes), 429 when
    the profile's ``max_streams`` are held (a token holds a slot from authorisation until
    its stream ends, or until it expires unused), 503 when no node runs the service of
    ``{product}.recipe_generation`` (or a fault is injected on that task).
``GET /proxy/stream?token=...``
    The token in the query string, as a browser's EventSource sends it; no other
    credential. One use: a second one answers 410, as does an expired token; an unknown
    one 401. The body is ``text/event-stream`` as kiwi's browser reads it: events
    ``data: {"chunk": "..."}`` (a few words each), then ``data: {"done": true}``. The
    text is a recipe in kiwi's format, written by the task's model as kiwi streams it
    today: the legacy knobs apply (latency, ``ttft_ms`` before the first chunk,
    ``chunk_interval_ms`` between chunks), never drift.

A node's ``/v1/chat/completions`` with ``stream: true`` answers OpenAI
``chat.completion.chunk`` events (:func:`sse_chunks`: the text in
``choices[0].delta.content``, the first chunk carrying ``delta.role``, the last an empty
delta with ``finish_reason: "stop"``), then ``data: [DONE]``, paced the same way by the
knobs of the path it serves (:func:`paced`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ._bodies import AuthorizeBody, content_key
from ._outputs import as_text
from ._profile import Settings
from ._state import SimState, StreamGrant, error

__all__ = [
    "STREAM_TASK",
    "kiwi_events",
    "paced",
    "sse_chunks",
    "stream_routes",
    "stream_token_routes",
]

#: The task whose model writes authorised streams: ``{product}.recipe_generation``.
STREAM_TASK = "recipe_generation"

_PIECES = re.compile(r"\S+\s*|\s+")


def sse_chunks(
    text: str,
    model: str,
    chunk_id: str,
    *,
    words: int = 4,
    usage: dict[str, int] | None = None,
) -> Iterator[bytes]:
    """``text`` as OpenAI chat-completion chunk events, then (with ``usage``, as
    ``stream_options.include_usage`` asks) a chunk with no choices and the usage, then
    ``data: [DONE]``."""
    created = int(time.time())

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    yield event({"role": "assistant", "content": ""})
    pieces = _PIECES.findall(text)
    for start in range(0, len(pieces), words):
        yield event({"content": "".join(pieces[start : start + words])})
    yield event({}, "stop")
    if usage is not None:
        last = {"id": chunk_id, "object": "chat.completion.chunk", "created": created}
        last |= {"model": model, "choices": [], "usage": usage}
        yield f"data: {json.dumps(last)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def kiwi_events(text: str, *, words: int = 4) -> Iterator[bytes]:
    """``text`` as the events kiwi's browser reads: ``{"chunk"}``, then ``{"done"}``."""
    pieces = _PIECES.findall(text)
    for start in range(0, len(pieces), words):
        yield f"data: {json.dumps({'chunk': ''.join(pieces[start : start + words])})}\n\n".encode()
    yield b'data: {"done": true}\n\n'


async def paced(events: Iterator[bytes], s: Settings, *, cut: bool = False) -> AsyncIterator[bytes]:
    """``events``, the first after ``ttft_ms``, the others ``chunk_interval_ms`` apart;
    ``cut``: only the first half of them (a stream that breaks off, no end marker)."""
    if cut:
        whole = list(events)
        events = iter(whole[: max(1, len(whole) // 2)])
    wait = s.ttft_ms
    for event in events:
        if wait > 0:
            await asyncio.sleep(wait / 1000)
        yield event
        wait = s.chunk_interval_ms


def stream_token_routes(state: SimState, product_key: str | None) -> APIRouter:
    """``POST /proxy/authorize`` (behind the simulator's key, when it has one)."""
    router = APIRouter()

    @router.post("/proxy/authorize")
    async def authorize(body: AuthorizeBody, request: Request) -> Response:
        state.count("requests.authorize")
        given = body.product_key.encode()
        if not given or (
            product_key is not None and not hmac.compare_digest(given, product_key.encode())
        ):
            state.count("streams.refused.key")
            return error(401, "invalid_product_key", f"bad product key for {body.product}")
        task = f"{body.product}.{STREAM_TASK}"
        entry = state.config.resolve(task)
        if entry is None:
            return error(503, "no_gpu", f"{task} is not registered: nothing can stream")
        found = await state.place(
            task, entry.service_type, legacy=True, where="authorize", busy="no_gpu"
        )
        if isinstance(found, Response):
            return found
        _, placed = found
        grant = state.grant(
            body.product, body.caller, task, placed[0].id, entry.model, body.ttl_s, body.prompt
        )
        if grant is None:
            state.count("streams.refused.busy")
            limit = state.profile.max_streams
            return error(
                429, "too_many_streams", f"{limit} streams already held", **{"Retry-After": "1"}
            )
        state.count("streams.authorized")
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "stream_url": f"{base}/proxy/stream",
                "token": grant.token,
                "expires_in_s": math.ceil(body.ttl_s),
            }
        )

    return router


def stream_routes(state: SimState) -> APIRouter:
    """``GET /proxy/stream`` (guarded by its one-time token only)."""
    router = APIRouter()

    @router.get("/proxy/stream")
    async def stream(token: str = "") -> Response:
        claimed = state.claim(token)
        if isinstance(claimed, str):
            state.count("streams.refused.token")
            if claimed == "unknown":
                return error(401, "invalid_token", "unknown stream token")
            return error(410, "token_spent", f"stream token {claimed}")
        state.count("streams.opened")
        return StreamingResponse(_events(state, claimed), media_type="text/event-stream")

    return router


async def _events(state: SimState, grant: StreamGrant) -> AsyncIterator[bytes]:
    try:
        s = state.profile.settings(grant.task, legacy=True)
        kind = state.kind(grant.task)
        # the prompt decides the content, as on a node: the same recipe as the task path's
        key = content_key(grant.prompt)
        output = await state.produce(
            s, kind, grant.node_id, grant.model, drift=False, key=key, prompt=grant.prompt
        )
        text = as_text(output)
        cut = state.rng.random() < s.stream_cut_rate
        async for event in paced(kiwi_events(text), s, cut=cut):
            yield event
        state.count("streams.completed")
    finally:
        state.finish(grant)
