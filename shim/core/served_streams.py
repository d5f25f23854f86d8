"""Streaming call sites the task path serves (canary, live): the caller iterates the
task path's stream as the node sends it.

- Within ``max_serving``, with the breaker closed: the task path's stream is opened
  (``Timeouts.serve`` bounds the whole of it) and each piece of text handed on as it
  comes. Otherwise legacy serves, as it would unwrapped.
- The task path fails before its first piece: legacy serves instead, transparently
  (``fallback``), and the pair is recorded (``served_by: legacy_fallback``).
- It fails after the first piece: the caller has seen part of an answer that legacy
  cannot continue, so the stream raises :class:`~shim.base.errors.StreamInterrupted`
  (or what the call site's ``stream_error=`` makes of it), counted as
  ``shim.stream_interrupted``.
- It ends: a compared call runs legacy's stream in the background, drained, and the
  pair is recorded (``served_by: task``). A stream the caller leaves early is closed
  (its allocation given back) and counted as dropped (``abandoned``).

:class:`Serving` keeps one stream's bookkeeping; the sync and async relays differ only
in how they call the task client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import replace
from typing import Any

from shim.base.errors import StreamInterrupted
from shim.client.task import TaskResult
from shim.core.admission import Admitted
from shim.core.call import Call, candidate_answered, candidate_failed
from shim.core.callsite import CallSiteError, responded
from shim.core.engine import Engine
from shim.core.relay import (
    OnEnd,
    StreamEnd,
    Tap,
    agenerator,
    arelay,
    generator,
    relay,
    stream_observation,
)
from shim.core.steps import Lane
from shim.records.observe import Observation, Pending, Stream, describe, restore

__all__ = ["Serving", "aserve", "serve"]

_perf = time.perf_counter
_END: Any = object()


class Serving:
    """One stream the task path serves: its place among ``max_serving``, its
    admission, its timing (a :class:`~shim.core.relay.Tap`: the task path's time, not
    the caller's) and what is recorded of how it ended."""

    __slots__ = ("admitted", "call", "engine", "entered", "tap")

    def __init__(self, engine: Engine, call: Call) -> None:
        self.engine, self.call = engine, call
        self.admitted: Admitted | None = None
        self.entered = False
        self.tap = Tap(_perf())
        self.tap.chunks = None  # the stream's result holds the text

    def begin(self) -> tuple[Any, str | None] | None:
        """The task request and service hint, if the task path may serve; else None
        (legacy serves: ``max_serving`` reached, counted as ``serve_full``; the
        call site's ``request=`` raised; the breaker open)."""
        engine, call = self.engine, self.call
        site = call.site
        if not engine.serving.try_enter():
            engine.recorder.dropped(site.product, site.task, "serve_full")
        else:
            self.entered = True
            if call.prepared is not None or engine.prepared(call):
                self.admitted = engine.admission.allow(site, shadow=False)
        if self.admitted is None:
            self.leave()
            engine.events.served(site, "legacy")
            return None
        assert call.prepared is not None
        request, hint = call.prepared
        self.tap = Tap(_perf())  # timed from here
        self.tap.chunks = None
        return restore(request), hint

    def leave(self) -> None:
        """Give back the place among ``max_serving`` (once)."""
        if self.entered:
            self.entered = False
            self.engine.serving.leave()

    def failed(self, exc: Exception) -> Observation:
        """The task path failed: the breaker hears of it; its side of the record."""
        assert self.admitted is not None
        self.engine.admission.failed(self.admitted, getattr(exc, "status", None))
        self.leave()
        return self._side(candidate_failed(exc, _perf(), None))

    def _side(self, observed: Observation, until: float | None = None) -> Observation:
        """``observed`` with the task path's own time (to ``until``, a perf_counter
        value: when its answer was whole, the allocation's release left out) and the
        stream's timing."""
        tap = self.tap
        busy = tap.busy + ((_perf() if until is None else until) - tap.started)
        stream = Stream(None if tap.first is None else tap.first * 1000, tap.count)
        return replace(observed, latency_ms=busy * 1000, stream=stream)

    def fell_back(self) -> OnEnd:
        """Legacy serves instead (counted): what its relay tells, given the task
        path's side, is recorded as the pair."""
        self.engine.events.served(self.call.site, "legacy_fallback")
        return self._fallback_ended

    def _fallback_ended(self, candidate: Observation, end: StreamEnd) -> None:
        self._record(end, "legacy_fallback", candidate)

    def interrupted(self, exc: Exception, lane: Lane) -> BaseException:
        """The task path failed after its first piece: counted, compared if the call
        is; the error the caller gets."""
        call, site = self.call, self.call.site
        candidate = self.failed(exc)
        self.engine.recorder.tally(
            "shim.stream_interrupted", site.product, site.task, describe(exc)
        )
        self.engine.compare_served(call, candidate, None, lane)
        error = StreamInterrupted(
            f"{site.name}: the task path's stream failed after {self.tap.count} piece(s): {exc}",
            product=site.product,
            task=site.task,
            status=getattr(exc, "status", None),
        )
        if site.stream_error is None:
            return error
        try:
            theirs = site.stream_error(error)
            if not isinstance(theirs, BaseException):
                raise TypeError(f"returned {type(theirs).__name__}, not an exception")
        except Exception as failed:  # the call site's callable: counted, ours raised
            self.engine.events.call_site_error(
                "stream_error",
                site.stream_error,
                failed,
                site=site,
                then="the caller gets StreamInterrupted",
            )
            return error
        return theirs

    def site_error(self, err: CallSiteError, result: TaskResult | None) -> None:
        """The call site's own callable raised on the task path's answer: its error,
        counted; the task path answered (the breaker hears so); legacy serves."""
        engine, site = self.engine, self.call.site
        if self.admitted is not None and result is not None:
            engine.admission.answered(self.admitted, result)
        self.leave()
        engine.events.call_site_error(err.name, err.fn, err.error, site=site)
        engine.events.served(site, "legacy")

    def left(self, *, at_yield: bool) -> None:
        """The caller left the stream early (``at_yield``: holding it between pieces;
        else while the task path worked, cancelled or interrupted). A compared call is
        recorded with what the caller had seen, its comparison counted as dropped."""
        if self.admitted is not None:
            self.engine.admission.abandoned(self.admitted)
        self.leave()
        call, tap = self.call, self.tap
        if not call.decision.compare:
            return
        seen = Stream(None if tap.first is None else tap.first * 1000, tap.count)
        busy = tap.busy if at_yield else tap.end().busy  # the caller's own time left out
        self.engine.events.abandoned(call.site, call.decision.stage, "task", seen, busy)

    def ended(self, result: TaskResult | None, lane: Lane, until: float | None = None) -> None:
        """The stream ended (its answer whole at ``until``): the breaker hears of it,
        and a compared call runs legacy in the background. Never raises into the
        caller."""
        engine, call = self.engine, self.call
        assert self.admitted is not None and result is not None
        engine.admission.answered(self.admitted, result)
        self.leave()
        try:
            value = responded(call.site, result)
        except CallSiteError as err:
            engine.events.call_site_error(err.name, err.fn, err.error, site=call.site)
            return
        except Exception as exc:  # a soft failure (an empty answer): the task path's
            engine.compare_served(
                call, self._side(candidate_failed(exc, _perf(), result)), None, lane
            )
            return
        candidate = self._side(candidate_answered(result, value, _perf()), until)
        engine.compare_served(call, candidate, value, lane)

    def _record(self, end: StreamEnd, served_by: str, candidate: Observation) -> None:
        engine, call = self.engine, self.call
        site = call.site
        try:
            if end.how == "unnoted" and end.error is not None:  # the shim's error
                engine.events.internal_error("relay", end.error, site=site)
                return
            if end.how == "abandoned":
                seen = Stream(None if end.first is None else end.first * 1000, end.count)
                stage = call.decision.stage
                engine.events.abandoned(site, stage, served_by, seen, end.busy)
                return
            legacy = stream_observation(end, call.model)
            if legacy is None:
                engine.recorder.dropped(site.product, site.task, "stream_too_large")
                return
            pending = Pending(site, call.decision.stage, served_by, legacy, candidate)
            engine.events.compared(pending)
        except Exception as exc:  # the shim's failure, never the caller's
            engine.events.internal_error("record", exc, site=site)


def serve(engine: Engine, call: Call) -> Generator[Any, Any, Any]:
    """A sync streaming call the task path serves (see the module's docstring)."""
    serving = Serving(engine, call)
    opening = serving.begin()
    if opening is None:
        return (yield from generator(call.fn(*call.args, **call.kwargs)))
    site, (request, hint) = call.site, opening
    stream = None
    try:
        stream = engine.threads.serving.open_stream(
            site.product, site.task, request, service_hint=hint
        )
        piece = next(stream, _END)
        if piece is _END:  # no text at all: a failure if the call site counts it so
            responded(site, stream.result)
    except CallSiteError as err:
        serving.site_error(err, None if stream is None else stream.result)
        return (yield from generator(call.fn(*call.args, **call.kwargs)))
    except Exception as exc:
        candidate = serving.failed(exc)
        if not site.fallback:
            engine.events.served(site, "task")
            raise
        started = _perf()
        inner = generator(call.fn(*call.args, **call.kwargs))
        return (yield from relay(inner, serving.fell_back(), candidate, lead=_perf() - started))
    except BaseException:
        serving.left(at_yield=False)
        if stream is not None:
            stream.close()
        raise
    engine.events.served(site, "task")
    tap, broken, at_yield = serving.tap, False, False
    try:
        while piece is not _END:
            tap.add(piece, _perf())
            at_yield = True
            yield piece  # what the caller throws in (or closing) leaves the stream
            at_yield = False
            tap.resume()
            try:
                piece = next(stream, _END)
            except Exception as exc:
                broken = True
                raise serving.interrupted(exc, engine.threads) from exc
    except BaseException:
        if not broken:
            serving.left(at_yield=at_yield)
        stream.close()
        raise
    serving.ended(stream.result, engine.threads, stream.finished)


async def aserve(engine: Engine, call: Call) -> AsyncGenerator[Any, Any]:
    """:func:`serve` for an async streaming call site, on the caller's event loop."""
    serving = Serving(engine, call)
    opening = serving.begin()
    if opening is None:
        async for chunk in arelay(agenerator(call.fn(*call.args, **call.kwargs)), _ignore, None):
            yield chunk
        return
    site, (request, hint) = call.site, opening
    stream = None
    try:
        client = engine.loops.state().client
        stream = await client.open_stream(site.product, site.task, request, service_hint=hint)
        piece = await anext(stream, _END)
        if piece is _END:  # no text at all: a failure if the call site counts it so
            responded(site, stream.result)
    except CallSiteError as err:
        serving.site_error(err, None if stream is None else stream.result)
        async for chunk in arelay(agenerator(call.fn(*call.args, **call.kwargs)), _ignore, None):
            yield chunk
        return
    except Exception as exc:
        candidate = serving.failed(exc)
        if not site.fallback:
            engine.events.served(site, "task")
            raise
        started = _perf()
        inner = agenerator(call.fn(*call.args, **call.kwargs))
        async for chunk in arelay(inner, serving.fell_back(), candidate, lead=_perf() - started):
            yield chunk
        return
    except BaseException:
        serving.left(at_yield=False)
        if stream is not None:
            await stream.aclose()
        raise
    engine.events.served(site, "task")
    tap, broken, at_yield = serving.tap, False, False
    try:
        while piece is not _END:
            tap.add(piece, _perf())
            at_yield = True
            yield piece
            at_yield = False
            tap.resume()
            try:
                piece = await anext(stream, _END)
            except Exception as exc:
                broken = True
                raise serving.interrupted(exc, engine.loops) from exc
    except BaseException:
        if not broken:
            serving.left(at_yield=at_yield)
        await stream.aclose()
        raise
    serving.ended(stream.result, engine.loops, stream.finished)


def _ignore(context: Any, end: StreamEnd) -> None:
    return None
