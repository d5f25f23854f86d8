"""The cf-orch task client: ``POST /api/inference/task`` as production will speak it.

The steps of one inference live in one generator, :func:`_steps`, that yields the HTTP
calls it needs and receives their replies (or the error they raised). It has no I/O, so
:class:`TaskClient` and :class:`AsyncTaskClient` are the same few lines each: send what
the steps ask for, hand back what came of it.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast

import httpx
import pydantic
import structlog

from ._errors import TaskFailed, TaskNotRegistered
from ._wire import TooLarge, Wire

__all__ = ["AsyncTaskClient", "TaskAllocation", "TaskClient", "TaskRequest", "TaskResult"]

_log = structlog.get_logger("shim")
T = TypeVar("T")
#: ``(product, task, allocation_id, error)``: told of every allocation release that failed.
ReleaseHook = Callable[[str, str, str, str], None]

#: Replies larger than this are refused rather than buffered.
MAX_REPLY_BYTES = 32 * 1024 * 1024
_USER_AGENT = "task-shim/0.1"


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What a call site asks of a task: the prompt and anything else the task takes.

    ``payload`` is any JSON value (a vision task's image, say); ``params`` are
    generation parameters (``temperature``, ``max_tokens``, ...). ``mode="allocate"``
    asks the coordinator for an allocation that the client completes itself.
    """

    prompt: str | None = None
    system: str | None = None
    payload: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    mode: Literal["output", "allocate"] | None = None


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What the task path produced, and where.

    ``output`` is a string or a JSON value, as the coordinator (or node) sent it;
    ``text`` is the same as a string. ``latency_ms`` runs from the first byte sent to
    the output received (an allocation's release is not included).
    """

    output: Any
    model: str | None
    service_type: str | None
    node_id: str | None
    allocation_id: str | None
    latency_ms: float
    usage: Mapping[str, Any] | None = None

    @property
    def text(self) -> str:
        """``output`` as a string: itself if it is one, else compact JSON."""
        if isinstance(self.output, str):
            return self.output
        return json.dumps(self.output, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class TaskAllocation:
    """An allocation the coordinator granted for a task: an OpenAI-compatible node at
    ``url`` holding ``model``, until :meth:`TaskClient.release`."""

    url: str
    allocation_id: str
    service: str | None
    node_id: str | None
    gpu_id: int | str | None
    model: str | None
    started: bool | None
    warm: bool | None
    latency_ms: float

    @property
    def service_type(self) -> str | None:
        """``service``, under the name a TaskResult uses."""
        return self.service

    def as_dict(self) -> dict[str, Any]:
        """The allocation as the coordinator's JSON names it."""
        return {
            "url": self.url,
            "allocation_id": self.allocation_id,
            "service": self.service,
            "node_id": self.node_id,
            "gpu_id": self.gpu_id,
            "model": self.model,
            "started": self.started,
            "warm": self.warm,
        }


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


# -- the steps of one inference, without I/O -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    url: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    release: bool = False  # a release has its own short timeout, outside the deadline


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    content: bytes


_Steps = Generator[_Call, _Reply, TaskResult]


def _task_body(product: str, task: str, req: TaskRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"product": product, "task": task}
    for key in ("prompt", "system", "payload", "mode"):
        value = getattr(req, key)
        if value is not None:
            body[key] = value
    if req.params:
        body["params"] = dict(req.params)
    return body


def _chat_body(req: TaskRequest, model: str | None) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    text = req.prompt or ""
    if req.payload is None:
        messages.append({"role": "user", "content": text})
    else:
        payload = json.dumps(req.payload, ensure_ascii=False)
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "text", "text": payload},
                ],
            }
        )
    body: dict[str, Any] = {**dict(req.params), "messages": messages}
    if model:
        body["model"] = model
    return body


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


def _parse(reply: _Reply, what: str, product: str, task: str) -> Any:
    try:
        return json.loads(reply.content)
    except ValueError as exc:
        raise _fail(product, task, f"{what} sent malformed JSON: {exc}", reply.status) from None


