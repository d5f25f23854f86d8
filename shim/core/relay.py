"""Legacy's stream handed to the caller chunk by chunk, and what was seen of it.

The relay hands on each chunk, the very object legacy yielded, and forwards ``send``,
``throw`` and ``close`` (``asend``, ``athrow`` and ``aclose`` for async generators),
so the caller sees what it would unwrapped. Meanwhile a :class:`Tap` notes the time
legacy spent making each chunk (not the caller's time between chunks), the time to
the first chunk that holds something, and the chunks themselves, up to
:data:`MAX_STREAM_BYTES`. How the stream ended is told once (:class:`StreamEnd`):

- ``done``: legacy's generator finished; ``raised``: it raised an error of its own;
- ``abandoned``: the caller left early (``break``, ``close()``, an exception it threw
  in that legacy did not handle, cancellation or an interrupt);
- ``unnoted``: noting a chunk failed (the shim's own error, never raised into the
  caller): the stream was relayed on, not kept.

A chunk is noted once the caller has it: the first waits on nothing of the shim's but
the relay itself.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

from shim.records.observe import Observation, Stream, describe

__all__ = [
    "MAX_STREAM_BYTES",
    "OnEnd",
    "StreamEnd",
    "Tap",
    "adrain",
    "agenerator",
    "arelay",
    "assemble",
    "drain",
    "generator",
    "relay",
    "stream_observation",
]

_perf = time.perf_counter
#: Chunks measured by their length (a tuple: ``str | bytes | bytearray`` would make a
#: union object on every chunk).
_TEXT = (str, bytes, bytearray)

#: A compared stream keeps at most this many bytes of chunks (text and bytes by their
#: length, other chunks by their shallow size); past it the stream is relayed on, not
#: kept (``chunks`` None).
MAX_STREAM_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How a relayed stream went: the seconds legacy spent making it, and making its
    first chunk that holds something (None: none came), the chunks kept (None: more
    than :data:`MAX_STREAM_BYTES`), how many came, and how it ended (``done``,
    ``raised`` with legacy's ``error``, ``abandoned``, or ``unnoted`` with the shim's
    ``error``)."""

    busy: float
    first: float | None
    chunks: list[Any] | None
    count: int
    how: str
    error: BaseException | None = None


#: Told once per compared stream, however it ended, with the ``context`` the relay
#: was given (the call, say).
OnEnd = Callable[[Any, StreamEnd], None]


class Tap:
    """What a relay notes of a stream as it passes (shared by both relays): the time
    legacy spends between :meth:`resume` and the chunk it gives (:meth:`add`), the
    chunks, and what the caller threw in or whether it is closing, to tell at the
    :meth:`end` legacy's own error from the caller's leaving. ``started``: when legacy
    began on its first chunk; ``lead``: what making the stream took before that."""

    __slots__ = (
        "busy",
        "chunks",
        "closing",
        "count",
        "failed",
        "first",
        "size",
        "started",
        "thrown",
    )

    def __init__(self, started: float, lead: float = 0.0) -> None:
        self.busy = lead
        self.first: float | None = None
        self.chunks: list[Any] | None = []
        self.count = self.size = 0
        self.closing = False
        self.thrown: BaseException | None = None
        self.failed: Exception | None = None
        self.started = started

    def resume(self, thrown: BaseException | None = None) -> None:
        """Legacy runs again (with ``thrown``, the caller's, thrown in)."""
        self.thrown, self.started = thrown, _perf()

    def add(self, chunk: Any, made: float) -> None:
        """The chunk legacy gave, at ``made`` (perf_counter), since it last resumed.
        Never raises: a chunk that cannot be weighed (its ``__sizeof__`` fails) ends
        the keeping, with the error told at the :meth:`end` (``unnoted``)."""
        self.busy += made - self.started
        self.count += 1
        text = isinstance(chunk, _TEXT)
        if self.first is None and (not text or chunk):  # an empty text is no start
            self.first = self.busy  # (never bool() of the app's object: numpy refuses)
        chunks = self.chunks
        if chunks is None:
            return
        if type(chunk) is bytearray:  # a buffer legacy may fill again: what it held now
            chunk = bytes(chunk)
        try:
            self.size += len(chunk) if text else sys.getsizeof(chunk)
        except Exception as exc:
            self.chunks, self.failed = None, exc
            return
        if self.size > MAX_STREAM_BYTES:
            self.chunks = None  # relayed on, no longer kept
        else:
            chunks.append(chunk)

    def end(self, exc: BaseException | None = None) -> StreamEnd:
        """How the stream ended: done (no ``exc``), legacy's error, or abandoned (the
        caller closing, its own exception thrown back, cancellation or an interrupt);
        unnoted if a chunk could not be noted."""
        if self.failed is not None:
            return StreamEnd(self.busy, self.first, None, self.count, "unnoted", self.failed)
        if exc is not None and (
            self.closing or exc is self.thrown or not isinstance(exc, Exception)
        ):
            return StreamEnd(self.busy, self.first, self.chunks, self.count, "abandoned")
        how = "done" if exc is None else "raised"
        busy = self.busy + _perf() - self.started
        return StreamEnd(busy, self.first, self.chunks, self.count, how, exc)


def assemble(chunks: list[Any]) -> Any:
    """A stream's output as one value: text chunks joined, bytes chunks joined, else
    the list of chunks."""
    if chunks and all(isinstance(c, str) for c in chunks):
        return "".join(chunks)
    if chunks and all(isinstance(c, bytes) for c in chunks):
        return b"".join(chunks)
    return list(chunks)


