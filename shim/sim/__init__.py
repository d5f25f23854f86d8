"""A cf-orch simulator for tests, demos and benchmarks (extra ``task-shim[sim]``).

It speaks the protocol kiwi's code speaks: the task endpoint answering allocations,
direct allocation and release with TTLs, per-allocation node URLs with an
OpenAI-compatible ``/v1`` and docuvision's ``/extract``, stream authorisation with
one-time tokens and server-sent events; plus the seed's legacy endpoint and this
project's extension (task output for a request that carries a prompt). Models and
services come from an assignments.yaml and a model_registry.yaml; outputs follow kiwi's
prompted formats; knobs set latency, cold starts, errors, hangs, malformed JSON and
structural drift (see :class:`Profile`). Routes are documented in ``_coordinator``,
``_nodes`` and ``_streams``.
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
