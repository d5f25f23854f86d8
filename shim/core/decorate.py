"""The decorator behind :meth:`Shim.shadow`: checks a call site's options against its
signature, builds its :class:`CallSite`, and picks its wrapper (sync, async or
allocating) once, at decoration time. The wrappers only look up the task's rule and
hand the call to the core's driver."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, ParamSpec, TypeVar, cast

from shim import flags as flagpkg
from shim.base.names import check_task_name
from shim.client.task import TaskRequest, TaskResult
from shim.comparators import AllocationOutput, Comparator, JsonOutput
from shim.core.allocation import declared_allocation, holder
from shim.core.callsite import first_of_pair, no_request, routed
from shim.core.engine import Engine
from shim.core.signatures import check_fits
from shim.core.streams import StreamCalls
from shim.records.observe import CallSite, is_soft_failure

__all__ = ["SHADOWED", "Decorator", "ShadowOptions"]

_log = logging.getLogger("shim")
P = ParamSpec("P")
R = TypeVar("R")

#: The attribute a wrapped function keeps its ``(product, task, ShadowOptions)`` in,
#: so ``shim.testing`` can wrap the same call site again on a test Shim.
SHADOWED = "__shim_shadowed__"


@dataclass(frozen=True, slots=True)
class ShadowOptions:
    """The decorator's keywords besides ``product`` and ``task``, as one value (see
    :meth:`Shim.shadow` for each)."""

    request: Callable[..., TaskRequest] | None = None
    response: Callable[[Any], Any] | None = None
    legacy_model: str | Callable[[Any], str | None] | None = None
    output: Comparator | None = None
    key: Callable[..., Any] | None = None
    fallback: bool = True
    allocation: bool | Literal["entered"] = False
    legacy_usage: Callable[[Any], Mapping[str, Any] | None] | None = None
    service_hint: str | Callable[..., str | None] | None = None
    soft_failure: Callable[[Any], bool] | None = is_soft_failure
    side_effects: bool = False
    serve_without_side_effects: bool = False
    stream: bool | Literal["async"] = False
    stream_error: Callable[[BaseException], BaseException] | None = None

    def __post_init__(self) -> None:
        if self.allocation not in (False, True, "entered"):
            raise ValueError(
                f"allocation must be False, True or 'entered', got {self.allocation!r}"
            )
        if self.request is None and not self.allocation:
            raise TypeError("shadow() needs request= (the call's arguments -> TaskRequest)")
        if self.allocation == "entered" and self.response is None:
            raise ValueError("allocation='entered' needs response= (allocation -> value)")
        if self.stream not in (False, True, "async"):
            raise ValueError(f"stream must be False, True or 'async', got {self.stream!r}")
        if self.stream_error is not None and not callable(self.stream_error):
            raise TypeError("stream_error= takes a callable: StreamInterrupted -> exception")
        if self.serve_without_side_effects and not self.side_effects:
            raise ValueError(
                "serve_without_side_effects=True only means something with side_effects=True"
            )

    def as_keywords(self) -> dict[str, Any]:
        """The options as the decorator's keywords."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _output(result: TaskResult) -> Any:
    return result.output