def _ask(
    base: str, product: str, task: str, req: TaskRequest, auth: Mapping[str, str]
) -> Generator[_Call, _Reply, tuple[_OutputReply | _AllocationReply, int]]:
    """POST the task; the coordinator's output or allocation, and the reply status."""
    reply = yield _Call("POST", f"{base}/api/inference/task", _task_body(product, task, req), auth)
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


def _steps(
    base: str,
    product: str,
    task: str,
    req: TaskRequest,
    auth: Mapping[str, str],
    hook: ReleaseHook | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> _Steps:
    """One inference: ask the coordinator; complete and release an allocation if given."""
    started = clock()

    def fail(message: str, status: int | None) -> TaskFailed:
        return _fail(product, task, message, status)

    answer, _ = yield from _ask(base, product, task, req, auth)
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
    alloc = answer

    node = alloc.url.rstrip("/")
    try:
        reply = yield _Call(
            "POST",
            f"{node}/v1/chat/completions",
            _chat_body(req, alloc.model),
            {"X-Allocation-Id": alloc.allocation_id},
        )
        if reply.status >= 300:
            raise fail(
                f"node {alloc.node_id or node} answered {reply.status}: {_detail(reply.content)}",
                reply.status,
            )
        try:
            completion = _Completion.model_validate(_parse(reply, "node", product, task))
        except pydantic.ValidationError:
            raise fail("node reply is not a chat completion", reply.status) from None
        result = TaskResult(
            completion.choices[0].message.content or "",
            completion.model or alloc.model,
            alloc.service,
            alloc.node_id,
            alloc.allocation_id,
            (clock() - started) * 1000,
            completion.usage,
        )
    except BaseException:
        yield from _release(base, product, task, alloc, auth, hook)
        raise
    yield from _release(base, product, task, alloc, auth, hook)
    return result


def _allocate_steps(
    base: str,
    product: str,
    task: str,
    req: TaskRequest,
    auth: Mapping[str, str],
    clock: Callable[[], float] = time.perf_counter,
) -> Generator[_Call, _Reply, TaskAllocation]:
    """Ask for an allocation only: the caller uses the node and then releases it."""
    started = clock()
    asked = TaskRequest(req.prompt, req.system, req.payload, req.params, mode="allocate")
    answer, status = yield from _ask(base, product, task, asked, auth)
    if not isinstance(answer, _AllocationReply):
        raise _fail(product, task, "coordinator answered with output, not an allocation", status)
    return TaskAllocation(
        url=answer.url,
        allocation_id=answer.allocation_id,
        service=answer.service,
        node_id=answer.node_id,
        gpu_id=answer.gpu_id,
        model=answer.model,
        started=answer.started,
        warm=answer.warm,
        latency_ms=(clock() - started) * 1000,
    )


def _release(
    base: str,
    product: str,
    task: str,
    alloc: _AllocationReply | TaskAllocation,
    auth: Mapping[str, str],
    hook: ReleaseHook | None = None,
) -> Generator[_Call, _Reply, None]:
    """Give the allocation back; a failure here is logged and told to ``hook``, never
    raised."""
    error: str | None = None
    if not alloc.service:
        error = "allocation names no service to release it from"
    else:
        try:
            reply = yield _Call(
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
            hook(product, task, alloc.allocation_id, error)


# -- drivers --------------------------------------------------------------------------


class _ClientBase:
    def __init__(
        self,
        orch_url: str,
        *,
        api_key: str | None,
        timeout: float,
        on_release_failed: ReleaseHook | None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.orch_url = orch_url.rstrip("/")
        self.timeout = timeout
        self.on_release_failed = on_release_failed
        key = os.environ.get("CF_LICENSE_KEY") if api_key is None else api_key
        # The key goes to the coordinator only, never to the node URLs it hands out.
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.secret = key or None  # never repeated in an error message, even if echoed

    def _scrubbed(self, status: int, content: bytes) -> _Reply:
        """An error body, with the key taken out if the server echoed it back."""
        if self.secret and status >= 300:
            content = content.replace(self.secret.encode(), b"[redacted]")
        return _Reply(status, content)

    def _timeout_for(self, call: _Call, deadline: float) -> httpx.Timeout:
        remaining = min(5.0, self.timeout) if call.release else deadline - time.perf_counter()
        if remaining <= 0:
            raise httpx.ReadTimeout("deadline passed before the call")
        return httpx.Timeout(remaining, connect=min(remaining, 5.0))

    def _failed(self, exc: BaseException, product: str, task: str) -> BaseException:
        """The error the steps see: transport errors become TaskFailed, the rest as is."""
        if isinstance(exc, httpx.TimeoutException):
            message = f"no answer within {self.timeout:g} s ({type(exc).__name__})"
        elif isinstance(exc, httpx.HTTPError | TooLarge):
            message = f"{type(exc).__name__}: {exc}"
        else:
            return exc
        error = TaskFailed(f"{product}.{task}: {message}", product=product, task=task, status=None)
        error.__cause__ = exc
        return error


def _json_bytes(body: Any) -> bytes:
    """A request body as httpx's ``json=`` encodes it."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _proxied() -> bool:
    """The environment names an HTTP(S) proxy, which only httpx knows how to use."""
    proxies = urllib.request.getproxies_environment()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


def _check_size(size: int, deadline: float) -> None:
    if size > MAX_REPLY_BYTES:
        raise TooLarge(f"reply larger than {MAX_REPLY_BYTES} bytes")
    if time.perf_counter() > deadline:
        raise httpx.ReadTimeout("total deadline passed while reading the reply")


class TaskClient(_ClientBase):
    """Synchronous client for cf-orch's task endpoint, over pooled keep-alive connections.

    ``api_key`` defaults to ``CF_LICENSE_KEY`` (sent as a Bearer token to the
    coordinator); ``timeout`` bounds a whole inference, in seconds. It speaks HTTP/1.1
    itself (a third of httpx's CPU per call), verifying certificates with ``tls`` or
    the system's CAs. Pass ``http`` to use your own httpx.Client instead, for proxies,
    client certificates or HTTP/2 (it is not closed by :meth:`close`); a proxy set in
    the environment (``HTTPS_PROXY`` and the like) makes the client use httpx too.
    ``on_release_failed(product, task, allocation_id, error)`` hears of every release
    that failed (they are logged as ``shim.release_failed`` and never raised).
    """

    def __init__(
        self,
        orch_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        tls: ssl.SSLContext | None = None,
        on_release_failed: ReleaseHook | None = None,
    ) -> None:
        super().__init__(
            orch_url, api_key=api_key, timeout=timeout, on_release_failed=on_release_failed
        )
        self._owned = http is None
        self._wire: Wire | None = None
        if http is None and not _proxied():
            self._wire = Wire(
                headers={"User-Agent": _USER_AGENT}, tls=tls, max_body=MAX_REPLY_BYTES
            )
        self._http = http or httpx.Client(headers={"User-Agent": _USER_AGENT}, verify=tls or True)

    def infer(self, product: str, task: str, request: TaskRequest) -> TaskResult:
        """Run ``product.task`` on the task path; raises TaskNotRegistered / TaskFailed."""
        return self._run(
            _steps(self.orch_url, product, task, request, self._auth, self.on_release_failed),
            product,
            task,
        )

    def allocate(self, product: str, task: str, request: TaskRequest) -> TaskAllocation:
        """Ask only for an allocation (``mode: allocate``); release it when done."""
        steps = _allocate_steps(self.orch_url, product, task, request, self._auth)
        return self._run(steps, product, task)

    def release(self, product: str, task: str, allocation: TaskAllocation) -> None:
        """Give an allocation back; a failure is logged (``shim.release_failed``)."""
        self._run(
            _release(self.orch_url, product, task, allocation, self._auth, self.on_release_failed),
            product,
            task,
        )

    def _run(self, steps: Generator[_Call, _Reply, T], product: str, task: str) -> T:
        deadline = time.perf_counter() + self.timeout
        call = next(steps)
        while True:
            try:
                reply = self._send(call, deadline)
            except BaseException as exc:  # the steps decide; cancellation included
                error = self._failed(exc, product, task)
                try:
                    call = steps.throw(error)
                except StopIteration as stop:
                    return cast(T, stop.value)
                continue
            try:
                call = steps.send(reply)
            except StopIteration as stop:
                return cast(T, stop.value)

    def _send(self, call: _Call, deadline: float) -> _Reply:
        timeout = self._timeout_for(call, deadline)
        if call.release:
            deadline = time.perf_counter() + timeout.read  # type: ignore[operator]
        if self._wire is not None:
            status, body = self._wire.send(
                call.method,
                call.url,
                None if call.body is None else _json_bytes(call.body),
                call.headers,
                connect_timeout=cast(float, timeout.connect),
                deadline=deadline,
            )
            return self._scrubbed(status, body)
        with self._http.stream(
            call.method, call.url, json=call.body, headers=call.headers, timeout=timeout
        ) as response:
            content = bytearray()
            for chunk in response.iter_bytes():
                content += chunk
                _check_size(len(content), deadline)
            return self._scrubbed(response.status_code, bytes(content))

    def close(self) -> None:
        """Close the connections, or the httpx.Client if this client created it."""
        if self._wire is not None:
            self._wire.close()
        if self._owned:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTaskClient(_ClientBase):
    """Asynchronous twin of :class:`TaskClient`, over one reusable httpx.AsyncClient."""

    def __init__(
        self,
        orch_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
        on_release_failed: ReleaseHook | None = None,
    ) -> None:
        super().__init__(
            orch_url, api_key=api_key, timeout=timeout, on_release_failed=on_release_failed
        )
        self._owned = http is None
        self._http = http or httpx.AsyncClient(headers={"User-Agent": _USER_AGENT})

    async def infer(self, product: str, task: str, request: TaskRequest) -> TaskResult:
        """Run ``product.task`` on the task path; raises TaskNotRegistered / TaskFailed."""
        steps = _steps(self.orch_url, product, task, request, self._auth, self.on_release_failed)
        return await self._run(steps, product, task)

    async def allocate(self, product: str, task: str, request: TaskRequest) -> TaskAllocation:
        """Ask only for an allocation (``mode: allocate``); release it when done."""
        steps = _allocate_steps(self.orch_url, product, task, request, self._auth)
        return await self._run(steps, product, task)

    async def release(self, product: str, task: str, allocation: TaskAllocation) -> None:
        """Give an allocation back; a failure is logged (``shim.release_failed``)."""
        steps = _release(
            self.orch_url, product, task, allocation, self._auth, self.on_release_failed
        )
        await self._run(steps, product, task)

    async def _run(self, steps: Generator[_Call, _Reply, T], product: str, task: str) -> T:
        deadline = time.perf_counter() + self.timeout
        call = next(steps)
        while True:
            try:
                reply = await self._send(call, deadline)
            except BaseException as exc:  # the steps decide; cancellation included
                error = self._failed(exc, product, task)
                try:
                    call = steps.throw(error)
                except StopIteration as stop:
                    return cast(T, stop.value)
                continue
            try:
                call = steps.send(reply)
            except StopIteration as stop:
                return cast(T, stop.value)

    async def _send(self, call: _Call, deadline: float) -> _Reply:
        timeout = self._timeout_for(call, deadline)
        if call.release:
            deadline = time.perf_counter() + timeout.read  # type: ignore[operator]
        async with self._http.stream(
            call.method, call.url, json=call.body, headers=call.headers, timeout=timeout
        ) as response:
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                _check_size(len(content), deadline)
            return self._scrubbed(response.status_code, bytes(content))

    async def aclose(self) -> None:
        """Close the underlying httpx.AsyncClient if this client created it."""
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
