"""Streaming call sites: generators, async generators and functions that return an
iterator of chunks (``stream=``), compared once they end.

Where legacy serves, the caller iterates legacy's own stream through a relay
(:mod:`shim.core.relay`): each chunk the very object legacy yielded. Once a compared
stream ends, its chunks, assembled, are legacy's output, with ``ttft_ms`` and ``chunks``
on legacy's side of the record and ``latency_ms`` the time legacy spent making it (the
caller's own time between chunks left out); the task path runs then, streamed too.
Whether a stream is compared is drawn, and its arguments kept, at the call; the
admission (breaker, budget) is asked, and a worker slot taken, only once the stream has
ended: the caller's first chunk waits on little of the shim's, and a stream created and
never read, or left open, holds no slot. A stream the caller leaves early is not
compared: counted as dropped (``abandoned``), as what was seen cannot stand for the
output; so is one longer than :data:`~shim.core.relay.MAX_STREAM_BYTES`
(``stream_too_large``), relayed whole without being kept.

Where the task path serves: :mod:`shim.core.served_streams`. What the relay costs per
chunk and at the start of a stream: ``bench/streams.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import AsyncGeneratorType, GeneratorType
from typing import Any

from shim.core.call import Call
from shim.core.callsite import kept_arguments
from shim.core.engine import Engine
from shim.core.relay import OnEnd, StreamEnd, agenerator, arelay, assemble, generator, relay
from shim.core.served_streams import aserve, serve
from shim.records.observe import Stream

__all__ = ["StreamCalls"]

_perf = time.perf_counter


class StreamCalls:
    """The :class:`~shim.core.engine.Engine`'s streaming call sites of one kind (sync,
    or ``asynchronous``): a decided call's legacy stream, relayed to the caller and
    compared once it ends, or the task path's stream where it serves."""

    def __init__(self, engine: Engine, *, asynchronous: bool) -> None:
        self._engine = engine
        self._serve: Callable[[Engine, Call], Any] = aserve if asynchronous else serve
        self._relay: Callable[[Any, OnEnd, Any, float], Any] = arelay if asynchronous else relay
        self._kind: type = AsyncGeneratorType if asynchronous else GeneratorType
        self._as_generator: Callable[[Any], Any] = agenerator if asynchronous else generator

    def __call__(self, call: Call) -> Any:
        """``call``'s stream: the task path's where it serves
        (:func:`~shim.core.served_streams.serve`), else legacy's, made now (a call that
        does not fit its arguments raises here, as it would unwrapped): relayed if it
        is compared. A generator function's stream that is not is legacy's own
        generator; a ``stream=`` function's iterator comes back as a generator whether
        compared or not, so that a call site sees one kind of stream at a stage.

        Whether the stream is compared was drawn with the call, and its arguments are
        kept now, before legacy runs; the admission waits for its end (:meth:`_end`).
        The caller's first chunk thus waits on nothing of the shim's but these and the
        relay, and a stream never read holds no worker slot."""
        engine = self._engine
        if call.decision.serve:
            return self._serve(engine, call)
        if engine.metered:
            engine.events.served(call.site, "legacy")
        compared = call.decision.compare
        if compared:
            try:  # never run again for noise: a second stream is no value
                call.kept = kept_arguments(call.args, call.kwargs)
            except Exception as exc:
                engine.hand_off_failed(call, exc, slot=False)
                compared = False
        started = _perf()
        stream = call.fn(*call.args, **call.kwargs)
        if type(stream) is not self._kind:  # a generator is known without a call
            stream = self._as_generator(stream)
        if not compared:
            return stream
        return self._relay(stream, self._end, call, _perf() - started)

    def _end(self, call: Call, end: StreamEnd) -> None:
        """A compared stream ended: to the comparison if the admission lets it (a
        worker slot taken now). Else counted: what the admission refused (an open
        breaker, a back-off, a budget: its reason), then a stream left early
        (``abandoned``) or too long (``stream_too_large``), or, had noting a chunk
        failed, the shim's error (``relay``). Never raises into the caller."""
        engine, site = self._engine, call.site
        try:
            if end.how == "unnoted" and end.error is not None:
                engine.events.internal_error("relay", end.error, site=site)
                return
            if end.how == "abandoned" or end.chunks is None:
                if not engine.admit(call, slot=False):
                    return  # counted: the comparison was lost to the admission first
                if end.how == "abandoned":
                    seen = Stream(None if end.first is None else end.first * 1000, end.count)
                    stage = call.decision.stage
                    engine.events.abandoned(site, stage, "legacy", seen, end.busy)
                else:
                    engine.recorder.dropped(site.product, site.task, "stream_too_large")
                return
            output = assemble(end.chunks) if end.error is None else None
            if not engine.admit(call):
                return  # counted (breaker_open, backoff, over budget or queue_full)
            ttft = None if end.first is None else end.first * 1000
            stream = Stream(ttft, end.count)
            # the hand-off gives the slot back itself, should it fail
            if end.error is not None:
                engine.legacy_raised(call, end.busy, end.error, stream)
            else:
                engine.legacy_returned(call, end.busy, output, engine.threads, stream)
        except Exception as exc:
            engine.hand_off_failed(call, exc, slot=False)
