"""A task-path answer read as it streams: each piece of text handed on as soon as the
node's event that carries it is whole.

:func:`~shim.client.inference.open_steps` gets as far as the node's stream (or a whole
answer that does not stream); :class:`TaskStream` and :class:`AsyncTaskStream` read
it, sharing one :class:`Reading` for what they note. Read to its end, left early
(``close()``, or the stream collected) or failed, a stream closes its connection and
gives its allocation back, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx

from shim.client.inference import NodeStream, node_refused, streamed
from shim.client.protocol import Exchange
from shim.client.sse import CompletionReader, SSEError
from shim.client.task import TaskResult
from shim.client.wire import TooLarge

__all__ = ["AsyncTaskStream", "Reading", "TaskStream"]

_perf = time.perf_counter
#: How much of a node's error body is read, to quote in the error.
_ERROR_BYTES = 64 * 1024

#: Turns a transport error into the error the client raises (TaskFailed).
Failed = Callable[[BaseException], BaseException]


class Reading:
    """What a stream reader notes as the node's bytes come: the pieces of text, when
    the first came, how many bytes (refused past ``max_bytes``), and the deadline the
    whole stream must end by."""

    __slots__ = (
        "_reader",
        "count",
        "deadline",
        "ex",
        "final",
        "finished",
        "first",
        "max_bytes",
        "opened",
        "size",
        "text",
    )

    def __init__(self, ex: Exchange, opened: NodeStream, deadline: float, max_bytes: int) -> None:
        self.ex, self.opened = ex, opened
        self.deadline, self.max_bytes = deadline, max_bytes
        self._reader = CompletionReader()
        self.text: list[str] = []
        self.first: float | None = None
        self.count = self.size = 0
        self.final: TaskResult | None = None
        #: when the answer was whole (perf_counter), before the allocation went back
        self.finished: float | None = None

    def refused(self, status: int, content: bytes) -> BaseException:
        """The error for a node that answered an error status."""
        return node_refused(self.ex, self.opened.where, status, content)

    def take(self, data: bytes) -> list[str]:
        """The pieces of text ``data`` completes; raises past the size or deadline."""
        self.size += len(data)
        if self.size > self.max_bytes:
            raise TooLarge(f"reply larger than {self.max_bytes} bytes")
        if _perf() > self.deadline:
            raise httpx.ReadTimeout("total deadline passed while reading the stream")
        return self._noted(self._reader.feed(data))

    @property
    def done(self) -> bool:
        """``data: [DONE]`` came: the answer is whole."""
        return self._reader.done

    def finish(self) -> list[str]:
        """The body ended (or said ``[DONE]``): its last pieces (SSEError if it was cut
        short); :attr:`final` is the result from here on."""
        pieces = self._noted(self._reader.finish())
        self.final, self.finished = self.result(), _perf()
        return pieces

    def _noted(self, pieces: list[str]) -> list[str]:
        if pieces:
            if self.first is None:
                self.first = self.ex.clock()
            self.text.extend(pieces)
            self.count += len(pieces)
        return pieces

    def result(self) -> TaskResult:
        """The stream's result, once read to its end."""
        reader, alloc = self._reader, self.opened.alloc
        model = reader.model or self.opened.model
        text = "".join(self.text)
        return streamed(
            self.ex, alloc, self.opened.started, text, self.count, model, reader.usage, self.first
        )

    def failed(self, exc: BaseException, transport: Failed) -> BaseException:
        """The error the reader raises for ``exc``: TaskFailed naming the node stream
        for events that are not a completion's, the client's for transport errors."""
        if isinstance(exc, SSEError):
            return self.ex.fail(f"node stream: {exc}", 200)
        return transport(exc)


