"""Fault and latency knobs of the simulator, globally, for the legacy path, per task."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shim.base.errors import ConfigError, Problem
from shim.base.names import TaskName
from shim.base.yamlfile import load_yaml, validate

from ._drift import DRIFT_KINDS, DriftKind

__all__ = ["KNOB_NAMES", "Knobs", "NodeSpec", "Profile", "Settings", "parse_knob"]

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Millis = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Knobs(_Strict):
    """Knobs for one scope; a field left unset inherits from the wider scope."""

    latency_ms: Millis | None = None
    latency_p99_ms: Millis | None = None
    cold_start_ms: Millis | None = None
    error_rate: Rate | None = None
    error_status: Annotated[int, Field(ge=400, le=599)] | None = None
    hang_rate: Rate | None = None
    hang_s: Annotated[float, Field(gt=0)] | None = None
    malformed_rate: Rate | None = None
    drift_rate: Rate | None = None
    drift_kinds: Annotated[list[DriftKind], Field(min_length=1)] | None = None
    #: Streams: a wait before the first chunk (after the model's latency) and between
    #: chunks.
    ttft_ms: Millis | None = None
    chunk_interval_ms: Millis | None = None
    #: Streams: the share cut off after half their events (no end marker).
    stream_cut_rate: Rate | None = None

    def over(self, base: Knobs) -> Knobs:
        """These knobs, with unset ones taken from ``base``."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


KNOB_NAMES = tuple(Knobs.model_fields)


@dataclass(frozen=True, slots=True)
class Settings:
    """The knobs in force for one request: every value set."""

    latency_ms: float
    latency_p99_ms: float
    cold_start_ms: float
    error_rate: float
    error_status: int
    hang_rate: float
    hang_s: float
    malformed_rate: float
    drift_rate: float
    drift_kinds: tuple[DriftKind, ...]
    ttft_ms: float
    chunk_interval_ms: float
    stream_cut_rate: float

    def latency_s(self, rng: random.Random) -> float:
        """A latency draw: log-normal with the given median and 99th percentile."""
        if self.latency_ms <= 0:
            return 0.0
        p99 = max(self.latency_p99_ms, self.latency_ms)
        sigma = math.log(p99 / self.latency_ms) / 2.3263478740408408  # z of the 99th pct
        return self.latency_ms * math.exp(sigma * rng.gauss(0.0, 1.0)) / 1000.0


BASE = Knobs(
    latency_ms=25.0,
    latency_p99_ms=100.0,
    cold_start_ms=0.0,
    error_rate=0.0,
    error_status=503,
    hang_rate=0.0,
    hang_s=600.0,
    malformed_rate=0.0,
    drift_rate=0.0,
    drift_kinds=list(DRIFT_KINDS),
    ttft_ms=0.0,
    chunk_interval_ms=0.0,
    stream_cut_rate=0.0,
)


