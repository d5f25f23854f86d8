"""The promotion policy: when the evidence says promote, hold or roll back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeGuard

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from shim.analysis.stats import Z_ONE_SIDED_95, newcombe_difference, wilson
from shim.base.errors import ConfigError
from shim.base.names import TaskName

__all__ = ["Gates", "Policy", "Price"]


def _pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def _a_number(value: Any) -> Any:
    if isinstance(value, bool):  # YAML's true is not 1.0 here: a slip, said as one
        raise ValueError("expected a number from 0 to 1, not true or false")
    if isinstance(value, str):  # "0.9" quoted, or a word: not a share
        raise ValueError("expected a number from 0 to 1, not text (write it without quotes)")
    return value


Share = Annotated[float, BeforeValidator(_a_number), Field(ge=0.0, le=1.0)]


class Gates(BaseModel):
    """Thresholds for one task; the documented defaults are below."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_pairs: Annotated[int, Field(ge=1)] = 300
    #: shim promote: seconds from the first to the last comparison of the current stage
    #: the evidence must span (a stage needs time as well as pairs); 0 turns it off
    min_soak: Annotated[float, Field(ge=0)] = 600.0
    #: promote when the one-sided 95 % upper bound of (candidate - legacy) error rate
    #: is at most this
    max_error_increase: Share = 0.005
    #: promote when the one-sided 95 % upper bound of the (noise-adjusted) mismatch rate is at most
    max_mismatch: Share = 0.01
    #: promote only when the comparator judged all but this share of the pairs both paths
    #: answered: the pairs it failed on may be the odd ones, so the rest is a biased sample
    max_unjudged: Share = 0.01
    max_latency_ratio_p50: Annotated[float, Field(gt=0)] = 1.10
    max_latency_ratio_p95: Annotated[float, Field(gt=0)] = 1.25
    max_latency_ratio_p99: Annotated[float, Field(gt=0)] = 1.5
    #: p99 is advisory (reported, not gating) below this many pairs
    p99_min_pairs: Annotated[int, Field(ge=1)] = 1000
    #: roll back when the one-sided 95 % lower bound of the error-rate increase exceeds this
    rollback_error_increase: Share = 0.02
    #: roll back when the one-sided 95 % lower bound of the mismatch rate exceeds this
    rollback_mismatch: Share = 0.02
    #: content quality (the records' quality.score, relative to legacy's own noise):
    #: promote when its one-sided 95 % lower bound is at least this, roll back when its
    #: upper bound is under it; None (the default) leaves quality out of the verdict
    min_quality: Share | None = None
    #: judge verdicts (Shim(judge=Judge(...))): the candidate may lose more often than it
    #: wins by at most this share of judged pairs (one-sided 95 % bound of the loss
    #: margin); None (the default) leaves judges out of the verdict
    max_judge_loss: Share | None = None
    #: streams: promote when the task path's p95 time to first chunk is at most this
    #: times legacy's, roll back when the bootstrap interval's lower bound is over it;
    #: None leaves it out (tasks without streams are never gated on it)
    ttft_p95_ratio: Annotated[float, Field(gt=0)] | None = 1.25
    #: shim watch and shim rollout: roll back when the task path's mean cost per call
    #: (at the policy's ``prices``) is over this times legacy's by an always-valid
    #: bound; None (the default) leaves cost out (so do policies without prices)
    max_cost_ratio: Annotated[float, Field(gt=0)] | None = None
    #: models the task path may resolve to (besides the expected one); others roll back
    allowed_models: list[str] | None = None
    #: shim watch: each evaluation looks at the task's last ``watch_window`` pairs ...
    watch_window: Annotated[int, Field(ge=10)] = 200
    #: ... and runs every ``watch_step`` new pairs
    watch_step: Annotated[int, Field(ge=1)] = 50
    #: a breach: this many failing evaluations in a row ...
    watch_consecutive: Annotated[int, Field(ge=1)] = 3
    #: ... or this many in the current stage
    watch_cumulative: Annotated[int, Field(ge=1)] = 5

    def rollback_reasons(
        self,
        *,
        pairs: int,
        legacy_errors: int,
        candidate_errors: int,
        compared: int,
        mismatches: int,
        routing_errors: int,
        mismatch_name: str = "structure mismatch",
    ) -> list[str]:
        """Why these counts cross a rollback line (one-sided 95 % lower bounds); empty
        when they do not. Shared by ``shim report`` and ``shim watch``; the reason
        calls the mismatch rate ``mismatch_name`` (say which rate the counts are)."""
        reasons = []
        errors = newcombe_difference(
            candidate_errors, pairs, legacy_errors, pairs, z=Z_ONE_SIDED_95
        )
        if errors is not None and errors[1] > self.rollback_error_increase:
            reasons.append(
                f"task-path errors {candidate_errors}/{pairs} vs legacy {legacy_errors}/"
                f"{pairs}: candidate error rate is higher by {_pct(errors[0])} (increase "
                f"at least {_pct(errors[1])}, one-sided 95 %), over the "
                f"{_pct(self.rollback_error_increase)} rollback line"
            )
        mismatch = wilson(mismatches, compared, z=Z_ONE_SIDED_95)
        if mismatch is not None and mismatch[1] > self.rollback_mismatch:
            reasons.append(
                f"{mismatch_name} {_pct(mismatch[0])} (at least {_pct(mismatch[1])}, "
                f"one-sided 95 %), over the {_pct(self.rollback_mismatch)} rollback line"
            )
        if routing_errors:
            reasons.append(
                f"{routing_errors} routing error(s): the task path went to a model "
                "or service the configuration does not send it to"
            )
        return reasons


