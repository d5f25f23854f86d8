"""Flag state for task-shim: which path serves each task and which calls are compared.

Each task ``product.task`` has two percentages, ``serve`` and ``shadow``; the stage
(``off``, ``shadow``, ``canary``, ``live``) is derived from them. ``shim.kill`` turns
everything back to legacy. Sources (:class:`FileFlags`, :class:`UnleashFlags`) compile
them into :class:`Rules`; every source decides with the same code, bucketed as Unleash
does. :class:`OpenFeatureFlags` leaves each call's decision to an OpenFeature client.
"""

from ._file import FileFlags
from ._model import KILL_SWITCH, FlagState, TaskFlags, load_flags_file, parse_flags, stage_of
from ._openfeature import OpenFeatureFlags
from ._rules import OFF, Decision, Engine, Rule, Rules, bucket, serve_flag, shadow_flag
from ._source import FlagEvent, FlagListener, FlagSource
from ._unleash import UnleashFlags, compile_features

__all__ = [
    "KILL_SWITCH",
    "OFF",
    "Decision",
    "Engine",
    "FileFlags",
    "FlagEvent",
    "FlagListener",
    "FlagSource",
    "FlagState",
    "OpenFeatureFlags",
    "Rule",
    "Rules",
    "TaskFlags",
    "UnleashFlags",
    "bucket",
    "compile_features",
    "load_flags_file",
    "parse_flags",
    "serve_flag",
    "shadow_flag",
    "stage_of",
]
