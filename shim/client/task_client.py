"""The cf-orch task client: ``POST /api/inference/task`` as production will speak it.

The protocol lives in :mod:`shim.client.protocol` and its neighbours as generators that
yield the HTTP calls they need, without I/O; :class:`TaskClient` and
:class:`AsyncTaskClient` are the same few lines each: send what the steps ask for, hand
back what came of it.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request
from collections.abc import Generator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from shim.base.secrets import Redactor, checked_secret, url_secrets, warn_if_plain_http
from shim.client.allocation import allocate_steps, release_steps
from shim.client.dial import default_tls
from shim.client.inference import infer_steps
from shim.client.protocol import Call, Exchange, ReleaseHook, Reply
from shim.client.task import TaskAllocation, TaskRequest, TaskResult
from shim.client.wire import TooLarge, Wire

__all__ = ["AsyncTaskClient", "TaskAllocation", "TaskClient", "TaskRequest", "TaskResult"]

T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)

#: Replies larger than this are refused rather than buffered.
MAX_REPLY_BYTES = 32 * 1024 * 1024
_USER_AGENT = "task-shim/0.1"


# -- what the sync and async clients share --------------------------------------------


@dataclass(frozen=True, slots=True)
class _Done(Generic[T]):
    """The steps are done: what they returned."""

    value: T


def _advance(steps: Generator[Call, Reply, T], reply: Any) -> Call | _Done[T]:
    """Hand the steps what came of their last call (a reply, or an error to throw;
    None to start them): the call they need next, or what they returned."""
    try:
        return steps.throw(reply) if isinstance(reply, BaseException) else steps.send(reply)
    except StopIteration as stop:
        return _Done(stop.value)


class _Body:
    """A reply body read chunk by chunk: refused past ``MAX_REPLY_BYTES`` or the
    deadline; with ``arrivals``, when each chunk came."""

    __slots__ = ("arrivals", "content", "deadline")

    def __init__(self, deadline: float, arrivals: list[tuple[int, float]] | None) -> None:
        self.content = bytearray()
        self.deadline = deadline
        self.arrivals = arrivals

    def add(self, chunk: bytes) -> None:
        self.content += chunk
        now = time.perf_counter()
        if self.arrivals is not None and chunk:
            self.arrivals.append((len(self.content), now))
        if len(self.content) > MAX_REPLY_BYTES:
            raise TooLarge(f"reply larger than {MAX_REPLY_BYTES} bytes")
        if now > self.deadline:
            raise httpx.ReadTimeout("total deadline passed while reading the reply")


class _ClientBase(Generic[H]):
    """What the sync and async clients share: options, the key, errors, timeouts."""

    _wire: Wire | None = None  # the sync client's own HTTP/1.1, when it speaks it
    _http: H | None  # the httpx client sent with, when there is one

    def __init__(
        self,
        orch_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: H | None = None,
        tls: ssl.SSLContext | None = None,
        on_release_failed: ReleaseHook | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.orch_url = orch_url.rstrip("/")
        self.timeout = timeout
        self.on_release_failed = on_release_failed
        key = _license_key(api_key, type(self).__name__)
        # The key goes to the coordinator only, never to the node URLs it hands out.
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.secret = key  # never repeated in an error message, even if echoed
        # Built once here: error paths only, never per call on the caller's thread.
        self._redact = Redactor((key, *url_secrets(orch_url)))
        if key:
            warn_if_plain_http(self.orch_url, what="the license key", setting="CF_ORCH_URL")
        self._owned = http is None
        self._http = self._connect(http, tls)

    def _connect(self, http: H | None, tls: ssl.SSLContext | None) -> H | None:
        """The httpx client to send with: ``http``, or one of our own (verifying with
        ``tls``, else the process's one default context: an httpx client's own costs
        ~20 ms to build); None when the client speaks HTTP/1.1 itself."""
        raise NotImplementedError

    def _exchange(
        self, product: str, task: str, hint: str | None = None, stream: bool = False
    ) -> Exchange:
        return Exchange(
            self.orch_url,
            product,
            task,
            self._auth,
            self.on_release_failed,
            hint,
            redact=self._redact,
            stream=stream,
        )

    def _scrubbed(
        self,
        status: int,
        content: bytes | bytearray,
        arrivals: list[tuple[int, float]] | None = None,
    ) -> Reply:
        """A reply; an error body with the key (in any form: JSON-escaped,
        percent-encoded, ...) and URL passwords taken out, if the server echoed them."""
        if status >= 300:
            return Reply(status, self._redact.redact_bytes(bytes(content)))
        return Reply(status, bytes(content), tuple(arrivals) if arrivals else ())

    def _limits(self, call: Call, deadline: float) -> tuple[float, float]:
        """The seconds the call has left, and the deadline its reply must be read by:
        the exchange's, or a release's own."""
        remaining = min(5.0, self.timeout) if call.release else deadline - time.perf_counter()
        if remaining <= 0:
            raise httpx.ReadTimeout("deadline passed before the call")
        if call.release:
            deadline = time.perf_counter() + remaining
        return remaining, deadline

    @staticmethod
    def _timeout(remaining: float) -> httpx.Timeout:
        """The httpx timeouts of a call with ``remaining`` seconds (connecting: at most 5)."""
        return httpx.Timeout(remaining, connect=min(remaining, 5.0))

    def _failed(self, exc: BaseException, ex: Exchange) -> BaseException:
        """The error the steps see: transport errors become TaskFailed, the rest as is."""
        if isinstance(exc, httpx.TimeoutException):
            message = f"no answer within {self.timeout:g} s ({type(exc).__name__})"
        elif isinstance(exc, httpx.HTTPError):  # TooLarge included
            message = f"{type(exc).__name__}: {exc}"
        else:
            return exc
        redacted = self._redact(message)
        error = ex.fail(redacted, None)
        if redacted == message:
            error.__cause__ = exc
        else:  # the cause's own message quotes the secret: a traceback would print it
            error.__suppress_context__ = True
        return error


def _license_key(api_key: str | None, client: str) -> str | None:
    """The key to send: ``api_key``, else ``CF_LICENSE_KEY``; checked, and named in an
    error by the setting it came from."""
    env = os.environ.get("CF_LICENSE_KEY")
    if api_key is None or api_key == env:
        return checked_secret(env if api_key is None else api_key, name="CF_LICENSE_KEY")
    return checked_secret(api_key, name="api_key", where=client)


# One encoder: json.dumps with options builds one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_bytes(body: Any) -> bytes:
    """A request body as httpx's ``json=`` encodes it."""
    return _ENCODER.encode(body).encode()


