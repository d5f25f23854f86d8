"""cf-orch's task protocol without I/O: what one inference or allocation sends, in order.

Each exchange is a generator that yields the HTTP calls it needs (:class:`Call`) and
receives their replies (:class:`Reply`), or the error they raised, thrown in. The sync
and async clients in ``_client.py`` only send and hand back.

The coordinator, as kiwi's code and tests describe it:

- ``POST /api/inference/task`` with ``{"product", "task", "payload": {}}`` answers an
  allocation ``{"url", "allocation_id", "service"?, ...}``; ``service`` is missing on
  coordinators before cf-orch#63, so the caller brings a ``service_hint``. A request
  that carries a prompt may be answered with output instead (this project's
  extension); either answer is accepted.
- The allocation is completed on the node: ``{url}/v1/models`` and
  ``{url}/v1/chat/completions`` (OpenAI-compatible), or ``POST {url}/extract`` on a
  ``cf-docuvision`` node; then released with
  ``DELETE /api/services/{service}/allocations/{allocation_id}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pydantic
import structlog

from shim.base.errors import TaskFailed, TaskNotRegistered
from shim.client.task import TaskAllocation, TaskRequest, TaskResult

__all__ = [
    "Call",
    "ReleaseHook",
    "Reply",
    "allocate_steps",
    "infer_steps",
    "release_steps",
]

_log = structlog.get_logger("shim")
#: ``(product, task, allocation_id, error)``: told of every allocation release that failed.
ReleaseHook = Callable[[str, str, str, str], None]
#: Services whose nodes read documents at ``POST {url}/extract`` instead of chatting.
EXTRACT_SERVICES = frozenset({"cf-docuvision"})


# -- wire formats ---------------------------------------------------------------------


class _Wire(pydantic.BaseModel):
    # Coordinators add fields over time; take what we know, ignore the rest.
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


class _OutputReply(_Wire):
    output: Any
    model: str | None = None
    service_type: str | None = None
    node_id: str | None = None
    allocation_id: str | None = None
    usage: dict[str, Any] | None = None


class _AllocationReply(_Wire):
    url: str
    allocation_id: str
    service: str | None = None
    node_id: str | None = None
    gpu_id: int | str | None = None
    model: str | None = None
    started: bool | None = None
    warm: bool | None = None


class _Message(_Wire):
    content: str | None = None


class _Choice(_Wire):
    message: _Message


class _Completion(_Wire):
    model: str | None = None
    choices: list[_Choice] = pydantic.Field(min_length=1)
    usage: dict[str, Any] | None = None


class _Extracted(_Wire):
    raw_text: str


# -- calls and replies ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call a step needs. ``release`` calls get their own short timeout,
    outside the exchange's deadline."""

    method: str
    url: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    release: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back: the status and the whole body."""

    status: int
    content: bytes


Steps = Generator[Call, Reply, Any]


def _detail(content: bytes) -> str:
    """A short, printable excerpt of an error body."""
    try:
        data = json.loads(content)
    except ValueError:
        return content[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            if isinstance(data.get(key), str):
                return str(data[key])[:200]
    return json.dumps(data)[:200]


def _fail(product: str, task: str, message: str, status: int | None) -> TaskFailed:
    return TaskFailed(f"{product}.{task}: {message}", product=product, task=task, status=status)


def _parse(reply: Reply, what: str, product: str, task: str) -> Any:
    try:
        return json.loads(reply.content)
    except ValueError as exc:
        raise _fail(product, task, f"{what} sent malformed JSON: {exc}", reply.status) from None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def _node_headers(
    base: str, node: str, auth: Mapping[str, str], allocation_id: str
) -> dict[str, str]:
    """Headers for a node call: the allocation's id, and the key only when the node is
    served from the coordinator's own origin (a proxied node): never to another host."""
    headers = {"X-Allocation-Id": allocation_id}
    if _origin(node) == _origin(base):
        headers.update(auth)
    return headers


