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
import functools
import threading
import time
import typing
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pydantic

from shim.client.task import TaskAllocation

if TYPE_CHECKING:
    from shim import flags as flagpkg
    from shim.core.shim import Shim
    from shim.records.observe import CallSite

__all__ = ["HeldAllocation", "ServedAllocation", "ShadowedAllocation", "declared_allocation"]

_perf = time.perf_counter


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


class ShadowedAllocation:
    """Legacy serves; the task path's allocation is compared in the background."""

    __slots__ = ("_args", "_cm", "_decision", "_kwargs", "_model", "_shim", "_site")

    def __init__(
        self,
        shim: Shim,
        site: CallSite,
        model: str | None,
        decision: flagpkg.Decision,
        cm: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._shim, self._site, self._model, self._decision = shim, site, model, decision
        self._cm, self._args, self._kwargs = cm, args, kwargs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cm, name)

    def _compare(self, started: float, outcome: Any) -> None:
        self._shim._shadow_allocation(
            self._site,
            self._decision,
            self._model,
            _perf() - started,
            outcome,
            self._args,
            self._kwargs,
        )

    def __enter__(self) -> Any:
        if not self._shim._admit(self._site, self._shim._dispatch.try_reserve):
            return self._cm.__enter__()
        started = _perf()
        try:
            value = self._cm.__enter__()
        except Exception as exc:
            self._compare(started, exc)
            raise
        except BaseException:
            self._shim._dispatch.release()
            raise
        self._compare(started, self._shim._returned(value))
        return value

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)

    async def __aenter__(self) -> Any:
        if not self._shim._admit(self._site, self._shim._dispatch.try_reserve):
            return await self._cm.__aenter__()
        started = _perf()
        try:
            value = await self._cm.__aenter__()
        except Exception as exc:
            self._compare(started, exc)
            raise
        except BaseException:
            self._shim._dispatch.release()
            raise
        self._compare(started, self._shim._returned(value))
        return value

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._cm.__aexit__(*exc)


class ServedAllocation:
    """The task path serves: allocate through cf-orch on entry, release on exit."""

    __slots__ = (
        "__weakref__",
        "_args",
        "_decision",
        "_fn",
        "_held",
        "_kwargs",
        "_legacy",
        "_model",
        "_shim",
        "_site",
    )

    def __init__(
        self,
        shim: Shim,
        site: CallSite,
        model: str | None,
        decision: flagpkg.Decision,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._shim, self._site, self._model, self._decision = shim, site, model, decision
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._held: Any = None
        self._legacy: Any = None

    def _serves(self, candidate: Any, value: Any, held: Any) -> bool:
        """After the task path ran: True when it serves; raises when it failed and the
        call site has no fallback; False to fall back to legacy."""
        if candidate is not None and candidate.ok:
            self._shim._served(self._site, "task")
            client, site = self._shim._client, self._site
            release = functools.partial(client.release, site.product, site.task, held)
            self._held = (_Release(self, release), held)
            self._shim._compare_served_allocation(
                self._site,
                self._model,
                self._decision,
                candidate,
                value,
                self._fn,
                self._args,
                self._kwargs,
            )
            return True
        if candidate is not None and not self._site.fallback:
            self._shim._served(self._site, "task")
            raise value
        if candidate is None:
            self._shim._served(self._site, "legacy")
        self._legacy = self._fn(*self._args, **self._kwargs)
        return False

    def _fell_back(
        self, candidate: Any, started: float, result: Any = None, exc: BaseException | None = None
    ) -> None:
        if candidate is not None:  # None: the breaker kept the task path out of it
            legacy = self._shim._legacy_obs(started, self._model, result, exc=exc)
            self._shim._fell_back(self._site, self._decision, legacy, candidate)

    def __enter__(self) -> Any:
        shim = self._shim
        candidate, value, held = shim._run_task(
            self._site, self._args, self._kwargs, shim._client, keep=True
        )
        if self._serves(candidate, value, held):
            return value
        started = _perf()
        try:
            result = self._legacy.__enter__()
        except Exception as exc:
            self._fell_back(candidate, started, exc=exc)
            raise
        self._fell_back(candidate, started, result)
        return result

    def __exit__(self, *exc: Any) -> Any:
        if self._held is not None:
            self._held[0]()
            return False
        if self._legacy is not None:
            return self._legacy.__exit__(*exc)
        return False

    async def __aenter__(self) -> Any:
        shim = self._shim
        candidate, value, held = await shim._arun_task(
            self._site, self._args, self._kwargs, shim._loop_state().client, keep=True
        )
        if self._serves(candidate, value, held):
            return value
        started = _perf()
        try:
            result = await self._legacy.__aenter__()
        except Exception as exc:
            self._fell_back(candidate, started, exc=exc)
            raise
        self._fell_back(candidate, started, result)
        return result

    async def __aexit__(self, *exc: Any) -> Any:
        if self._held is not None:
            guard, held = self._held
            if guard.take():
                client = self._shim._loop_state().client
                await client.release(self._site.product, self._site.task, held)
            return False
        if self._legacy is not None:
            return await self._legacy.__aexit__(*exc)
        return False
