"""A Shim's life in its process: closed when the interpreter exits or a
multiprocessing worker ends, and its connections and event loops started anew in a
forked child. One hook of each kind for every Shim, registered once."""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import weakref
from collections.abc import Iterable
from typing import Protocol

from shim.records.observe import describe

__all__ = ["Closable", "Forkable", "forget", "keep"]

_log = logging.getLogger("shim")


class Closable(Protocol):
    """What is closed at exit: within ``timeout`` seconds, never raising."""

    def close(self, timeout: float = 5.0) -> None:
        """Finish and release everything."""
        ...


class Forkable(Protocol):
    """What starts anew in a forked child (connections, event loops)."""

    def after_fork(self) -> None:
        """Drop what belongs to the parent."""
        ...


# Open Shims, and the parts of them a forked child remakes. Weak: a Shim nobody holds
# is collected as before.
_open: weakref.WeakSet[Closable] = weakref.WeakSet()
_forkable: weakref.WeakSet[Forkable] = weakref.WeakSet()


def keep(shim: Closable, parts: Iterable[Forkable]) -> None:
    """Close ``shim`` at exit (bounded), remake ``parts`` in a forked child."""
    _open.add(shim)
    _forkable.update(parts)
    # multiprocessing's workers leave through os._exit, which skips atexit, and start
    # with its finaliser registry cleared: register the close where it will run. A Shim
    # made in a worker already (forkserver, spawn) gets its finaliser now.
    multiprocessing.util.register_after_fork(shim, _close_at_worker_exit)
    if multiprocessing.parent_process() is not None:
        _close_at_worker_exit(shim)


def forget(shim: Closable, parts: Iterable[Forkable]) -> None:
    """``shim`` is closed: nothing more to do for it."""
    _open.discard(shim)
    for part in parts:
        _forkable.discard(part)


def _close_at_worker_exit(shim: Closable) -> None:
    """In a multiprocessing worker: close (write what was compared) when it exits."""
    multiprocessing.util.Finalize(shim, shim.close, kwargs={"timeout": 2.0}, exitpriority=10)


def _after_fork_in_child() -> None:
    for part in list(_forkable):
        part.after_fork()


@atexit.register
def _close_all() -> None:
    """Shims still open at interpreter exit get a short, bounded close: records are
    written, exit never hangs."""
    for shim in list(_open):
        try:
            shim.close(timeout=2.0)
        except Exception as exc:  # pragma: no cover - best effort at exit
            _log.warning("task-shim: close at exit failed: %s", describe(exc))


os.register_at_fork(after_in_child=_after_fork_in_child)