def _task_body(product: str, task: str, req: TaskRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"product": product, "task": task}
    for key in ("prompt", "system", "payload", "mode"):
        value = getattr(req, key)
        if value is not None:
            body[key] = value
    if req.params:
        body["params"] = dict(req.params)
    return body  # images go to the node, never through the coordinator


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


# -- the exchanges --------------------------------------------------------------------


def _ask(
    base: str, body: dict[str, Any], product: str, task: str, auth: Mapping[str, str]
) -> Generator[Call, Reply, tuple[_OutputReply | _AllocationReply, int]]:
    """POST the task; the coordinator's output or allocation, and the reply status."""
    reply = yield Call("POST", f"{base}/api/inference/task", body, auth)
    if reply.status == 404:
        raise TaskNotRegistered(product=product, task=task, detail=_detail(reply.content))
    if reply.status >= 300:
        raise _fail(
            product,
            task,
            f"coordinator answered {reply.status}: {_detail(reply.content)}",
            reply.status,
        )
    data = _parse(reply, "coordinator", product, task)
    try:
        if isinstance(data, dict) and "output" in data:
            return _OutputReply.model_validate(data), reply.status
        return _AllocationReply.model_validate(data), reply.status
    except pydantic.ValidationError as exc:
        raise _fail(
            product,
            task,
            "coordinator reply has neither output nor an allocation "
            f"(url, allocation_id): {exc.error_count()} problem(s)",
            reply.status,
        ) from None


def _listed_model(
    base: str, node: str, headers: Mapping[str, str]
) -> Generator[Call, Reply, str | None]:
    """The first model the node lists (``/v1/models`` ``data[0]``), as kiwi reads it;
    None when the node does not say."""
    try:
        reply = yield Call("GET", f"{node}/v1/models", None, headers)
    except TaskFailed:
        return None
    if reply.status >= 300:
        return None
    try:
        first = json.loads(reply.content)["data"][0]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return first if isinstance(first, str) else None


def _granted(
    answer: _AllocationReply, hint: str | None, started: float, clock: Callable[[], float]
) -> TaskAllocation:
    return TaskAllocation(
        url=answer.url,
        allocation_id=answer.allocation_id,
        service=answer.service or hint,
        node_id=answer.node_id,
        gpu_id=answer.gpu_id,
        model=answer.model,
        started=answer.started,
        warm=answer.warm,
        latency_ms=(clock() - started) * 1000,
    )


