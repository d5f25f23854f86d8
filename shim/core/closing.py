"""Closing one Shim, in the phases :func:`~shim.core.lifecycle.close_together` runs for
many at once: take no more calls, finish (or count) the queued comparisons, have the
records written, then let go of connections and flags."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import httpx

from shim.core import lifecycle
from shim.core.engine import Engine
from shim.flags import FlagSource
from shim.records.recorder import Recorder

__all__ = ["ShimCloser"]


class ShimCloser:
    """What closing a Shim does, phase by phase (a
    :class:`~shim.core.lifecycle.Closable`), kept open at exit and remade in a forked
    child (``parts``) through :mod:`~shim.core.lifecycle`. Once the records are written
    or their time is up, it lets go of the task clients, ``http`` (the Shim's own
    client, if it made one) and ``flags`` (the flag source, if the Shim owns it). It
    does not hold the Shim, which is collected when nobody holds it, as before."""

    def __init__(
        self,
        engine: Engine,
        recorder: Recorder,
        *,
        http: httpx.Client | None,
        parts: Iterable[lifecycle.Forkable],
    ) -> None:
        self._engine = engine
        self._recorder = recorder
        self._http = http
        self._parts = tuple(parts)
        #: The flag source closed with the Shim: one it made itself (``from_env``).
        self.flags: FlagSource | None = None
        self._lock = threading.Lock()
        # Set once a close has ended: a second close (the app's, atexit's, SIGTERM's)
        # that finds one under way waits on it rather than returning mid-close.
        self._ended = threading.Event()
        lifecycle.keep(self, self._parts)

    def begin_close(self) -> bool:
        """Calls from here on run legacy alone; False if the Shim was closed already."""
        with self._lock:
            if self._engine.closed:
                return False
            self._engine.closed = True
            return True

    def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the close under way to end; True if it did."""
        return self._ended.wait(timeout)

    def close_work(self, timeout: float) -> None:
        """Finish the queued comparisons within ``timeout`` (the task path's calls on
        the workers, the judge's, then the recorder's comparing); those that cannot
        are counted as dropped (``shutdown``), per task."""
        recorder, deadline = self._recorder, time.monotonic() + timeout
        try:
            for task, count in self._engine.threads.dispatch.close(timeout).items():
                product, _, name = task.partition(".")
                recorder.dropped(product, name, "shutdown", count)
        finally:
            judges = self._engine.events.judges
            if judges is not None:  # the pairs it took are recorded, judged or not
                judges.close(max(0.0, deadline - time.monotonic()))
            # the pairs handed over are compared and written; what the recorder has
            # not reached by then is counted as it stops (Recorder.close)
            recorder.flush(max(0.0, deadline - time.monotonic()))

    def stop_records(self, deadline: float) -> None:
        """Have the records and drop counts written by ``deadline``; do not wait."""
        self._recorder.stop(deadline)

    def end_close(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the records to be written, then let go of the
        rest."""
        try:
            self._recorder.close(timeout)
        finally:
            try:
                self._engine.threads.close()
                if self._http is not None:
                    self._http.close()
                if self.flags is not None:
                    self.flags.close()
                lifecycle.forget(self, self._parts)
            finally:
                self._ended.set()
