"""The two drivers of the core's steps, each with the place its background work goes.

:class:`Threads` performs steps on the calling thread with the Shim's own task clients
and runs background work on the worker threads; :class:`Loops` awaits them on the
running event loop with that loop's client and runs background work as tasks there.

Where an async call site's work runs, which the docs say the same way: legacy serving,
legacy is awaited on the caller's loop and the task path it is compared with runs on
the worker threads (outliving the loop); the task path serving, it is awaited on the
caller's loop and, if the call is compared, legacy (the app's own coroutine, which may
hold what belongs to that loop) runs in the background as a task on that loop, within
``Timeouts.shadow``. When that loop ends (``asyncio.run`` returning), it waits for
those tasks, up to that deadline (:mod:`shim.core.loopend`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar, cast

import httpx

from shim.client.dial import default_tls
from shim.client.protocol import ReleaseHook
from shim.client.task_client import AsyncTaskClient, TaskClient
from shim.core.call import Call
from shim.core.config import Limits, Timeouts
from shim.core.dispatch import DropHook, ErrorHook, ThreadDispatcher
from shim.core.events import Events
from shim.core.judging import Judge, JudgePool
from shim.core.loopdispatch import LoopDispatcher
from shim.core.loopend import ended, outlast
from shim.core.steps import Run, Step, Steps

__all__ = ["USER_AGENT", "LoopState", "Loops", "Threads", "judge_pool", "lanes", "task_clients"]

T = TypeVar("T")

USER_AGENT = "task-shim/0.1"

_LOOP_GONE = "the caller's event loop has ended: legacy cannot run again there"


def task_clients(
    orch_url: str,
    *,
    api_key: str | None,
    timeouts: tuple[float, float],
    http: httpx.Client | None,
    tls: ssl.SSLContext,
    on_release_failed: ReleaseHook,
) -> tuple[TaskClient, TaskClient]:
    """The sync task clients: one for calls that serve, one for comparisons, each with
    its timeout (``timeouts``: serve, shadow)."""
    serve, shadow = (
        TaskClient(
            orch_url,
            api_key=api_key,
            timeout=timeout,
            http=http,
            tls=tls,
            on_release_failed=on_release_failed,
        )
        for timeout in timeouts
    )
    return serve, shadow


def judge_pool(
    judge: Judge, orch_url: str, *, api_key: str | None, http: httpx.Client | None, events: Events
) -> JudgePool:
    """The pool that puts pairs to ``judge``: a task client of its own per thread."""

    def connect(timeout: float) -> TaskClient:
        return TaskClient(
            orch_url,
            api_key=api_key,
            timeout=timeout,
            http=http,
            tls=default_tls(),
            on_release_failed=events.release_failed,
        )

    return JudgePool(
        judge,
        connect=connect,
        record=events.recorder.comparison,
        skipped=events.judge_skipped,
        on_error=events.internal_error,
    )


def lanes(
    orch_url: str,
    *,
    api_key: str | None,
    limits: Limits,
    timeouts: Timeouts,
    http: httpx.Client | None,
    transport: httpx.MockTransport | None,
    events: Events,
) -> tuple[Threads, Loops]:
    """A Shim's two drivers: the worker threads and task clients of sync call sites,
    the per-loop clients and tasks of async ones, with one TLS context (verifying
    certificates) for all of their connections, and failures told to ``events``."""
    tls = default_tls()  # one per process: building one costs ~20 ms
    connect = functools.partial(
        task_clients,
        orch_url,
        api_key=api_key,
        timeouts=(timeouts.serve, timeouts.shadow),
        http=http,
        tls=tls,
        on_release_failed=events.release_failed,
    )
    dispatch = ThreadDispatcher(
        workers=limits.workers, capacity=limits.queue_size, on_error=events.internal_error
    )
    make_state = functools.partial(
        LoopState,
        orch_url,
        api_key=api_key,
        timeout=timeouts.serve,
        tls=tls,
        transport=transport,
        capacity=limits.concurrency,
        on_error=events.internal_error,
        on_cancelled=events.cancelled,
        on_dropped=events.recorder.dropped,
        on_release_failed=events.release_failed,
    )
    return Threads(dispatch, connect), Loops(make_state, timeouts.shadow)


class Threads:
    """The sync lane: steps performed on the calling thread (the task path through
    ``serving`` or ``comparing``), background work on the worker threads of
    ``dispatch``. ``connect`` makes the pair of task clients, again in a forked child."""

    def __init__(
        self, dispatch: ThreadDispatcher, connect: Callable[[], tuple[TaskClient, TaskClient]]
    ) -> None:
        self.dispatch = dispatch
        self._connect = connect
        self.serving, self.comparing = connect()

    def run(self, steps: Steps[T]) -> T:
        """Perform ``steps`` here; what they return."""
        run = Run(steps)
        while (step := run.next()) is not None:
            try:
                if type(step) is Call:
                    run.reply = step.fn(*step.args, **step.kwargs)
                else:
                    run.reply = self._perform(step)
            except BaseException as exc:  # the steps decide; what they do not handle goes on
                run.failed(exc)
        return run.value

    def _perform(self, step: Step) -> Any:
        target = step.target
        if target is None:
            target = self.serving if step.serving else self.comparing
        return getattr(target, step.method)(*step.args, **step.kwargs)

    def try_reserve(self) -> bool:
        """Take a slot on the worker threads' queue."""
        return self.dispatch.try_reserve()

    def release(self) -> None:
        """Give back a slot that will not be used."""
        self.dispatch.release()

    def spawn(self, task: str, steps: Steps[None]) -> None:
        """Perform ``steps`` on a worker thread."""
        self.dispatch.submit(task, self.run, steps)

    def again(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A sync legacy function runs again on a worker as it is."""
        return fn

    def after_fork(self) -> None:
        """In a forked child: the connections are the parent's; make new ones (not
        closing the old: the parent still uses those sockets)."""
        self.serving, self.comparing = self._connect()

    def close(self) -> None:
        """Close the task clients' connections."""
        self.serving.close()
        self.comparing.close()


