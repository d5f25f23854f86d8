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

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ._bodies import ChatBody, ExtractBody, system_prompt, user_prompt
from ._outputs import as_text, asks_for_timing, extract_kind
from ._profile import NodeSpec
from ._state import SimAllocation, SimState, error, usage
from ._streams import sse_chunks

__all__ = ["EXTRACT_SERVICES", "node_routes"]

#: Services whose nodes answer ``POST /extract``.
EXTRACT_SERVICES = frozenset({"cf-docuvision", "cf-vision"})

Target = tuple[NodeSpec, SimAllocation | None]
AllocHeader = Annotated[str | None, Header()]


def node_routes(state: SimState) -> APIRouter:
    """The node routes over ``state``, both addressing styles."""
    router = APIRouter()

    def target(node_id: str, in_path: str | None, in_header: str | None) -> Target | Response:
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

    def models(node_id: str, in_path: str | None, in_header: str | None) -> Response:
        found = target(node_id, in_path, in_header)
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

    async def chat(
        node_id: str, in_path: str | None, in_header: str | None, body: ChatBody
    ) -> Response:
        state.count("requests.chat")
        found = target(node_id, in_path, in_header)
        if isinstance(found, Response):
            return found
        node, alloc = found
        name = body.model or (alloc.model if alloc else None)
        registered = state.lookup(name) if name else None
        if alloc is not None and (registered is None or registered[0] != alloc.model):
            return error(
                404, "model_not_found", f"The model `{name}` does not exist on {alloc.id}."
            )
        if registered is None or registered[1].service_type not in node.services:
            return error(404, "model_not_loaded", f"{name} is not served by {node_id}")
        model_id = registered[0]
        task = alloc.task if alloc else state.task_of_model(model_id, None, None)
        via_task = alloc is not None and alloc.via_task
        s = state.profile.settings(task, legacy=not via_task)
        if (failure := await state.fault(s, "node")) is not None:
            return failure
        timing = asks_for_timing(system_prompt(body.messages))
        kind = "timing" if timing else state.kind_of(task, model_id)
        content = as_text(await state.produce(s, kind, node_id, model_id, drift=via_task))
        chat_id = state.next_id("chatcmpl")
        if body.stream:
            return StreamingResponse(
                iter(list(sse_chunks(content, model_id, chat_id))), media_type="text/event-stream"
            )
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

    async def extract(
        node_id: str, in_path: str | None, in_header: str | None, body: ExtractBody
    ) -> Response:
        state.count("requests.extract")
        found = target(node_id, in_path, in_header)
        if isinstance(found, Response):
            return found
        node, alloc = found
        service = alloc.service if alloc else "cf-docuvision"
        if service not in EXTRACT_SERVICES or service not in node.services:
            return error(404, "not_found", f"{service} on {node_id} has no /extract")
        try:
            base64.b64decode(body.image_b64, validate=True)
        except (binascii.Error, ValueError):
            return error(422, "bad_image", "image_b64 is not base64")
        model_id = alloc.model if alloc else _first_model(state, service)
        task = alloc.task if alloc else None
        via_task = alloc is not None and alloc.via_task
        s = state.profile.settings(task, legacy=not via_task)
        if (failure := await state.fault(s, "node")) is not None:
            return failure
        output = await state.produce(s, extract_kind(task), node_id, model_id, drift=via_task)
        confidence = round(0.75 + 0.24 * state.rng.random(), 3)
        meta: dict[str, Any] = {"confidence": confidence, "hint": body.hint, "model": model_id}
        return state.reply({"raw_text": as_text(output), "metadata": meta}, s)

    @router.get("/nodes/{node_id}/a/{allocation_id}/v1/models")
    async def allocation_models(node_id: str, allocation_id: str) -> Response:
        return models(node_id, allocation_id, None)

    @router.get("/nodes/{node_id}/v1/models")
    async def node_models(node_id: str, x_allocation_id: AllocHeader = None) -> Response:
        return models(node_id, None, x_allocation_id)

    @router.post("/nodes/{node_id}/a/{allocation_id}/v1/chat/completions")
    async def allocation_chat(
        node_id: str, allocation_id: str, body: ChatBody, x_allocation_id: AllocHeader = None
    ) -> Response:
        return await chat(node_id, allocation_id, x_allocation_id, body)

    @router.post("/nodes/{node_id}/v1/chat/completions")
    async def node_chat(
        node_id: str, body: ChatBody, x_allocation_id: AllocHeader = None
    ) -> Response:
        return await chat(node_id, None, x_allocation_id, body)

    @router.post("/nodes/{node_id}/a/{allocation_id}/extract")
    async def allocation_extract(
        node_id: str, allocation_id: str, body: ExtractBody, x_allocation_id: AllocHeader = None
    ) -> Response:
        return await extract(node_id, allocation_id, x_allocation_id, body)

    @router.post("/nodes/{node_id}/extract")
    async def node_extract(
        node_id: str, body: ExtractBody, x_allocation_id: AllocHeader = None
    ) -> Response:
        return await extract(node_id, None, x_allocation_id, body)

    return router


def _first_model(state: SimState, service: str) -> str:
    found = state.default_model(service)
    return found[0] if found else service