def relay(
    inner: Generator[Any, Any, Any], on_end: OnEnd, context: Any, lead: float = 0.0
) -> Generator[Any, Any, Any]:
    """Legacy's generator ``inner``, chunk for chunk; ``on_end(context, end)`` hears
    how it ended. ``lead``: the seconds making ``inner`` took (a function that returns
    its stream works before it does). Each chunk is noted once the caller has it, the
    :class:`Tap` made as the first is."""
    tap: Tap | None = None
    started = _perf()
    try:
        chunk = inner.send(None)
        while True:
            made = _perf()
            kept = chunk
            if type(chunk) is bytearray and (tap is None or tap.chunks is not None):
                kept = bytes(chunk)  # as legacy gave it: the caller may change it
            try:
                sent = yield chunk
            except BaseException as exc:  # the caller closing, or throwing in
                thrown: BaseException | None = exc
            else:
                thrown = None
            if tap is None:
                tap = Tap(started, lead)
            tap.add(kept, made)
            if thrown is None:
                tap.resume()
                chunk = inner.send(sent)
            elif isinstance(thrown, GeneratorExit):
                tap.closing = True
                inner.close()
                raise thrown
            else:  # legacy decides what the caller's exception does
                tap.resume(thrown)
                chunk = inner.throw(thrown)
    except StopIteration as stop:
        on_end(context, (tap or Tap(started, lead)).end())
        return stop.value
    except BaseException as exc:
        on_end(context, (tap or Tap(started, lead)).end(exc))
        raise


async def arelay(
    inner: AsyncGenerator[Any, Any], on_end: OnEnd, context: Any, lead: float = 0.0
) -> AsyncGenerator[Any, Any]:
    """:func:`relay` for an async generator (which returns nothing): ``asend``,
    ``athrow`` and ``aclose`` reach ``inner``, as they would unwrapped."""
    tap: Tap | None = None
    started = _perf()
    try:
        chunk = await inner.asend(None)
        while True:
            made = _perf()
            kept = chunk
            if type(chunk) is bytearray and (tap is None or tap.chunks is not None):
                kept = bytes(chunk)
            try:
                sent = yield chunk
            except BaseException as exc:
                thrown: BaseException | None = exc
            else:
                thrown = None
            if tap is None:
                tap = Tap(started, lead)
            tap.add(kept, made)
            if thrown is None:
                tap.resume()
                chunk = await inner.asend(sent)
            elif isinstance(thrown, GeneratorExit):
                tap.closing = True
                await inner.aclose()
                raise thrown
            else:
                tap.resume(thrown)
                chunk = await inner.athrow(thrown)
    except StopAsyncIteration:
        on_end(context, (tap or Tap(started, lead)).end())
    except BaseException as exc:
        on_end(context, (tap or Tap(started, lead)).end(exc))
        raise


def generator(chunks: Iterable[Any]) -> Generator[Any, Any, Any]:
    """``chunks`` as a generator: itself if it is one (``send``, ``throw`` and
    ``close`` reach it), else one that iterates it (a ``stream=True`` site's iterator)."""
    if type(chunks) is types.GeneratorType or isinstance(chunks, Generator):
        return chunks
    return _iterating(iter(chunks))


def _iterating(chunks: Any) -> Generator[Any, Any, Any]:
    return (yield from chunks)


def agenerator(chunks: AsyncIterable[Any]) -> AsyncGenerator[Any, Any]:
    """``chunks`` as an async generator: itself if it is one, else one that iterates
    it (a ``stream="async"`` site's async iterator)."""
    if type(chunks) is types.AsyncGeneratorType or isinstance(chunks, AsyncGenerator):
        return chunks
    return _aiterating(aiter(chunks))


async def _aiterating(chunks: Any) -> AsyncGenerator[Any, Any]:
    async for chunk in chunks:
        yield chunk


def drain(fn: Callable[..., Any]) -> Callable[..., StreamEnd]:
    """``fn`` (a stream's function: a generator or one returning an iterator) made a
    function that reads its whole stream, in the background, and tells how it went."""

    def drained(*args: Any, **kwargs: Any) -> StreamEnd:
        tap = Tap(_perf())  # from the call: a function that returns its stream works first
        try:
            for chunk in fn(*args, **kwargs):
                tap.add(chunk, _perf())
                tap.resume()
        except Exception as exc:
            return tap.end(exc)
        return tap.end()

    return drained


def adrain(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`drain` for an async stream's function: a coroutine function."""

    async def drained(*args: Any, **kwargs: Any) -> StreamEnd:
        tap = Tap(_perf())
        try:
            async for chunk in fn(*args, **kwargs):
                tap.add(chunk, _perf())
                tap.resume()
        except Exception as exc:
            return tap.end(exc)
        return tap.end()

    return drained


def stream_observation(end: StreamEnd, model: str | None) -> Observation | None:
    """Legacy's side of a record from how its stream went (None: too long to keep)."""
    first = None if end.first is None else end.first * 1000
    stream, ms = Stream(first, end.count), end.busy * 1000
    if end.error is not None:
        return Observation(False, ms, error=describe(end.error), model=model, stream=stream)
    if end.chunks is None:
        return None
    return Observation(True, ms, assemble(end.chunks), model=model, stream=stream)
