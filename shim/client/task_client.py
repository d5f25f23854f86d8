"""The cf-orch task client: ``POST /api/inference/task`` as production will speak it.

The protocol lives in :mod:`shim.client.protocol` and its neighbours as generators that
yield the HTTP calls they need, without I/O; :class:`TaskClient` and
:class:`AsyncTaskClient` are the same few lines each: send what the steps ask for, hand
back what came of it.
"""

from __future__ import annotations

import functools
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TypeVar

import httpx

from shim.client.allocation import allocate_steps, release_steps
from shim.client.client_base import (
    MAX_REPLY_BYTES,
    USER_AGENT,
    Body,
    ClientBase,
    advance,
    json_bytes,
    proxied,
)
from shim.client.dial import default_tls
from shim.client.inference import infer_steps, open_steps
from shim.client.protocol import Call, Exchange, Reply
from shim.client.streaming import AsyncTaskStream, Reading, TaskStream
from shim.client.task import TaskAllocation, TaskRequest, TaskResult
from shim.client.wire import Wire

__all__ = [
    "AsyncTaskClient",
    "AsyncTaskStream",
    "TaskAllocation",
    "TaskClient",
    "TaskRequest",
    "TaskResult",
    "TaskStream",
]

T = TypeVar("T")


# -- the drivers ----------------------------------------------------------------------


