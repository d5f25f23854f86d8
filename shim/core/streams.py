"""Streaming call sites: generators and async generators, relayed chunk by chunk.

The caller iterates legacy's own generator through a relay that hands on each chunk,
the very object legacy yielded, and forwards ``send``, ``throw`` and ``close`` (an
``async for`` over ``asend``/``athrow``/``aclose`` for async generators). The relay
notes the time to the first chunk and keeps the chunks; once the stream ends it hands
them, assembled, to the comparison as legacy's output, with ``ttft_ms``, ``chunks`` and
``latency_ms`` to the last chunk. Nothing is reserved before the caller starts
iterating, so a stream created and never read holds nothing. A stream the caller
leaves early (``break``, an exception of its own, cancellation) is not compared: it
is counted as dropped (``abandoned``), as what was seen cannot stand for the output;
so is one longer than :data:`MAX_STREAM_BYTES` (``stream_too_large``), relayed on
without being kept.

What the relay costs per chunk and at the start of a stream: ``bench/streams.py``.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Any

from shim import flags as flagpkg
from shim.core.call import Call
from shim.core.engine import Engine
from shim.records.observe import Stream

__all__ = ["MAX_STREAM_BYTES", "StreamCalls", "StreamEnd", "Tap", "arelay", "assemble", "relay"]

_perf = time.perf_counter


#: A compared stream keeps at most this many bytes of chunks (text and bytes by their
#: length, other chunks by their shallow size); past it the stream is relayed on, not
#: compared, and counted as dropped (``stream_too_large``).
MAX_STREAM_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How a relayed stream went: when it started (``perf_counter``), its first chunk
    (None: none came), its end, the chunks kept (None: more than
    :data:`MAX_STREAM_BYTES`), how many came, and how it ended: ``"done"``,
    ``"raised"`` (legacy's error in ``error``) or ``"abandoned"``."""

    started: float
    first: float | None
    ended: float
    chunks: list[Any] | None
    count: int
    how: str
    error: BaseException | None = None

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first is None else (self.first - self.started) * 1000


#: Told once per stream that started, however it ended.
OnEnd = Callable[[StreamEnd], None]


class Tap:
    """What a relay notes of a stream as it passes (shared by the sync and async
    relays): when it started and gave its first chunk, the chunks, their weight."""

    __slots__ = ("chunks", "count", "first", "size", "started")

    def __init__(self) -> None:
        self.started = _perf()
        self.first: float | None = None
        self.chunks: list[Any] | None = []
        self.count = self.size = 0

    def add(self, chunk: Any) -> None:
        if self.first is None:
            self.first = _perf()
        self.count += 1
        chunks = self.chunks
        if chunks is None:
            return
        kind = type(chunk)
        text = kind is str or kind is bytes or kind is bytearray
        self.size += len(chunk) if text else sys.getsizeof(chunk)
        if self.size > MAX_STREAM_BYTES:
            self.chunks = None  # relayed on, no longer kept
        else:
            chunks.append(chunk)

    def end(self, how: str, error: BaseException | None = None) -> StreamEnd:
        return StreamEnd(self.started, self.first, _perf(), self.chunks, self.count, how, error)


