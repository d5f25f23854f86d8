"""Inference steps without I/O: one request on the task path, answered by the
coordinator itself or completed on the node it allocates (a chat completion, or
``/extract`` on a document node), the allocation released either way."""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic

from shim.base.errors import TaskFailed
from shim.client.allocation import granted, holding, node_of, release_steps
from shim.client.protocol import (
    Call,
    Exchange,
    OutputReply,
    Reply,
    WireModel,
    ask,
    detail,
    listed_model,
)
from shim.client.sse import SSEError, arrived_by, read_completion_stream
from shim.client.task import TaskAllocation, TaskRequest, TaskResult

__all__ = [
    "EXTRACT_SERVICES",
    "NodeStream",
    "infer_steps",
    "node_refused",
    "open_steps",
    "streamed",
]

#: Services whose nodes read documents at ``POST {url}/extract`` instead of chatting.
EXTRACT_SERVICES = frozenset({"cf-docuvision"})

M = TypeVar("M", bound=WireModel)


# -- what is sent ---------------------------------------------------------------------


def _task_body(ex: Exchange, req: TaskRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"product": ex.product, "task": ex.task}
    if req.images:
        # Images go to the node, never through the coordinator: a coordinator that
        # answered the prompt itself would answer without them. An allocation, then,
        # asked for with kiwi's body (the prompt goes to the node with the images).
        payload = {} if req.payload is None else req.payload
        return body | {"payload": payload, "mode": "allocate"}
    for key in ("prompt", "system", "payload", "mode"):
        value = getattr(req, key)
        if value is not None:
            body[key] = value
    if req.params:
        body["params"] = dict(req.params)
    if ex.stream:  # the node streams: an allocation, whatever the request carries
        body["mode"] = "allocate"
    return body


_IMAGE_TYPES = (("iVBOR", "image/png"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))


def _data_url(image: str) -> str:
    """A base64 image as a ``data:`` URL (a given ``data:`` URL is kept)."""
    if image.startswith("data:"):
        return image
    kind = next((k for prefix, k in _IMAGE_TYPES if image.startswith(prefix)), "image/jpeg")
    return f"data:{kind};base64,{image}"


def _b64(image: str) -> str:
    """The base64 part of an image (a ``data:`` URL's payload)."""
    return image.split(",", 1)[1] if image.startswith("data:") else image


def _chat_body(req: TaskRequest, model: str | None) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    text = req.prompt or ""
    if req.payload is None and not req.images:
        messages.append({"role": "user", "content": text})
    else:
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": _data_url(image)}} for image in req.images
        ]
        parts.append({"type": "text", "text": text})
        if req.payload is not None:
            parts.append({"type": "text", "text": json.dumps(req.payload, ensure_ascii=False)})
        messages.append({"role": "user", "content": parts})
    body: dict[str, Any] = {
        k: v for k, v in req.params.items() if k != "hint"
    }  # ``hint`` is a document node's
    body["messages"] = messages
    if model:
        body["model"] = model
    return body


# -- what the node answers ------------------------------------------------------------


class _Message(WireModel):
    content: str | None = None


class _Choice(WireModel):
    message: _Message


class _Completion(WireModel):
    model: str | None = None
    choices: list[_Choice] = pydantic.Field(min_length=1)
    usage: dict[str, Any] | None = None


class _Extracted(WireModel):
    raw_text: str


def _node_answer(ex: Exchange, reply: Reply, where: str, kind: type[M], shape: str) -> M:
    """The node's reply as ``kind``; TaskFailed for an error status, malformed JSON, or
    a body that is not ``shape``."""
    if reply.status >= 300:
        raise node_refused(ex, where, reply.status, reply.content)
    data = ex.parse(reply, "node")
    try:
        return kind.model_validate(data)
    except pydantic.ValidationError:
        raise ex.fail(f"node reply {shape}", reply.status) from None


def _model(
    alloc: TaskAllocation, node: str, headers: Mapping[str, str]
) -> Generator[Call, Reply, str | None]:
    """The allocation's model, else the first the node lists (None if it lists none)."""
    if alloc.model is not None:
        return alloc.model
    return (yield from listed_model(node, headers))


# -- the exchange ---------------------------------------------------------------------


def _complete(
    ex: Exchange, req: TaskRequest, alloc: TaskAllocation, started: float
) -> Generator[Call, Reply, TaskResult]:
    """Run the request on the allocated node: ``/extract`` or a chat completion."""
    node, headers = node_of(ex, alloc)
    where = alloc.node_id or node

    def result(output: Any, model: str | None, usage: Any = None) -> TaskResult:
        latency = (ex.clock() - started) * 1000
        return TaskResult(
            output, model, alloc.service, alloc.node_id, alloc.allocation_id, latency, usage
        )

    if alloc.service in EXTRACT_SERVICES:
        if not req.images:
            raise ex.fail(f"{alloc.service} reads images: pass images=", None)
        hint = str(req.params.get("hint", "text"))
        texts = []
        for image in req.images:
            body = {"image_b64": _b64(image), "hint": hint}
            reply = yield Call("POST", f"{node}/extract", body, headers)
            texts.append(_node_answer(ex, reply, where, _Extracted, "has no raw_text").raw_text)
        # a document node may list its model; None if it does not
        model = yield from _model(alloc, node, headers)
        return result("\n\n".join(texts), model)
    model = yield from _model(alloc, node, headers)
    body = _chat_body(req, model)
    if ex.stream:
        streamed_body = body | {"stream": True, "stream_options": {"include_usage": True}}
        reply = yield Call(
            "POST", f"{node}/v1/chat/completions", streamed_body, headers, stream=True
        )
        return _streamed(ex, reply, where, started, alloc, model)
    reply = yield Call("POST", f"{node}/v1/chat/completions", body, headers)
    completion = _node_answer(ex, reply, where, _Completion, "is not a chat completion")
    content = completion.choices[0].message.content or ""
    return result(content, completion.model or model, completion.usage)


