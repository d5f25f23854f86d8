"""The decision and execution core that sync and async call sites share.

Each call is decided here and run as steps (:mod:`shim.core.steps`): generators that
yield "run legacy", "call the task path", "enter this context manager", and are sent
the results. They time, count, admit and hand off, and never block or await: a
:class:`~shim.core.lanes.Threads` driver performs the steps of a sync call site, a
:class:`~shim.core.lanes.Loops` driver awaits those of an async one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from shim import flags as flagpkg
from shim.base.context import sticky_value
from shim.client.task import TaskAllocation, TaskResult
from shim.core.admission import Admission
from shim.core.allocation import HeldAllocation
from shim.core.call import Call, candidate_answered, candidate_failed
from shim.core.callsite import CallSiteError, responded, unfallen
from shim.core.events import Events
from shim.core.gate import Gate
from shim.core.lanes import Loops, Threads
from shim.core.served import ServedCalls
from shim.core.steps import Lane, Steps, allocate, infer, only, release
from shim.flags import OFF
from shim.records.observe import (
    NOT_RECORDED,
    CallSite,
    Observation,
    Pending,
    Stream,
    capture,
    describe,
    restore,
)
from shim.records.tracing import end_span
from shim.records.values import settle

__all__ = ["Engine"]

_perf = time.perf_counter


def _no_slot() -> bool:
    return True


#: What the task path did: its observation (None: the breaker kept it from being
#: called), the call site's value (or the error), and the allocation it holds.
TaskOutcome = tuple[Observation | None, Any, TaskAllocation | None]


class Engine:
    """Decides each call of every wrapped call site and runs it as steps.

    One decision (:meth:`call`), one admission (``admission``), one shadow path
    (:meth:`shadowed`, written out once more in :meth:`sync` for the sync caller's
    sake), one task path (:meth:`task`) and one serving path (:meth:`serve`) for sync,
    async and allocating call sites; ``threads`` and ``loops`` are the two drivers.
    What follows a call the task path served is :class:`ServedCalls`' work.
    """

    def __init__(
        self,
        *,
        admission: Admission,
        events: Events,
        threads: Threads,
        loops: Loops,
        max_serving: int,
        noise_sample: float,
        capture_prompts: bool,
    ) -> None:
        self.admission = admission
        self.events = events
        self.recorder = events.recorder
        self.threads = threads
        self.loops = loops
        self.serving = Gate(max_serving)
        self.noise_sample = noise_sample
        self.capture_prompts = capture_prompts
        self.metered = events.metrics is not None
        self.closed = False
        #: Lives as long as the call sites do (they hold the engine): the Shim's closer,
        #: so that a Shim only its wrapped functions hold is still closed at exit.
        self.keepalive: object | None = None
        self._dispatch = threads.dispatch
        self._dispatch.on_dropped = self.recorder.dropped  # jobs too big for its queue
        self._reserve = threads.dispatch.try_reserve  # bound once: per shadowed call
        self._handoff = threads.dispatch.handoff
        self._served = ServedCalls(admission=admission, events=events, dispatch=self._dispatch)

    # -- deciding ------------------------------------------------------------------

    def call(
        self,
        site: CallSite,
        model: str | None,
        rule: flagpkg.Rule,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Call:
        """One call, decided: OFF once the Shim is closed, when the call site's ``key=``
        raised (the call site's error, ``call_site.key``) or when deciding failed (an
        internal error, ``decide``). A call site with side effects is never served by
        the task path unless it allows that (``serve_without_side_effects``)."""
        decision = OFF
        if not self.closed:
            key = site.key
            try:
                if key is None:
                    sticky = sticky_value(rule.stickiness)
                else:
                    raw = key(*args, **kwargs)
                    sticky = None if raw is None else str(raw)
            except Exception as exc:  # the call site's key= does not fit its arguments
                self.events.call_site_error("key", key, exc, site=site)
                return Call(site, model, rule, OFF, fn, args, kwargs)
            try:
                decision = rule.decide(sticky)
            except Exception as exc:
                self.events.internal_error("decide", exc)
            if decision.serve and site.side_effects is True:
                decision = self._keep_side_effects(site, decision)
        return Call(site, model, rule, decision, fn, args, kwargs)

    def _keep_side_effects(self, site: CallSite, decision: flagpkg.Decision) -> flagpkg.Decision:
        """The flags say the task path serves, but legacy's side effects must happen on
        every call: legacy serves (compared if drawn, as in shadow), counted as dropped
        (``side_effects``) so the report shows the serving that did not happen."""
        self.recorder.dropped(site.product, site.task, "side_effects")
        return flagpkg.Decision(serve=False, compare=decision.compare, stage=decision.stage)

    def prepared(self, call: Call) -> bool:
        """Build the task request of a call (:meth:`Call.prepare`). False (counted and
        recorded as the call site's error; nothing is compared) if the call site's own
        callable raised."""
        err = call.prepare()
        if err is not None:
            self.events.call_site_error(err.name, err.fn, err.error, site=call.site)
        return err is None

    def sync(self, call: Call) -> Any:
        """A decided call of a sync call site, performed here.

        Legacy serving (compared or not) is written out, not driven as steps: a
        generator per call would double what the shim adds to every shadowed call
        (``bench/overhead.py``). It goes through the same admission and the same
        hand-off (:meth:`legacy_raised`, :meth:`legacy_returned`) as :meth:`shadowed`; serving
        runs as steps."""
        decision = call.decision
        if decision.serve:
            return self.threads.run(self.serve(call, self.threads))
        if self.metered:
            self.events.served(call.site, "legacy")
        fn, args, kwargs = call.fn, call.args, call.kwargs
        if not decision.compare or not self.admission.admit(call, self._reserve):
            return fn(*args, **kwargs)
        try:
            call.keep(self.noise_sample)  # the caller may change its lists once legacy returns
        except Exception as exc:
            self.hand_off_failed(call, exc)
            return fn(*args, **kwargs)
        started = _perf()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.legacy_raised(call, _perf() - started, exc)
            raise
        self.legacy_returned(call, _perf() - started, result, self.threads)
        return result

    def steps(self, lane: Lane, call: Call) -> Steps[Any]:
        """What a decided call does, as steps for ``lane``'s driver."""
        if call.decision.serve:
            return self.serve(call, lane)
        if self.metered:
            self.events.served(call.site, "legacy")
        if not call.decision.compare:
            return only(call)
        return self.shadowed(call, call, lane)

    # -- legacy serves -------------------------------------------------------------

    def shadowed(self, call: Call, step: Any, lane: Lane) -> Steps[Any]:
        """Legacy serves and the task path is compared in the background: the shadow
        path of async call sites and of allocations (``step`` runs legacy: the call,
        or entering what it returned). The caller gets legacy's very value or error."""
        if not self.admit(call):
            return (yield step)
        try:
            call.keep(self.noise_sample)
        except Exception as exc:
            self.hand_off_failed(call, exc)
            return (yield step)
        started = _perf()
        try:
            result = yield step
        except BaseException as exc:
            self.legacy_raised(call, _perf() - started, exc)
            raise
        self.legacy_returned(call, _perf() - started, result, lane)
        return result

    def admit(self, call: Call, *, slot: bool = True) -> bool:
        """Whether a compared call goes ahead: the admission's say, and (``slot``) a
        worker slot taken for it, given back by the hand-off."""
        return self.admission.admit(call, self._reserve if slot else _no_slot)

    def hand_off_failed(self, call: Call, exc: Exception, *, slot: bool = True) -> None:
        """Copying a compared call's arguments or value, or handing it to the workers,
        failed: the shim's own failure (``hand_off``), never the caller's; the call
        goes uncompared, its slot (if it holds one) given back."""
        if slot:
            self._dispatch.release()
        self.events.internal_error("hand_off", exc, site=call.site)

    def legacy_raised(
        self, call: Call, elapsed: float, exc: BaseException, stream: Stream | None = None
    ) -> None:
        """Legacy raised on a compared call after ``elapsed`` seconds: the comparison
        goes on without it (its error is legacy's side); cancelled or interrupted, the
        slot is given back."""
        if not isinstance(exc, Exception):
            self._dispatch.release()
            return
        job = (call, elapsed, NOT_RECORDED, exc, None, stream)
        try:
            self._handoff((call.site.name, self.candidate_job, job))
        except Exception as failed:  # the caller gets legacy's error, not the shim's
            self.hand_off_failed(call, failed)

    def legacy_returned(
        self, call: Call, elapsed: float, result: Any, lane: Lane, stream: Stream | None = None
    ) -> None:
        """Legacy returned on a compared call: time it, copy its result (an allocation
        is kept by reference: it may hold connections, and only its attributes are
        read; nor is it taken twice for noise) and hand the comparison to the workers.
        Nothing here raises into the caller, who gets legacy's very value: a failure is
        the shim's (``hand_off``), and gives the slot back."""
        site = call.site
        try:
            kept, again = result, None
            if not site.allocation:
                kept = capture(result)
                again = lane.again(call.fn) if call.noise else None
            job = (call, elapsed, kept, None, again, stream)
            self._handoff((site.name, self.candidate_job, job))
        except Exception as exc:
            self.hand_off_failed(call, exc)

    def candidate_job(
        self,
        call: Call,
        elapsed: float,
        value: Any,
        error: BaseException | None,
        again: Callable[..., Any] | None,
        stream: Stream | None = None,
    ) -> None:
        """Worker side of a shadowed call: legacy took ``elapsed`` seconds and
        returned (a copy of) ``value`` or raised ``error`` (a stream: as ``stream``
        went). Run the task path, queue the comparison (with legacy run once more for
        ``noise_sample`` of them)."""
        site = call.site
        ms = elapsed * 1000
        if error is not None:
            legacy = Observation(False, ms, error=describe(error), model=call.model, stream=stream)
        else:  # the app's objects in it are copied now, before the caller changes them
            legacy = Observation(True, ms, settle(value), model=call.model, stream=stream)
        if self.admission.paused(site):  # queued before the coordinator said it was full
            return
        candidate, _, _ = self.threads.run(self.task(call, serving=False))
        if candidate is None:
            return
        noise = NOT_RECORDED
        if again is not None and legacy.ok:
            run = call.background()
            try:
                noise = again(*run.args, **run.kwargs)  # how much does legacy vary by itself?
            except Exception as exc:
                self.events.internal_error("noise", exc)
        if self._dispatch.keep_result():  # not counted as unfinished by close() already
            stage = call.decision.stage
            # Compared and rendered on the recorder's thread, with the pairs that came
            # within its batch wait: back to back, the comparator and the record's
            # code run warm (bench/cpu.py; see Recorder).
            pending = Pending(site, stage, "legacy", legacy, candidate, noise)
            self.events.compared(pending)

    # -- the task path -------------------------------------------------------------

    def task(self, call: Call, *, serving: bool, keep: bool = False) -> Steps[TaskOutcome]:
        """Call the task path: what it did (see ``TaskOutcome``). An allocating call
        site gets an allocation, given back at once unless ``keep`` (it serves)."""
        site = call.site
        if call.prepared is None and not self.prepared(call):
            return None, NOT_RECORDED, None
        assert call.prepared is not None
        request, hint = call.prepared
        admitted = self.admission.allow(site, shadow=not serving)
        if admitted is None:
            return None, NOT_RECORDED, None
        span = None if self.events.tracer is None else self.events.span(site, serving)
        started = _perf()
        result: TaskResult | TaskAllocation | None = None
        prompt: str | None = None
        try:
            if site.allocation:
                result = yield allocate(site, hint, serving=serving)
            else:
                request = restore(request)
                prompt = request.prompt if self.capture_prompts else None
                result = yield infer(site, request, hint, serving=serving)
            value = responded(site, result)
        except CallSiteError as err:  # the app's own code: not the task path's failure
            assert result is not None
            self.admission.answered(admitted, result)
            self.events.call_site_error(err.name, err.fn, err.error, site=site)
            if span is not None:
                end_span(span, candidate_answered(result, None, started, prompt), result, None)
            if isinstance(result, TaskAllocation):
                yield release(site, result, serving=serving)
            return None, NOT_RECORDED, None
        except Exception as exc:
            self.admission.failed(admitted, getattr(exc, "status", None))
            failed = candidate_failed(exc, started, result, prompt)
            if span is not None:
                end_span(span, failed, result, exc, self.events.recorder.redact)
            if isinstance(result, TaskAllocation):
                yield release(site, result, serving=serving)
            return failed, exc, None
        except BaseException:  # cancelled: a probe must not wait out another cooldown
            self.admission.abandoned(admitted)
            raise
        assert result is not None
        self.admission.answered(admitted, result)
        answered = candidate_answered(result, value, started, prompt)
        if span is not None:
            end_span(span, answered, result, None)
        held = result if isinstance(result, TaskAllocation) else None
        if held is not None and not keep:
            yield release(site, held, serving=serving)  # compared: give it back now
            held = None
        return answered, value, held

    # -- the task path serves ------------------------------------------------------

    def serve(self, call: Call, lane: Lane) -> Steps[Any]:
        """The task path serves the call: within the serving limit, unless the breaker
        is open; legacy answers instead if it fails (``fallback``), and is compared in
        the background if the call is."""
        site = call.site
        if not self.serving.try_enter():  # as many task-path calls in flight as allowed
            self.recorder.dropped(site.product, site.task, "serve_full")
            self.events.served(site, "legacy")
            return (yield call)
        entered = site.allocation == "entered"
        try:
            candidate, value, held = yield from self.task(call, serving=True, keep=entered)
        finally:
            self.serving.leave()
        if candidate is None:  # breaker open, or the call site's own callable raised
            self.events.served(site, "legacy")
            return (yield call)
        if candidate.ok or not site.fallback:
            self.events.served(site, "task")
        if candidate.ok:
            self.compare_served(call, candidate, value, lane)
            if entered:
                assert held is not None
                return value, HeldAllocation(held, self.releaser(site, held))
            return value
        if not site.fallback:
            given = unfallen(value)  # a soft failure's value, or the error raised
            return (given, contextlib.nullcontext(None)) if entered else given
        return (yield from self.fall_back(call, call, candidate))

    def compare_served(self, call: Call, candidate: Observation, value: Any, lane: Lane) -> None:
        """The task path served ``value``: compare legacy in the background if the call
        is (:meth:`ServedCalls.compare_served`)."""
        self._served.compare_served(call, candidate, value, lane)

    def fall_back(self, call: Call, step: Any, candidate: Observation) -> Steps[Any]:
        """The task path failed while serving: legacy (``step``) answers instead
        (:meth:`ServedCalls.fall_back`)."""
        return self._served.fall_back(call, step, candidate)

    def served(self, site: CallSite, by: str) -> None:
        """Count who served a call (metrics)."""
        self.events.served(site, by)

    def releaser(self, site: CallSite, held: TaskAllocation) -> Callable[[], None]:
        """How to give back a task-path allocation that serves, from any thread."""
        return lambda: self.threads.run(only(release(site, held, serving=True)))
