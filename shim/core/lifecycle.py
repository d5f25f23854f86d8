"""A Shim's life in its process: closed when the interpreter exits or a
multiprocessing worker ends (all of them within one deadline, not one each, the last
part of it kept for writing their records), drained on SIGTERM if the app asks
(:func:`drain_on_sigterm`), and its connections, event loops, gates and locks started
anew in a forked child. One hook of each kind for every Shim, registered once."""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any, Protocol

from shim.records.observe import describe

__all__ = [
    "EXIT_TIMEOUT",
    "Closable",
    "Forkable",
    "close_all",
    "close_together",
    "drain_on_sigterm",
    "forget",
    "keep",
    "renew_in_child",
]

_log = logging.getLogger("shim")

#: Seconds the Shims still open when the interpreter (or a multiprocessing worker)
#: exits have to finish, all of them together.
EXIT_TIMEOUT = 2.0


class Closable(Protocol):
    """What is closed at exit, in phases, so that many close within one deadline:
    :func:`close_together` runs each phase for all of them before the next."""

    def begin_close(self) -> bool:
        """Take no more work; False if closed already (the other phases are skipped)."""
        ...

    def close_work(self, timeout: float) -> None:
        """Finish the work queued within ``timeout`` seconds; count the rest as
        dropped (``shutdown``)."""
        ...

    def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a close begun elsewhere (another thread's
        ``begin_close`` won) to end; True if it has."""
        ...

    def stop_records(self, deadline: float) -> None:
        """Have the records made so far, and the drop counts, written by ``deadline`` (a
        ``time.monotonic()`` value: what cannot be made by then is counted); do not
        wait."""
        ...

    def end_close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the records, then release the rest."""
        ...


class Forkable(Protocol):
    """What starts anew in a forked child (connections, event loops, locks, counts of
    calls in flight: the threads that held them are not in the child)."""

    def after_fork(self) -> None:
        """Drop what belongs to the parent."""
        ...


# Open Shims, and the parts of them a forked child remakes. Weak: a Shim nobody holds
# is collected as before.
_open: weakref.WeakSet[Closable] = weakref.WeakSet()
_forkable: weakref.WeakSet[Forkable] = weakref.WeakSet()
# Shims made in a multiprocessing worker, held until closed: a worker's module often
# keeps only the functions it wrapped, and its finaliser must still find the Shim.
_in_worker: list[Closable] = []


def keep(shim: Closable, parts: Iterable[Forkable]) -> None:
    """Close ``shim`` at exit (bounded), remake ``parts`` in a forked child."""
    _open.add(shim)
    _forkable.update(parts)
    # A Shim made in a multiprocessing worker already (forkserver, spawn): the worker
    # leaves through os._exit, which skips atexit, so its finaliser closes it.
    if multiprocessing.parent_process() is not None:
        _in_worker.append(shim)
        _close_at_worker_exit()


def forget(shim: Closable, parts: Iterable[Forkable]) -> None:
    """``shim`` is closed: nothing more to do for it."""
    _open.discard(shim)
    if shim in _in_worker:
        _in_worker.remove(shim)
    for part in parts:
        _forkable.discard(part)


def renew_in_child(part: Forkable) -> None:
    """Call ``part.after_fork()`` in every forked child while ``part`` lives: for what
    holds a lock, or counts calls in flight, that only the parent's threads release."""
    _forkable.add(part)


def close_all(timeout: float = EXIT_TIMEOUT) -> None:
    """Close every open Shim within ``timeout`` seconds in all, however many there are
    (:func:`close_together`); the last quarter of it, at most half a second, is kept
    for writing their records: what could not finish is counted (``shutdown``) and the
    counts written, even against a coordinator that never answers."""
    close_together(list(_open), timeout, reserve=min(0.5, timeout / 4))


