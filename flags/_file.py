"""Flags from a YAML file, re-read in the background when the file changes."""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

from shim.base.errors import ConfigError, Problem
from shim.base.yamlbounds import decode_text, read_capped
from shim.base.yamlfile import load_yaml

from ._model import FlagState, parse_flags
from ._rules import Decision, Rules
from ._source import Events, FlagListener

__all__ = ["FileFlags"]

#: What a failed read is, for telling one failure from the next: the kind of failure
#: (a new one is said again), or the file's bytes.
_Seen = bytes | tuple[str, str]


class FileFlags:
    """Per-task flags from a flags.yaml.

    The file is read once here, then a daemon thread re-reads it every
    ``poll_interval`` seconds and, when its content changed, swaps in the new rules.
    A file that is missing at start is no error: every task is off (legacy serves,
    nothing is compared), an ``error`` event (operation ``flags.missing``) says so, and
    the flags are taken when the file appears. ``required=True`` raises
    :class:`ConfigError` instead. A file that is there but invalid raises
    :class:`ConfigError`, as does one over 1 MiB (``shim.base.yamlbounds.MAX_BYTES``)
    or not a regular file.

    Later, an invalid, oversized, empty (half-written) or vanished file keeps the last
    good rules and emits an ``error`` event once per change; ``{}`` is the file that
    turns every task off. ``decide`` reads one attribute: no I/O, no lock.
    """

    def __init__(
        self, path: str | Path, *, poll_interval: float = 0.25, required: bool = False
    ) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self.required = required
        self._events = Events(str(self.path))
        #: Rule sets taken so far: 0 until the file has been read.
        self.version = 0
        self.rules = Rules()
        try:
            content = read_capped(self.path)
        except FileNotFoundError:
            if required:
                raise ConfigError([Problem(str(self.path), None, None, "file not found")]) from None
            self._seen: _Seen = ("flags.missing", "")
            self._emit(
                "error",
                f"{self.path}: file not found; every task runs legacy until it appears",
                "flags.missing",
            )
        except OSError as exc:
            raise ConfigError([Problem(str(self.path), None, None, _unreadable(exc))]) from None
        else:
            self.rules = Rules(self._parse(content))
            self.version = 1
            self._seen = content
        self._stop = threading.Event()
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._start_poller()
        ref = weakref.ref(self)

        def after_fork() -> None:
            source = ref()
            if source is not None and not source._stop.is_set():
                source._pid = os.getpid()
                source._start_poller()

        os.register_at_fork(after_in_child=after_fork)

    def decide(self, task: str, sticky: str | None) -> Decision:
        """The decision for one call of ``task``."""
        return self.rules.decide(task, sticky)

    def subscribe(self, listener: FlagListener) -> None:
        """Send events to ``listener``, starting with any that happened before."""
        self._events.subscribe(listener)

    def reload(self) -> bool:
        """Re-read the file now if it changed; True when new rules took effect."""
        if os.getpid() != self._pid:  # forked: the poller thread did not come along
            self._pid = os.getpid()
            self._start_poller()
        # The file is read whole, within the cap, on every poll: comparing contents
        # catches every edit, including one that keeps the size and lands in the same
        # mtime tick. A failure is compared by its kind, so it is said once.
        seen: _Seen
        try:
            seen = read_capped(self.path)
        except FileNotFoundError:
            seen = ("flags.missing", f"{self.path}: file not found")
        except OSError as exc:
            seen = ("flags.unreadable", f"{self.path}: {_unreadable(exc)}")
        except ConfigError as exc:  # oversized, or not a regular file
            seen = ("flags.invalid", str(exc))
        if seen == self._seen:
            return False
        self._seen = seen
        if isinstance(seen, tuple):
            self._emit("error", f"{seen[1]}; {self._keeping()}", seen[0])
            return False
        if not seen.strip():  # an editor that truncates, then writes: caught between
            self._emit("error", f"{self.path}: file is empty; {self._keeping()}", "flags.invalid")
            return False
        try:
            rules = Rules(self._parse(seen))
        except ConfigError as exc:
            self._emit("error", f"{exc}; {self._keeping()}", "flags.invalid")
            return False
        self.rules = rules
        self.version += 1
        self._emit("info", f"{self.path}: {'reloaded' if self.version > 1 else 'read'}")
        return True

    def _keeping(self) -> str:
        if self.version == 0:
            return "every task runs legacy until it is fixed"
        return "keeping the last good flags"

    def _parse(self, content: bytes) -> FlagState:
        return parse_flags(load_yaml(self.path, text=decode_text(str(self.path), content)))

    def close(self) -> None:
        """Stop the poller."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def _start_poller(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="shim-flags-poller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.reload()
            except Exception as exc:  # never let the poller die silently
                self._emit(
                    "error",
                    f"{self.path}: reload failed: {type(exc).__name__}: {exc}",
                    "flags.reload",
                )

    def _emit(self, level: str, message: str, operation: str = "") -> None:
        self._events.emit(level, message, self.version, operation)


def _unreadable(exc: OSError) -> str:
    return f"cannot read file: {exc.strerror or type(exc).__name__}"
