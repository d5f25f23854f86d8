"""A cf-orch simulator for tests, demos and benchmarks (extra ``task-shim[sim]``).

It serves the task endpoint, the legacy endpoints, allocations and per-node
OpenAI-compatible APIs from an assignments.yaml and a model_registry.yaml, with kiwi-
shaped outputs and knobs for latency, cold starts, errors, hangs, malformed JSON and
structural drift (see :class:`Profile`).
"""

from ._app import create_app
from ._outputs import DRIFT_KINDS, generate, kind_for
from ._profile import KNOB_NAMES, Knobs, NodeSpec, Profile, parse_knob
from ._server import Simulator, serve

__all__ = [
    "DRIFT_KINDS",
    "KNOB_NAMES",
    "Knobs",
    "NodeSpec",
    "Profile",
    "Simulator",
    "create_app",
    "generate",
    "kind_for",
    "parse_knob",
    "serve",
]