def _proxied() -> bool:
    """The environment names an HTTP(S) proxy, which only httpx knows how to use."""
    proxies = urllib.request.getproxies_environment()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


# -- the drivers ----------------------------------------------------------------------


class TaskClient(_ClientBase[httpx.Client], AbstractContextManager["TaskClient"]):
    """Synchronous client for cf-orch's task endpoint, over pooled keep-alive connections.

    ``api_key`` defaults to ``CF_LICENSE_KEY`` (sent as a Bearer token to the
    coordinator; whitespace around it is stripped, a key a header cannot carry is a
    ConfigError that never quotes it, and one sent over plain http to a host other
    than loopback is warned about once, on the ``shim`` logger); ``timeout`` bounds a
    whole inference, in seconds. It speaks HTTP/1.1
    itself (a third of httpx's CPU per call), verifying certificates with ``tls`` or
    the system's CAs. Pass ``http`` to use your own httpx.Client instead, for proxies,
    client certificates or HTTP/2 (it is not closed by :meth:`close`); a proxy set in
    the environment (``HTTPS_PROXY`` and the like) makes the client use httpx too.
    ``on_release_failed(product, task, allocation_id, error)`` hears of every release
    that failed (they are logged as ``shim.release_failed`` and never raised).
    """

    def _connect(
        self, http: httpx.Client | None, tls: ssl.SSLContext | None
    ) -> httpx.Client | None:
        if http is None and not _proxied():
            # No httpx.Client as well, unused: building one is ~20 ms (its TLS context).
            self._wire = Wire(
                headers={"User-Agent": _USER_AGENT}, tls=tls, max_body=MAX_REPLY_BYTES
            )
            return None
        return http or httpx.Client(
            headers={"User-Agent": _USER_AGENT}, verify=tls or default_tls()
        )

    def infer(
        self,
        product: str,
        task: str,
        request: TaskRequest,
        *,
        service_hint: str | None = None,
        stream: bool = False,
    ) -> TaskResult:
        """Run ``product.task`` on the task path; raises TaskNotRegistered / TaskFailed.

        ``service_hint`` is the service to release an allocation from when the
        coordinator's answer names none (coordinators before cf-orch#63). ``stream``:
        the node streams its answer (an allocation is asked for, and the chat completion
        is read as server-sent events); the result's ``ttft_ms`` and ``chunks`` say how
        it came (the coordinator's own output counts as one chunk)."""
        ex = self._exchange(product, task, service_hint, stream)
        return self._run(ex, infer_steps(ex, request))

    def allocate(
        self, product: str, task: str, *, service_hint: str | None = None
    ) -> TaskAllocation:
        """Ask only for an allocation, with exactly kiwi's body ``{product, task,
        payload: {}}``; give it back with :meth:`release` when done."""
        ex = self._exchange(product, task, service_hint)
        return self._run(ex, allocate_steps(ex))

    def release(self, product: str, task: str, allocation: TaskAllocation) -> None:
        """Give an allocation back. Never raises: a failure is logged
        (``shim.release_failed``) and told to ``on_release_failed``."""
        ex = self._exchange(product, task)
        self._run(ex, release_steps(ex, allocation))

    def _run(self, ex: Exchange, steps: Generator[Call, Reply, T]) -> T:
        deadline = time.perf_counter() + self.timeout
        step = _advance(steps, None)
        while isinstance(step, Call):
            step = _advance(steps, self._send(step, deadline, ex))
        return step.value

    def _send(self, call: Call, deadline: float, ex: Exchange) -> Reply | BaseException:
        """The reply to ``call``, or the error to throw into the steps (they decide;
        cancellation included)."""
        try:
            remaining, deadline = self._limits(call, deadline)
            arrivals: list[tuple[int, float]] | None = [] if call.stream else None
            if self._wire is not None:
                data = None if call.body is None else _json_bytes(call.body)
                status, content = self._wire.send(
                    call.method,
                    call.url,
                    data,
                    call.headers,
                    connect_timeout=min(remaining, 5.0),
                    deadline=deadline,
                    arrivals=arrivals,
                )
                return self._scrubbed(status, content, arrivals)
            assert self._http is not None  # no HTTP/1.1 of its own: an httpx client
            timeout = self._timeout(remaining)
            with self._http.stream(
                call.method, call.url, json=call.body, headers=call.headers, timeout=timeout
            ) as response:
                body = _Body(deadline, arrivals)
                for chunk in response.iter_bytes():
                    body.add(chunk)
                return self._scrubbed(response.status_code, body.content, arrivals)
        except BaseException as exc:
            return self._failed(exc, ex)

    def close(self) -> None:
        """Close the connections, or the httpx.Client if this client created it."""
        if self._wire is not None:
            self._wire.close()
        if self._owned and self._http is not None:
            self._http.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTaskClient(
    _ClientBase[httpx.AsyncClient], AbstractAsyncContextManager["AsyncTaskClient"]
):
    """Asynchronous twin of :class:`TaskClient`, over one reusable httpx.AsyncClient
    (``http``, or one of its own that verifies certificates with ``tls`` or the
    system's CAs)."""

    _http: httpx.AsyncClient

    def _connect(
        self, http: httpx.AsyncClient | None, tls: ssl.SSLContext | None
    ) -> httpx.AsyncClient:
        if http is not None:
            return http
        return httpx.AsyncClient(headers={"User-Agent": _USER_AGENT}, verify=tls or default_tls())

    async def infer(
        self,
        product: str,
        task: str,
        request: TaskRequest,
        *,
        service_hint: str | None = None,
        stream: bool = False,
    ) -> TaskResult:
        """Run ``product.task`` on the task path; raises TaskNotRegistered / TaskFailed."""
        ex = self._exchange(product, task, service_hint, stream)
        return await self._run(ex, infer_steps(ex, request))

    async def allocate(
        self, product: str, task: str, *, service_hint: str | None = None
    ) -> TaskAllocation:
        """Ask only for an allocation, with exactly kiwi's body; release it when done."""
        ex = self._exchange(product, task, service_hint)
        return await self._run(ex, allocate_steps(ex))

    async def release(self, product: str, task: str, allocation: TaskAllocation) -> None:
        """Give an allocation back. Never raises: a failure is logged
        (``shim.release_failed``) and told to ``on_release_failed``."""
        ex = self._exchange(product, task)
        await self._run(ex, release_steps(ex, allocation))

    async def _run(self, ex: Exchange, steps: Generator[Call, Reply, T]) -> T:
        deadline = time.perf_counter() + self.timeout
        step = _advance(steps, None)
        while isinstance(step, Call):
            step = _advance(steps, await self._send(step, deadline, ex))
        return step.value

    async def _send(self, call: Call, deadline: float, ex: Exchange) -> Reply | BaseException:
        """The reply to ``call``, or the error to throw into the steps."""
        try:
            remaining, deadline = self._limits(call, deadline)
            timeout = self._timeout(remaining)
            arrivals: list[tuple[int, float]] | None = [] if call.stream else None
            async with self._http.stream(
                call.method, call.url, json=call.body, headers=call.headers, timeout=timeout
            ) as response:
                body = _Body(deadline, arrivals)
                async for chunk in response.aiter_bytes():
                    body.add(chunk)
                return self._scrubbed(response.status_code, body.content, arrivals)
        except BaseException as exc:  # the steps decide; cancellation included
            return self._failed(exc, ex)

    async def aclose(self) -> None:
        """Close the underlying httpx.AsyncClient if this client created it."""
        if self._owned:
            await self._http.aclose()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
