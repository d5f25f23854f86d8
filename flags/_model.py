"""The flag state of every task, and the flags.yaml file that holds it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from shim.base.errors import ConfigError
from shim.base.names import TaskName
from shim.base.yamlfile import Located, load_yaml, validate

__all__ = ["KILL_SWITCH", "FlagState", "TaskFlags", "load_flags_file", "parse_flags", "stage_of"]

#: The flag that turns every task to legacy, nothing compared.
KILL_SWITCH = "shim.kill"
#: Top-level keys starting with this are templates (anchors for merge keys), not tasks.
TEMPLATE_PREFIX = "x-"

Percent = Annotated[int, Field(ge=0, le=100, strict=True)]


def stage_of(serve: int, shadow: int) -> str:
    """The stage people talk about, derived from the two percentages."""
    if serve >= 100:
        return "live"
    if serve > 0:
        return "canary"
    return "shadow" if shadow > 0 else "off"


class TaskFlags(BaseModel):
    """One task's percentages: ``serve`` (task path serves) and ``shadow`` (compared).

    ``shadow_rate`` caps the comparisons per second and ``shadow_tokens_per_hour`` the
    tokens the task path spends on them; past either, comparisons are skipped and
    counted (``shim.dropped``, ``reason: budget``). Unset: the Shim's own budget, if any.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    serve: Percent = 0
    shadow: Percent = 0
    stickiness: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "default"
    shadow_rate: Annotated[float, Field(gt=0)] | None = None
    shadow_tokens_per_hour: Annotated[int, Field(gt=0, strict=True)] | None = None

    @property
    def stage(self) -> str:
        """``off``, ``shadow``, ``canary`` or ``live``."""
        return stage_of(self.serve, self.shadow)


@dataclass(frozen=True, slots=True)
class FlagState:
    """Every task's flags plus the kill switch, as read from one source at one time."""

    tasks: Mapping[str, TaskFlags] = field(default_factory=dict)
    kill: bool = False


_TASKS = dict[TaskName, TaskFlags]
_KILL = dict[str, StrictBool]


def parse_flags(doc: Located) -> FlagState:
    """Validate flags.yaml data: ``product.task: {serve, shadow, stickiness}`` and
    an optional ``shim.kill: true|false``. A task (or field) written twice is an error
    naming both lines: which one the file meant cannot be told. Top-level keys that
    start with ``x-`` are templates for anchors and merge keys (``x-ramp: &ramp``),
    not tasks, and are passed over."""
    data: Any = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError([doc.problem((), "expected a mapping of product.task to flags")])
    data = {k: v for k, v in data.items() if not str(k).startswith(TEMPLATE_PREFIX)}
    kill, kill_problems = validate(doc, _KILL, {KILL_SWITCH: data.pop(KILL_SWITCH, False)})
    tasks, problems = validate(doc, _TASKS, data)
    # The parts are validated separately, so the document's own problems are added once.
    problems = [*doc.problems, *problems, *kill_problems]
    if problems:
        raise ConfigError(problems)
    return FlagState(tasks=tasks, kill=kill[KILL_SWITCH])


def load_flags_file(path: str | Path) -> FlagState:
    """Read and validate a flags.yaml; raises ConfigError naming file, line and field."""
    return parse_flags(load_yaml(path))
