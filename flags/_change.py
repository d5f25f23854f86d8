"""Changing flags, whatever holds them: a task's setting, a change from one setting to
another, the ramp, and the protocol the stores follow."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._model import FlagState, stage_of

__all__ = [
    "DEFAULT_RAMP",
    "Change",
    "FlagStore",
    "Plan",
    "Setting",
    "changes_from",
    "next_rung",
    "setting_of",
]

#: Serve percentages a task climbs through after shadowing at 100 %.
DEFAULT_RAMP: tuple[int, ...] = (1, 5, 25, 50, 100)


@dataclass(frozen=True, slots=True)
class Setting:
    """A task's two percentages."""

    serve: int
    shadow: int

    @property
    def stage(self) -> str:
        """``off``, ``shadow``, ``canary`` or ``live``."""
        return stage_of(self.serve, self.shadow)

    def as_record(self) -> dict[str, Any]:
        """For ``shim.promote`` / ``shim.rollback`` records."""
        return {"serve": self.serve, "shadow": self.shadow, "stage": self.stage}


@dataclass(frozen=True, slots=True)
class Change:
    """One task moving from one setting to another."""

    task: str
    before: Setting
    after: Setting


#: What a store calls, holding its lock, with the flags as they are then: the settings
#: to write (empty: nothing to do). It may raise to refuse; nothing is written then.
Plan = Callable[[FlagState], Mapping[str, Setting]]


def setting_of(state: FlagState, task: str) -> Setting:
    """``task``'s setting in ``state`` (0 and 0 when it has none)."""
    flags = state.tasks.get(task)
    return Setting(flags.serve, flags.shadow) if flags else Setting(0, 0)


def changes_from(state: FlagState, wanted: Mapping[str, Setting]) -> list[Change]:
    """The changes that take ``state`` to ``wanted``; tasks already there are left out
    (a task not in ``state`` is kept: writing it creates its entry)."""
    changes = [Change(task, setting_of(state, task), after) for task, after in wanted.items()]
    return [c for c in changes if c.before != c.after or c.task not in state.tasks]


def next_rung(current: Setting, ramp: Sequence[int] = DEFAULT_RAMP) -> Setting | None:
    """The next step up: shadow at 100 %, then each serve percentage of ``ramp``.
    None when the task is already live."""
    if current.serve == 0 and current.shadow < 100:
        return Setting(0, 100)
    for serve in ramp:
        if serve > current.serve:
            return Setting(serve, current.shadow)
    return None


class FlagStore(Protocol):
    """Where ``shim promote`` / ``shim rollback`` read and write flags."""

    description: str

    def read(self, tasks: Collection[str] | None = None) -> FlagState:
        """The flags now: every task's, or at least those of ``tasks`` (a store may
        read fewer, when asked for fewer)."""
        ...

    def update(
        self,
        plan: Plan,
        *,
        tasks: Collection[str] | None = None,
        on_applied: Callable[[list[Change]], None] | None = None,
    ) -> list[Change]:
        """One read-modify-write: under the store's lock, read the flags, ``plan`` the
        new settings from them, write them, and call ``on_applied`` with the changes
        (still under the lock, so records land in the order the changes did). Returns
        the changes written, each with the setting it replaced. ``tasks`` names the
        tasks ``plan`` looks at, when the store can read fewer (None: all).

        A store that writes in several steps and must plan again (an edit outside shim
        landed meanwhile) first puts back what it wrote: ``plan`` never sees the store's
        own unrecorded writes, and one update applies one plan. When the update fails
        part-way, it puts back what it wrote, or its error says what is left."""
        ...

    def apply(self, changes: Mapping[str, Setting]) -> None:
        """Set these tasks' percentages, whatever they were."""
        ...
