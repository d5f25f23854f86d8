"""The cf-orch task client: ``POST /api/inference/task`` as production will speak it.

The protocol lives in ``_protocol.py`` as generators that yield the HTTP calls they
need, without I/O; :class:`TaskClient` and :class:`AsyncTaskClient` are the same few
lines each: send what the steps ask for, hand back what came of it.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request
from collections.abc import Generator
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import httpx
import structlog

from shim.base.errors import TaskFailed
from shim.client.protocol import (
    Call,
    ReleaseHook,
    Reply,
    allocate_steps,
    infer_steps,
    release_steps,
)
from shim.client.task import TaskAllocation, TaskRequest, TaskResult
from shim.client.wire import TooLarge, Wire

__all__ = ["AsyncTaskClient", "TaskAllocation", "TaskClient", "TaskRequest", "TaskResult"]

_log = structlog.get_logger("shim")
T = TypeVar("T")

#: Replies larger than this are refused rather than buffered.
MAX_REPLY_BYTES = 32 * 1024 * 1024
_USER_AGENT = "task-shim/0.1"


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

    def _scrubbed(self, status: int, content: bytes) -> Reply:
        """An error body, with the key taken out if the server echoed it back."""
        if self.secret and status >= 300:
            content = content.replace(self.secret.encode(), b"[redacted]")
        return Reply(status, content)

    def _timeout_for(self, call: Call, deadline: float) -> httpx.Timeout:
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

    def infer(
        self, product: str, task: str, request: TaskRequest, *, service_hint: str | None = None
    ) -> TaskResult:
        """Run ``product.task`` on the task path; raises TaskNotRegistered / TaskFailed.

        ``service_hint`` is the service to release an allocation from when the
        coordinator's answer names none (coordinators before cf-orch#63)."""
        steps = infer_steps(
            self.orch_url, product, task, request, self._auth, self.on_release_failed, service_hint
        )
        return self._run(steps, product, task)

    def allocate(
        self, product: str, task: str, *, service_hint: str | None = None
    ) -> TaskAllocation:
        """Ask only for an allocation, with exactly kiwi's body ``{product, task,
        payload: {}}``; give it back with :meth:`release` when done."""
        steps = allocate_steps(
            self.orch_url, product, task, self._auth, service_hint, self.on_release_failed
        )
        return self._run(steps, product, task)

    def release(self, product: str, task: str, allocation: TaskAllocation) -> None:
        """Give an allocation back. Never raises: a failure is logged
        (``shim.release_failed``) and told to ``on_release_failed``."""
        steps = release_steps(
            self.orch_url, product, task, allocation, self._auth, self.on_release_failed
        )
        self._run(steps, product, task)

    def _run(self, steps: Generator[Call, Reply, T], product: str, task: str) -> T:
        deadline = time.perf_counter() + self.timeout
        send: Any = None  # what goes into the steps next: a reply, or an error to throw
        while True:
            try:
                call = steps.throw(send) if isinstance(send, BaseException) else steps.send(send)
            except StopIteration as stop:
                return cast(T, stop.value)
            try:
                send = self._send(call, deadline)
            except BaseException as exc:  # the steps decide; cancellation included
                send = self._failed(exc, product, task)

    def _send(self, call: Call, deadline: float) -> Reply:
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

    async def infer(
        self, product: str, task: str, request: TaskRequest, *, service_hint: str | None = None
    ) -> TaskResult:
        """Run ``product.task`` on the task path; raises TaskNotRegistered / TaskFailed."""
        steps = infer_steps(
            self.orch_url, product, task, request, self._auth, self.on_release_failed, service_hint
        )
        return await self._run(steps, product, task)

    async def allocate(
        self, product: str, task: str, *, service_hint: str | None = None
    ) -> TaskAllocation:
        """Ask only for an allocation, with exactly kiwi's body; release it when done."""
        steps = allocate_steps(
            self.orch_url, product, task, self._auth, service_hint, self.on_release_failed
        )
        return await self._run(steps, product, task)

    async def release(self, product: str, task: str, allocation: TaskAllocation) -> None:
        """Give an allocation back. Never raises: a failure is logged
        (``shim.release_failed``) and told to ``on_release_failed``."""
        steps = release_steps(
            self.orch_url, product, task, allocation, self._auth, self.on_release_failed
        )
        await self._run(steps, product, task)

    async def _run(self, steps: Generator[Call, Reply, T], product: str, task: str) -> T:
        deadline = time.perf_counter() + self.timeout
        send: Any = None
        while True:
            try:
                call = steps.throw(send) if isinstance(send, BaseException) else steps.send(send)
            except StopIteration as stop:
                return cast(T, stop.value)
            try:
                send = await self._send(call, deadline)
            except BaseException as exc:  # the steps decide; cancellation included
                send = self._failed(exc, product, task)

    async def _send(self, call: Call, deadline: float) -> Reply:
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
