"""``shim check``: validate assignments, registry and flags together."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shim.base.errors import ConfigError, Problem
from shim.base.orch import OrchConfig
from shim.base.yamlfile import load_yaml
from shim.flags import FlagState, parse_flags

__all__ = ["CheckReport", "run_check"]


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What ``shim check`` found: problems (empty when valid) and, if the files load,
    the config and flags they describe."""

    problems: list[Problem]
    config: OrchConfig | None = None
    flags: FlagState | None = None
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def rows(self) -> list[dict[str, Any]]:
        """One row per assigned task, for tables and ``--json``."""
        if self.config is None:
            return []
        rows = []
        for task in self.config.tasks:
            entry = self.config.assignments.assignments[task]
            model = self.config.registry.models.get(entry.model)
            flags = self.flags.tasks.get(task) if self.flags else None
            rows.append(
                {
                    "task": task,
                    "model": entry.model,
                    "modality": entry.modality,
                    "service_type": model.service_type if model else None,
                    "vram_mb": model.vram_mb if model else None,
                    "aliases": list(model.alias) if model else [],
                    "stage": flags.stage if flags else None,
                    "serve": flags.serve if flags else None,
                    "shadow": flags.shadow if flags else None,
                }
            )
        return rows


def run_check(
    assignments: str | Path, registry: str | Path, flags_path: str | Path | None = None
) -> CheckReport:
    """Load every file, collect every problem; never raises for bad content."""
    files = [str(assignments), str(registry)]
    problems: list[Problem] = []
    config: OrchConfig | None = None
    try:
        config = OrchConfig(assignments, registry)
        problems += config.problems()
    except ConfigError as exc:
        problems += exc.problems
    flags: FlagState | None = None
    if flags_path is not None:
        files.append(str(flags_path))
        try:
            doc = load_yaml(flags_path)
            flags = parse_flags(doc)
        except ConfigError as exc:
            problems += exc.problems
        else:
            if config is not None:
                problems += [
                    doc.problem(
                        (task,),
                        f"{task} is not in {config.assignments_path}; "
                        "register it there first or remove this flag",
                    )
                    for task in flags.tasks
                    if task not in config.assignments.assignments
                ]
    return CheckReport(problems, config, flags, files)
