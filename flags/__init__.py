"""Flag state for task-shim: which path serves each task and which calls are compared.

Each task ``product.task`` has two percentages, ``serve`` and ``shadow``; the stage
(``off``, ``shadow``, ``canary``, ``live``) is derived from them. ``shim.kill`` turns
everything back to legacy.
"""

from ._model import KILL_SWITCH, FlagState, TaskFlags, load_flags_file, parse_flags, stage_of

__all__ = [
    "KILL_SWITCH",
    "FlagState",
    "TaskFlags",
    "load_flags_file",
    "parse_flags",
    "stage_of",
]
