"""A rollout plan: the steps ``shim rollout`` walks one task through, what each step
needs before the next, and what a breach does.

::

    steps:                        # serve / shadow percentages, in order
      - {serve: 0, shadow: 100, soak: 600, min_pairs: 300}
      - {serve: 5, shadow: 100, soak: 600, min_pairs: 300}
      - {serve: 25, shadow: 50, soak: 900, min_pairs: 500}
      - {serve: 100, shadow: 10}  # the last step: the rollout is complete there
    on_breach: off                # or a step's index to fall back to: {step: 1}
    confirm: false                # wait for `shim rollout approve TASK` before each step
    webhook:                      # optional: told of every decision
      url: https://hooks.example.com/rollout
      timeout: 5
      retries: 3

``soak`` is the seconds a step lasts at least, ``min_pairs`` the compared pairs it
needs *from that step* (records made since the step began); the gates that must pass
to advance, and the lines that roll back, are the policy's (``--policy``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

__all__ = ["Breach", "Plan", "Step", "Webhook"]

Percent = Annotated[int, Field(ge=0, le=100, strict=True)]


def _off(value: object) -> object:
    if value is False:  # YAML's bare off
        return "off"
    if not (value == "off" or isinstance(value, dict)):
        raise ValueError("write `on_breach: off`, or `on_breach: {step: N}` for a step of the plan")
    return value


def _http(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("a URL that starts with http:// or https://")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    """One rung: its percentages, and what it needs before the next."""

    serve: Percent
    shadow: Percent
    #: seconds the step lasts at least
    soak: Annotated[float, Field(ge=0)] = 600.0
    #: compared pairs made since the step began, at least
    min_pairs: Annotated[int, Field(ge=1)] = 300


class Breach(_Strict):
    """Where a breach takes the task: a step of the plan (its index from 0)."""

    step: Annotated[int, Field(ge=0)]


class Webhook(_Strict):
    """A URL told of every decision (JSON, POST), with a timeout and retries."""

    url: Annotated[str, AfterValidator(_http)]
    timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3


class Plan(_Strict):
    """The steps of a rollout, what a breach does, and who hears of it."""

    steps: Annotated[list[Step], Field(min_length=1)]
    #: ``off`` (YAML reads a bare ``off`` as false: taken as ``off`` too) or a step
    on_breach: Annotated[Literal["off"] | Breach, BeforeValidator(_off)] = "off"
    confirm: bool = False
    webhook: Webhook | None = None

    @model_validator(mode="after")
    def _sound(self) -> Plan:
        steps = [(step.serve, step.shadow) for step in self.steps]
        back = self.on_breach.step if isinstance(self.on_breach, Breach) else None
        found = _unsound(steps, back)
        if found:
            raise ValueError(found[0][1])
        return self

    def index_of(self, serve: int, shadow: int) -> int | None:
        """The step with these percentages (the last such), if any."""
        found = None
        for i, step in enumerate(self.steps):
            if (step.serve, step.shadow) == (serve, shadow):
                found = i
        return found

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan file; ConfigError naming file, line and field."""
        from shim.base.errors import ConfigError
        from shim.base.yamlfile import load_yaml, validate

        doc = load_yaml(path)
        data = doc.data if doc.data is not None else {}
        # what one step says of another, at the line of the step that says it wrong
        steps, back = _shapes(data)
        if steps is not None:
            located = [doc.problem(loc, message) for loc, message in _unsound(steps, back)]
            if located:
                raise ConfigError(located)
        plan, problems = validate(doc, cls, data)
        if problems:
            raise ConfigError(problems)
        return plan  # type: ignore[no-any-return]


def _shapes(data: object) -> tuple[list[tuple[int, int]] | None, int | None]:
    """The steps' (serve, shadow) and on_breach's step of a plan file's data, where
    they are written as they should be (else None: validation says what is wrong)."""
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        return None, None
    steps = []
    for step in data["steps"]:
        if not isinstance(step, dict):
            return None, None
        serve, shadow = step.get("serve"), step.get("shadow")
        if type(serve) is not int or type(shadow) is not int:
            return None, None
        steps.append((serve, shadow))
    back = data.get("on_breach")
    step = back.get("step") if isinstance(back, dict) else None
    return steps, step if type(step) is int else None


def _unsound(
    steps: list[tuple[int, int]], back: int | None
) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong across the steps: (where, why) each."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    if steps and steps[0][0]:
        found.append(
            (
                ("steps", 0, "serve"),
                "the first step must serve 0 % (shadow only): a plan gathers evidence "
                "before the task path serves anyone",
            )
        )
    seen: dict[tuple[int, int], int] = {}
    for i, step in enumerate(steps):
        first = seen.setdefault(step, i)
        if first != i:
            found.append(
                (
                    ("steps", i),
                    f"the same as step {first} (serve {step[0]}, shadow {step[1]}): a "
                    "step is known by its percentages, so each must differ",
                )
            )
        if i and step[0] < steps[i - 1][0]:
            found.append(
                (
                    ("steps", i, "serve"),
                    f"serves {step[0]} %, less than step {i - 1} ({steps[i - 1][0]} %): "
                    "steps must serve no less than the step before them (a step back is "
                    "what on_breach is for)",
                )
            )
    if back is not None and back >= len(steps):
        found.append(
            (
                ("on_breach", "step"),
                f"{back} is past the last step ({len(steps) - 1}): name a step from 0 "
                f"to {len(steps) - 1}, or write `on_breach: off`",
            )
        )
    return found
