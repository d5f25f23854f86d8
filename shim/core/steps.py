"""The I/O a call needs, as values: the core's generators yield these steps and a
driver performs them, on the calling thread or awaited on the event loop.

The model is the task client's (``shim.client.protocol``): a generator yields what it
needs done and is sent the result, or has the error thrown in. A step is a
:class:`~shim.core.call.Call` (run legacy) or a :class:`Step` (a method to call on a
context manager or on the lane's task client). Nothing in the steps blocks or awaits,
so one decision and execution core serves sync and async call sites alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from shim.client.task import TaskAllocation, TaskRequest
from shim.records.observe import CallSite

__all__ = [
    "AsyncLane",
    "Lane",
    "Run",
    "Step",
    "SyncLane",
    "allocate",
    "enter",
    "infer",
    "leave",
    "only",
    "release",
]

T = TypeVar("T")
#: A generator of steps that returns a ``T``.
Steps = Generator[Any, Any, T]


@dataclass(frozen=True, slots=True)
class Step:
    """Call ``target.<method>(*args, **kwargs)``; a driver on an event loop awaits
    ``target.<amethod>(...)`` instead. No ``target``: the lane's task client, the
    serving one or (``serving=False``) the one for comparisons."""

    method: str
    amethod: str
    target: Any = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    serving: bool = True


def enter(cm: Any) -> Step:
    """Enter a context manager: what it yields."""
    return Step("__enter__", "__aenter__", cm)


def leave(cm: Any, exc: tuple[Any, ...] = (None, None, None)) -> Step:
    """Leave a context manager (with the error that ends its block, if any)."""
    return Step("__exit__", "__aexit__", cm, exc)


def infer(site: CallSite, request: TaskRequest, hint: str | None, *, serving: bool) -> Step:
    """Run the site's task on the task path: a TaskResult (streamed for a streaming
    call site)."""
    args = (site.product, site.task, request)
    kwargs = {"service_hint": hint, "stream": True} if site.stream else {"service_hint": hint}
    return Step("infer", "infer", None, args, kwargs, serving)


def allocate(site: CallSite, hint: str | None, *, serving: bool) -> Step:
    """Ask the task path for an allocation of the site's task: a TaskAllocation."""
    args = (site.product, site.task)
    return Step("allocate", "allocate", None, args, {"service_hint": hint}, serving)


def release(site: CallSite, allocation: TaskAllocation, *, serving: bool) -> Step:
    """Give a task-path allocation back (never raises)."""
    args = (site.product, site.task, allocation)
    return Step("release", "release", None, args, {}, serving)


def only(step: Any) -> Steps[Any]:
    """Steps that are this one step: its result is theirs."""
    return (yield step)


class Run(Generic[T]):
    """Steps being driven: what goes in next (the last step's result, or the error it
    raised) and, once they are done, what they returned. Both drivers use it: they
    only perform the steps, on a thread or awaited."""

    __slots__ = ("error", "reply", "steps", "value")

    def __init__(self, steps: Steps[T]) -> None:
        self.steps = steps
        self.reply: Any = None
        self.error: BaseException | None = None
        self.value: T

    def next(self) -> Any:
        """The step needed next; None once the steps are done (``value`` holds what
        they returned). An error they do not handle is raised here."""
        thrown, self.error = self.error, None
        try:
            if thrown is None:
                return self.steps.send(self.reply)
            return self.steps.throw(thrown)
        except StopIteration as stop:
            self.value = stop.value
            return None
        except RuntimeError as exc:
            if thrown is None or exc.__cause__ is not thrown:
                raise
        # Legacy raised StopIteration, which a generator cannot pass on (PEP 479): it
        # reaches the caller as legacy raised it.
        raise thrown

    def failed(self, exc: BaseException) -> None:
        """The last step raised ``exc``: thrown into the steps next."""
        self.reply, self.error = None, exc


class Lane(Protocol):
    """Where a call's steps run and its background work goes: the calling thread and
    the worker threads (sync call sites), or the running event loop (async ones)."""

    def try_reserve(self) -> bool:
        """Take a slot for background work; False at once when all are taken."""
        ...

    def release(self) -> None:
        """Give back a slot taken with :meth:`try_reserve` that will not be used."""
        ...

    def spawn(self, task: str, steps: Steps[None]) -> None:
        """Run ``steps`` in the background, in a slot taken with :meth:`try_reserve`."""
        ...

    def again(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` made callable from a worker thread (to run legacy again for noise)."""
        ...


class SyncLane(Lane, Protocol):
    """A lane whose driver performs each step on the calling thread."""

    def run(self, steps: Steps[T]) -> T:
        """Perform ``steps``; what they return."""
        ...


class AsyncLane(Lane, Protocol):
    """A lane whose driver awaits each step on the running event loop."""

    def run(self, steps: Steps[T]) -> Awaitable[T]:
        """Perform ``steps``; what they return."""
        ...
