"""The nodes' routes: an OpenAI-compatible ``/v1`` and docuvision's ``/extract``.

Each allocation has its own base URL, ``/nodes/{node_id}/a/{allocation_id}``, so a
client needs nothing but the URL the coordinator handed out (kiwi sends no header):

``GET {url}/v1/models``
    exactly the allocation's model (kiwi takes ``data[0]``).
``POST {url}/v1/chat/completions``
    ``model`` may be left out (the allocation's is used) or name the allocation's model
    by id or alias; another model answers 404, as vLLM does. ``stream: true`` answers
    server-sent ``chat.completion.chunk`` events and ``data: [DONE]`` (see
    :func:`._streams.sse_chunks`). A system prompt asking for prep and cook minutes is
    answered with two integers on two lines, as kiwi's timing estimate expects.
``POST {url}/extract``
    ``{image_b64, hint}`` -> ``{raw_text, metadata: {confidence, ...}}``, on
    document-capable services (``cf-docuvision``, and ``cf-vision`` whose models read
    documents too: kiwi's OCR takes either). ``raw_text`` is a receipt as JSON text for
    ``ocr`` (and for a direct allocation without a task), a recipe card as OCR'd plain
    text for ``recipe_scan``.

The older node-wide routes ``/nodes/{node_id}/v1/...`` (and ``/extract``) keep working:
the allocation comes from an ``X-Allocation-Id`` header, or else the body's model
picks what to run; ``/v1/models`` there lists every model the node can serve.

Traffic on a released or expired allocation answers 409 naming which; an unknown one
404. Latency, fault and drift knobs apply to an allocation's traffic however it is
addressed: task-path allocations may drift, direct ones never do.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ._bodies import (
    ChatBody,
    ExtractBody,
    content_key,
    first_image,
    system_prompt,
    user_prompt,
)
from ._outputs import as_text, asks_for_timing, extract_kind
from ._profile import NodeSpec, Settings
from ._state import SimAllocation, SimState, error, usage
from ._streams import paced, sse_chunks

__all__ = ["EXTRACT_SERVICES", "node_routes"]

#: Services whose nodes answer ``POST /extract``.
EXTRACT_SERVICES = frozenset({"cf-docuvision", "cf-vision"})

Target = tuple[NodeSpec, SimAllocation | None]
AllocHeader = Annotated[str | None, Header()]


async def _target(  # async only so that FastAPI runs it on the loop, not in a thread
    request: Request, node_id: str, x_allocation_id: AllocHeader = None
) -> Target | Response:
    """The node a route addresses and the allocation its URL or ``X-Allocation-Id``
    names (None when neither does); or the error answer."""
    state: SimState = request.app.state.sim
    in_path = request.path_params.get("allocation_id")  # only an allocation's URL has it
    in_header = x_allocation_id
    node = state.nodes.get(node_id)
    if node is None:
        return error(404, "node_not_found", f"no node {node_id}")
    if in_path and in_header and in_path != in_header:
        return error(
            409, "allocation_mismatch", f"URL names {in_path}, X-Allocation-Id {in_header}"
        )
    wanted = in_path or in_header
    if not wanted:
        return node, None
    found = state.allocation(wanted)
    if isinstance(found, str):
        if found == "unknown":
            return error(404, "allocation_not_found", f"no allocation {wanted}")
        return error(409, "allocation_not_active", f"allocation {wanted} was {found}")
    if found.node_id != node_id:
        return error(409, "allocation_not_active", f"allocation {wanted} is not on {node_id}")
    return node, found


Found = Annotated[Target | Response, Depends(_target)]


def node_routes(state: SimState) -> APIRouter:
    """The node routes over ``state``, both addressing styles: the same routes at an
    allocation's base URL and at the node's."""
    routes = APIRouter()

    async def knobs(alloc: SimAllocation | None, task: str | None) -> Settings | Response:
        """The knobs for this traffic (an allocation's task path, else legacy), or the
        fault injected instead."""
        s = state.profile.settings(task, legacy=not _via_task(alloc))
        failure = await state.fault(s, "node")
        return s if failure is None else failure

    @routes.get("/v1/models")
    async def models(found: Found) -> Response:
        if isinstance(found, Response):
            return found
        node, alloc = found
        if alloc is not None:
            ids = [alloc.model]
        else:
            ids = [
                m
                for m, e in state.config.registry.models.items()
                if e.service_type in node.services
            ]
        data = [{"id": m, "object": "model", "owned_by": "cf-orch"} for m in ids]
        return JSONResponse({"object": "list", "data": data})

    @routes.post("/v1/chat/completions")
    async def chat(body: ChatBody, found: Found) -> Response:
        state.count("requests.chat")
        return found if isinstance(found, Response) else await complete(body, *found)

    @routes.post("/extract")
    async def extract(body: ExtractBody, found: Found) -> Response:
        state.count("requests.extract")
        return found if isinstance(found, Response) else await read(body, *found)

    async def complete(body: ChatBody, node: NodeSpec, alloc: SimAllocation | None) -> Response:
        name = body.model or (alloc.model if alloc else None)
        registered = state.lookup(name) if name else None
        if alloc is not None and (registered is None or registered[0] != alloc.model):
            return error(
                404, "model_not_found", f"The model `{name}` does not exist on {alloc.id}."
            )
        if registered is None or registered[1].service_type not in node.services:
            return error(404, "model_not_loaded", f"{name} is not served by {node.id}")
        model_id = registered[0]
        task = alloc.task if alloc else state.task_of_model(model_id, None, None)
        s = await knobs(alloc, task)
        if isinstance(s, Response):
            return s
        timing = asks_for_timing(system_prompt(body.messages))
        kind = "timing" if timing else state.kind_of(task, model_id)
        # a picture is what a vision model reads: the same one, the same content
        key = first_image(body.messages) or content_key(user_prompt(body.messages))
        output = await state.produce(
            s,
            kind,
            node.id,
            model_id,
            drift=_via_task(alloc),
            key=key,
            prompt=user_prompt(body.messages),
        )
        content = as_text(output)
        chat_id = state.next_id("chatcmpl")
        if body.stream:
            cut = state.rng.random() < s.stream_cut_rate
            if cut:
                state.count("streams.cut")
            counted = usage(user_prompt(body.messages), content)
            asked = bool((body.stream_options or {}).get("include_usage"))
            chunks = sse_chunks(content, model_id, chat_id, usage=counted if asked else None)
            events = paced(chunks, s, cut=cut)
            return StreamingResponse(events, media_type="text/event-stream")
        return state.reply(
            {
                "id": chat_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_id,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": usage(user_prompt(body.messages), content),
            },
            s,
        )

    async def read(body: ExtractBody, node: NodeSpec, alloc: SimAllocation | None) -> Response:
        service = alloc.service if alloc else "cf-docuvision"
        if service not in EXTRACT_SERVICES or service not in node.services:
            return error(404, "not_found", f"{service} on {node.id} has no /extract")
        try:
            base64.b64decode(body.image_b64, validate=True)
        except (binascii.Error, ValueError):
            return error(422, "bad_image", "image_b64 is not base64")
        model_id = alloc.model if alloc else _first_model(state, service)
        task = alloc.task if alloc else None
        s = await knobs(alloc, task)
        if isinstance(s, Response):
            return s
        drift = _via_task(alloc)
        key = content_key(body.image_b64)
        output = await state.produce(s, extract_kind(task), node.id, model_id, drift=drift, key=key)
        confidence = round(0.75 + 0.24 * state.rng.random(), 3)
        meta: dict[str, Any] = {"confidence": confidence, "hint": body.hint, "model": model_id}
        return state.reply({"raw_text": as_text(output), "metadata": meta}, s)

    router = APIRouter()
    router.include_router(routes, prefix="/nodes/{node_id}/a/{allocation_id}")
    router.include_router(routes, prefix="/nodes/{node_id}")
    return router


def _via_task(alloc: SimAllocation | None) -> bool:
    """The traffic is on a task-path allocation (which may drift; direct ones never do)."""
    return alloc is not None and alloc.via_task


def _first_model(state: SimState, service: str) -> str:
    found = state.default_model(service)
    return found[0] if found else service
