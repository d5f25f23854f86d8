"""What happens around a call the task path serves: legacy run in the background to
compare with it, or legacy answering instead when it failed (``fallback``)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from shim.comparators import held_value
from shim.core.admission import Admission
from shim.core.call import Call, legacy_observation
from shim.core.callsite import kept_arguments
from shim.core.dispatch import ThreadDispatcher
from shim.core.events import Events
from shim.core.loopend import LoopEnded
from shim.core.relay import adrain, drain, stream_observation
from shim.core.steps import Lane, Steps, enter, leave
from shim.records.observe import Observation, Pending, capture

__all__ = ["ServedCalls"]

_perf = time.perf_counter


class ServedCalls:
    """The :class:`~shim.core.engine.Engine`'s steps for a call the task path served:
    the comparison with legacy, or the fallback to it. ``dispatch``: the worker
    threads, asked whether a job's result is still to be recorded."""

    def __init__(self, *, admission: Admission, events: Events, dispatch: ThreadDispatcher) -> None:
        self.admission = admission
        self.events = events
        self.recorder = events.recorder
        self._dispatch = dispatch

    def compare_served(self, call: Call, candidate: Observation, value: Any, lane: Lane) -> None:
        """The task path served ``value``: if the call is compared, legacy runs in the
        background on ``lane`` and the pair is recorded (``served_by: task``). Nothing
        here raises into the caller: a failure to hand the comparison over is the
        shim's (``hand_off``), and gives its slot back."""
        if not call.decision.compare or not self.admission.admit(call, lane.try_reserve):
            return
        try:
            kept = value if call.site.allocation == "entered" else capture(value)
            call.kept = kept_arguments(call.args, call.kwargs)  # the caller may reuse them
            job = self._legacy_job(call, replace(candidate, value=kept))
            lane.spawn(call.site.name, job)
        except Exception as exc:
            lane.release()
            self.events.internal_error("hand_off", exc, site=call.site)

    def _legacy_job(self, call: Call, candidate: Observation) -> Steps[None]:
        """Background side of a served call: run legacy, hand the comparison to the
        recorder. What legacy holds is given
        back: an allocation's context manager is entered and left; a ``(value, ctx)``
        pair's ctx is left; a stream is read to its end. Legacy failing once its event
        loop has begun to end says nothing about legacy: counted as dropped
        (``loop_closed``)."""
        site, run = call.site, call.background()
        started = _perf()
        try:
            if site.allocation is True:
                cm = run.fn(*run.args, **run.kwargs)
                result = yield enter(cm)
                yield leave(cm)
            elif site.stream:  # read to its end here, timed as it went
                drained = adrain(run.fn) if site.stream == "async" else drain(run.fn)
                result = yield replace(run, fn=drained)
            else:
                result = yield run
                if site.allocation == "entered" and held_value(result) is not result:
                    yield leave(result[1])
        except LoopEnded:
            self.recorder.dropped(site.product, site.task, "loop_closed")
            return
        except Exception as exc:
            legacy = legacy_observation(started, call.model, exc=exc)
        else:
            if site.stream:
                streamed = stream_observation(result, call.model)
                if streamed is None:
                    self.recorder.dropped(site.product, site.task, "stream_too_large")
                    return
                legacy = streamed
            else:
                legacy = legacy_observation(started, call.model, result, copy=False)
        if self._dispatch.keep_result():  # on a worker: not counted by close() already
            pending = Pending(site, call.decision.stage, "task", legacy, candidate)
            self.events.compared(pending)

    def fall_back(self, call: Call, step: Any, candidate: Observation) -> Steps[Any]:
        """The task path failed while serving: legacy (``step``) answers instead, and
        the pair is recorded (``served_by: legacy_fallback``). Recording it never
        raises into the caller, who gets legacy's value or error as it is."""
        started = _perf()
        try:
            result = yield step
        except Exception as exc:
            self._fell_back(call, started, candidate, exc=exc)
            raise
        self._fell_back(call, started, candidate, result)
        return result

    def _fell_back(
        self,
        call: Call,
        started: float,
        candidate: Observation,
        result: Any = None,
        *,
        exc: BaseException | None = None,
    ) -> None:
        try:
            # an allocation is kept by reference, as everywhere: a held context can be
            # neither copied nor taken twice, and only its attributes are read
            copy = not call.site.allocation
            legacy = legacy_observation(started, call.model, result, exc=exc, copy=copy)
            self.events.served(call.site, "legacy_fallback")
            stage = call.decision.stage
            pending = Pending(call.site, stage, "legacy_fallback", legacy, candidate)
            self.events.compared(pending)
        except Exception as failed:  # the shim's failure, never the caller's
            self.events.internal_error("record", failed, site=call.site)