def _streamed(
    ex: Exchange, reply: Reply, where: str, started: float, alloc: TaskAllocation, model: str | None
) -> TaskResult:
    """A streamed chat completion's result: its text, pieces and time to first text."""
    if reply.status >= 300:
        raise node_refused(ex, where, reply.status, reply.content)
    try:
        said = read_completion_stream(reply.content)
    except SSEError as exc:
        raise ex.fail(f"node stream: {exc}", reply.status) from None
    first = None if said.first_end is None else arrived_by(reply.arrivals, said.first_end)
    said_model = said.model or model
    return streamed(ex, alloc, started, said.text, said.chunks, said_model, said.usage, first)


def node_refused(ex: Exchange, where: str, status: int, content: bytes) -> TaskFailed:
    """The error for a node that answered ``status`` (an error) with ``content``."""
    return ex.fail(f"node {where} answered {status}: {detail(content, redact=ex.redact)}", status)


@dataclass(frozen=True, slots=True)
class NodeStream:
    """A streamed completion ready to be read: the allocation it holds (given back
    once the stream is read or left), the call that opens the node's stream, the model
    asked for, the node as errors name it, and when the exchange started."""

    alloc: TaskAllocation
    call: Call
    model: str | None
    where: str
    started: float


def streamed(
    ex: Exchange,
    alloc: TaskAllocation,
    started: float,
    text: str,
    chunks: int,
    model: str | None,
    usage: Any,
    first: float | None,
) -> TaskResult:
    """The result of a stream on ``alloc`` that started at ``started``, read to its
    end: its text in ``chunks`` pieces, its model and usage, and when (``ex.clock()``)
    its first text came."""
    return TaskResult(
        text,
        model,
        alloc.service,
        alloc.node_id,
        alloc.allocation_id,
        (ex.clock() - started) * 1000,
        usage,
        None if first is None else (first - started) * 1000,
        chunks,
    )


def infer_steps(ex: Exchange, req: TaskRequest) -> Generator[Call, Reply, TaskResult]:
    """One inference: ask the coordinator; complete and release an allocation if given."""
    started = ex.clock()
    answer, _ = yield from ask(ex, _task_body(ex, req))
    if isinstance(answer, OutputReply):
        return _answered(ex, req, answer, started)
    alloc = granted(ex, answer, started)
    result = yield from holding(ex, alloc, _complete(ex, req, alloc, started))
    yield from release_steps(ex, alloc)
    return result


def open_steps(ex: Exchange, req: TaskRequest) -> Generator[Call, Reply, TaskResult | NodeStream]:
    """A streamed inference (``ex.stream``), up to the node's stream: the node stream
    to read, its allocation held (the reader gives it back), or a whole result that
    does not stream (the coordinator's own output; a document node's text)."""
    started = ex.clock()
    answer, _ = yield from ask(ex, _task_body(ex, req))
    if isinstance(answer, OutputReply):
        return _answered(ex, req, answer, started)
    alloc = granted(ex, answer, started)
    if alloc.service in EXTRACT_SERVICES:
        result = yield from holding(ex, alloc, _complete(ex, req, alloc, started))
        yield from release_steps(ex, alloc)
        return result
    return (yield from holding(ex, alloc, _node_stream(ex, req, alloc, started)))


def _node_stream(
    ex: Exchange, req: TaskRequest, alloc: TaskAllocation, started: float
) -> Generator[Call, Reply, NodeStream]:
    node, headers = node_of(ex, alloc)
    model = yield from _model(alloc, node, headers)
    # usage comes in a last chunk when asked for (OpenAI-compatible servers: vLLM,
    # llama.cpp, Ollama); one that does not know the option ignores it
    body = _chat_body(req, model) | {"stream": True, "stream_options": {"include_usage": True}}
    call = Call("POST", f"{node}/v1/chat/completions", body, headers, stream=True)
    return NodeStream(alloc, call, model, alloc.node_id or node, started)


def _answered(ex: Exchange, req: TaskRequest, answer: OutputReply, started: float) -> TaskResult:
    """The coordinator answered with output itself."""
    if req.images:  # made without them: not an answer to this request
        raise ex.fail(
            "answered output to a request with images (an allocation was asked for)", None
        )
    latency = (ex.clock() - started) * 1000
    return TaskResult(
        answer.output,
        answer.model,
        answer.service_type,
        answer.node_id,
        answer.allocation_id,
        latency,
        answer.usage,
        # asked to stream, the coordinator answered itself: one piece, all at once
        latency if ex.stream else None,
        1 if ex.stream else None,
    )
