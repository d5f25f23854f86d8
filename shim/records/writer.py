"""Rendered record lines on their way to a sink that may fail: held while it does (up
to a bound), written in order once it works again, and every line given up on counted.
The recorder thread is its only user."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from shim.records.sinks import PartialWrite, RecordSink

__all__ = ["HeldLines"]

_log = logging.getLogger("shim")


class HeldLines:
    """Writes batches of whole lines to ``sink``. A sink that fails (disk full, path
    unusable) loses nothing at first: the lines are held, up to ``capacity`` of them,
    and written once the sink works again (tried every ``retry_interval`` seconds).
    Lines beyond that are counted in ``lost`` and told, one by one, to ``on_lost`` (the
    recorder counts each as dropped for its task, ``sink_unavailable``); the outage
    is reported to ``on_error`` once (``write``), not per batch, and its end logged."""

    def __init__(
        self,
        sink: RecordSink,
        *,
        capacity: int,
        retry_interval: float,
        on_error: Callable[[str, BaseException], None],
        on_lost: Callable[[str, str], None],
    ) -> None:
        self.sink = sink
        self.capacity = capacity
        self.retry_interval = retry_interval
        self._on_error = on_error
        self._on_lost = on_lost
        self.held: list[str] = []  # rendered lines not yet written
        self.written = 0
        self.write_errors = 0  # failed attempts to write
        self.lost = 0  # lines given up on: held beyond capacity, or at the last attempt
        self.failing_since: float | None = None
        self._retry_at = 0.0

    @property
    def failing(self) -> bool:
        """The last write failed: the sink is out."""
        return self.failing_since is not None

    def write(
        self, batch: list[str], clock: float, *, now: bool = False, final: bool = False
    ) -> None:
        """Write what is held, then ``batch``; while the sink fails, try again each
        ``retry_interval``, or ``now`` (a flush), or as the ``final`` attempt (close:
        what it cannot write is lost, and said)."""
        held = self.held
        held += batch
        waiting = self.failing_since is not None and clock < self._retry_at
        if not held or (waiting and not (now or final)):
            self._trim()
            return
        try:
            self.sink.write(held)
        except Exception as exc:
            done = exc.written if isinstance(exc, PartialWrite) else 0
            self.written += done
            del held[:done]
            self.write_errors += 1
            self._retry_at = clock + self.retry_interval
            if self.failing_since is None:
                self.failing_since = clock
                self._on_error("write", exc)
            if final and held:
                self.lost += len(held)
                self._on_error("write", OSError(f"{len(held)} record lines never written"))
                held.clear()
            self._trim()
            return
        self.written += len(held)
        held.clear()
        if self.failing_since is not None:
            _log.warning(
                "task-shim records are written again after %.1f s", clock - self.failing_since
            )
            self.failing_since = None

    def _trim(self) -> None:
        """Hold at most ``capacity`` lines; the rest are lost, each told to ``on_lost``
        with its product and task."""
        extra = len(self.held) - self.capacity
        if extra <= 0:
            return
        for line in self.held[self.capacity :]:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self._on_lost(record.get("product") or "", record.get("task") or "")
        del self.held[self.capacity :]
        self.lost += extra
