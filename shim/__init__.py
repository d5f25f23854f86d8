"""task-shim: move LLM call sites onto cf-orch's task endpoint, gradually and reversibly.

Wrap a call site with :meth:`Shim.shadow`; flags decide per call which path serves and
whether the other path runs in the background for comparison; every comparison is one
JSON line. The task client (:class:`TaskClient`, :class:`AsyncTaskClient`) speaks the
coordinator's task endpoint; :func:`context` sets who is calling. The simulator is
``shim.sim``. Every error is a :class:`ShimError`.
"""

from ._breaker import BreakerPolicy
from ._capture import Capture
from ._client import AsyncTaskClient, TaskAllocation, TaskClient, TaskRequest, TaskResult
from ._context import context, current_context
from ._errors import ConfigError, Problem, ShimError, SoftFailure, TaskFailed, TaskNotRegistered
from ._observe import NOT_RECORDED, is_soft_failure
from ._orch import OrchConfig, ResolvedTask
from ._records import FileSink, RecordSink, StreamSink
from ._shim import Shim
from ._spend import Backoff, ShadowBudget

__all__ = [
    "NOT_RECORDED",
    "AsyncTaskClient",
    "Backoff",
    "BreakerPolicy",
    "Capture",
    "ConfigError",
    "FileSink",
    "OrchConfig",
    "Problem",
    "RecordSink",
    "ResolvedTask",
    "ShadowBudget",
    "Shim",
    "ShimError",
    "SoftFailure",
    "StreamSink",
    "TaskAllocation",
    "TaskClient",
    "TaskFailed",
    "TaskNotRegistered",
    "TaskRequest",
    "TaskResult",
    "context",
    "current_context",
    "is_soft_failure",
]