class StreamCalls:
    """The :class:`~shim.core.engine.Engine`'s streaming call sites: a decided call's
    legacy stream, relayed to the caller and compared once it ends.

    The task path does not serve streams yet: where the flags say it serves (canary,
    live), legacy serves, compared as in shadow, and the call is counted as dropped
    (``stream``) so that the report shows the serving that did not happen."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def sync(self, call: Call) -> Generator[Any, Any, Any]:
        """Legacy's generator for ``call`` (made now: a call that does not fit its
        arguments raises here, as it would unwrapped), relayed."""
        inner = call.fn(*call.args, **call.kwargs)
        return relay(inner, *self._hooks(call))

    def asynchronous(self, call: Call) -> AsyncGenerator[Any, Any]:
        """:meth:`sync` for an async generator call site."""
        inner = call.fn(*call.args, **call.kwargs)
        return arelay(inner, *self._hooks(call))

    def _hooks(self, call: Call) -> tuple[Callable[[], bool], OnEnd]:
        """What the relay tells of ``call``'s stream; legacy serves it (see above)."""
        engine, site, decision = self._engine, call.site, call.decision
        if decision.serve:
            engine.recorder.dropped(site.product, site.task, "stream")
            call.decision = flagpkg.Decision(
                serve=False, compare=decision.compare, stage=decision.stage
            )
        if engine.metered:
            engine.events.served(site, "legacy")
        return functools.partial(self._start, call), functools.partial(self._end, call)

    def _start(self, call: Call) -> bool:
        """The caller asks for the first chunk: whether this stream is compared (the
        admission's say, a worker slot taken, the arguments kept)."""
        engine = self._engine
        if not call.decision.compare or not engine.admit(call):
            return False
        try:
            call.keep(0.0)  # never run again for noise: a second stream is no value
        except Exception as exc:
            engine.hand_off_failed(call, exc)
            return False
        return True

    def _end(self, call: Call, end: StreamEnd) -> None:
        """A compared stream ended: hand it to the comparison, or, left early, give its
        slot back and count it (``abandoned``). Never raises into the caller."""
        engine, site = self._engine, call.site
        try:
            if end.how == "abandoned" or end.chunks is None:
                engine.release()
                why = "abandoned" if end.how == "abandoned" else "stream_too_large"
                engine.recorder.dropped(site.product, site.task, why)
                return
            elapsed, stream = end.ended - end.started, Stream(end.ttft_ms, end.count)
            if end.error is not None:
                engine.legacy_raised(call, elapsed, end.error, stream)
            else:
                output = assemble(end.chunks)
                engine.legacy_returned(call, elapsed, output, engine.threads, stream)
        except Exception as exc:
            engine.hand_off_failed(call, exc)


def assemble(chunks: list[Any]) -> Any:
    """A stream's output as one value: text chunks joined, bytes chunks joined, else
    the list of chunks."""
    if chunks and all(type(c) is str for c in chunks):
        return "".join(chunks)
    if chunks and all(isinstance(c, bytes | bytearray) for c in chunks):
        return b"".join(chunks)
    return list(chunks)


def relay(
    inner: Generator[Any, Any, Any], on_start: Callable[[], bool], on_end: OnEnd
) -> Generator[Any, Any, Any]:
    """Legacy's generator ``inner``, chunk for chunk. ``on_start()`` runs as the
    caller asks for the first chunk; False: no comparison, ``inner`` is handed on as
    is. ``on_end`` hears how a started stream ended."""
    if not on_start():
        return (yield from inner)
    tap, how, error, value = Tap(), "abandoned", None, None
    try:
        chunk = inner.send(None)
        while True:
            tap.add(chunk)
            try:
                sent = yield chunk
            except GeneratorExit:
                inner.close()
                raise
            except BaseException as thrown:  # the caller's, thrown in: legacy decides
                chunk = inner.throw(thrown)
            else:
                chunk = inner.send(sent)
    except StopIteration as stop:
        how, value = "done", stop.value
    except GeneratorExit:
        raise
    except BaseException as exc:
        how, error = "raised", exc
        raise
    finally:
        on_end(tap.end(how, error))
    return value


async def arelay(
    inner: AsyncGenerator[Any, Any], on_start: Callable[[], bool], on_end: OnEnd
) -> AsyncGenerator[Any, Any]:
    """:func:`relay` for an async generator (which returns nothing)."""
    if not on_start():
        async for chunk in _forward(inner):
            yield chunk
        return
    tap, how, error = Tap(), "abandoned", None
    try:
        chunk = await inner.asend(None)
        while True:
            tap.add(chunk)
            try:
                sent = yield chunk
            except GeneratorExit:
                await inner.aclose()
                raise
            except BaseException as thrown:  # the caller's, thrown in: legacy decides
                chunk = await inner.athrow(thrown)
            else:
                chunk = await inner.asend(sent)
    except StopAsyncIteration:
        how = "done"
    except GeneratorExit:
        raise
    except BaseException as exc:
        how, error = "raised", exc
        raise
    finally:
        on_end(tap.end(how, error))


async def _forward(inner: AsyncGenerator[Any, Any]) -> AsyncGenerator[Any, Any]:
    """``inner`` handed on as is: what is sent and thrown in reaches it."""
    try:
        chunk = await inner.asend(None)
        while True:
            try:
                sent = yield chunk
            except GeneratorExit:
                await inner.aclose()
                raise
            except BaseException as thrown:
                chunk = await inner.athrow(thrown)
            else:
                chunk = await inner.asend(sent)
    except StopAsyncIteration:
        return
