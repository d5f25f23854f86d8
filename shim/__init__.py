"""task-shim: move LLM call sites onto cf-orch's task endpoint, gradually and reversibly.

Wrap a call site with :meth:`Shim.shadow`; flags decide per call which path serves and
whether the other path runs in the background for comparison; every comparison is one
JSON line. The task client (:class:`TaskClient`, :class:`AsyncTaskClient`) speaks the
coordinator's task endpoint; :func:`context` sets who is calling. Flag sources are in
``shim.flags``, comparators in ``shim.comparators``, the simulator in ``shim.sim``, a
test mode in ``shim.testing``. :func:`drain_on_sigterm` (opt-in) closes the open Shims
on SIGTERM before the process ends. Every error is a :class:`ShimError`.

``import shim`` is cheap: each name below loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shim import comparators as comparators
    from shim import flags as flags
    from shim.base.context import context, current_context
    from shim.base.errors import (
        ConfigError,
        Problem,
        ShimError,
        SoftFailure,
        StreamInterrupted,
        TaskFailed,
        TaskNotRegistered,
    )
    from shim.base.orch import OrchConfig, ResolvedTask
    from shim.client.task import TaskAllocation, TaskRequest, TaskResult
    from shim.client.task_client import AsyncTaskClient, TaskClient
    from shim.core.breaker import BreakerPolicy
    from shim.core.config import Limits, Timeouts
    from shim.core.judging import Judge
    from shim.core.lifecycle import drain_on_sigterm
    from shim.core.shim import Shim
    from shim.core.spend import Backoff, ShadowBudget
    from shim.records.capture import Capture
    from shim.records.observe import NOT_RECORDED
    from shim.records.sinks import FileSink, RecordSink, StreamSink
    from shim.records.soft import is_soft_failure

# name -> the module that defines it
_HOME = {
    "AsyncTaskClient": "shim.client.task_client",
    "Backoff": "shim.core.spend",
    "BreakerPolicy": "shim.core.breaker",
    "Capture": "shim.records.capture",
    "ConfigError": "shim.base.errors",
    "FileSink": "shim.records.sinks",
    "Judge": "shim.core.judging",
    "Limits": "shim.core.config",
    "NOT_RECORDED": "shim.records.observe",
    "OrchConfig": "shim.base.orch",
    "Problem": "shim.base.errors",
    "RecordSink": "shim.records.sinks",
    "ResolvedTask": "shim.base.orch",
    "ShadowBudget": "shim.core.spend",
    "Shim": "shim.core.shim",
    "ShimError": "shim.base.errors",
    "SoftFailure": "shim.base.errors",
    "StreamInterrupted": "shim.base.errors",
    "StreamSink": "shim.records.sinks",
    "TaskAllocation": "shim.client.task",
    "TaskClient": "shim.client.task_client",
    "TaskFailed": "shim.base.errors",
    "TaskNotRegistered": "shim.base.errors",
    "TaskRequest": "shim.client.task",
    "TaskResult": "shim.client.task",
    "Timeouts": "shim.core.config",
    "context": "shim.base.context",
    "current_context": "shim.base.context",
    "drain_on_sigterm": "shim.core.lifecycle",
    "is_soft_failure": "shim.records.soft",
}
_SUBPACKAGES = {"comparators", "flags", "metrics", "sim", "testing"}

__all__ = [
    "NOT_RECORDED",
    "AsyncTaskClient",
    "Backoff",
    "BreakerPolicy",
    "Capture",
    "ConfigError",
    "FileSink",
    "Judge",
    "Limits",
    "OrchConfig",
    "Problem",
    "RecordSink",
    "ResolvedTask",
    "ShadowBudget",
    "Shim",
    "ShimError",
    "SoftFailure",
    "StreamInterrupted",
    "StreamSink",
    "TaskAllocation",
    "TaskClient",
    "TaskFailed",
    "TaskNotRegistered",
    "TaskRequest",
    "TaskResult",
    "Timeouts",
    "context",
    "current_context",
    "drain_on_sigterm",
    "is_soft_failure",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"shim.{name}")
    else:
        raise AttributeError(f"module 'shim' has no attribute {name!r}")
    globals()[name] = value  # found once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME, *_SUBPACKAGES})