class NodeSpec(_Strict):
    """A GPU node of the simulated cluster and the service types it runs."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    services: Annotated[list[str], Field(min_length=1)]
    gpus: Annotated[int, Field(ge=1)] = 1


_NODES = [
    NodeSpec(id="node-a", services=["cf-text", "vllm", "cf-docuvision"], gpus=2),
    NodeSpec(id="node-b", services=["cf-text", "vllm"], gpus=1),
    NodeSpec(id="node-v", services=["cf-vision", "cf-docuvision"], gpus=2),
]


class Profile(_Strict):
    """A simulator profile (YAML): seed, knobs by scope, nodes, coordinator behaviour.

    ``defaults`` apply everywhere, ``legacy`` to the legacy endpoints and to direct
    allocations, ``tasks`` to one task on the task path (its allocations' node traffic
    included). Drift only ever applies to the task path.

    ``omit_service`` leaves ``service`` out of the task endpoint's allocations, as
    coordinators before cf-orch#63 do; ``task_ttl_s`` is how long a task-path
    allocation lives unreleased (kiwi sends no TTL); ``max_streams`` caps the recipe
    streams authorised and not yet finished or expired (more answer 429);
    ``allocate_only`` answers every task request with an allocation, as the real
    coordinator does, never with output (this project's extension). ``judge_bias`` is
    the share of a judge task's verdicts that name the first answer whatever the
    answers are (a judge that leans to a position; 0: it answers from the drift it
    injected).
    """

    seed: int | None = None
    defaults: Knobs = Knobs()
    legacy: Knobs = Knobs()
    tasks: dict[TaskName, Knobs] = {}
    nodes: Annotated[list[NodeSpec], Field(min_length=1)] = _NODES
    omit_service: bool = False
    task_ttl_s: Annotated[float, Field(gt=0)] = 120.0
    max_streams: Annotated[int, Field(ge=0)] = 4
    allocate_only: bool = False
    judge_bias: Rate = 0.0

    @model_validator(mode="after")
    def _legacy_does_not_drift(self) -> Self:
        if self.legacy.drift_rate or self.legacy.drift_kinds:
            raise ValueError("legacy: drift applies to the task path only; remove drift_*")
        return self

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile YAML; raises ConfigError naming file, line and field."""
        doc = load_yaml(path)
        profile, problems = validate(doc, cls, doc.data if doc.data is not None else {})
        if problems:
            raise ConfigError(problems)
        return profile  # type: ignore[no-any-return]

    def settings(self, task: str | None, *, legacy: bool) -> Settings:
        """The knobs in force for a request on ``task`` (None: not known)."""
        knobs = self.defaults.over(BASE)
        if legacy:
            knobs = self.legacy.over(knobs).model_copy(update={"drift_rate": 0.0})
        elif task in self.tasks:
            knobs = self.tasks[task].over(knobs)
        values = knobs.model_dump()
        values["drift_kinds"] = tuple(values["drift_kinds"])
        return Settings(**{f.name: values[f.name] for f in fields(Settings)})

    def with_knob(self, scope: str, name: str, value: Any) -> Profile:
        """A copy with one knob set in ``scope`` (``defaults``, ``legacy`` or a task)."""
        data = self.model_dump()
        if scope in ("defaults", "legacy"):
            data[scope] = {**data[scope], name: value}
        else:
            data["tasks"] = {**data["tasks"], scope: {**data["tasks"].get(scope, {}), name: value}}
        try:
            return Profile.model_validate(data)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            raise ConfigError(
                [Problem("--knob", None, f"{scope}:{name}", f"{err['msg']} (got {value!r})")]
            ) from None

    def with_options(self, **options: Any) -> Profile:
        """A copy with top-level options set (``omit_service``, ``task_ttl_s``,
        ``max_streams``); raises ConfigError naming the bad one."""
        try:
            return Profile.model_validate({**self.model_dump(), **options})
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            name = ".".join(str(p) for p in err["loc"])
            raise ConfigError(
                [Problem(f"--{name.replace('_', '-')}", None, name, err["msg"])]
            ) from None


def parse_knob(text: str) -> tuple[str, str, Any]:
    """``[SCOPE:]NAME=VALUE`` from the command line -> (scope, name, value).

    SCOPE is ``legacy`` or a task (``kiwi.ocr``); without it the knob is global.
    """
    spec, sep, raw = text.partition("=")
    scope, _, name = spec.rpartition(":")
    scope = scope or "defaults"
    problem = None
    if not sep:
        problem = "expected [SCOPE:]NAME=VALUE, e.g. kiwi.ocr:drift_rate=0.3"
    elif name not in KNOB_NAMES:
        problem = f"unknown knob {name!r}; knobs are: {', '.join(KNOB_NAMES)}"
    if problem:
        raise ConfigError([Problem("--knob", None, text, problem)])
    value: Any = raw.split(",") if name == "drift_kinds" else raw
    return scope, name, value