def allocate_steps(
    base: str,
    product: str,
    task: str,
    auth: Mapping[str, str],
    hint: str | None = None,
    hook: ReleaseHook | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Generator[Call, Reply, TaskAllocation]:
    """Ask for an allocation with exactly kiwi's body; learn its model from the node
    when the answer does not name one. The caller uses the node, then releases it."""
    started = clock()
    body = {"product": product, "task": task, "payload": {}}
    answer, status = yield from _ask(base, body, product, task, auth)
    if not isinstance(answer, _AllocationReply):
        raise _fail(product, task, "coordinator answered with output, not an allocation", status)
    alloc = _granted(answer, hint, started, clock)
    if alloc.model is None:  # a node that lists no models (a document node) leaves it None
        node = alloc.url.rstrip("/")
        headers = _node_headers(base, node, auth, alloc.allocation_id)
        try:
            model = yield from _listed_model(base, node, headers)
        except BaseException:  # cancelled after the grant: give it back, then go
            yield from release_steps(base, product, task, alloc, auth, hook)
            raise
        alloc = _granted(answer.model_copy(update={"model": model}), hint, started, clock)
    return alloc


def _complete(
    base: str,
    product: str,
    task: str,
    req: TaskRequest,
    alloc: TaskAllocation,
    auth: Mapping[str, str],
    started: float,
    clock: Callable[[], float],
) -> Generator[Call, Reply, TaskResult]:
    """Run the request on the allocated node: ``/extract`` or a chat completion."""
    node = alloc.url.rstrip("/")
    headers = _node_headers(base, node, auth, alloc.allocation_id)
    where = alloc.node_id or node

    def check(reply: Reply, what: str) -> Any:
        if reply.status >= 300:
            raise _fail(
                product,
                task,
                f"node {where} answered {reply.status}: {_detail(reply.content)}",
                reply.status,
            )
        return _parse(reply, what, product, task)

    def result(output: Any, model: str | None, usage: Any = None) -> TaskResult:
        latency = (clock() - started) * 1000
        return TaskResult(
            output, model, alloc.service, alloc.node_id, alloc.allocation_id, latency, usage
        )

    if alloc.service in EXTRACT_SERVICES:
        if not req.images:
            raise _fail(product, task, f"{alloc.service} reads images: pass images=", None)
        hint = str(req.params.get("hint", "text"))
        texts = []
        for image in req.images:
            body = {"image_b64": _b64(image), "hint": hint}
            reply = yield Call("POST", f"{node}/extract", body, headers)
            try:
                texts.append(_Extracted.model_validate(check(reply, "node")).raw_text)
            except pydantic.ValidationError:
                raise _fail(product, task, "node reply has no raw_text", reply.status) from None
        model = alloc.model
        if model is None:  # a document node may list its model; None if it does not
            model = yield from _listed_model(base, node, headers)
        return result("\n\n".join(texts), model)
    model = alloc.model
    if model is None:
        model = yield from _listed_model(base, node, headers)
    reply = yield Call("POST", f"{node}/v1/chat/completions", _chat_body(req, model), headers)
    try:
        completion = _Completion.model_validate(check(reply, "node"))
    except pydantic.ValidationError:
        raise _fail(product, task, "node reply is not a chat completion", reply.status) from None
    content = completion.choices[0].message.content or ""
    return result(content, completion.model or model, completion.usage)


def infer_steps(
    base: str,
    product: str,
    task: str,
    req: TaskRequest,
    auth: Mapping[str, str],
    hook: ReleaseHook | None = None,
    hint: str | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Generator[Call, Reply, TaskResult]:
    """One inference: ask the coordinator; complete and release an allocation if given."""
    started = clock()
    answer, _ = yield from _ask(base, _task_body(product, task, req), product, task, auth)
    if isinstance(answer, _OutputReply):
        return TaskResult(
            answer.output,
            answer.model,
            answer.service_type,
            answer.node_id,
            answer.allocation_id,
            (clock() - started) * 1000,
            answer.usage,
        )
    alloc = _granted(answer, hint, started, clock)
    try:
        result = yield from _complete(base, product, task, req, alloc, auth, started, clock)
    except BaseException:
        yield from release_steps(base, product, task, alloc, auth, hook)
        raise
    yield from release_steps(base, product, task, alloc, auth, hook)
    return result


def release_steps(
    base: str,
    product: str,
    task: str,
    alloc: TaskAllocation,
    auth: Mapping[str, str],
    hook: ReleaseHook | None = None,
) -> Generator[Call, Reply, None]:
    """Give the allocation back; a failure here is logged and told to ``hook``, never
    raised."""
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
                f"{base}/api/services/{alloc.service}/allocations/{alloc.allocation_id}",
                None,
                auth,
                release=True,
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if reply.status >= 300:
                error = f"coordinator answered {reply.status}: {_detail(reply.content)}"
    if error is not None:
        _log.warning(
            "shim.release_failed",
            product=product,
            task=task,
            allocation_id=alloc.allocation_id,
            error=error,
        )
        if hook is not None:
            try:
                hook(product, task, alloc.allocation_id, error)
            except Exception as exc:  # a hook that fails must not turn a release into a raise
                _log.warning("shim.release_hook_failed", error=f"{type(exc).__name__}: {exc}")