class TaskClient(ClientBase[httpx.Client], AbstractContextManager["TaskClient"]):
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

    _stream_http: httpx.Client | None = None
    _open_streams = 0
    _closing = False

    def _connect(
        self, http: httpx.Client | None, tls: ssl.SSLContext | None
    ) -> httpx.Client | None:
        self._tls, self._lock = tls, threading.Lock()
        if http is None and not proxied():
            # No httpx.Client as well, unused: building one is ~20 ms (its TLS context).
            self._wire = Wire(headers={"User-Agent": USER_AGENT}, tls=tls, max_body=MAX_REPLY_BYTES)
            return None
        return http or httpx.Client(headers={"User-Agent": USER_AGENT}, verify=tls or default_tls())

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

    def open_stream(
        self, product: str, task: str, request: TaskRequest, *, service_hint: str | None = None
    ) -> TaskStream:
        """Run ``product.task`` on the task path as a stream read as it comes:
        TaskNotRegistered / TaskFailed until the node's stream is open, then a
        :class:`TaskStream` of pieces of text (TaskFailed if the stream fails on the
        way). The stream gives the node's allocation back once read, failed or closed;
        ``timeout`` bounds the whole of it."""
        ex = self._exchange(product, task, service_hint, True)
        deadline = time.perf_counter() + self.timeout
        opened = self._run(ex, open_steps(ex, request))
        if isinstance(opened, TaskResult):
            return TaskStream.whole(opened)
        release = functools.partial(self.release, product, task, opened.alloc)
        call = opened.call
        try:
            remaining, _ = self._limits(call, deadline)
            http = self._streams()
            sent = http.build_request(
                call.method,
                call.url,
                json=call.body,
                headers=call.headers,
                timeout=self._timeout(remaining),
            )
            response = http.send(sent, stream=True)
        except BaseException as exc:
            release()
            raise self._failed(exc, ex)  # noqa: B904 - the cause is set as it must be
        reading = Reading(ex, opened, deadline, MAX_REPLY_BYTES)
        with self._lock:
            self._open_streams += 1
        return TaskStream.reading(
            response, reading, self._ended(release), functools.partial(self._failed, ex=ex)
        )

    def _ended(self, release: Callable[[], None]) -> Callable[[], None]:
        """``release``, then one open stream less: the last one after :meth:`close`
        closes the client streams are read with."""

        def end() -> None:
            try:
                release()
            finally:
                with self._lock:
                    self._open_streams -= 1
                    last = self._closing and not self._open_streams
                if last:
                    self._close_http()

        return end

    def _streams(self) -> httpx.Client:
        """The httpx client node streams are read with: the one given, else one of
        its own made on first use (the client's HTTP/1.1 reads replies whole)."""
        if self._http is not None:
            return self._http
        with self._lock:
            if self._stream_http is None:
                self._stream_http = httpx.Client(
                    headers={"User-Agent": USER_AGENT}, verify=self._tls or default_tls()
                )
            return self._stream_http

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
        step = advance(steps, None)
        while isinstance(step, Call):
            step = advance(steps, self._send(step, deadline, ex))
        return step.value

    def _send(self, call: Call, deadline: float, ex: Exchange) -> Reply | BaseException:
        """The reply to ``call``, or the error to throw into the steps (they decide;
        cancellation included)."""
        try:
            remaining, deadline = self._limits(call, deadline)
            arrivals: list[tuple[int, float]] | None = [] if call.stream else None
            if self._wire is not None:
                data = None if call.body is None else json_bytes(call.body)
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
                body = Body(deadline, arrivals)
                for chunk in response.iter_bytes():
                    body.add(chunk)
                return self._scrubbed(response.status_code, body.content, arrivals)
        except BaseException as exc:
            return self._failed(exc, ex)

    def close(self) -> None:
        """Close the connections, or the httpx.Client if this client created it.
        Streams still open are read to their end (or left) first: the client they
        read with closes after the last."""
        if self._wire is not None:
            self._wire.close()
        with self._lock:
            self._closing = True
            now = not self._open_streams
        if now:
            self._close_http()

    def _close_http(self) -> None:
        """Close the httpx clients this client made (for streams, or for a proxy)."""
        if self._owned and self._http is not None:
            self._http.close()
        if self._stream_http is not None:
            self._stream_http.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTaskClient(
    ClientBase[httpx.AsyncClient], AbstractAsyncContextManager["AsyncTaskClient"]
):
    """Asynchronous twin of :class:`TaskClient`, over one reusable httpx.AsyncClient
    (``http``, or one of its own that verifies certificates with ``tls`` or the
    system's CAs)."""

    _http: httpx.AsyncClient

    def _connect(
        self, http: httpx.AsyncClient | None, tls: ssl.SSLContext | None
    ) -> httpx.AsyncClient:
        self._open_streams = 0
        self._after_streams: list[Callable[[], Awaitable[None]]] = []
        if http is not None:
            return http
        return httpx.AsyncClient(headers={"User-Agent": USER_AGENT}, verify=tls or default_tls())

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

    async def open_stream(
        self, product: str, task: str, request: TaskRequest, *, service_hint: str | None = None
    ) -> AsyncTaskStream:
        """:meth:`TaskClient.open_stream`: ``async for`` the pieces; ``await
        aclose()`` a stream left early."""
        ex = self._exchange(product, task, service_hint, True)
        deadline = time.perf_counter() + self.timeout
        opened = await self._run(ex, open_steps(ex, request))
        if isinstance(opened, TaskResult):
            return AsyncTaskStream.whole(opened)
        release = functools.partial(self.release, product, task, opened.alloc)
        call = opened.call
        try:
            remaining, _ = self._limits(call, deadline)
            sent = self._http.build_request(
                call.method,
                call.url,
                json=call.body,
                headers=call.headers,
                timeout=self._timeout(remaining),
            )
            response = await self._http.send(sent, stream=True)
        except BaseException as exc:
            await release()
            raise self._failed(exc, ex)  # noqa: B904 - the cause is set as it must be
        reading = Reading(ex, opened, deadline, MAX_REPLY_BYTES)
        failed = functools.partial(self._failed, ex=ex)
        self._open_streams += 1

        async def end() -> None:
            try:
                await release()
            except BaseException:  # stopped midway: the stream's loop is ending
                self._release_elsewhere(product, task, opened.alloc)
                raise
            finally:
                self._open_streams -= 1
                if not self._open_streams:
                    closes, self._after_streams = self._after_streams, []
                    for close in closes:
                        await close()

        return AsyncTaskStream.reading(response, reading, end, failed)

    def _release_elsewhere(self, product: str, task: str, alloc: TaskAllocation) -> None:
        """Give ``alloc`` back from a thread of its own, with a sync client: the event
        loop it was taken on is ending (a release the loop stopped midway may have
        reached the coordinator: a second one is logged as failed, never raised)."""
        orch, key, hook = self.orch_url, self.secret, self.on_release_failed

        def release() -> None:
            with TaskClient(orch, api_key=key, timeout=5.0, on_release_failed=hook) as client:
                client.release(product, task, alloc)

        threading.Thread(target=release, name="shim-release", daemon=False).start()

    async def close_after_streams(self, close: Callable[[], Awaitable[None]]) -> None:
        """``close()`` now, or, while streams are open, once the last has ended (read,
        left, or collected) and given its allocation back with this client."""
        if self._open_streams:
            self._after_streams.append(close)
        else:
            await close()

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
        step = advance(steps, None)
        while isinstance(step, Call):
            step = advance(steps, await self._send(step, deadline, ex))
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
                body = Body(deadline, arrivals)
                async for chunk in response.aiter_bytes():
                    body.add(chunk)
                return self._scrubbed(response.status_code, body.content, arrivals)
        except BaseException as exc:  # the steps decide; cancellation included
            return self._failed(exc, ex)

    async def aclose(self) -> None:
        """Close the underlying httpx.AsyncClient if this client created it: at once,
        or after the last stream still open (which gives its allocation back with it)."""
        if self._owned:
            await self.close_after_streams(self._http.aclose)

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
