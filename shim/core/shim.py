"""The Shim: wraps call sites so flags decide, per call, which path serves and whether
the other path runs in the background for comparison."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import logging
import multiprocessing.util
import os
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, ParamSpec, Self, TypeVar, cast

import httpx

from shim import flags as flagpkg
from shim.base.context import sticky_value
from shim.base.errors import ConfigError, Problem, ShimError
from shim.base.names import check_task_name
from shim.base.orch import SERVICE_TYPES, AssignmentsFile, OrchConfig, RegistryFile, parse_file
from shim.client.task import TaskAllocation, TaskRequest, TaskResult
from shim.client.task_client import AsyncTaskClient, TaskClient
from shim.comparators import AllocationOutput, JsonOutput, ModelNames, OutputComparator
from shim.core.allocation import (
    HeldAllocation,
    ServedAllocation,
    ShadowedAllocation,
    declared_allocation,
)
from shim.core.breaker import BreakerPolicy, CircuitBreaker
from shim.core.callsite import (
    checked,
    entered_and_left,
    first_of_pair,
    hint_of,
    no_request,
    routed,
    unfallen,
)
from shim.core.dispatch import Gate, LoopDispatcher, ThreadDispatcher
from shim.core.spend import BUSY, Backoff, ShadowBudget, Spend
from shim.metrics import PrometheusMetrics
from shim.records.capture import Capture
from shim.records.observe import (
    NOT_RECORDED,
    CallSite,
    Observation,
    Pending,
    capture,
    describe,
    is_soft_failure,
    usage_record,
)
from shim.records.recorder import FileSink, Recorder, RecordSink, StreamSink
from shim.records.tracing import end_span, start_span

__all__ = ["Shim"]

P = ParamSpec("P")
R = TypeVar("R")

_log = logging.getLogger("shim")
_perf = time.perf_counter


def _output(result: TaskResult) -> Any:
    return result.output


class _LoopState:
    """What a Shim keeps per event loop: httpx.AsyncClient is bound to its loop."""

    def __init__(self, shim: Shim) -> None:
        # The shim's TLS context: loading CA certificates per event loop would cost the
        # loop's first caller ~25 ms.
        http = httpx.AsyncClient(headers={"User-Agent": "task-shim/0.1"}, verify=shim._tls)
        # (Shadow comparisons run on the worker threads; only serving calls use this.)
        self.client = AsyncTaskClient(
            shim.orch_url,
            api_key=shim._api_key,
            timeout=shim.timeout,
            http=http,
            on_release_failed=shim._release_failed,
        )
        self.http = http
        self.dispatch = LoopDispatcher(
            capacity=shim.concurrency, on_error=shim._internal_error, on_cancelled=shim._cancelled
        )
        # The loop's end, heard through an async generator: asyncio.run (and any runner
        # that calls loop.shutdown_asyncgens) closes it, and its finally closes the client.
        self._closer = self._close_at_loop_end()
        step: Any = self._closer.__anext__()
        with contextlib.suppress(StopIteration):
            step.send(None)  # started: suspended at its yield, known to the loop

    async def _close_at_loop_end(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.http.aclose()


class Shim:
    """Dual-path shim for cf-orch call sites.

    ::

        s = Shim("http://orch:8700", flags=flags.FileFlags("flags.yaml"),
                 log_path="comparisons.jsonl")

        @s.shadow(product="kiwi", task="meal_plan",
                  request=lambda system, user, **kw: TaskRequest(prompt=user, system=system),
                  response=lambda result: result.text, legacy_model="qwen2.5-3b-instruct")
        def complete(system: str, user: str, **kw: Any) -> str: ...

    ``timeout`` bounds a task-path call that serves; ``shadow_timeout`` one that only
    runs for comparison. Comparisons, from sync and async call sites, share ``workers``
    threads and a queue of ``queue_size``; a served async call that is compared runs
    legacy in the background on its event loop, at most ``concurrency`` at a time.
    Records go to ``log_path`` (``-``: stdout) or ``sink``.

    ``max_serving`` bounds the task-path calls that serve at once (threads and event loops
    together); a call beyond it is served by legacy at once and counted (``serve_full``),
    so a hanging coordinator can hold no more than that many callers.

    Prompts and outputs are not recorded; ``capture=Capture(...)`` records them, capped
    and redacted (emails, phone numbers, card-like numbers, your own patterns).

    Task-path calls from threads go over the task client's own keep-alive connections;
    ``http=httpx.Client(...)`` puts them on yours instead (proxies, client certificates).

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
        timeout: float = 30.0,
        shadow_timeout: float = 30.0,
        registry: str | Path | None = None,
        assignments: str | Path | None = None,
        workers: int = 4,
        queue_size: int = 1000,
        concurrency: int = 64,
        breaker: BreakerPolicy | None = None,
        http: httpx.Client | None = None,
        noise_sample: float = 0.0,
        max_serving: int = 64,
        capture: Capture | None = None,
        budgets: Mapping[str, ShadowBudget] | None = None,
        backoff: Backoff | None = None,
        metrics: PrometheusMetrics | None = None,
        tracer: Any = None,
    ) -> None:
        self.orch_url = orch_url.rstrip("/")
        self.flags = flags
        self.timeout = timeout
        self.shadow_timeout = shadow_timeout
        self.concurrency = concurrency
        if not 0.0 <= noise_sample <= 1.0:
            raise ValueError(f"noise_sample must be a share from 0 to 1, got {noise_sample}")
        self.noise_sample = noise_sample
        self.breaker_policy = breaker or BreakerPolicy()
        self.backoff = backoff or Backoff()
        self._metrics = metrics
        self._tracer = tracer
        self._budgets = dict(budgets or {})
        self._budget_cache: dict[tuple[str, float | None, int | None], ShadowBudget] = {}
        self._spends: dict[str, Spend] = {}
        self._api_key = api_key
        self._errors: Counter[str] = Counter()
        self._errors_lock = threading.Lock()
        self._owns_flags = False
        self._closed = False
        self._names, self._services = names, _ = _load_orch(registry, assignments)
        self.enabled = True  # False: built without a coordinator, every call is legacy
        if sink is None:
            sink = StreamSink() if log_path in (None, "-") else FileSink(cast(Path, log_path))
        key = os.environ.get("CF_LICENSE_KEY") if api_key is None else api_key
        tokens = [os.environ.get("UNLEASH_API_TOKEN"), os.environ.get("UNLEASH_ADMIN_TOKEN")]
        # An Unleash token is "project:environment.secret": the secret part alone leaks too.
        secrets = tuple(
            v for v in (key, *tokens, *(t.rsplit(".", 1)[-1] for t in tokens if t)) if v
        )
        self._capture = capture
        self._recorder = Recorder(
            sink,
            names=names,
            on_error=self._internal_error,
            secrets=secrets,
            capture=capture,
            observe=None if metrics is None else metrics.record,
        )
        self._tls = httpx.create_ssl_context()  # verifying certificates, shared by clients
        self._http = http  # None: the task clients keep their own connections
        self._make_clients()
        self._dispatch = dispatch = ThreadDispatcher(
            workers=workers, capacity=queue_size, on_error=self._internal_error
        )
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._handoff = dispatch.handoff  # bound once: the shadow path calls it per call
        self._serving = Gate(max_serving)
        self._breakers: dict[str, CircuitBreaker] = {}
        flags.subscribe(self._flag_event)
        _live.add(self)
        ref = weakref.ref(self)

        def after_fork() -> None:
            shim = ref()
            if shim is not None and not shim._closed:
                shim._after_fork()

        os.register_at_fork(after_in_child=after_fork)
        # multiprocessing's workers leave through os._exit, which skips atexit, and start
        # with its finaliser registry cleared: register the close where it will run.
        multiprocessing.util.register_after_fork(self, _close_at_worker_exit)

    def _make_clients(self) -> None:
        self._client, self._shadow_client = (
            TaskClient(
                self.orch_url,
                api_key=self._api_key,
                timeout=timeout,
                http=self._http,
                tls=self._tls,
                on_release_failed=self._release_failed,
            )
            for timeout in (self.timeout, self.shadow_timeout)
        )

    def _after_fork(self) -> None:
        """In a forked child: connections and event loops are the parent's; start anew.
        (The dispatcher, the recorder and file flags restart their own threads.)"""
        # Not closed: the sockets are shared with the parent, which still uses them.
        self._make_clients()
        self._loops = weakref.WeakKeyDictionary()

    # -- construction from the environment -------------------------------------------

    @classmethod
    def from_env(cls, **overrides: Any) -> Shim:
        """A Shim configured by ``CF_ORCH_URL``, ``CF_LICENSE_KEY``, ``SHIM_FLAGS``,
        ``SHIM_LOG``, ``SHIM_REGISTRY`` and ``SHIM_ASSIGNMENTS``; keyword arguments win.

        Without ``CF_ORCH_URL`` (an app running self-hosted, with no coordinator), or
        without ``SHIM_FLAGS``, the Shim is disabled: every wrapped call runs legacy and
        nothing is compared; it says so once, as a warning and a ``shim.error`` record
        (``operation: configure``). ``enabled`` tells which. A flags source that is
        named but broken is an error, as before."""
        env = os.environ
        url = overrides.pop("orch_url", None) or env.get("CF_ORCH_URL")
        if not url:
            return cls._disabled(
                overrides,
                "CF_ORCH_URL is not set: task-shim is off and every wrapped call runs its "
                "legacy path; set CF_ORCH_URL to the coordinator's base URL to compare",
            )
        owns_flags = "flags" not in overrides
        if owns_flags and not env.get("SHIM_FLAGS"):
            return cls._disabled(
                overrides,
                "SHIM_FLAGS is not set: task-shim is off and every wrapped call runs its "
                "legacy path; set SHIM_FLAGS to a flags.yaml path, or to 'unleash'",
            )
        if owns_flags:
            overrides["flags"] = _flags_from_env()
        for key, var in (
            ("api_key", "CF_LICENSE_KEY"),
            ("log_path", "SHIM_LOG"),
            ("registry", "SHIM_REGISTRY"),
            ("assignments", "SHIM_ASSIGNMENTS"),
        ):
            if key not in overrides and env.get(var):
                overrides[key] = env[var]
        shim = cls(url, **overrides)
        shim._owns_flags = owns_flags
        return shim

    @classmethod
    def _disabled(cls, overrides: dict[str, Any], message: str) -> Shim:
        log_path = overrides.get("log_path") or os.environ.get("SHIM_LOG") or None
        sink = overrides.get("sink")
        shim = cls("", flags=_NoFlags(), log_path=log_path, sink=sink)
        shim.enabled = False
        _log.warning("task-shim: %s", message)
        shim._recorder.event("shim.error", None, None, operation="configure", error=message)
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
        output: OutputComparator | None = None,
        key: Callable[..., Any] | None = None,
        fallback: bool = True,
        allocation: bool | Literal["entered"] = False,
        legacy_usage: Callable[[Any], Mapping[str, Any] | None] | None = None,
        service_hint: str | Callable[..., str | None] | None = None,
        soft_failure: Callable[[Any], bool] | None = is_soft_failure,
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
        """
        options: dict[str, Any] = {
            "request": request,
            "response": response,
            "legacy_model": legacy_model,
            "output": output,
            "key": key,
            "fallback": fallback,
            "allocation": allocation,
            "legacy_usage": legacy_usage,
            "service_hint": service_hint,
            "soft_failure": soft_failure,
        }
        if allocation not in (False, True, "entered"):
            raise ValueError(f"allocation must be False, True or 'entered', got {allocation!r}")
        if request is None and not allocation:
            raise TypeError("shadow() needs request= (the call's arguments -> TaskRequest)")
        if allocation == "entered" and response is None:
            raise ValueError("allocation='entered' needs response= (allocation -> value)")
        if callable(product) or callable(task):
            return lambda fn: routed(
                self.shadow, self._internal_error, self.flags, product, task, fn, options
            )
        name = f"{product}.{task}"
        check_task_name(name)
        assigned = self._names.expected.get(name)

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            if allocation == "entered" and inspect.iscoroutinefunction(fn):
                raise TypeError("allocation='entered' wraps sync call sites only")
            soft = soft_failure
            if soft is not None and allocation == "entered":
                soft = first_of_pair(soft)
            served = response or (declared_allocation(fn) if allocation else _output)
            site = CallSite(
                product=product,
                task=task,
                name=name,
                call_site=f"{fn.__module__}:{fn.__qualname__}",
                request=request or no_request,
                response=served,
                legacy_model=legacy_model if callable(legacy_model) else None,
                output=output or (AllocationOutput() if allocation else JsonOutput()),
                key=key,
                fallback=fallback,
                expected_model=assigned,
                allocation=allocation,
                legacy_usage=legacy_usage,
                service_hint=service_hint or self._services.get(name),
                soft_failure=soft,
            )
            static_model = legacy_model if isinstance(legacy_model, str) else None
            self._breakers.setdefault(
                name, CircuitBreaker(name, self.breaker_policy, on_transition=self._breaker_event)
            )
            self._spends.setdefault(name, Spend(self.backoff))
            if allocation is True:
                return self._allocation_wrapper(site, static_model, fn)
            if inspect.iscoroutinefunction(fn):
                return cast(Callable[P, R], self._async_wrapper(site, static_model, fn))
            return self._sync_wrapper(site, static_model, fn)

        return decorate

    def _sync_wrapper(
        self, site: CallSite, model: str | None, fn: Callable[P, R]
    ) -> Callable[P, R]:
        source, name, call = self.flags, site.name, self._call

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            rule = source.rules.active.get(name)
            if rule is None:  # off, unknown or killed: the bare call, nothing else
                return fn(*args, **kwargs)
            return call(site, model, rule, fn, args, kwargs)

        return wrapper

    def _async_wrapper(
        self, site: CallSite, model: str | None, fn: Callable[P, Awaitable[Any]]
    ) -> Callable[P, Awaitable[Any]]:
        source, name, call = self.flags, site.name, self._acall

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            rule = source.rules.active.get(name)
            if rule is None:
                return await fn(*args, **kwargs)
            return await call(site, model, rule, fn, args, kwargs)

        return wrapper

    def _allocation_wrapper(
        self, site: CallSite, model: str | None, fn: Callable[P, R]
    ) -> Callable[P, R]:
        source, name = self.flags, site.name

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            rule = source.rules.active.get(name)
            if rule is None:
                return fn(*args, **kwargs)
            decision = self._decide(site, rule, args, kwargs)
            if decision.serve:
                return cast(R, ServedAllocation(self, site, model, decision, fn, args, kwargs))
            if self._metrics is not None:
                self._served(site, "legacy")
            if not decision.compare:
                return fn(*args, **kwargs)
            cm = fn(*args, **kwargs)
            return cast(R, ShadowedAllocation(self, site, model, decision, cm, args, kwargs))

        return wrapper

    # -- allocations (see _allocation.py) --------------------------------------------------

    @staticmethod
    def _legacy_obs(
        started: float, model: str | None, result: Any = None, *, exc: BaseException | None = None
    ) -> Observation:
        return _legacy(started, model, result, exc=exc)

    @staticmethod
    def _returned(value: Any) -> Any:
        return _Returned(value)  # an allocation is compared by reference (see _call)

    def _shadow_allocation(
        self,
        site: CallSite,
        decision: flagpkg.Decision,
        model: str | None,
        elapsed: float,
        outcome: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._handoff(
            (
                site.name,
                self._candidate_job,
                (site, decision, model, elapsed, outcome, args, kwargs, None),
            )
        )

    def _compare_served_allocation(
        self,
        site: CallSite,
        model: str | None,
        decision: flagpkg.Decision,
        candidate: Observation,
        value: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """The task path serves an allocation: enter and leave legacy's in the background."""
        if not decision.compare:
            return
        kept = replace(candidate, value=capture(value))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            state = self._loop_state()
            if self._admit(site, state.dispatch.try_reserve):
                state.dispatch.spawn(
                    site.name,
                    self._alegacy(site, model, decision, kept, _aentered, (fn, args, kwargs), {}),
                )
        elif self._admit(site, self._dispatch.try_reserve):
            self._dispatch.submit(
                site.name,
                self._legacy_job,
                site,
                model,
                decision,
                kept,
                _entered,
                (fn, args, kwargs),
                {},
            )

    # -- one decision for both wrappers ------------------------------------------------

    def _decide(
        self, site: CallSite, rule: flagpkg.Rule, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> flagpkg.Decision:
        if self._closed:
            return flagpkg.OFF
        try:
            if site.key is not None:
                raw = site.key(*args, **kwargs)
                sticky = None if raw is None else str(raw)
            else:
                sticky = sticky_value(rule.stickiness)
            return rule.decide(sticky)
        except Exception as exc:
            self._internal_error("decide", exc)
            return flagpkg.OFF

    def _admit(self, site: CallSite, reserve: Callable[[], bool]) -> bool:
        """Room for a comparison, and a task path that is not cooling down?"""
        breaker = self._breakers[site.name]
        if breaker.state != "closed" and not breaker.may_probe():
            self._recorder.dropped(site.product, site.task, "breaker_open")
            return False
        if not self._within_spend(site, None):
            return False
        if not reserve():
            self._recorder.dropped(site.product, site.task, "queue_full")
            return False
        return True

    def _within_spend(self, site: CallSite, rule: flagpkg.Rule | None) -> bool:
        """Not backing off from a full coordinator, and within the task's budget?"""
        spend = self._spends[site.name]
        budget = self._budget(site, rule)
        if not spend.until and budget is None:
            return True
        reason = spend.admit(budget)
        if reason is None:
            return True
        self._recorder.dropped(site.product, site.task, reason)
        return False

    def _budget(self, site: CallSite, rule: flagpkg.Rule | None) -> ShadowBudget | None:
        """The task's budget: the flags' ``shadow_rate``/``shadow_tokens_per_hour`` over
        the Shim's ``budgets``."""
        default = self._budgets.get(site.name)
        if rule is None:
            rule = self.flags.rules.active.get(site.name)
            if rule is None:
                return default
        if not rule.budgeted:
            return default
        rate, tokens = rule.flags.shadow_rate, rule.flags.shadow_tokens_per_hour
        key = (site.name, rate, tokens)
        budget = self._budget_cache.get(key)
        if budget is None:
            base = default or ShadowBudget()
            budget = ShadowBudget(
                per_second=base.per_second if rate is None else rate,
                burst=base.burst if rate is None else None,
                tokens_per_hour=base.tokens_per_hour if tokens is None else tokens,
            )
            self._budget_cache[key] = budget
        return budget

    def _span(self, site: CallSite, serving: bool) -> Any:
        try:
            return start_span(self._tracer, site, self.orch_url, "serve" if serving else "shadow")
        except Exception as exc:  # tracing never costs a call
            self._internal_error("tracing", exc)
            return None

    def _served(self, site: CallSite, by: str) -> None:
        if self._metrics is not None:
            try:
                self._metrics.served(site.name, by)
            except Exception as exc:
                self._internal_error("metrics", exc)

    def _busy(self, site: CallSite, status: int) -> None:
        """The coordinator had no capacity: stop shadowing the task for a while."""
        spend = self._spends[site.name]
        pause = spend.busy()
        if not pause:
            return  # already paused
        self._recorder.event(
            "shim.backoff",
            site.product,
            site.task,
            state="paused",
            status=status,
            seconds=round(pause, 3),
            busy_in_a_row=spend.busy_streak,
        )

    def _task_failed(
        self,
        site: CallSite,
        exc: Exception,
        started: float,
        result: TaskResult | TaskAllocation | None,
        prompt: str | None,
        span: Any,
        *,
        shadow: bool,
    ) -> Observation:
        """A task-path call failed (sync or async): breaker, back-off, span, observation."""
        status = getattr(exc, "status", None)
        if status in BUSY:
            self._busy(site, status)
        # No capacity is not broken: only the serving path's breaker counts it.
        if status not in BUSY or not shadow:
            self._breakers[site.name].failure()
        failed = _failed_candidate(exc, started, result, prompt)
        if span is not None:
            end_span(span, failed, result, exc)
        return failed

    def _task_answered(
        self,
        site: CallSite,
        result: TaskResult | TaskAllocation,
        value: Any,
        started: float,
        prompt: str | None,
        span: Any,
    ) -> Observation:
        """A task-path call answered (sync or async): breaker, spend, span, observation."""
        self._breakers[site.name].success()
        self._answered(site, result)
        observed = _ok_candidate(result, value, started, prompt)
        if span is not None:
            end_span(span, observed, result, None)
        return observed

    def _answered(self, site: CallSite, result: TaskResult | TaskAllocation) -> None:
        spend = self._spends[site.name]
        if (spend.until or spend.busy_streak) and spend.answered():
            self._recorder.event("shim.backoff", site.product, site.task, state="resumed")
        budget = self._budget(site, None)
        if budget is None or budget.tokens_per_hour is None:
            return
        usage = usage_record(getattr(result, "usage", None))
        tokens = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
        if tokens:
            spend.charge(budget, int(tokens))

    # -- sync ------------------------------------------------------------------------

    def _call(
        self,
        site: CallSite,
        model: str | None,
        rule: flagpkg.Rule,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        # This is every shadowed call's path: _decide and _admit are inlined on purpose.
        if self._closed:
            return fn(*args, **kwargs)
        try:
            key = site.key
            if key is None:
                decision = rule.decide(sticky_value(rule.stickiness))
            else:
                raw = key(*args, **kwargs)
                decision = rule.decide(None if raw is None else str(raw))
        except Exception as exc:
            self._internal_error("decide", exc)
            return fn(*args, **kwargs)
        if decision.serve:
            return self._serve(site, model, decision, fn, args, kwargs)
        if self._metrics is not None:
            self._served(site, "legacy")
        if not decision.compare:
            return fn(*args, **kwargs)
        breaker = self._breakers[site.name]
        if breaker.state != "closed" and not breaker.may_probe():
            self._recorder.dropped(site.product, site.task, "breaker_open")
            return fn(*args, **kwargs)
        if (
            self._spends[site.name].until or rule.budgeted or self._budgets
        ) and not self._within_spend(site, rule):
            return fn(*args, **kwargs)
        if not self._dispatch.try_reserve():
            self._recorder.dropped(site.product, site.task, "queue_full")
            return fn(*args, **kwargs)
        # Time the legacy call, copy its result, hand off. Observations are built by the
        # worker, not here.
        started = _perf()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._handoff(
                (
                    site.name,
                    self._candidate_job,
                    (site, decision, model, _perf() - started, exc, args, kwargs, None),
                )
            )
            raise
        except BaseException:
            self._dispatch.release()
            raise
        elapsed = _perf() - started
        # An allocation (or a router holding one) is compared by reference: it may hold
        # connections that cannot be copied, and nothing in it is read but attributes.
        kept = _Returned(result if site.allocation else capture(result))
        again = None if site.allocation else fn  # a held allocation is not taken twice
        self._handoff(
            (
                site.name,
                self._candidate_job,
                (site, decision, model, elapsed, kept, args, kwargs, again),
            )
        )
        return result

    def _candidate_job(
        self,
        site: CallSite,
        decision: flagpkg.Decision,
        model: str | None,
        elapsed: float,
        outcome: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fn: Callable[..., Any] | None,
    ) -> None:
        """Worker side of a shadowed call: run the task path, queue the comparison."""
        if isinstance(outcome, _Returned):
            legacy = Observation(True, elapsed * 1000, outcome.value, model=model)
        else:
            legacy = Observation(False, elapsed * 1000, error=describe(outcome), model=model)
        if self._spends[site.name].paused():  # queued before the coordinator said it was full
            self._recorder.dropped(site.product, site.task, "backoff")
            return
        candidate, _, _ = self._run_task(site, args, kwargs, self._shadow_client)
        if candidate is None:
            return
        noise = NOT_RECORDED
        if fn is not None and legacy.ok and self._calibrate():
            try:
                noise = fn(*args, **kwargs)  # legacy again: how much does it vary by itself?
            except Exception as exc:
                self._internal_error("noise", exc)
        self._recorder.comparison(Pending(site, decision.stage, "legacy", legacy, candidate, noise))

    def _run_task(
        self,
        site: CallSite,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        client: TaskClient,
        *,
        keep: bool = False,
    ) -> tuple[Observation | None, Any, Any]:
        """Call the task path: (observation, value, allocation held for the caller).

        The observation is None when the breaker says not to call. An allocating call
        site gets an allocation, released at once unless ``keep`` (it serves).
        """
        breaker = self._breakers[site.name]
        if not breaker.allow():
            self._recorder.dropped(site.product, site.task, "breaker_open")
            return None, NOT_RECORDED, None
        span = None if self._tracer is None else self._span(site, client is self._client)
        started = _perf()
        result: TaskResult | TaskAllocation | None = None
        prompt: str | None = None
        try:
            hint = hint_of(site, args, kwargs)
            if site.allocation:
                result = client.allocate(site.product, site.task, service_hint=hint)
            else:
                request = site.request(*args, **kwargs)
                prompt = request.prompt if self._capture is not None else None
                result = client.infer(site.product, site.task, request, service_hint=hint)
            value = checked(site, site.response(result))
        except Exception as exc:
            shadow = client is self._shadow_client
            failed = self._task_failed(site, exc, started, result, prompt, span, shadow=shadow)
            if isinstance(result, TaskAllocation):
                client.release(site.product, site.task, result)
            return failed, exc, None
        observed = self._task_answered(site, result, value, started, prompt, span)
        if isinstance(result, TaskAllocation) and not keep:
            client.release(site.product, site.task, result)  # compared: give it back now
            result = None
        return observed, value, result

    def _serve(
        self,
        site: CallSite,
        model: str | None,
        decision: flagpkg.Decision,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        if not self._serving.try_enter():  # as many task-path calls in flight as allowed
            self._recorder.dropped(site.product, site.task, "serve_full")
            self._served(site, "legacy")
            return fn(*args, **kwargs)
        entered = site.allocation == "entered"
        try:
            candidate, value, held = self._run_task(site, args, kwargs, self._client, keep=entered)
        finally:
            self._serving.leave()
        if candidate is None:  # breaker open: the task path is not called at all
            self._served(site, "legacy")
            return fn(*args, **kwargs)
        if candidate.ok or not site.fallback:
            self._served(site, "task")
        if candidate.ok:
            if decision.compare and self._admit(site, self._dispatch.try_reserve):
                kept = replace(candidate, value=value if entered else capture(value))
                legacy = entered_and_left(fn) if entered else fn
                self._dispatch.submit(
                    site.name, self._legacy_job, site, model, decision, kept, legacy, args, kwargs
                )
            if entered:
                client, product, name = self._client, site.product, site.task
                release = functools.partial(client.release, product, name, held)
                return cast(R, (value, HeldAllocation(held, release)))
            return cast(R, value)
        if not site.fallback:
            given = unfallen(value)  # a soft failure's value, or the error raised
            return cast(R, (given, contextlib.nullcontext(None)) if entered else given)
        started = _perf()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._fell_back(site, decision, _legacy(started, model, exc=exc), candidate)
            raise
        self._fell_back(site, decision, _legacy(started, model, result), candidate)
        return result

    def _legacy_job(
        self,
        site: CallSite,
        model: str | None,
        decision: flagpkg.Decision,
        candidate: Observation,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Worker side of a served call: run legacy, queue the comparison."""
        started = _perf()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            legacy = _legacy(started, model, exc=exc)
        else:
            legacy = _legacy(started, model, result, copy=False)  # nobody else holds it
        self._recorder.comparison(Pending(site, decision.stage, "task", legacy, candidate))

    # -- async -----------------------------------------------------------------------

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(self)
        return state

    async def _acall(
        self,
        site: CallSite,
        model: str | None,
        rule: flagpkg.Rule,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        decision = self._decide(site, rule, args, kwargs)
        if not decision.serve and self._metrics is not None:
            self._served(site, "legacy")
        if not decision.serve and not decision.compare:
            return await fn(*args, **kwargs)
        if decision.serve:
            state = self._loop_state()
            return await self._aserve(state, site, model, decision, fn, args, kwargs)
        # Shadow: legacy is awaited here; the task path runs on the worker threads, as
        # for sync call sites. It stays off the caller's event loop (measured: the sync
        # client costs a third of the CPU per call of the async one), and a loop that
        # ends does not cut it short.
        if not self._admit(site, self._dispatch.try_reserve):
            return await fn(*args, **kwargs)
        started = _perf()
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            failed = (site, decision, model, _perf() - started, exc, args, kwargs, None)
            self._handoff((site.name, self._candidate_job, failed))
            raise
        except BaseException:
            self._dispatch.release()
            raise
        elapsed = _perf() - started
        again = self._on_this_loop(fn) if self.noise_sample else None
        job = (site, decision, model, elapsed, _Returned(capture(result)), args, kwargs, again)
        self._handoff((site.name, self._candidate_job, job))
        return result

    def _on_this_loop(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        """``fn`` made callable from a worker thread: it runs on the caller's event loop
        (for noise calibration, which calls legacy again)."""
        loop = asyncio.get_running_loop()

        def again(*args: Any, **kwargs: Any) -> Any:
            coro = cast(Coroutine[Any, Any, Any], fn(*args, **kwargs))
            return asyncio.run_coroutine_threadsafe(coro, loop).result(self.shadow_timeout)

        return again

    async def _arun_task(
        self,
        site: CallSite,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        client: AsyncTaskClient,
        *,
        keep: bool = False,
    ) -> tuple[Observation | None, Any, Any]:
        """Async twin of :meth:`_run_task`."""
        breaker = self._breakers[site.name]
        if not breaker.allow():
            self._recorder.dropped(site.product, site.task, "breaker_open")
            return None, NOT_RECORDED, None
        span = None if self._tracer is None else self._span(site, True)
        started = _perf()
        result: TaskResult | TaskAllocation | None = None
        prompt: str | None = None
        try:
            hint = hint_of(site, args, kwargs)
            if site.allocation:
                result = await client.allocate(site.product, site.task, service_hint=hint)
            else:
                request = site.request(*args, **kwargs)
                prompt = request.prompt if self._capture is not None else None
                result = await client.infer(site.product, site.task, request, service_hint=hint)
            value = checked(site, site.response(result))
        except Exception as exc:
            failed = self._task_failed(site, exc, started, result, prompt, span, shadow=False)
            if isinstance(result, TaskAllocation):
                await client.release(site.product, site.task, result)
            return failed, exc, None
        observed = self._task_answered(site, result, value, started, prompt, span)
        if isinstance(result, TaskAllocation) and not keep:
            await client.release(site.product, site.task, result)
            result = None
        return observed, value, result

    async def _aserve(
        self,
        state: _LoopState,
        site: CallSite,
        model: str | None,
        decision: flagpkg.Decision,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if not self._serving.try_enter():
            self._recorder.dropped(site.product, site.task, "serve_full")
            self._served(site, "legacy")
            return await fn(*args, **kwargs)
        try:
            candidate, value, _ = await self._arun_task(site, args, kwargs, state.client)
        finally:
            self._serving.leave()
        if candidate is None:
            self._served(site, "legacy")
            return await fn(*args, **kwargs)
        if candidate.ok or not site.fallback:
            self._served(site, "task")
        if candidate.ok:
            if decision.compare and self._admit(site, state.dispatch.try_reserve):
                kept = replace(candidate, value=capture(value))
                state.dispatch.spawn(
                    site.name, self._alegacy(site, model, decision, kept, fn, args, kwargs)
                )
            return value
        if not site.fallback:
            return unfallen(value)
        started = _perf()
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            self._fell_back(site, decision, _legacy(started, model, exc=exc), candidate)
            raise
        self._fell_back(site, decision, _legacy(started, model, result), candidate)
        return result

    async def _alegacy(
        self,
        site: CallSite,
        model: str | None,
        decision: flagpkg.Decision,
        candidate: Observation,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        started = _perf()
        try:
            async with asyncio.timeout(self.shadow_timeout):
                result = await fn(*args, **kwargs)
        except Exception as exc:
            legacy = _legacy(started, model, exc=exc)
        else:
            legacy = _legacy(started, model, result, copy=False)
        self._recorder.comparison(Pending(site, decision.stage, "task", legacy, candidate))

    # -- events, errors, stats -------------------------------------------------------

    def _internal_error(self, operation: str, exc: BaseException) -> None:
        """Every failure of the shim's own work ends here: counted, logged, recorded."""
        with self._errors_lock:
            self._errors[operation] += 1
        _log.warning("task-shim internal error in %s: %s", operation, describe(exc))
        if operation not in ("write", "render", "sink_close"):  # the recorder is the problem
            self._recorder.event("shim.error", None, None, operation=operation, error=describe(exc))

    def _cancelled(self, task: str) -> None:
        """A background comparison cancelled before it finished (at shutdown, or when
        its event loop ended): counted as dropped, reason ``shutdown``."""
        product, _, name = task.partition(".")
        self._recorder.dropped(product, name, "shutdown")

    def _release_failed(self, product: str, task: str, allocation_id: str, error: str) -> None:
        """An allocation the coordinator would not take back: counted and recorded."""
        with self._errors_lock:
            self._errors["release"] += 1
        self._recorder.event(
            "shim.release_failed", product, task, allocation_id=allocation_id, error=error
        )

    def _calibrate(self) -> bool:
        """Is this comparison one of the ``noise_sample`` that also re-runs legacy?"""
        return self.noise_sample > 0 and random.random() < self.noise_sample

    def _fell_back(
        self,
        site: CallSite,
        decision: flagpkg.Decision,
        legacy: Observation,
        candidate: Observation,
    ) -> None:
        self._served(site, "legacy_fallback")
        self._recorder.comparison(
            Pending(site, decision.stage, "legacy_fallback", legacy, candidate)
        )

    def _breaker_event(self, task: str, before: str, after: str, details: dict[str, Any]) -> None:
        product, _, name = task.partition(".")
        self._recorder.event(
            "shim.breaker", product, name, **{"from": before, "to": after}, **details
        )

    def _flag_event(self, event: flagpkg.FlagEvent) -> None:
        self._recorder.event(
            "shim.flags",
            None,
            None,
            level=event.level,
            message=event.message,
            source=event.source,
            version=event.version,
        )

    def breaker_state(self, task: str) -> str | None:
        """``closed``, ``open`` or ``half_open`` for a wrapped ``product.task``."""
        breaker = self._breakers.get(task)
        return breaker.state if breaker else None

    def stats(self) -> dict[str, Any]:
        """Counters: record lines written, held while the log cannot be written and lost
        for good, failed writes, comparisons pending, internal errors by operation."""
        with self._errors_lock:
            errors = dict(self._errors)
        return {
            "records_written": self._recorder.written,
            "records_unwritten": self._recorder.unwritten,
            "records_lost": self._recorder.lost,
            "write_errors": self._recorder.write_errors,
            "pending": self._dispatch.pending,
            "internal_errors": errors,
        }

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait for queued comparisons and write their records; True if all made it."""
        deadline = time.monotonic() + timeout
        while self._dispatch.pending and time.monotonic() < deadline:
            time.sleep(0.005)
        flushed = self._recorder.flush(max(0.0, deadline - time.monotonic()))
        return flushed and not self._recorder.unwritten

    # -- lifecycle -------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Finish queued comparisons (within ``timeout``), write every record, and say
        what could not finish as ``shim.dropped`` (reason ``shutdown``)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        for task, count in self._dispatch.close(timeout).items():
            product, _, name = task.partition(".")
            self._recorder.dropped(product, name, "shutdown", count)
        self._recorder.close(max(0.5, deadline - time.monotonic()))
        self._client.close()
        self._shadow_client.close()
        if self._owns_flags:
            self.flags.close()
        _live.discard(self)

    async def aflush(self, timeout: float = 5.0) -> bool:
        """Wait for this event loop's background comparisons, then :meth:`flush`."""
        deadline = time.monotonic() + timeout
        state = self._loops.get(asyncio.get_running_loop())
        if state is not None:
            await state.dispatch.drain(timeout, cancel=False)
        return await asyncio.to_thread(self.flush, max(0.0, deadline - time.monotonic()))

    async def aclose(self, timeout: float = 5.0) -> None:
        """Async twin of :meth:`close`: also drains this event loop's background tasks."""
        deadline = time.monotonic() + timeout
        state = self._loops.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.dispatch.drain(timeout)  # the cancelled are counted as they end
            await state.http.aclose()
        await asyncio.to_thread(self.close, max(0.5, deadline - time.monotonic()))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _legacy(
    started: float,
    model: str | None,
    result: Any = None,
    *,
    exc: BaseException | None = None,
    copy: bool = True,
) -> Observation:
    """The legacy side of a call that started at ``started`` (perf_counter)."""
    ms = (_perf() - started) * 1000
    if exc is not None:
        return Observation(False, ms, error=describe(exc), model=model)
    return Observation(True, ms, capture(result) if copy else result, model=model)


def _close_at_worker_exit(shim: Shim) -> None:
    """In a multiprocessing worker: close (write what was compared) when it exits."""
    multiprocessing.util.Finalize(shim, shim.close, kwargs={"timeout": 2.0}, exitpriority=10)


def _entered(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Enter and leave a legacy allocation's context manager: the value it yielded."""
    with fn(*args, **kwargs) as value:
        return value


async def _aentered(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Async twin of :func:`_entered`."""
    async with fn(*args, **kwargs) as value:
        return value


class _Returned:
    """The legacy call returned (``value`` is its captured result); else it raised."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _failed_candidate(
    exc: BaseException,
    started: float,
    result: TaskResult | TaskAllocation | None,
    prompt: str | None = None,
) -> Observation:
    status = (
        getattr(exc, "status", None)
        if isinstance(exc, ShimError)
        else (200 if result is not None else None)
    )
    return Observation(
        False,
        (_perf() - started) * 1000,
        error=describe(exc),
        model=result.model if result else None,
        service_type=result.service_type if result else None,
        node_id=result.node_id if result else None,
        status=status,
        prompt=prompt,
    )


def _ok_candidate(
    result: TaskResult | TaskAllocation, value: Any, started: float, prompt: str | None = None
) -> Observation:
    return Observation(
        True,
        (_perf() - started) * 1000,
        value,
        None,
        result.model,
        result.service_type,
        result.node_id,
        200,
        prompt,
        getattr(result, "usage", None),
    )


def _load_orch(
    registry: str | Path | None, assignments: str | Path | None
) -> tuple[ModelNames, dict[str, str]]:
    """Aliases, expected models and fitting service types from the optional files; and
    each task's service type (its model's, in the registry) when both files are given."""
    aliases: dict[str, list[str]] = {}
    assigned: dict[str, Any] = {}
    services: dict[str, str] = {}
    if registry is not None and assignments is not None:
        config = OrchConfig(assignments, registry)
        models = config.registry.models
        aliases = {m: list(e.alias) for m, e in models.items()}
        assigned = dict(config.assignments.assignments)
        for name in assigned:
            resolved = config.resolve(name)
            if resolved is not None:
                services[name] = resolved.service_type
    else:
        if registry is not None:
            models = parse_file(registry, RegistryFile)[0].models
            aliases = {m: list(e.alias) for m, e in models.items()}
        if assignments is not None:
            assigned = dict(parse_file(assignments, AssignmentsFile)[0].assignments)
    names = ModelNames(
        aliases,
        expected={t: a.model for t, a in assigned.items()},
        allowed_services={t: SERVICE_TYPES[a.modality] for t, a in assigned.items()},
    )
    return names, services


def _flags_from_env() -> flagpkg.FlagSource:
    value = os.environ.get("SHIM_FLAGS", "")
    if not value:
        raise ConfigError(
            [Problem("environment", None, "SHIM_FLAGS", "not set; set it to a flags.yaml path")]
        )
    if value == "unleash":
        env = os.environ
        missing = [v for v in ("UNLEASH_URL", "UNLEASH_API_TOKEN") if not env.get(v)]
        if missing:
            raise ConfigError(
                [
                    Problem("environment", None, v, "not set; SHIM_FLAGS=unleash needs it")
                    for v in missing
                ]
            )
        try:
            refresh = int(env.get("UNLEASH_REFRESH_INTERVAL") or 15)
        except ValueError:
            raise ConfigError(
                [Problem("environment", None, "UNLEASH_REFRESH_INTERVAL", "expected seconds")]
            ) from None
        return flagpkg.UnleashFlags(
            url=env["UNLEASH_URL"],
            api_token=env["UNLEASH_API_TOKEN"],
            app_name=env.get("UNLEASH_APP_NAME") or "task-shim",
            refresh_interval=refresh,
        )
    return flagpkg.FileFlags(value)


class _NoFlags:
    """The flags of a disabled Shim: every task off, for good."""

    def __init__(self) -> None:
        # Built here, not at import time: the flags package imports shim in turn.
        self.rules = flagpkg.Rules()

    def decide(self, task: str, sticky: str | None) -> flagpkg.Decision:
        return flagpkg.OFF

    def subscribe(self, listener: flagpkg.FlagListener) -> None:
        pass

    def close(self) -> None:
        pass


# Shims still open at interpreter exit get a short, bounded close: records are written,
# exit never hangs.
_live: weakref.WeakSet[Shim] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for shim in list(_live):
        try:
            shim.close(timeout=2.0)
        except Exception as exc:  # pragma: no cover - best effort at exit
            _log.warning("task-shim: close at exit failed: %s", describe(exc))
