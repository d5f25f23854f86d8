"""Call sites that return a context manager yielding an allocation (kiwi's
``task_allocate``): what the wrapped call returns, for ``with`` and ``async with``.

In shadow, the legacy context manager runs as before (the caller gets the very value it
yields) and the task path asks cf-orch for an allocation in the background; the pair of
allocations (model, service, node) becomes a record and the shadow allocation is
released at once. When the task path serves, entering allocates through cf-orch and
leaving releases it; a failure falls back to the legacy context manager.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import dataclasses
import threading
import typing
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import pydantic

from shim.client.task import TaskAllocation
from shim.core.call import Call
from shim.core.steps import AsyncLane, Lane, Steps, SyncLane, enter, leave, release
from shim.records.observe import CallSite, Observation

__all__ = [
    "Core",
    "HeldAllocation",
    "ServedAllocation",
    "ShadowedAllocation",
    "declared_allocation",
    "holder",
]


def _release_dropped(release: Callable[[], None]) -> None:
    """The release of a holder nobody left (garbage-collected, or at exit): a
    collection can run on an event loop's thread, so the HTTP call gets its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        release()
    else:
        threading.Thread(target=release, name="shim-release", daemon=True).start()


class _Release:
    """A release that happens once: when the holder is left, or else when it is
    dropped (kiwi's generator context managers release on garbage collection too)."""

    __slots__ = ("_finalizer",)

    def __init__(self, owner: object, release: Callable[[], None]) -> None:
        self._finalizer = weakref.finalize(owner, _release_dropped, release)

    def take(self) -> bool:
        """True the first time only: the caller releases, the finaliser no longer will."""
        return self._finalizer.detach() is not None

    def __call__(self) -> None:
        found = self._finalizer.detach()  # None once released: leaving twice is harmless
        if found is not None:
            _, _, (release,), _ = found
            release()  # never raises: a failed release is recorded by the client


class HeldAllocation:
    """The ``ctx`` of a served ``(value, ctx)`` call site: already entered, it holds the
    task path's allocation until the caller leaves it (``ctx.__exit__(...)`` or a
    ``with ctx:`` block), which releases it. Leaving twice releases once; a holder that
    is dropped without being left releases when it is collected."""

    __slots__ = ("__weakref__", "_release", "allocation")

    def __init__(self, allocation: TaskAllocation, release: Callable[[], None]) -> None:
        self.allocation = allocation
        self._release = _Release(self, release)

    def __enter__(self) -> TaskAllocation:
        return self.allocation

    def __exit__(self, *exc: object) -> None:
        self._release()


_CONTEXT_ORIGINS = (
    collections.abc.Iterator,
    collections.abc.Generator,
    collections.abc.AsyncIterator,
    collections.abc.AsyncGenerator,
    contextlib.AbstractContextManager,
    contextlib.AbstractAsyncContextManager,
)


def _yielded_type(fn: Callable[..., Any]) -> Any:
    """What ``fn``'s context manager yields, from its return annotation: ``X`` of
    ``Iterator[X]``, ``AsyncIterator[X]``, ``Generator[X, ...]``, ``ContextManager[X]``."""
    hints = typing.get_type_hints(getattr(fn, "__wrapped__", fn))
    declared = hints.get("return")
    if typing.get_origin(declared) in _CONTEXT_ORIGINS and typing.get_args(declared):
        return typing.get_args(declared)[0]
    return None


def _converter(kind: Any) -> Callable[[TaskAllocation], Any]:
    fields = TaskAllocation.__dataclass_fields__
    if kind is dict or typing.get_origin(kind) is dict:
        return TaskAllocation.as_dict
    if isinstance(kind, type) and issubclass(kind, pydantic.BaseModel):
        return lambda alloc: kind.model_validate(alloc.as_dict())
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        names = [f.name for f in dataclasses.fields(kind) if f.init and f.name in fields]
        return lambda alloc: kind(**{n: getattr(alloc, n) for n in names})
    if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
        names = [n for n in kind._fields if n in fields]
        return lambda alloc: kind(**{n: getattr(alloc, n) for n in names})
    return lambda alloc: alloc


def declared_allocation(fn: Callable[..., Any]) -> Callable[[TaskAllocation], Any]:
    """The default ``response`` of an allocating call site: the task path's allocation
    as the type the call site declares it yields (a dataclass, NamedTuple, pydantic
    model or dict, built from the fields they share), else the TaskAllocation itself,
    which has every field kiwi reads (``url``, ``allocation_id``, ``service``, ...).
    The annotation is read on first use, when forward references resolve."""
    chosen: list[Callable[[TaskAllocation], Any]] = []

    def convert(alloc: TaskAllocation) -> Any:
        if not chosen:
            try:
                chosen.append(_converter(_yielded_type(fn)))
            except Exception:  # an annotation that does not resolve: the allocation itself
                chosen.append(lambda a: a)
        return chosen[0](alloc)

    return convert