class _Once:
    """Runs an end (closing the connection, giving the allocation back) once, whoever
    asks first: the stream read to its end, :meth:`close`, or the stream collected."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any] | None) -> None:
        self.fn = fn

    def __call__(self) -> Any:
        fn, self.fn = self.fn, None
        return None if fn is None else fn()


class _Answer:
    """What both stream readers tell of the answer: the whole of it once read to its
    end, and when it was whole."""

    def __init__(self, reading: Reading | None) -> None:
        self._reading = reading
        self._result: TaskResult | None = None
        self._end = _Once(None)

    @property
    def result(self) -> TaskResult | None:
        """The whole answer, once the stream was read to its end (else None)."""
        return self._result if self._reading is None else self._reading.final

    @property
    def finished(self) -> float | None:
        """When (``time.perf_counter()``) the answer was whole, before the allocation
        was given back; None until then (or for an answer that came whole)."""
        return None if self._reading is None else self._reading.finished


class TaskStream(_Answer, Iterator[str]):
    """A task-path answer as it streams: iterate it for its pieces of text (TaskFailed
    if the stream fails); ``result`` is the whole answer once read to its end. Reading
    to the end, an error, :meth:`close` or the stream being collected closes the
    connection and gives the node's allocation back. A coordinator's own answer (or a
    document node's) comes as one piece."""

    def __init__(self, pieces: Iterator[str], reading: Reading | None = None) -> None:
        super().__init__(reading)
        self._pieces = pieces

    @classmethod
    def whole(cls, result: TaskResult) -> TaskStream:
        """A stream of an answer already whole: its text, as one piece."""
        stream = cls(iter([result.text] if result.text else []))
        stream._result = result
        return stream

    @classmethod
    def reading(
        cls,
        response: httpx.Response,
        reading: Reading,
        release: Callable[[], None],
        transport: Failed,
    ) -> TaskStream:
        """The node's stream ``response``, read with ``reading``; ``release`` gives
        the allocation back."""
        end = _Once(lambda: _closed(response, release))
        stream = cls(_read(response, reading, transport, end), reading)
        stream._end = end
        # dropped unread or half read: given back all the same (not at exit: no calls then)
        weakref.finalize(stream, end).atexit = False
        return stream

    def __next__(self) -> str:
        return next(self._pieces)

    def __enter__(self) -> TaskStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading: the connection closed, the allocation given back (once)."""
        try:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()
        finally:
            self._end()


def _read(
    response: httpx.Response, reading: Reading, transport: Failed, end: _Once
) -> Iterator[str]:
    """The pieces of the node's stream (no reference to the stream object: dropping it
    runs its finalizer at once)."""
    try:
        if response.status_code >= 300:
            raise reading.refused(response.status_code, _head_of(response.iter_bytes()))
        for data in response.iter_bytes():
            yield from reading.take(data)
            if reading.done:  # what follows [DONE] is not waited for
                break
        yield from reading.finish()
    except Exception as exc:
        raise reading.failed(exc, transport)  # noqa: B904 - the cause is set as it must be
    finally:
        end()


class AsyncTaskStream(_Answer, AsyncIterator[str]):
    """:class:`TaskStream` for the async client: ``async for`` its pieces; ``await
    aclose()`` to leave it early (a stream collected unclosed is closed on its event
    loop). The whole stream must end within the client's timeout."""

    def __init__(self, pieces: AsyncIterator[str], reading: Reading | None = None) -> None:
        super().__init__(reading)
        self._pieces = pieces

    @classmethod
    def whole(cls, result: TaskResult) -> AsyncTaskStream:
        """A stream of an answer already whole: its text, as one piece."""
        stream = cls(_once(result.text))
        stream._result = result
        return stream

    @classmethod
    def reading(
        cls,
        response: httpx.Response,
        reading: Reading,
        release: Callable[[], Awaitable[None]],
        transport: Failed,
    ) -> AsyncTaskStream:
        """The node's stream ``response``, read with ``reading``; ``release`` gives
        the allocation back."""
        end = _Once(lambda: _aclosed(response, release))
        stream = cls(_aread(response, reading, transport, end), reading)
        stream._end = end
        weakref.finalize(stream, _on_loop, asyncio.get_running_loop(), end).atexit = False
        return stream

    async def __anext__(self) -> str:
        return await self._pieces.__anext__()

    async def __aenter__(self) -> AsyncTaskStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading: the connection closed, the allocation given back (once)."""
        try:
            aclose = getattr(self._pieces, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):  # being closed already: loop's end
                    await aclose()
        finally:
            ending = self._end()
            if ending is not None:
                await ending


async def _aread(
    response: httpx.Response, reading: Reading, transport: Failed, end: _Once
) -> AsyncIterator[str]:
    """:func:`_read` on an event loop; each wait for the node's bytes within the
    stream's deadline."""
    try:
        if response.status_code >= 300:
            raise reading.refused(response.status_code, await _ahead_of(response))
        chunks = response.aiter_bytes()
        while not reading.done:
            try:
                async with asyncio.timeout(max(0.0, reading.deadline - _perf())):
                    data = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise httpx.ReadTimeout("total deadline passed while reading the stream") from None
            for piece in reading.take(data):
                yield piece
        for piece in reading.finish():
            yield piece
    except Exception as exc:
        raise reading.failed(exc, transport)  # noqa: B904 - the cause is set as it must be
    finally:
        ending = end()
        if ending is not None:
            await ending


#: Ends of streams collected unclosed, running on their loops (kept until they finish).
_ENDING: set[asyncio.Task[Any]] = set()


def _on_loop(loop: asyncio.AbstractEventLoop, end: _Once) -> None:
    """A stream collected unclosed: its end, run as a task on its event loop (if the
    loop still runs; the allocation's TTL takes care of it otherwise)."""
    if end.fn is None or loop.is_closed():
        return

    def start() -> None:
        ending = end()
        if ending is not None:
            task = loop.create_task(ending)
            _ENDING.add(task)
            task.add_done_callback(_ENDING.discard)

    with contextlib.suppress(RuntimeError):  # closed meanwhile
        loop.call_soon_threadsafe(start)


def _closed(response: httpx.Response, release: Callable[[], None]) -> None:
    try:
        response.close()
    finally:
        release()


async def _aclosed(response: httpx.Response, release: Callable[[], Awaitable[None]]) -> None:
    try:
        await response.aclose()
    finally:
        await release()


def _head_of(chunks: Iterator[bytes]) -> bytes:
    """The start of an error body, enough to quote."""
    head = bytearray()
    for chunk in chunks:
        head += chunk
        if len(head) >= _ERROR_BYTES:
            break
    return bytes(head[:_ERROR_BYTES])


async def _ahead_of(response: httpx.Response) -> bytes:
    head = bytearray()
    async for chunk in response.aiter_bytes():
        head += chunk
        if len(head) >= _ERROR_BYTES:
            break
    return bytes(head[:_ERROR_BYTES])


async def _once(text: str) -> AsyncIterator[str]:
    if text:
        yield text