class LoopState:
    """What a Shim keeps per event loop: its task client (httpx.AsyncClient is bound to
    its loop) and its background tasks. Those the loop's end still takes with it are
    counted through ``on_dropped`` (reason ``loop_closed``; without it,
    ``on_cancelled``) and said once per loop (see :class:`LoopDispatcher`)."""

    def __init__(
        self,
        orch_url: str,
        *,
        api_key: str | None,
        timeout: float,
        tls: ssl.SSLContext,
        transport: httpx.AsyncBaseTransport | None,
        capacity: int,
        on_error: ErrorHook,
        on_cancelled: Callable[[str], None],
        on_release_failed: ReleaseHook,
        on_dropped: DropHook | None = None,
    ) -> None:
        # The shim's TLS context: loading CA certificates per event loop would cost the
        # loop's first caller ~25 ms.
        http = httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT}, verify=tls, transport=transport
        )
        self.client = AsyncTaskClient(
            orch_url,
            api_key=api_key,
            timeout=timeout,
            http=http,
            on_release_failed=on_release_failed,
        )
        self.http = http
        self.dispatch = LoopDispatcher(
            capacity=capacity, on_error=on_error, on_cancelled=on_cancelled, on_dropped=on_dropped
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
            # served streams the loop's end is closing give their allocations back
            # with this client: it closes after them
            await self.client.close_after_streams(self.http.aclose)


class Loops:
    """The async lane: steps awaited on the running event loop with that loop's task
    client, background work as tasks on the loop (legacy runs there within
    ``shadow_timeout`` seconds, through the loop's end if it comes first).
    ``make_state`` makes a loop's state on first use."""

    def __init__(self, make_state: Callable[[], LoopState], shadow_timeout: float) -> None:
        self._make_state = make_state
        self._shadow_timeout = shadow_timeout
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = (
            weakref.WeakKeyDictionary()
        )

    def state(self) -> LoopState:
        """The running loop's state, made on first use."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = self._make_state()
        return state

    def found(self) -> LoopState | None:
        """The running loop's state, if it has one."""
        return self._states.get(asyncio.get_running_loop())

    def forget(self) -> LoopState | None:
        """Take the running loop's state out (it is closed by the caller)."""
        return self._states.pop(asyncio.get_running_loop(), None)

    async def run(self, steps: Steps[T], *, within: float | None = None) -> T:
        """Await ``steps`` here; what they return. With ``within`` (background work),
        each step must end within that many seconds of the start (TimeoutError is
        thrown in if not), and the loop's end does not cancel it before then."""
        deadline = None if within is None else asyncio.get_running_loop().time() + within
        try:  # (written out, no helper objects: every shadowed async call comes through)
            step = steps.send(None)
            while True:
                try:
                    if type(step) is Call and deadline is None:  # legacy: most steps
                        reply = await step.fn(*step.args, **step.kwargs)
                    elif deadline is None:
                        reply = await self._perform(step)
                    else:  # background work: it outlasts the loop's end, to the deadline
                        async with asyncio.timeout_at(deadline):
                            reply = await outlast(self._perform(step), deadline)
                except BaseException as exc:  # the steps decide; cancellation included
                    step = steps.throw(exc if deadline is None else ended(exc))
                else:
                    step = steps.send(reply)
        except StopIteration as stop:
            value: T = stop.value
            return value

    def _perform(self, step: Any) -> Coroutine[Any, Any, Any]:
        if type(step) is Call:
            legacy: Coroutine[Any, Any, Any] = step.fn(*step.args, **step.kwargs)
            return legacy
        target = self.state().client if step.target is None else step.target
        method: Coroutine[Any, Any, Any] = getattr(target, step.amethod)(*step.args, **step.kwargs)
        return method

    def try_reserve(self) -> bool:
        """Take a slot among this loop's background tasks."""
        return self.state().dispatch.try_reserve()

    def release(self) -> None:
        """Give back a slot that will not be used."""
        self.state().dispatch.release()

    def spawn(self, task: str, steps: Steps[None]) -> None:
        """Await ``steps`` as a task on this loop, within the shadow timeout; the
        loop's end waits for it (up to that timeout) instead of cancelling it."""
        self.state().dispatch.spawn(task, self.run(steps, within=self._shadow_timeout))

    def again(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` made callable from a worker thread: it runs on this event loop, within
        the shadow timeout. Once the loop has ended (one loop per job) it cannot run
        there any more: that raises at once, rather than holding the worker."""
        loop, timeout = asyncio.get_running_loop(), self._shadow_timeout

        def again(*args: Any, **kwargs: Any) -> Any:
            if loop.is_closed():
                raise RuntimeError(_LOOP_GONE)
            coro = cast(Coroutine[Any, Any, Any], fn(*args, **kwargs))
            try:
                return _wait(asyncio.run_coroutine_threadsafe(coro, loop), loop, timeout)
            except BaseException:
                # The loop ended before it started the coroutine (or refused it): close
                # it, so that "never awaited" stays out of the logs. One it started is
                # the loop's to finish or cancel.
                if loop.is_closed() and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                    coro.close()
                raise

        return again

    def after_fork(self) -> None:
        """In a forked child: the event loops are the parent's; start anew."""
        self._states = weakref.WeakKeyDictionary()


def _wait(future: Any, loop: asyncio.AbstractEventLoop, timeout: float) -> Any:
    """``future``'s result within ``timeout``, polled, not waited on once: a loop that
    ends meanwhile never runs the coroutine, and the worker would wait the whole
    timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return future.result(min(0.1, max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            if loop.is_closed():
                future.cancel()
                raise RuntimeError(_LOOP_GONE) from None
            if time.monotonic() >= deadline:
                future.cancel()
                raise
