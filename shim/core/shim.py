"""The Shim: wraps call sites so flags decide, per call, which path serves and whether
the other path runs in the background for comparison.

This is the facade; the work is in the modules beside it: ``config`` (limits,
timeouts, environment), ``decorate`` (the decorator and its checks), ``engine`` (one
decision and execution core for sync and async call sites; ``served`` its served
calls), ``admission`` (breaker, spend, room; ``gate`` the serving gate), ``lanes`` (the
two drivers and their connections), ``events`` (records, metrics, spans),
``allocation`` (allocating call sites), ``closing`` (a close in phases) and
``lifecycle`` (exit and fork).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

import httpx

from shim import flags as flagpkg
from shim.client.task import TaskRequest
from shim.comparators import Comparator
from shim.core import lifecycle
from shim.core.admission import Admission
from shim.core.breaker import BreakerPolicy
from shim.core.closing import ShimCloser
from shim.core.config import (
    FixedFlags,
    Limits,
    Timeouts,
    check_judge,
    env_config,
    flag_listener,
    load_orch,
    secrets_of,
)
from shim.core.decorate import Decorator, ShadowOptions
from shim.core.engine import Engine
from shim.core.events import Events
from shim.core.judging import Judge
from shim.core.lanes import judge_pool, lanes
from shim.core.spend import Backoff, ShadowBudget
from shim.records.capture import Capture
from shim.records.observe import is_soft_failure
from shim.records.sinks import FileSink, RecordSink, StreamSink

if TYPE_CHECKING:
    from shim.metrics import PrometheusMetrics

__all__ = ["Shim"]

P = ParamSpec("P")
R = TypeVar("R")

_log = logging.getLogger("shim")


class Shim(AbstractContextManager["Shim"], AbstractAsyncContextManager["Shim"]):
    """Dual-path shim for cf-orch call sites.

    ::

        s = Shim("http://orch:8700", flags=shim.flags.FileFlags("flags.yaml"),
                 log_path="comparisons.jsonl")

        @s.shadow(product="kiwi", task="meal_plan",
                  request=lambda system, user, **kw: TaskRequest(prompt=user, system=system),
                  response=lambda result: result.text, legacy_model="qwen2.5-3b-instruct")
        def complete(system: str, user: str, **kw: Any) -> str: ...

    Records go to ``log_path`` (``-``: stdout) or ``sink``. ``limits`` bound the work
    taken on at once (comparison workers and their queue, background tasks per event
    loop, task-path calls serving at once) and ``timeouts`` the task-path calls, in
    seconds; see :class:`Limits` and :class:`Timeouts` for the defaults.

    Prompts and outputs are not recorded; ``capture=Capture(...)`` records them, capped
    and redacted (emails, phone numbers, card-like numbers, your own patterns).

    Task-path calls from threads go over the task client's own keep-alive connections;
    ``http=httpx.Client(...)`` puts them on yours instead (proxies, client certificates).
    ``transport`` replaces the network for every task-path call, sync and async
    (``httpx.MockTransport`` in tests; see ``shim.testing``).

    ``noise_sample`` is the share of shadowed calls on which legacy also runs a second
    time in the background: the legacy-vs-legacy difference (``structure.noise``) tells
    a difference the model makes by itself from one the task path brings.
    """

    def __init__(
        self,
        orch_url: str,
        *,
        flags: flagpkg.FlagSource,
        log_path: str | Path | None = None,
        sink: RecordSink | None = None,
        api_key: str | None = None,
        registry: str | Path | None = None,
        assignments: str | Path | None = None,
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
        breaker: BreakerPolicy | None = None,
        http: httpx.Client | None = None,
        transport: httpx.MockTransport | None = None,
        noise_sample: float = 0.0,
        capture: Capture | None = None,
        budgets: Mapping[str, ShadowBudget] | None = None,
        backoff: Backoff | None = None,
        metrics: PrometheusMetrics | None = None,
        tracer: Any = None,
        judge: Judge | None = None,
    ) -> None:
        if not 0.0 <= noise_sample <= 1.0:
            raise ValueError(f"noise_sample must be a share from 0 to 1, got {noise_sample}")
        if http is not None and transport is not None:
            raise ValueError("give http= or transport=, not both")
        self.orch_url = orch_url = orch_url.rstrip("/")
        self.flags = flags
        self.limits = limits = limits or Limits()
        self.timeouts = timeouts = timeouts or Timeouts()
        self.noise_sample = noise_sample
        self.breaker_policy = breaker or BreakerPolicy()
        self.backoff = backoff or Backoff()
        self.enabled = True  # False: built without a coordinator, every call is legacy
        names, services = load_orch(registry, assignments)
        check_judge(judge, assignments, names)
        if sink is None:
            sink = StreamSink() if log_path in (None, "-") else FileSink(cast(Path, log_path))
        self._events = events = Events(
            sink,
            names=names,
            secrets=secrets_of(api_key, orch_url=orch_url),
            capture=capture,
            metrics=metrics,
            tracer=tracer,
            orch_url=orch_url,
        )
        self._admission = Admission(
            policy=self.breaker_policy,
            backoff=self.backoff,
            budgets=budgets or {},
            flags=flags,
            recorder=events.recorder,
            on_transition=events.breaker,
            on_error=events.internal_error,
        )
        self._own_http = None if transport is None else httpx.Client(transport=transport)
        threads, loops = lanes(
            orch_url,
            api_key=api_key,
            limits=limits,
            timeouts=timeouts,
            http=http or self._own_http,
            transport=transport,
            events=events,
        )
        self._engine = Engine(
            admission=self._admission,
            events=events,
            threads=threads,
            loops=loops,
            max_serving=limits.max_serving,
            noise_sample=noise_sample,
            capture_prompts=capture is not None,
        )
        if judge is not None:  # pairs it samples wait for it on threads of its own
            events.judges = judge_pool(
                judge, orch_url, api_key=api_key, http=http or self._own_http, events=events
            )
        self._decorator = Decorator(self._engine, flags, expected=names.expected, services=services)
        flags.subscribe(flag_listener(events))
        self._closer = ShimCloser(
            self._engine, events.recorder, http=self._own_http, parts=(threads, loops)
        )
        self._engine.keepalive = self._closer

    @property
    def _owns_flags(self) -> bool:
        """The flag source is the Shim's own (``from_env`` made it): closed with it."""
        return self._closer.flags is not None

    @_owns_flags.setter
    def _owns_flags(self, owns: bool) -> None:
        self._closer.flags = self.flags if owns else None

    # -- construction from the environment -------------------------------------------

    @classmethod
    def from_env(cls, **overrides: Any) -> Shim:
        """A Shim configured by ``CF_ORCH_URL``, ``CF_LICENSE_KEY``, ``SHIM_FLAGS``,
        ``SHIM_LOG``, ``SHIM_REGISTRY`` and ``SHIM_ASSIGNMENTS``; keyword arguments win.

        Without ``CF_ORCH_URL`` (an app running self-hosted, with no coordinator), or
        without ``SHIM_FLAGS``, the Shim is disabled: every wrapped call runs legacy and
        nothing is compared; it says so once, as a warning and a ``shim.error`` record
        (``operation: configure``, or ``flags.missing``). ``enabled`` tells which. A
        ``SHIM_FLAGS`` file that is not there is no error either: every task is off
        until it appears, said once the same way (``flags.missing``). With
        ``flags_required=True`` (env ``SHIM_FLAGS_REQUIRED=1``) both raise ConfigError
        instead. A flags source that is there but broken is an error, as before."""
        owns_flags = "flags" not in overrides
        url, off = env_config(overrides)
        if off is not None:
            operation, why = off
            log_path = overrides.get("log_path") or os.environ.get("SHIM_LOG") or None
            shim = cls("", flags=FixedFlags(), log_path=log_path, sink=overrides.get("sink"))
            shim.enabled = False
            _log.warning("task-shim: %s", why)
            shim._events.recorder.event("shim.error", None, None, operation=operation, error=why)
            return shim
        shim = cls(url, **overrides)
        shim._owns_flags = owns_flags
        return shim

    # -- the decorator ---------------------------------------------------------------

    def shadow(
        self,
        *,
        product: str | Callable[..., str],
        task: str | Callable[..., str],
        request: Callable[..., TaskRequest] | None = None,
        response: Callable[[Any], Any] | None = None,
        legacy_model: str | Callable[[Any], str | None] | None = None,
        output: Comparator | None = None,
        key: Callable[..., Any] | None = None,
        fallback: bool = True,
        allocation: bool | Literal["entered"] = False,
        legacy_usage: Callable[[Any], Mapping[str, Any] | None] | None = None,
        service_hint: str | Callable[..., str | None] | None = None,
        soft_failure: Callable[[Any], bool] | None = is_soft_failure,
        side_effects: bool = False,
        serve_without_side_effects: bool = False,
        stream: bool | Literal["async"] = False,
        stream_error: Callable[[BaseException], BaseException] | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Wrap a call site of ``product.task``.

        ``request`` builds the task request from the call's arguments (an allocating call
        site sends none: kiwi's body is ``{product, task, payload: {}}``); ``response`` turns
        the task result into what the call site returns. ``legacy_model`` names the
        legacy model (or reads it from the legacy result). ``key`` returns the sticky
        value from the arguments (else ``shim.context`` supplies it). With ``fallback``
        a failing task path that serves falls back to legacy. ``product`` and ``task``
        may be callables on the call's arguments, for a shared helper that serves
        several tasks (``task_allocate(product, task, ...)``).

        Decorating checks the callables against the call site: ``request``, ``key``
        (and ``product``, ``task``, ``service_hint`` when callables) must take the
        wrapped function's arguments, ``response`` one value; a mismatch raises
        TypeError naming the call site and the keyword.

        ``allocation=True`` is for call sites that return a context manager yielding an
        allocation: the task path asks cf-orch for an allocation (kiwi's body,
        ``{product, task, payload: {}}``); ``response`` turns a :class:`TaskAllocation`
        into what the call site yields (default: the type the function's annotation
        names, such as kiwi's frozen ``Allocation``, else the TaskAllocation itself);
        shadow allocations are released as soon as they are compared.
        ``allocation="entered"`` is for sync call sites that return ``(value, ctx)``
        with ``ctx`` already entered and holding an allocation (kiwi's
        ``get_meal_plan_router()``): served, the call returns ``(response(alloc),
        ctx)`` and exiting ``ctx`` releases the task path's allocation.
        ``service_hint`` (or a callable on the arguments) names the service to release
        an allocation from when the coordinator's answer does not; by default the
        registry's service for the task's model.

        ``soft_failure`` says which values are failures the call site swallowed
        (default: ``None``, ``""``, an empty container): such a legacy value is recorded
        as a legacy failure, never a match; such a task-path value is a task-path
        failure (serving, legacy answers instead). ``None`` turns this off.

        ``legacy_usage`` reads the legacy path's usage from its result (OpenAI-style
        ``prompt_tokens``/``completion_tokens``, or ``input_tokens``/``output_tokens``,
        and ``gpu_s``), for the records and the report's token and cost figures.

        ``side_effects=True`` says legacy does something besides returning (writes a
        row, sends a mail) that must happen once per call: legacy is never run a second
        time for noise, and where the flags say the task path serves, legacy serves
        instead (compared if the shadow share draws it, as in shadow; counted as
        dropped, reason ``side_effects``).
        ``serve_without_side_effects=True`` lets the task path serve all the same: the
        app has moved the side effect out of the wrapped function, or accepts that
        calls the task path serves do without it.

        The callables are the app's code: an exception from ``request``, ``response``,
        ``key``, ``soft_failure``, ``service_hint`` (or ``product``/``task``) is the
        call site's error, recorded as ``shim.error`` (``operation:
        call_site.<keyword>``, with ``call_site`` and ``function``) and counted in
        ``stats()``; the call goes on as legacy, and neither the circuit breaker nor
        the verdict counts it against the task path. The caller's lists, dicts and
        sets among the arguments are copied when the call is made, so that changing
        them afterwards cannot change what the task path is sent (nor what legacy
        sees when it runs in the background).

        Generator and async generator functions are streaming call sites, as is a
        function that returns an iterator (``stream=True``) or an async iterator
        (``stream="async"``) of chunks (README, "Streaming call sites"). Served by the
        task path, a stream that breaks after its first piece raises StreamInterrupted,
        or what ``stream_error`` (StreamInterrupted -> exception) makes of it.
        """
        options = ShadowOptions(
            request=request,
            response=response,
            legacy_model=legacy_model,
            output=output,
            key=key,
            fallback=fallback,
            allocation=allocation,
            legacy_usage=legacy_usage,
            service_hint=service_hint,
            soft_failure=soft_failure,
            side_effects=side_effects,
            serve_without_side_effects=serve_without_side_effects,
            stream=stream,
            stream_error=stream_error,
        )
        decorate = self._decorator.shadow(product, task, options)
        return cast(Callable[[Callable[P, R]], Callable[P, R]], decorate)

    # -- state -------------------------------------------------------------------------

    def breaker_state(self, task: str) -> str | None:
        """``closed``, ``open`` or ``half_open`` for a wrapped ``product.task``."""
        return self._admission.state(task)

    def stats(self) -> dict[str, Any]:
        """Counters: record lines written, held while the log cannot be written and lost
        for good, failed writes, comparisons pending (with the workers, or handed to
        the recorder and not made into records yet), the bytes the comparisons queued
        for the worker threads and for the recorder hold (estimated; each queue is
        bounded, see :data:`~shim.records.recorder.QUEUE_BYTES`), internal errors by
        operation, and the judge's calls, verdicts and skips (None without a judge)."""
        recorder, dispatch = self._events.recorder, self._engine.threads.dispatch
        judges = self._events.judges
        return {
            "records_written": recorder.written,
            "records_unwritten": recorder.unwritten,
            "records_lost": recorder.lost,
            "write_errors": recorder.write_errors,
            "pending": dispatch.pending + recorder.queued,
            "queued_bytes": {"workers": dispatch.queued_bytes, "recorder": recorder.queued_bytes},
            "internal_errors": self._events.errors(),
            "judge": None if judges is None else judges.counts(),
        }

    # -- lifecycle -------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait for queued comparisons and write their records; True if all made it."""
        deadline = time.monotonic() + timeout
        dispatch, recorder = self._engine.threads.dispatch, self._events.recorder
        while dispatch.pending and time.monotonic() < deadline:
            time.sleep(0.005)
        judged = True
        if self._events.judges is not None:  # pairs the judge has: recorded once judged
            judged = self._events.judges.wait(max(0.0, deadline - time.monotonic()))
        flushed = recorder.flush(max(0.0, deadline - time.monotonic()))
        return judged and flushed and not recorder.unwritten

    def close(self, timeout: float = 5.0) -> None:
        """Finish queued comparisons (within ``timeout``), write every record, and say
        what could not finish as ``shim.dropped`` (reason ``shutdown``). Writing gets
        half a second past ``timeout`` if the comparisons took all of it (never more
        than ``timeout`` itself). Never raises.

        On an event loop that keeps running, use :meth:`aclose`: a background legacy
        run still going on this loop when ``close`` returns cannot be written any
        more (counted in ``stats()["records_lost"]``, and said once)."""
        lifecycle.close_together([self._closer], timeout)

    async def aflush(self, timeout: float = 5.0) -> bool:
        """Wait for this event loop's background comparisons, then :meth:`flush`: their
        records are written when it returns (a test reading them, a job that wants
        them now). Not needed to keep them: when a loop ends (``asyncio.run``
        returning), its background legacy runs finish first, within
        ``Timeouts.shadow``."""
        deadline = time.monotonic() + timeout
        state = self._engine.loops.found()
        if state is not None:
            await state.dispatch.drain(timeout, cancel=False)
        return await asyncio.to_thread(self.flush, max(0.0, deadline - time.monotonic()))

    async def aclose(self, timeout: float = 5.0) -> None:
        """Async twin of :meth:`close`: also drains this event loop's background tasks
        (those still running at ``timeout`` are cancelled and counted, ``shutdown``)."""
        deadline = time.monotonic() + timeout
        state = self._engine.loops.forget()
        if state is not None:
            await state.dispatch.drain(timeout)  # the cancelled are counted as they end
            await state.client.close_after_streams(state.http.aclose)  # streams: after
        await asyncio.to_thread(self.close, max(0.5, deadline - time.monotonic()))

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
