"""Flags from a YAML file, re-read in the background when the file changes."""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

from shim.base.errors import ConfigError, Problem
from shim.base.yamlfile import load_yaml

from ._model import FlagState, load_flags_file, parse_flags
from ._rules import Decision, Rules
from ._source import Events, FlagListener

__all__ = ["FileFlags"]


def _content(path: Path) -> bytes | None:
    # Flags files are small: comparing contents catches every edit, including one that
    # keeps the size and lands in the same mtime tick.
    try:
        return path.read_bytes()
    except OSError:
        return None


class FileFlags:
    """Per-task flags from a flags.yaml.

    The file is read once here (a bad or missing file raises :class:`ConfigError`), then
    a daemon thread re-reads it every ``poll_interval`` seconds and, when its content
    changed, swaps in the new rules.
    An invalid, empty (half-written) or vanished file keeps the last good rules and
    emits an ``error`` event once per change; ``{}`` is the file that turns every task
    off. ``decide`` reads one attribute: no I/O, no lock.
    """

    def __init__(self, path: str | Path, *, poll_interval: float = 0.25) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._seen = _content(self.path)
        self.rules = Rules(self._parse(self._seen))
        self.version = 1
        self._events = Events(str(self.path))
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
        content = _content(self.path)
        if content == self._seen:
            return False
        self._seen = content
        if content is None:
            self._emit(
                "error", f"{self.path}: file is missing or unreadable; keeping the last good flags"
            )
            return False
        if not content.strip():  # an editor that truncates, then writes: caught between
            self._emit("error", f"{self.path}: file is empty; keeping the last good flags")
            return False
        try:
            rules = Rules(self._parse(content))
        except ConfigError as exc:
            self._emit("error", f"{exc}; keeping the last good flags")
            return False
        self.rules = rules
        self.version += 1
        self._emit("info", f"{self.path}: reloaded")
        return True

    def _parse(self, content: bytes | None) -> FlagState:
        if content is None:
            return load_flags_file(self.path)  # raises the located "not found" error
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                [
                    Problem(
                        str(self.path),
                        None,
                        None,
                        f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                    )
                ]
            ) from None
        return parse_flags(load_yaml(self.path, text=text))

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
                self._emit("error", f"{self.path}: reload failed: {type(exc).__name__}: {exc}")

    def _emit(self, level: str, message: str) -> None:
        self._events.emit(level, message, self.version)