class Core(Protocol):
    """What the allocation holders use of the shim's core (the Engine): its two
    drivers, the shadow and task paths, and what a served call records."""

    @property
    def threads(self) -> SyncLane:
        """The driver for ``with``."""
        ...

    @property
    def loops(self) -> AsyncLane:
        """The driver for ``async with``."""
        ...

    def shadowed(self, call: Call, step: Any, lane: Lane) -> Steps[Any]:
        """Legacy (``step``) serves; the task path is compared in the background."""
        ...

    def task(
        self, call: Call, *, serving: bool, keep: bool = False
    ) -> Steps[tuple[Observation | None, Any, TaskAllocation | None]]:
        """Call the task path: (observation or None, value or error, allocation)."""
        ...

    def served(self, site: CallSite, by: str) -> None:
        """Count who served a call."""
        ...

    def compare_served(self, call: Call, candidate: Observation, value: Any, lane: Lane) -> None:
        """The task path served: compare legacy in the background if the call is."""
        ...

    def fall_back(self, call: Call, step: Any, candidate: Observation) -> Steps[Any]:
        """The task path failed: legacy (``step``) answers, and the pair is recorded."""
        ...

    def releaser(self, site: CallSite, held: TaskAllocation) -> Callable[[], None]:
        """How to give a served allocation back, from any thread."""
        ...


def holder(core: Core, call: Call) -> Any:
    """What a decided call of an allocating call site returns: a holder that serves
    from the task path, one that compares legacy's, or legacy's context manager."""
    if call.decision.serve:
        return ServedAllocation(core, call)
    core.served(call.site, "legacy")
    if not call.decision.compare:
        return call.fn(*call.args, **call.kwargs)
    return ShadowedAllocation(core, call, call.fn(*call.args, **call.kwargs))


class ShadowedAllocation:
    """Legacy serves; the task path's allocation is compared in the background."""

    __slots__ = ("_call", "_cm", "_core")

    def __init__(self, core: Core, call: Call, cm: Any) -> None:
        self._core, self._call, self._cm = core, call, cm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cm, name)

    def __enter__(self) -> Any:
        lane = self._core.threads
        return lane.run(self._core.shadowed(self._call, enter(self._cm), lane))

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)

    async def __aenter__(self) -> Any:
        lane = self._core.loops
        return await lane.run(self._core.shadowed(self._call, enter(self._cm), lane))

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._cm.__aexit__(*exc)


class ServedAllocation:
    """The task path serves: allocate through cf-orch on entry, release on exit; a
    failure falls back to legacy's context manager."""

    __slots__ = ("__weakref__", "_call", "_core", "_held", "_legacy", "_release")

    def __init__(self, core: Core, call: Call) -> None:
        self._core, self._call = core, call
        self._held: TaskAllocation | None = None
        self._release: _Release | None = None
        self._legacy: Any = None

    def _enter(self, lane: Lane) -> Steps[Any]:
        core, call, site = self._core, self._call, self._call.site
        candidate, value, held = yield from core.task(call, serving=True, keep=True)
        if candidate is not None and (candidate.ok or not site.fallback):
            core.served(site, "task")
            if not candidate.ok:
                raise value
            assert held is not None
            self._held, self._release = held, _Release(self, core.releaser(site, held))
            core.compare_served(call, candidate, value, lane)
            return value
        if candidate is None:  # the breaker kept the task path out of it
            core.served(site, "legacy")
        self._legacy = cm = call.fn(*call.args, **call.kwargs)
        if candidate is None:
            return (yield enter(cm))
        return (yield from core.fall_back(call, enter(cm), candidate))

    def _exit(self, exc: tuple[Any, ...]) -> Steps[Any]:
        if self._release is not None and self._held is not None:
            if self._release.take():  # leaving twice releases once
                yield release(self._call.site, self._held, serving=True)
            return False
        if self._legacy is not None:
            return (yield leave(self._legacy, exc))
        return False

    def __enter__(self) -> Any:
        lane = self._core.threads
        return lane.run(self._enter(lane))

    def __exit__(self, *exc: Any) -> Any:
        return self._core.threads.run(self._exit(exc))

    async def __aenter__(self) -> Any:
        lane = self._core.loops
        return await lane.run(self._enter(lane))

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._core.loops.run(self._exit(exc))
