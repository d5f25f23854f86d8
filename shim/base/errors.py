"""The one exception tree of task-shim.

::

    ShimError                   base of everything task-shim raises
    ├── ConfigError             a config file is invalid; carries every Problem found
    ├── TaskFailed              the task path failed: non-2xx, malformed reply, transport
    │   └── TaskNotRegistered   the coordinator answered 404: product.task is not assigned
    └── SoftFailure             the task path answered, but with what the call site
                                counts as a failure (None, "", an empty container)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "Problem",
    "ShimError",
    "SoftFailure",
    "TaskFailed",
    "TaskNotRegistered",
]


class ShimError(Exception):
    """Base class of every error task-shim raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in one config file, located as precisely as the file allows."""

    path: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = self.message if not self.field else f"{self.field}: {self.message}"
        return f"{where}: {what}"


class ConfigError(ShimError):
    """A config file (assignments, registry, flags, profile) cannot be used.

    ``problems`` lists every problem found, each with file, line and field; the message
    is those problems, one per line, in ``file:line: field: message`` form.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def path(self) -> str:
        """The file of the first problem."""
        return self.problems[0].path

    @property
    def line(self) -> int | None:
        """The line of the first problem, when known."""
        return self.problems[0].line

    @property
    def field(self) -> str | None:
        """The field of the first problem, when known."""
        return self.problems[0].field


class TaskFailed(ShimError):
    """The task path did not produce a result.

    ``status`` is the HTTP status when the coordinator or node answered, else ``None``
    (connection refused, timeout, reset). ``product`` and ``task`` name the call.
    """

    def __init__(self, message: str, *, product: str, task: str, status: int | None) -> None:
        super().__init__(message)
        self.product = product
        self.task = task
        self.status = status


class StreamInterrupted(TaskFailed):
    """The task path's stream failed after the caller had its first pieces: serving a
    streaming call site, legacy cannot take its place (it would start the answer
    again). Raised from the task path's error (``__cause__``); a call site's
    ``stream_error=`` may turn it into the error its callers already handle."""


class TaskNotRegistered(TaskFailed):
    """The coordinator answered 404: ``product.task`` has no entry in assignments.yaml."""

    def __init__(self, *, product: str, task: str, detail: str = "") -> None:
        hint = f" ({detail})" if detail else ""
        super().__init__(
            f"{product}.{task} is not registered with the coordinator{hint}: "
            "add it to assignments.yaml or check the product and task names",
            product=product,
            task=task,
            status=404,
        )


class SoftFailure(ShimError):
    """The task path answered, but ``response`` made of it what the call site's
    ``soft_failure`` rule counts as a failure (by default ``None``, ``""`` or an empty
    container). Serving, it falls back to legacy like any task-path failure; without
    ``fallback`` the caller gets ``value``, as the call site's contract says, never this
    exception."""

    def __init__(self, message: str, *, product: str, task: str, value: object = None) -> None:
        super().__init__(message)
        self.product = product
        self.task = task
        self.status = 200  # the coordinator and the node did answer
        self.value = value  # what ``response`` made of the answer