Money = Annotated[float, Field(ge=0.0)]


class Price(BaseModel):
    """What a model costs: per 1,000 input and output tokens, and per GPU-hour."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_1k: Money = 0.0
    output_per_1k: Money = 0.0
    gpu_hour: Money = 0.0

    def of(self, usage: dict[str, Any], latency_ms: float) -> float:
        """What one call cost: its tokens, and its GPU-seconds (reported, else the
        call's latency), as ``shim report`` counts them."""
        gpu_s = usage.get("gpu_s")
        seconds = float(gpu_s) if _number(gpu_s) else latency_ms / 1000
        return (
            _tokens(usage.get("input_tokens")) * self.input_per_1k / 1000
            + _tokens(usage.get("output_tokens")) * self.output_per_1k / 1000
            + seconds * self.gpu_hour / 3600
        )


_NEEDS_PRICES = (
    "max_cost_ratio needs prices: add `prices:` with each model's input_per_1k, "
    "output_per_1k and gpu_hour (or take max_cost_ratio out)"
)


def _cost_lines_unpriced(data: object) -> list[tuple[str, ...]]:
    """Where a policy file sets ``max_cost_ratio`` while it has no ``prices``."""
    if not isinstance(data, dict) or data.get("prices"):
        return []
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):  # not a mapping: validate() says so, at its line
        tasks = {}
    sections = [("defaults",), *(("tasks", str(t)) for t in tasks)]
    found = []
    for where in sections:
        part = data.get(where[0])
        part = part.get(where[1]) if len(where) == 2 and isinstance(part, dict) else part
        if isinstance(part, dict) and part.get("max_cost_ratio") is not None:
            found.append((*where, "max_cost_ratio"))
    return found


def _number(value: object) -> TypeGuard[int | float]:
    """A count or an amount a record may hold: a finite number, not negative."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e18


def _tokens(value: Any) -> float:
    return float(value) if _number(value) else 0.0


class Policy(BaseModel):
    """``policy.yaml``: ``defaults`` for every task, ``tasks`` to override per task, and
    optional ``prices`` per model (ids as the records name them) for the cost figures."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: Gates = Gates()
    tasks: dict[TaskName, dict[str, Any]] = {}
    prices: dict[str, Price] = {}

    def call_cost(self, side: Any) -> float | None:
        """What a record's path (``legacy`` or ``candidate``) cost at ``prices``; None
        without a price for its model (unknown, not free) or a usable latency."""
        if not self.prices or not isinstance(side, dict):
            return None
        latency = side.get("latency_ms")
        if not _number(latency):
            return None
        price = self.prices.get(str(side.get("model")))
        usage = side.get("usage")
        if price is None:
            return None
        return price.of(usage if isinstance(usage, dict) else {}, float(latency))

    @model_validator(mode="after")
    def _priced(self) -> Policy:
        tasks = [t for t, o in self.tasks.items() if (o or {}).get("max_cost_ratio") is not None]
        if (self.defaults.max_cost_ratio is not None or tasks) and not self.prices:
            raise ValueError(_NEEDS_PRICES)
        return self

    def costs(self, legacy: Any, candidate: Any, gates: Gates) -> tuple[float | None, ...]:
        """Both paths' costs for the cost test; (None, None) where ``gates`` test no cost."""
        if gates.max_cost_ratio is None:
            return None, None
        return self.call_cost(legacy), self.call_cost(candidate)

    def for_task(self, task: str) -> Gates:
        """The gates in force for ``task``."""
        override = self.tasks.get(task)
        if not override:
            return self.defaults
        return Gates.model_validate({**self.defaults.model_dump(), **override})

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy.yaml; raises ConfigError naming file, line and field."""
        # Imported here: the built-in policy (``shim report`` without --policy) reads
        # no YAML, and PyYAML with the located loader is a third of this module's
        # import time.
        from shim.base.yamlfile import load_yaml, validate

        doc = load_yaml(path)
        data = doc.data if doc.data is not None else {}
        unpriced = [doc.problem(loc, _NEEDS_PRICES) for loc in _cost_lines_unpriced(data)]
        if unpriced:  # at the line of each cost line, not the file's first
            raise ConfigError(unpriced)
        policy, problems = validate(doc, cls, data)
        if not problems:
            for task, override in policy.tasks.items():
                _, more = validate(doc, Gates, {**policy.defaults.model_dump(), **override})
                problems += [
                    p.__class__(
                        p.path, doc.line_of(("tasks", task)), f"tasks.{task}.{p.field}", p.message
                    )
                    for p in more
                ]
        if problems:
            raise ConfigError(problems)
        return policy  # type: ignore[no-any-return]
