"""Decisions: which path serves a call and whether it is compared.

One evaluation for every backend. A :class:`Rule` is a task's two percentages compiled
for the hot path; :class:`Rules` is every task's rule plus the kill switch, swapped
whole when the source changes, so a decision never takes a lock or touches I/O.

Bucketing is Unleash's flexibleRollout: ``murmur3_32("{group_id}:{sticky}", seed 0)
% 100 + 1``, in when ``<= percent``, with the flag name as ``group_id``. Without a
sticky value the draw is random per call.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import mmh3

from ._model import FlagState, TaskFlags

__all__ = ["OFF", "Decision", "Engine", "Rule", "Rules", "bucket", "serve_flag", "shadow_flag"]


@dataclass(frozen=True, slots=True)
class Decision:
    """For one call: does the task path serve it, is the other path run to compare."""

    serve: bool
    compare: bool
    stage: str


#: The decision for a task that is off, unknown, or killed.
OFF = Decision(serve=False, compare=False, stage="off")


def serve_flag(task: str) -> str:
    """The flag that holds ``task``'s serve percentage."""
    return f"{task}.serve"


def shadow_flag(task: str) -> str:
    """The flag that holds ``task``'s shadow percentage."""
    return f"{task}.shadow"


def bucket(group_id: str, sticky: str) -> int:
    """Unleash's normalised bucket, 1..100, of ``sticky`` in ``group_id``; a caller is
    in a rollout of ``percent`` when ``bucket <= percent``."""
    return int(mmh3.hash(f"{group_id}:{sticky}", 0, signed=False)) % 100 + 1


_hash = mmh3.hash
_random = random.random


class Engine(Protocol):
    """Evaluates one flag the fast path cannot (constraints, segments, several
    strategies): given the sticky value, is the flag on for this call?"""

    def __call__(self, sticky: str | None, /) -> bool:
        """True when the flag is on for this caller."""
        ...


@dataclass(frozen=True, slots=True)
class Rule:
    """One active task's flags, ready for per-call decisions.

    ``serve_engine`` / ``shadow_engine``, when given, decide that flag instead of the
    percentage (a flag-service SDK's own evaluation, for flags richer than a rollout).

    ``stage``, when given, is the stage a source that cannot read percentages made out
    for the task (:class:`~flags.OpenFeatureFlags`); an engine-decided call takes it,
    raised to what the call got (``canary`` served by the task path, ``shadow``
    compared), so the task's records keep one stage until the source moves it.
    """

    task: str
    flags: TaskFlags
    serve_engine: Engine | None = None
    shadow_engine: Engine | None = None
    stage: str | None = None
    #: The context field that keeps a caller on one path (``default``: user, session).
    stickiness: str = field(init=False)
    #: The flags set a shadow budget (``shadow_rate`` or ``shadow_tokens_per_hour``).
    budgeted: bool = field(init=False)
    _table: tuple[Decision, Decision, Decision, Decision] = field(init=False, repr=False)
    _by_engine: tuple[Decision, Decision, Decision, Decision] = field(init=False, repr=False)
    _serve: int = field(init=False, repr=False)
    _shadow: int = field(init=False, repr=False)
    _serve_prefix: str = field(init=False, repr=False)
    _shadow_prefix: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        stage = self.flags.stage
        # index = 2 * serve + compare
        table = tuple(
            Decision(serve=s, compare=c, stage=stage) for s in (False, True) for c in (False, True)
        )
        set_ = object.__setattr__
        set_(self, "_table", table)
        if self.stage is not None:  # the source's stage, raised to what each call got
            rank = ("off", "shadow", "canary", "live").index
            table = tuple(
                Decision(
                    s, c, max(self.stage, "canary" if s else "shadow" if c else "off", key=rank)
                )
                for s in (False, True)
                for c in (False, True)
            )
        set_(self, "_by_engine", table)
        set_(self, "stickiness", self.flags.stickiness)
        budget = (self.flags.shadow_rate, self.flags.shadow_tokens_per_hour)
        set_(self, "budgeted", budget != (None, None))
        set_(self, "_serve", self.flags.serve)
        set_(self, "_shadow", self.flags.shadow)
        set_(self, "_serve_prefix", serve_flag(self.task) + ":")
        set_(self, "_shadow_prefix", shadow_flag(self.task) + ":")

    def decide(self, sticky: str | None) -> Decision:
        """The decision for a caller with this sticky value (None: random)."""
        # Inlined on purpose: this runs on every call of every wrapped call site.
        if self.serve_engine is not None or self.shadow_engine is not None:
            return self._decide_with_engine(sticky)
        serve, shadow = self._serve, self._shadow
        if sticky is None:
            s = serve >= 100 or (serve > 0 and _random() * 100 < serve)
            c = shadow >= 100 or (shadow > 0 and _random() * 100 < shadow)
        else:
            s = serve >= 100 or (
                serve > 0 and _hash(self._serve_prefix + sticky, 0, False) % 100 < serve
            )
            c = shadow >= 100 or (
                shadow > 0 and _hash(self._shadow_prefix + sticky, 0, False) % 100 < shadow
            )
        return self._table[2 * s + c]

    def _decide_with_engine(self, sticky: str | None) -> Decision:
        plain = Rule(self.task, self.flags).decide(sticky)
        s = self.serve_engine(sticky) if self.serve_engine is not None else plain.serve
        c = self.shadow_engine(sticky) if self.shadow_engine is not None else plain.compare
        return self._by_engine[2 * bool(s) + bool(c)]


@dataclass(frozen=True, slots=True)
class Rules:
    """Every task's flags at one moment; only tasks that do something have a rule.

    ``engines`` maps flag names (``kiwi.ocr.serve``) to evaluators for flags that are not
    a plain rollout; a task with such a flag is always active. ``stages`` gives a task's
    stage where the source knows no percentages (see :class:`Rule`).
    """

    state: FlagState = field(default_factory=FlagState)
    engines: Mapping[str, Engine] = field(default_factory=dict)
    stages: Mapping[str, str] = field(default_factory=dict)
    active: Mapping[str, Rule] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        engines = self.engines
        active = (
            {}
            if self.state.kill
            else {
                task: Rule(
                    task,
                    flags,
                    engines.get(serve_flag(task)),
                    engines.get(shadow_flag(task)),
                    self.stages.get(task),
                )
                for task, flags in self.state.tasks.items()
                if flags.serve
                or flags.shadow
                or serve_flag(task) in engines
                or shadow_flag(task) in engines
            }
        )
        object.__setattr__(self, "active", active)

    def decide(self, task: str, sticky: str | None) -> Decision:
        """The decision for one call of ``task``."""
        rule = self.active.get(task)
        return OFF if rule is None else rule.decide(sticky)