class Decorator:
    """Wraps call sites for one Shim: ``engine`` runs their calls (and is told of each
    task wrapped), ``flags`` decide them; ``expected`` models and ``services`` (from the
    coordinator's files) are each task's expected model and the service its
    allocations come from."""

    def __init__(
        self,
        engine: Engine,
        flags: flagpkg.FlagSource,
        *,
        expected: Mapping[str, str],
        services: Mapping[str, str],
    ) -> None:
        self._engine, self._flags = engine, flags
        self._expected, self._services = expected, services
        self._streams = StreamCalls(engine, asynchronous=False)
        self._astreams = StreamCalls(engine, asynchronous=True)

    def shadow(
        self,
        product: str | Callable[..., str],
        task: str | Callable[..., str],
        options: ShadowOptions,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """The decorator for call sites of ``product.task`` with these options."""
        if callable(product) or callable(task):
            return functools.partial(self._route, product, task, options)
        check_task_name(f"{product}.{task}")
        return functools.partial(self._wrap, product, task, options)

    def _route(
        self,
        product: str | Callable[..., str],
        task: str | Callable[..., str],
        options: ShadowOptions,
        fn: Callable[P, R],
    ) -> Callable[P, R]:
        _check(fn, product, task, options)
        events = self._engine.events

        def on_error(name: str, chooser: Any, exc: Exception) -> None:
            events.call_site_error(name, chooser, exc, call_site=_call_site(fn))

        wrapper = routed(
            lambda p, t: self.shadow(p, t, options), on_error, self._flags, product, task, fn
        )
        setattr(wrapper, SHADOWED, (product, task, options))
        return wrapper

    def _wrap(
        self, product: str, task: str, options: ShadowOptions, fn: Callable[P, R]
    ) -> Callable[P, R]:
        allocation = options.allocation
        is_async = inspect.iscoroutinefunction(fn)
        if allocation == "entered" and is_async:
            raise TypeError("allocation='entered' wraps sync call sites only")
        _check(fn, product, task, options)
        name = f"{product}.{task}"
        soft = options.soft_failure
        if soft is not None and allocation == "entered":
            soft = first_of_pair(soft)
        legacy_model = options.legacy_model
        stream = _stream_kind(fn, options)
        site = CallSite(
            product=product,
            task=task,
            name=name,
            call_site=_call_site(fn),
            request=options.request or no_request,
            response=options.response or (declared_allocation(fn) if allocation else _output),
            legacy_model=legacy_model if callable(legacy_model) else None,
            output=options.output or (AllocationOutput() if allocation else JsonOutput()),
            key=options.key,
            fallback=options.fallback,
            expected_model=self._expected.get(name),
            allocation=allocation,
            legacy_usage=options.legacy_usage,
            service_hint=options.service_hint or self._services.get(name),
            soft_failure=soft,
            side_effects="serve" if options.serve_without_side_effects else options.side_effects,
            stream=stream,
            stream_error=options.stream_error,
        )
        self._engine.admission.add(name)
        if options.side_effects and self._engine.noise_sample:
            _log.warning(
                "task-shim: %s declares side_effects: legacy is never run a second time "
                "there, so noise_sample=%s does not apply to it",
                site.call_site,
                self._engine.noise_sample,
            )
        model = legacy_model if isinstance(legacy_model, str) else None
        if stream:
            wrapper = cast(Callable[P, R], self._stream_wrapper(site, model, fn))
        elif allocation is True:
            wrapper = self._allocation_wrapper(site, model, fn)
        elif is_async:
            wrapper = cast(Callable[P, R], self._async_wrapper(site, model, fn))
        else:
            wrapper = self._sync_wrapper(site, model, fn)
        setattr(wrapper, SHADOWED, (product, task, options))
        return wrapper

    def _sync_wrapper(
        self, site: CallSite, model: str | None, fn: Callable[P, R]
    ) -> Callable[P, R]:
        source, name, decide, perform = self._flags, site.name, self._engine.call, self._engine.sync

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            rule = source.rules.active.get(name)
            if rule is None:  # off, unknown or killed: the bare call, nothing else
                return fn(*args, **kwargs)
            result: R = perform(decide(site, model, rule, fn, args, kwargs))
            return result

        return wrapper

    def _async_wrapper(
        self, site: CallSite, model: str | None, fn: Callable[P, Any]
    ) -> Callable[P, Any]:
        source, name, engine, lane = self._flags, site.name, self._engine, self._engine.loops
        decide, steps, run = engine.call, engine.steps, lane.run

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            if (rule := source.rules.active.get(name)) is None:
                return await fn(*args, **kwargs)
            return await run(steps(lane, decide(site, model, rule, fn, args, kwargs)))

        return wrapper

    def _stream_wrapper(
        self, site: CallSite, model: str | None, fn: Callable[P, R]
    ) -> Callable[P, R]:
        """A streaming call site: legacy's own stream when off or not compared, else
        relayed or served by the task path (:class:`~shim.core.streams.StreamCalls`).
        The wrapper returns the stream; it is not a generator function itself."""
        source, name, decide = self._flags, site.name, self._engine.call
        relay = self._astreams if site.stream == "async" else self._streams

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:  # no cast(): it is a call
            rule = source.rules.active.get(name)
            if rule is None:  # off, unknown or killed: legacy's own stream
                return fn(*args, **kwargs)
            return relay(decide(site, model, rule, fn, args, kwargs))

        return wrapper

    def _allocation_wrapper(
        self, site: CallSite, model: str | None, fn: Callable[P, R]
    ) -> Callable[P, R]:
        source, name, engine = self._flags, site.name, self._engine

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            rule = source.rules.active.get(name)
            if rule is None:
                return fn(*args, **kwargs)
            held: R = holder(engine, engine.call(site, model, rule, fn, args, kwargs))
            return held

        return wrapper


def _call_site(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def _stream_kind(fn: Callable[..., Any], options: ShadowOptions) -> bool | str:
    """Whether a call site streams: "sync" or "async" (a generator function, or
    ``stream=``), else False. ``stream_error=`` without a stream is a ValueError."""
    if inspect.isasyncgenfunction(fn):
        return "async"
    if inspect.isgeneratorfunction(fn):
        return "sync"
    if options.stream and inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{_call_site(fn)} is a coroutine function: stream= wraps a function that "
            "returns an iterator (True) or an async iterator ('async') when called; "
            "wrap the async generator that iterates instead"
        )
    if options.stream_error is not None and not options.stream:
        raise ValueError(f"{_call_site(fn)}: stream_error= only applies to streaming call sites")
    return "async" if options.stream == "async" else "sync" if options.stream else False


def _check(
    fn: Callable[..., Any],
    product: str | Callable[..., str],
    task: str | Callable[..., str],
    options: ShadowOptions,
) -> None:
    """The options' callables fit ``fn``'s signature (TypeError naming the call site);
    a generator is a stream, never an allocation."""
    generator = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
    if (generator or options.stream) and options.allocation:
        kind = (
            "an async generator function"
            if inspect.isasyncgenfunction(fn)
            else "a generator function"
            if generator
            else "stream=True"
        )
        raise TypeError(
            f"{_call_site(fn)} is {kind}, compared as a stream: allocation= does "
            "not apply (for a context manager that yields an allocation, apply "
            "@contextmanager first)"
        )
    given = [("product", product), ("task", task), *options.as_keywords().items()]
    check_fits(fn, _call_site(fn), given)
