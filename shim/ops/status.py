"""``shim status``: each task's stage and percentages, and its breaker from the log."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shim.analysis.log_lines import lines_within
from shim.flags import FlagState

__all__ = ["breaker_states", "status_rows"]


def breaker_states(log: Path) -> dict[str, str]:
    """The last ``shim.breaker`` state per ``product.task`` in a comparison log."""
    states: dict[str, str] = {}
    with log.open("rb") as handle:
        for raw in lines_within(handle):
            if b'"shim.breaker"' not in raw:  # cheap filter before parsing
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if record.get("event") == "shim.breaker":
                states[f"{record.get('product')}.{record.get('task')}"] = str(record.get("to"))
    return states


def status_rows(
    state: FlagState, breakers: dict[str, str] | None, tasks: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """One row per task in the flags (and any extra ``tasks``), sorted by name."""
    names = sorted({*state.tasks, *tasks})
    rows = []
    for name in names:
        flags = state.tasks.get(name)
        serve, shadow = (flags.serve, flags.shadow) if flags else (0, 0)
        stage = "off" if state.kill else (flags.stage if flags else "off")
        rows.append(
            {
                "task": name,
                "stage": stage,
                "serve": serve,
                "shadow": shadow,
                "stickiness": flags.stickiness if flags else "default",
                "shadow_rate": flags.shadow_rate if flags else None,
                "shadow_tokens_per_hour": flags.shadow_tokens_per_hour if flags else None,
                "breaker": (breakers.get(name, "closed") if breakers is not None else None),
            }
        )
    return rows
