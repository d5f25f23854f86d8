"""One call of a wrapped call site, and what each path did on it, as values."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shim import flags as flagpkg
from shim.base.errors import ShimError
from shim.client.task import TaskAllocation, TaskResult
from shim.records.observe import CallSite, Observation, capture, describe

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
    #: A compared call's task request and service hint, built from the arguments when
    #: the call was made (the caller may change them once legacy has returned); the
    #: request is a private copy (:func:`~shim.records.observe.capture`) if it holds
    #: values the caller could change.
    prepared: tuple[Any, str | None] | None = None
    #: The arguments for a second legacy run (noise), copied when the call was made.
    again: tuple[tuple[Any, ...], dict[str, Any]] | None = None


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
        model=result.model if result else None,
        service_type=result.service_type if result else None,
        node_id=result.node_id if result else None,
        status=status,
        prompt=prompt,
    )


def candidate_answered(
    result: TaskResult | TaskAllocation, value: Any, started: float, prompt: str | None = None
) -> Observation:
    """The task path's side of a call it answered: ``value`` is what the call site
    returns from it."""
    return Observation(
        True,
        (_perf() - started) * 1000,
        value,
        None,
        result.model,
        result.service_type,
        result.node_id,
        200,
        prompt,
        getattr(result, "usage", None),
    )
