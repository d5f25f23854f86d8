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
from shim.records.observe import CallSite, soft_failure_error

__all__ = [
    "checked",
    "first_of_pair",
    "hint_of",
    "no_request",
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


def hint_of(site: CallSite, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The service a task allocation of this call is released from, if the answer
    names none."""
    hint = site.service_hint
    return hint(*args, **kwargs) if callable(hint) else hint


def checked(site: CallSite, value: Any) -> Any:
    """The task path's value, unless the call site counts it as a (soft) failure."""
    if site.soft_failure is not None and site.soft_failure(value):
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
    on_error: Callable[[str, BaseException], None],
    source: flagpkg.FlagSource,
    product: str | Callable[..., str],
    task: str | Callable[..., str],
    fn: Callable[P, R],
) -> Callable[P, R]:
    """A call site whose product or task come from its arguments: each call picks (and
    on first use wraps, with ``wrap(product, task)``) the call site of its own
    ``product.task``. A name that does not fit runs legacy and is told to ``on_error``
    (``task_of_call``)."""
    wrapped: dict[tuple[str, str], Callable[..., Any]] = {}
    lock = threading.Lock()

    def pick(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[..., Any]:
        """The wrapped call site for this call's task; ``fn`` itself when none."""
        if not source.rules.active:  # every task off: no need to know which
            return fn
        try:
            p = product(*args, **kwargs) if callable(product) else product
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
            on_error("task_of_call", exc)
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
