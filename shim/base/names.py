"""Task names: ``product.task`` in lower case, as assignments.yaml and flags use them."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["TaskName", "check_task_name"]

_TASK = re.compile(r"[a-z][a-z0-9_-]*\.[a-z][a-z0-9_-]*")


def check_task_name(name: str) -> str:
    """Return ``name`` if it is a valid ``product.task``; raise ValueError saying why not."""
    if not _TASK.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a task name: expected product.task in lower case, "
            "letters, digits, '_' or '-', such as kiwi.meal_plan"
        )
    return name


TaskName = Annotated[str, AfterValidator(check_task_name)]