def close_together(shims: Sequence[Closable], timeout: float, *, reserve: float = 0.0) -> None:
    """Close ``shims`` within one deadline, ``timeout`` seconds from now, each phase for
    all of them before the next: their queued work is waited for until ``reserve``
    seconds before the deadline (together: the first waits, the rest are done or
    counted by then), then every recorder is told to write and stop, then each is
    waited for until the deadline, so writing costs the slowest, not the sum. With no
    ``reserve`` (one Shim's own close) the records still get half a second (never
    more than ``timeout``) past the work's deadline. A Shim another thread is closing
    already (the app's ``close()`` when SIGTERM or exit comes) is waited for within
    the same deadline, so that no caller returns while it is half-closed. Never
    raises."""
    deadline = time.monotonic() + timeout
    begun = [(shim, _phase(shim.begin_close)) for shim in shims]
    shims = [shim for shim, began in begun if began]
    elsewhere = [shim for shim, began in begun if began is False]
    work_ends = deadline - reserve
    for shim in shims:
        _phase(shim.close_work, max(0.0, work_ends - time.monotonic()))
    if not reserve:
        deadline = max(deadline, time.monotonic() + min(0.5, timeout))
    for shim in shims:
        _phase(shim.stop_records, deadline)
    for shim in shims:
        _phase(shim.end_close, max(0.0, deadline - time.monotonic()))
    for shim in elsewhere:
        _phase(shim.wait_closed, max(0.0, deadline - time.monotonic()))


def _phase(step: Callable[..., Any], *args: float, default: Any = None) -> Any:
    """One phase of one Shim's close: a failure is logged, and the close goes on."""
    try:
        return step(*args)
    except Exception as exc:
        _log.warning("task-shim: closing failed: %s", describe(exc))
        return default


# -- exit ----------------------------------------------------------------------------

# The pid whose multiprocessing finaliser is registered: one per worker, closing all.
_finaliser_pid = 0


def _close_at_worker_exit(*_: object) -> None:
    """In a multiprocessing worker: close every Shim (write what was compared) when it
    exits, within one deadline for all. Registered once per worker."""
    global _finaliser_pid
    if _finaliser_pid == os.getpid():
        return
    _finaliser_pid = os.getpid()
    multiprocessing.util.Finalize(None, close_all, exitpriority=10)


class _Hook:
    """What multiprocessing's after-fork registry holds (it keeps weak references)."""


_HOOK = _Hook()
# multiprocessing clears its finaliser registry in a worker it forks, then runs these.
multiprocessing.util.register_after_fork(_HOOK, _close_at_worker_exit)


@atexit.register
def _close_all() -> None:
    """Shims still open at interpreter exit get a short, bounded close: records are
    written, exit never hangs."""
    close_all(EXIT_TIMEOUT)


# -- fork ----------------------------------------------------------------------------


def _after_fork_in_child() -> None:
    for part in list(_forkable):
        part.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- SIGTERM -------------------------------------------------------------------------

_Handler = Callable[[int, FrameType | None], Any] | int | None


class _Drain:
    """The SIGTERM handler :func:`drain_on_sigterm` installs, and what it chains to."""

    def __init__(self, previous: _Handler, timeout: float) -> None:
        self.previous = previous
        self.timeout = timeout
        self.draining = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        previous = self.previous
        if previous == signal.SIG_IGN:
            return  # the app ignores SIGTERM: it goes on, and so do its Shims
        if not self.draining:  # a second SIGTERM while draining goes straight on
            self.draining = True
            # On a thread of its own: this handler may have interrupted the main thread
            # inside one of the Shim's locks, which the close needs. Joined within the
            # deadline either way.
            closer = threading.Thread(
                target=close_all, args=(self.timeout,), name="shim-sigterm", daemon=True
            )
            closer.start()
            closer.join(self.timeout + 1.0)
        if callable(previous):
            previous(signum, frame)
            return
        # Python's default (or a handler not set from Python): die of the signal, so
        # the exit status is the one SIGTERM always gives.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def drain_on_sigterm(*, timeout: float = 5.0) -> None:
    """On SIGTERM, close every open Shim first (queued comparisons finished and written
    within ``timeout`` seconds in all; what cannot finish counted as dropped, reason
    ``shutdown``), then do what SIGTERM did before: call the handler the app had set,
    or end the process as the signal does (same exit status), or nothing if it was
    ignored. Opt-in, because it replaces the SIGTERM handler; call it from the main
    thread, after the app (or its server) has set its own handler. Calling it again
    only changes ``timeout``.

    Without it, SIGTERM ends the process at once and the comparisons still queued are
    lost without a record or a count (atexit does not run on a signal)."""
    if timeout <= 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "drain_on_sigterm() must be called from the main thread (Python runs signal "
            "handlers there): call it where the app starts"
        )
    current = signal.getsignal(signal.SIGTERM)
    if isinstance(current, _Drain):
        current.timeout = timeout
        return
    signal.signal(signal.SIGTERM, _Drain(current, timeout))
