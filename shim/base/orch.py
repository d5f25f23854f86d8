"""cf-orch's task configuration: assignments.yaml and model_registry.yaml.

``assignments.yaml`` maps ``product.task`` to a model id (and the task's modality);
``model_registry.yaml`` says how each model is served. The coordinator, the simulator,
``shim check`` and the comparators all read them through :class:`OrchConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from shim.base.errors import ConfigError, Problem
from shim.base.names import TaskName
from shim.base.yamlfile import Located, load_yaml, validate

__all__ = [
    "SERVICE_TYPES",
    "Assignment",
    "AssignmentsFile",
    "ModelEntry",
    "OrchConfig",
    "RegistryFile",
    "ResolvedTask",
    "default_config_path",
    "parse_file",
]

Modality = Literal["text", "vision"]

#: Service types that may serve a task of each modality.
SERVICE_TYPES: dict[str, frozenset[str]] = {
    "text": frozenset({"cf-text", "vllm"}),
    "vision": frozenset({"cf-vision", "cf-docuvision"}),
}


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Assignment(_FileModel):
    """One task's entry: the model that serves it and what kind of input it takes."""

    model: str = Field(min_length=1)
    modality: Modality = "text"


class AssignmentsFile(_FileModel):
    """``assignments.yaml``: ``assignments: {product.task: model_id | {model, modality}}``."""

    assignments: dict[TaskName, Assignment]

    @field_validator("assignments", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        # `kiwi.meal_plan: qwen2.5-3b-instruct` is the short form of {model: ...}.
        if isinstance(value, dict):
            return {k: {"model": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


class ModelEntry(_FileModel):
    """How one model is served: service type, VRAM it needs, other names it goes by."""

    service_type: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    vram_mb: int = Field(gt=0)
    alias: list[Annotated[str, StringConstraints(min_length=1)]] = []


class RegistryFile(_FileModel):
    """``model_registry.yaml``: ``models: {model_id: {service_type, vram_mb, alias}}``."""

    models: dict[Annotated[str, StringConstraints(min_length=1)], ModelEntry]


@dataclass(frozen=True, slots=True)
class ResolvedTask:
    """What the coordinator resolves ``product.task`` to."""

    task: str
    model: str
    modality: str
    service_type: str
    vram_mb: int
    aliases: tuple[str, ...]


def default_config_path(name: str) -> Path:
    """Path of an embedded default file (kiwi's ``assignments.yaml``, ...)."""
    return Path(str(resources.files("shim") / "_defaults" / name))


def parse_file(path: str | Path, model: type[_FileModel]) -> tuple[Any, Located]:
    """One config file, validated on its own: (model instance, located document)."""
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        top = next(iter(model.model_fields))
        raise ConfigError([doc.problem((), f"expected a mapping with a '{top}:' key")])
    value, problems = validate(doc, model)
    if problems:
        raise ConfigError(problems)
    return value, doc


class OrchConfig:
    """Both files, validated, with the lines of every entry kept for later checks."""

    def __init__(self, assignments_path: str | Path, registry_path: str | Path) -> None:
        problems: list[Problem] = []
        try:
            self.assignments, self._adoc = parse_file(assignments_path, AssignmentsFile)
        except ConfigError as exc:
            problems += exc.problems
        try:
            self.registry, self._rdoc = parse_file(registry_path, RegistryFile)
        except ConfigError as exc:
            problems += exc.problems
        if problems:
            raise ConfigError(problems)
        self.assignments_path = str(assignments_path)
        self.registry_path = str(registry_path)

    @classmethod
    def default(cls) -> OrchConfig:
        """Kiwi's registrations as embedded in the package."""
        return cls(
            default_config_path("assignments.yaml"), default_config_path("model_registry.yaml")
        )

    @property
    def tasks(self) -> list[str]:
        """Every assigned ``product.task``, in file order."""
        return list(self.assignments.assignments)

    def resolve(self, name: str) -> ResolvedTask | None:
        """The model and service of ``product.task``; None when unassigned or unknown model."""
        entry = self.assignments.assignments.get(name)
        if entry is None:
            return None
        model = self.registry.models.get(entry.model)
        if model is None:
            return None
        return ResolvedTask(
            name,
            entry.model,
            entry.modality,
            model.service_type,
            model.vram_mb,
            tuple(model.alias),
        )

    def tasks_of_model(self, model_id: str) -> list[str]:
        """Tasks assigned to ``model_id``, in file order."""
        return [t for t, a in self.assignments.assignments.items() if a.model == model_id]

    def problems(self) -> list[Problem]:
        """What is wrong across the two files (each file alone is already valid)."""
        out: list[Problem] = []
        for task, entry in self.assignments.assignments.items():
            model = self.registry.models.get(entry.model)
            if model is None:
                out.append(
                    self._adoc.problem(
                        ("assignments", task),
                        f"model {entry.model!r} is not in {self.registry_path}; "
                        "add it there or assign a registered model",
                    )
                )
                continue
            allowed = SERVICE_TYPES[entry.modality]
            if model.service_type not in allowed:
                out.append(
                    self._rdoc.problem(
                        ("models", entry.model, "service_type"),
                        f"{task} is a {entry.modality} task but its model {entry.model!r} has "
                        f"service_type {model.service_type!r}; expected "
                        f"{' or '.join(sorted(allowed))}",
                    )
                )
        seen: dict[str, str] = {m.casefold(): m for m in self.registry.models}
        for model_id, model in self.registry.models.items():
            for i, alias in enumerate(model.alias):
                owner = seen.setdefault(alias.casefold(), model_id)
                if owner != model_id:
                    out.append(
                        self._rdoc.problem(
                            ("models", model_id, "alias", i),
                            f"alias {alias!r} already names model {owner!r}; "
                            "aliases must be unique",
                        )
                    )
        return out
