"""What a wrapped call site needs besides its flags: its task taken from its arguments,
the service its allocations are released from, the values it returns instead of
failing, and the soft-failure rule of the ``(value, ctx)`` pairs some return."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from shim import flags as flagpkg
from shim.base.errors import SoftFailure
from shim.client.task import TaskRequest
from shim.comparators import held_value
from shim.records.observe import NOT_RECORDED, CallSite, capture, soft_failure_error

__all__ = [
    "CallSiteError",
    "checked",
    "first_of_pair",
    "kept_arguments",
    "no_request",
    "prepare",
    "responded",
    "routed",
    "unfallen",
]

P = ParamSpec("P")
R = TypeVar("R")

#: How many ``product.task`` names one call site may serve when they come from its
#: arguments: more is a name built from user input, not a task.
MAX_ROUTED = 64


def no_request(*args: Any, **kwargs: Any) -> TaskRequest:
    """An allocating call site's request: kiwi's allocation body carries none."""
    return TaskRequest()


class CallSiteError(Exception):
    """The call site's own callable (``request=``, ``response=``, ...) raised: a bug in
    the app's code, never the task path's failure. ``name`` is the keyword, ``fn`` the
    callable, ``error`` what it raised."""

    def __init__(self, name: str, fn: Any, error: Exception) -> None:
        super().__init__(f"{name}= raised {type(error).__name__}: {error}")
        self.name, self.fn, self.error = name, fn, error


def prepare(
    site: CallSite, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[TaskRequest | None, str | None]:
    """What the task path sends for this call, built from its arguments: the request
    (None for an allocating call site: kiwi's body carries none) and the service an
    allocation is released from if the answer names none. CallSiteError if the call
    site's ``request=`` or ``service_hint=`` raised."""
    hint = site.service_hint
    if callable(hint):
        try:
            hint = hint(*args, **kwargs)
        except Exception as exc:
            raise CallSiteError("service_hint", site.service_hint, exc) from exc
    if site.allocation:
        return None, hint
    try:
        request: TaskRequest = site.request(*args, **kwargs)
    except Exception as exc:
        raise CallSiteError("request", site.request, exc) from exc
    return request, hint


def kept_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The arguments for work in the background (the task request of a compared call,
    legacy run again for noise or for a served call), with the caller's own containers
    copied (lists, dicts, sets,
    bytearrays: what a caller reuses once the call returns) so that its later changes
    cannot reach them; other objects (the call site's ``self``, a client) are kept as
    they are, since copying them would run legacy on a copy. None when nothing needs
    copying. :meth:`~shim.core.call.Call.background` gives them back."""
    for a in args:  # loops, not any(), and _container() inlined: this runs on every
        kind = type(a)  # compared call
        if kind is list or kind is dict or kind is set or kind is bytearray:
            break
    else:
        for v in kwargs.values():
            if _container(type(v)):
                break
        else:
            return None
    return tuple(_kept(a) for a in args), {k: _kept(v) for k, v in kwargs.items()}


def _container(kind: type) -> bool:
    """``kind`` is one of the caller's containers that ``kept_arguments`` copies. Identity
    tests, not a set lookup: hashing a class runs its metaclass's ``__hash__``, which
    may be the app's."""
    return kind is list or kind is dict or kind is set or kind is bytearray


def _kept(value: Any) -> Any:
    if not _container(type(value)):
        return value
    kept = capture(value)
    return value if kept is NOT_RECORDED else kept


def responded(site: CallSite, result: Any) -> Any:
    """The call site's value from the task path's ``result`` (its ``response=``),
    unless the call site counts it as a (soft) failure: SoftFailure, the task path's.
    CallSiteError if ``response=`` or ``soft_failure=`` raised."""
    try:
        value = site.response(result)
    except Exception as exc:
        raise CallSiteError("response", site.response, exc) from exc
    return checked(site, value)


def checked(site: CallSite, value: Any) -> Any:
    """The task path's value, unless the call site counts it as a (soft) failure.
    CallSiteError if ``soft_failure=`` raised."""
    soft = site.soft_failure
    if soft is None:
        return value
    try:
        failed = soft(value)
    except Exception as exc:
        raise CallSiteError("soft_failure", soft, exc) from exc
    if failed:
        message = soft_failure_error("the task path", value)
        raise SoftFailure(message, product=site.product, task=site.task, value=value)
    return value


def unfallen(error: BaseException) -> Any:
    """A served call that failed with no fallback: the task path's own empty value for a
    soft failure (the call site returns it on failure), else the error, raised."""
    if isinstance(error, SoftFailure):
        return error.value
    raise error


def first_of_pair(soft: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A soft-failure rule for ``(value, ctx)`` call sites: it judges the value."""
    return lambda value: soft(held_value(value))


def routed(
    wrap: Callable[[str, str], Callable[[Callable[..., Any]], Callable[..., Any]]],
    on_error: Callable[[str, Any, Exception], None],
    source: flagpkg.FlagSource,
    product: str | Callable[..., str],
    task: str | Callable[..., str],
    fn: Callable[P, R],
) -> Callable[P, R]:
    """A call site whose product or task come from its arguments: each call picks (and
    on first use wraps, with ``wrap(product, task)``) the call site of its own
    ``product.task``. A name that does not fit runs legacy and is told to
    ``on_error(keyword, callable, error)``: the call site's error, not the shim's."""
    wrapped: dict[tuple[str, str], Callable[..., Any]] = {}
    lock = threading.Lock()

    def pick(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[..., Any]:
        """The wrapped call site for this call's task; ``fn`` itself when none."""
        if not source.rules.active:  # every task off: no need to know which
            return fn
        raised = "product"  # which of the call site's callables a failure is blamed on
        try:
            p = product(*args, **kwargs) if callable(product) else product
            raised = "task"
            t = task(*args, **kwargs) if callable(task) else task
            site = wrapped.get((p, t))
            if site is None:
                with lock:
                    site = wrapped.get((p, t))
                    if site is None:
                        if len(wrapped) >= MAX_ROUTED:
                            raise ValueError(f"more than {MAX_ROUTED} tasks at one call site")
                        site = wrapped[(p, t)] = wrap(p, t)(fn)
            return site
        except Exception as exc:  # a name that does not fit: legacy, counted
            on_error(raised, product if raised == "product" else task, exc)
            return fn

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def arouted(*args: P.args, **kwargs: P.kwargs) -> Any:
            return await pick(args, kwargs)(*args, **kwargs)

        return cast(Callable[P, R], arouted)

    @functools.wraps(fn)
    def sync_routed(*args: P.args, **kwargs: P.kwargs) -> R:
        result: R = pick(args, kwargs)(*args, **kwargs)
        return result

    return sync_routed
