"""One call of a wrapped call site, and what each path did on it, as values."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from shim import flags as flagpkg
from shim.base.errors import ShimError
from shim.client.task import TaskAllocation, TaskResult
from shim.core.callsite import CallSiteError, kept_arguments, prepare
from shim.records.observe import CallSite, Observation, Stream, capture, describe
from shim.records.values import cap, restore_argument, settle, size_of

__all__ = ["Call", "candidate_answered", "candidate_failed", "legacy_observation"]

_perf = time.perf_counter


@dataclass(slots=True, eq=False)
class Call:
    """One call of a wrapped call site, decided: the site, the static legacy model
    name, the flags' rule and decision, the legacy function and the arguments. Built
    once per call; every step of the call, and its comparison in the background, reads
    it. Yielded by the core's steps, it asks the driver to run legacy:
    ``fn(*args, **kwargs)``, awaited for an async call site."""

    site: CallSite
    model: str | None
    rule: flagpkg.Rule
    decision: flagpkg.Decision
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    #: The task request and service hint, built from the arguments as they were when
    #: the call was made (see ``kept``).
    prepared: tuple[Any, str | None] | None = None
    #: Legacy runs a second time in the background (noise) on this call.
    noise: bool = False
    #: The arguments with the caller's containers copied when the call was made, for a
    #: legacy run in the background (:func:`~shim.core.callsite.kept_arguments`).
    kept: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def keep(self, noise_sample: float) -> None:
        """On the caller's thread, before legacy runs a compared call: copy the caller's
        own containers among the arguments (``kept``), which the task request is built
        from in the background and legacy may run on again for noise, and draw whether
        it does (``noise``). A few hundred nanoseconds when there is nothing to copy."""
        self.kept = kept_arguments(self.args, self.kwargs)
        site = self.site
        if (
            noise_sample
            and not (site.side_effects or site.allocation or self.decision.serve)
            and random.random() < noise_sample
        ):
            self.noise = True

    def prepare(self) -> CallSiteError | None:
        """Build the task request (``prepared``) from the arguments as they were when
        the call was made (:meth:`background`). The call site's error if its own
        callable raised."""
        run = self.background()
        try:
            self.prepared = prepare(self.site, run.args, run.kwargs)
        except CallSiteError as err:
            return err
        return None

    def background(self) -> Call:
        """This call with its arguments as they were when it was made, for a legacy run
        in the background: the caller may have changed its own lists and dicts since."""
        if self.kept is None:
            return self
        args, kwargs = self.kept
        restored = tuple(map(restore_argument, args))
        return replace(
            self, args=restored, kwargs={k: restore_argument(v) for k, v in kwargs.items()}
        )

    def settle(self) -> int:
        """Copy the app's objects among the kept arguments now
        (:func:`~shim.records.values.settle`), off the caller's path but before the
        call waits in a queue; then :meth:`nbytes`."""
        if self.kept is not None:
            args, kwargs = self.kept
            for value in (*args, *kwargs.values()):
                settle(value)  # in place: an argument that cannot be copied is kept as is
        return self.nbytes()

    def nbytes(self) -> int:
        """The bytes its arguments hold while it waits in a queue, estimated
        (:func:`~shim.records.values.size_of`): its copies, or the caller's text."""
        args, kwargs = self.kept if self.kept is not None else (self.args, self.kwargs)
        return sum(map(size_of, args)) + sum(map(size_of, kwargs.values()))


def legacy_observation(
    started: float,
    model: str | None,
    result: Any = None,
    *,
    exc: BaseException | None = None,
    copy: bool = True,
) -> Observation:
    """Legacy's side of a call that started at ``started`` (perf_counter) and ended
    now; its result copied unless ``copy`` is False (nobody else holds it)."""
    ms = (_perf() - started) * 1000
    if exc is not None:
        return Observation(False, ms, error=describe(exc), model=model)
    return Observation(True, ms, capture(result) if copy else result, model=model)


def candidate_failed(
    exc: BaseException,
    started: float,
    result: TaskResult | TaskAllocation | None,
    prompt: str | None = None,
) -> Observation:
    """The task path's side of a call on which it failed (``result``: what it answered,
    if it did, before the answer was refused)."""
    status = (
        getattr(exc, "status", None)
        if isinstance(exc, ShimError)
        else (200 if result is not None else None)
    )
    return Observation(
        False,
        (_perf() - started) * 1000,
        error=describe(exc),
        model=cap(result.model) if result else None,
        service_type=cap(result.service_type) if result else None,
        node_id=cap(result.node_id) if result else None,
        status=status,
        prompt=prompt,
    )


def candidate_answered(
    result: TaskResult | TaskAllocation, value: Any, started: float, prompt: str | None = None
) -> Observation:
    """The task path's side of a call it answered: ``value`` is what the call site
    returns from it. What the coordinator named (model, service, node) is capped
    (:data:`~shim.records.values.FIELD_CHARS`): one hostile answer cannot make a
    record of megabytes."""
    chunks = getattr(result, "chunks", None)
    return Observation(
        True,
        (_perf() - started) * 1000,
        value,
        None,
        cap(result.model),
        cap(result.service_type),
        cap(result.node_id),
        200,
        prompt,
        getattr(result, "usage", None),
        None if chunks is None else Stream(getattr(result, "ttft_ms", None), chunks),
    )
