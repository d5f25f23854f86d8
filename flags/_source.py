"""Where flags come from: the FlagSource protocol and the events sources emit."""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._rules import Decision, Rules

__all__ = ["Events", "FlagEvent", "FlagListener", "FlagSource"]


@dataclass(frozen=True, slots=True)
class FlagEvent:
    """Something a flag source wants recorded (``shim.flags``): a reload, a bad file,
    an unreachable server. ``level`` is ``info``, ``warning`` or ``error``.

    ``operation``, when set, names a failure the Shim also counts, logs and records as
    an internal error (``shim.error``, ``stats()["internal_errors"]``): ``flags.missing``
    (no flags file), ``flags.invalid`` (one that cannot be used), ``flags.unreadable``,
    ``flags.reload``.
    """

    level: str
    message: str
    source: str
    version: int
    operation: str = ""


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


class Events:
    """A flag source's listeners, and the events it had before anyone subscribed."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._listeners: list[FlagListener] = []
        ref = weakref.ref(self)

        def renew() -> None:  # a forked child: the parent's thread may hold the lock
            events = ref()
            if events is not None:
                events._lock = threading.Lock()

        os.register_at_fork(after_in_child=renew)
        self._held: list[FlagEvent] = []

    def subscribe(self, listener: FlagListener) -> None:
        """Send events to ``listener``, starting with any held so far."""
        with self._lock:
            self._listeners.append(listener)
            held, self._held = self._held, []
        for event in held:
            listener(event)

    def emit(self, level: str, message: str, version: int, operation: str = "") -> None:
        """Tell every listener (or hold the event until one subscribes)."""
        event = FlagEvent(
            level=level, message=message, source=self.source, version=version, operation=operation
        )
        with self._lock:
            listeners = list(self._listeners)
            if not listeners:
                self._held.append(event)
        for listener in listeners:
            listener(event)
