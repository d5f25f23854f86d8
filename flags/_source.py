"""Where flags come from: the FlagSource protocol and the events sources emit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._rules import Decision, Rules

__all__ = ["FlagEvent", "FlagListener", "FlagSource"]


@dataclass(frozen=True, slots=True)
class FlagEvent:
    """Something a flag source wants recorded (``shim.flags``): a reload, a bad file,
    an unreachable server. ``level`` is ``info``, ``warning`` or ``error``."""

    level: str
    message: str
    source: str
    version: int


class FlagListener(Protocol):
    """Hears every :class:`FlagEvent` of a source it subscribed to."""

    def __call__(self, event: FlagEvent) -> None:
        """Take one event; must not block."""
        ...


@runtime_checkable
class FlagSource(Protocol):
    """A source of per-task flags. ``rules`` is read on every call, so it must be a
    plain attribute read of an immutable :class:`Rules`, swapped whole on change."""

    @property
    def rules(self) -> Rules:
        """The rules in force now."""
        ...

    def decide(self, task: str, sticky: str | None) -> Decision:
        """The decision for one call of ``task`` (``product.task``)."""
        ...

    def subscribe(self, listener: FlagListener) -> None:
        """Call ``listener`` with every event from now on (and any held so far)."""
        ...

    def close(self) -> None:
        """Stop background work (pollers, connections)."""
        ...
