"""task-shim: move LLM call sites onto cf-orch's task endpoint, gradually and reversibly.

Public surface: the task client (:class:`TaskClient`, :class:`AsyncTaskClient`,
:class:`TaskRequest`, :class:`TaskResult`), cf-orch configuration (:class:`OrchConfig`)
and the error tree rooted at :class:`ShimError`. The simulator is ``shim.sim``.
"""

from ._client import AsyncTaskClient, TaskClient, TaskRequest, TaskResult
from ._errors import ConfigError, Problem, ShimError, TaskFailed, TaskNotRegistered
from ._orch import OrchConfig, ResolvedTask

__all__ = [
    "AsyncTaskClient",
    "ConfigError",
    "OrchConfig",
    "Problem",
    "ResolvedTask",
    "ShimError",
    "TaskClient",
    "TaskFailed",
    "TaskNotRegistered",
    "TaskRequest",
    "TaskResult",
]
