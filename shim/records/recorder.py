"""Records: one JSON object per line, written off the caller's path.

Finished comparisons are handed to the :class:`Recorder`, whose own thread compares
the outputs, makes the records, renders them and writes them as whole lines to a
:class:`~shim.records.sinks.RecordSink`, in batches: under load it wakes once per
``batch_wait`` and makes every record that came meanwhile back to back. Drops are
counted per task and reason and written as aggregated ``shim.dropped`` records.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from shim.comparators import ModelNames
from shim.records.capture import Capture
from shim.records.lines import Lines
from shim.records.observe import CallSite, Pending, comparison_record, envelope, pending_bytes
from shim.records.render import dumps, names_of, order
from shim.records.sinks import RecordSink
from shim.records.writer import HeldLines

__all__ = ["BATCH_WAIT", "QUEUE_BYTES", "Recorder", "pending_bytes"]

_log = logging.getLogger("shim")


_STOP = object()
_FLUSH = "flush"
#: How long before close()'s deadline the recorder stops making queued comparisons and
#: counts them instead (``shutdown``), in seconds: writing the rest takes about that.
_MARGIN = 0.1

#: How long the recorder lets records gather after writing some, in seconds: under
#: load it wakes and writes once per this long.
BATCH_WAIT = 0.02

#: The bytes the comparisons queued for the recorder may hold (their outputs, and
#: prompts when captured), estimated; past it one is dropped (``recorder_full``).
QUEUE_BYTES = 32 * 1024 * 1024


ErrorHook = Callable[[str, BaseException], None]
#: ``(site, operation, exc)``: a failure tied to one call site's comparison.
SiteErrorHook = Callable[[CallSite, str, BaseException], None]


class Recorder:
    """The background thread that assembles, renders and writes records.

    A sink that fails (disk full, path unusable) loses nothing at first: the lines are
    held, up to ``capacity`` of them, and written once the sink works again (tried
    every ``flush_interval``; see :class:`~shim.records.writer.HeldLines`). Lines
    beyond that are counted per task as dropped (``sink_unavailable``); the outage is
    reported to ``on_error`` once, not per batch.
    """

    def __init__(
        self,
        sink: RecordSink,
        *,
        names: ModelNames,
        on_error: ErrorHook,
        capacity: int = 10_000,
        max_bytes: int = QUEUE_BYTES,
        flush_interval: float = 0.5,
        batch_wait: float = BATCH_WAIT,
        secrets: tuple[str, ...] = (),
        capture: Capture | None = None,
        observe: Callable[[Mapping[str, Any]], None] | None = None,
        on_site_error: SiteErrorHook | None = None,
    ) -> None:
        self.sink = sink
        # Told of failures while a call site's comparison is made into a record (its
        # own legacy_model=, soft_failure=, ... or a comparator), with the call site.
        self._on_site_error = on_site_error
        self._observe = observe  # told of every record as it is written (metrics)
        self.names = names
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.flush_interval = flush_interval
        self.batch_wait = batch_wait
        self._on_error = on_error
        self.capture = capture
        self._lines = Lines(secrets)
        #: What takes the secrets out of text leaving the process another way (spans).
        self.redact = self._lines.redact
        # Bound once: the lazy proxy wrap_logger returns binds anew on every call.
        self._log = structlog.wrap_logger(
            self._lines,
            processors=[order, structlog.processors.JSONRenderer(dumps)],
            wrapper_class=structlog.BoundLogger,
        ).bind()
        self._start()
        _recorders.add(self)

    def _start(self) -> None:
        # Also what a forked child runs: what the parent had queued is the parent's to
        # write; the child starts empty, with a thread of its own.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0
        self._pairs = 0  # of those, comparisons
        self._bytes = 0  # what the queued comparisons hold (pending_bytes)
        self._drops: Counter[tuple[str, str, str]] = Counter()
        # (event, product, task, fields) -> [count, first example]: see tally().
        self._tallies: dict[tuple[Any, ...], list[Any]] = {}
        self._lines.renew()
        self._out = HeldLines(
            self.sink,
            capacity=self.capacity,
            retry_interval=self.flush_interval,
            on_error=self._on_error,
            on_lost=functools.partial(self.dropped, reason="sink_unavailable"),
        )
        self._lost = 0  # records made once the last drop counts were written
        # Past this (time.monotonic()), queued comparisons are counted, not made: set
        # by close(), so that the drop counts are written within its timeout.
        self._give_up_at = math.inf
        self._overdue = False  # close() returned with the thread still at work
        self._closed = False
        self._done = False  # the last drop counts are written: nothing more will be
        self._told_late = False
        self._thread = threading.Thread(target=self._run, name="shim-recorder", daemon=True)
        self._thread.start()

    # -- producers (any thread) ----------------------------------------------------

    def comparison(self, pending: Pending) -> None:
        """Queue a finished comparison; counted as dropped if the recorder is full
        (``recorder_full``: ``capacity`` records, or ``max_bytes`` of outputs queued) or
        closing (``shutdown``)."""
        if not self._admit(pending, pending_bytes(pending)):
            self.dropped(pending.site.product, pending.site.task, self._refusal())

    def event(self, event: str, product: str | None, task: str | None, **fields: Any) -> None:
        """Queue any other record (``shim.breaker``, ``shim.flags``, ...)."""
        record = envelope(event, product, task)
        record.update(fields)
        if threading.current_thread() is self._thread:
            # Raised while rendering (a comparator failed): write it in this batch. Going
            # through the queue could land it after the stop, and lose it.
            self._render(record)
        elif not self._admit(record):
            self.dropped(product or "", task or "", self._refusal())

    def tally(
        self, event: str, product: str | None, task: str | None, example: str, **fields: str
    ) -> None:
        """Queue a record that may stand for many alike (an error raised on every call):
        those with the same event, task and ``fields`` within one flush interval are
        written as one, with ``count`` and the first ``error`` (``example``) seen."""
        key = (event, product, task, tuple(sorted(fields.items())))
        with self._lock:
            if not self._done:
                found = self._tallies.get(key)
                if found is None:
                    self._tallies[key] = [1, example]
                else:
                    found[0] += 1
                return
            self._lost += 1

    def dropped(self, product: str, task: str, reason: str, count: int = 1) -> None:
        """Count comparisons that will not happen; written as ``shim.dropped``. After
        the recorder has written its last drop counts (closed), nothing more can be
        written: what comes then is counted in ``lost`` and reported once."""
        with self._lock:
            if not self._done:
                self._drops[(product, task, reason)] += count
                return
            self._lost += count
            first, self._told_late = not self._told_late, True
        if first:
            advice = (
                "a stream was still open when the Shim closed: read streams to their end, "
                "or close them, before close()"
                if reason == "abandoned"
                else "close() waits for what was queued before it: on an event loop that "
                "runs on, await s.aflush() or s.aclose() instead"
            )
            _log.warning(
                "task-shim: records made after the Shim was closed are not in the log "
                "(the first: %s, %s.%s), only counted in stats()['records_lost']; %s",
                reason,
                product,
                task,
                advice,
            )

    def _refusal(self) -> str:
        return "shutdown" if self._closed else "recorder_full"

    def _admit(self, item: Any, size: int = 0) -> bool:
        """Queue ``item`` unless the recorder is full or closing. Under the lock that
        :meth:`stop` takes to queue its end: nothing admitted lands after it."""
        with self._lock:
            if self._closed or self._queued >= self.capacity:
                return False
            if size and self._bytes and self._bytes + size > self.max_bytes:
                return False  # one alone may be bigger: it is held already
            self._queued += 1
            self._pairs += type(item) is Pending
            self._bytes += size
            self._queue.put(item)
            return True

    @property
    def queued(self) -> int:
        """Comparisons queued, not made into records yet."""
        return self._pairs

    @property
    def queued_bytes(self) -> int:
        """The bytes the queued comparisons hold, estimated (:func:`pending_bytes`),
        and the lines waiting for the next write."""
        return self._bytes + self._lines.chars

    # -- lifecycle -----------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Write everything queued so far; True when done within ``timeout``."""
        done = threading.Event()
        self._queue.put((_FLUSH, done))
        return done.wait(timeout)

    def stop(self, deadline: float | None = None) -> None:
        """Take no more records; have what is queued and the drop counts written, then
        the thread end, without waiting for it (:meth:`close` waits). Stopping many
        recorders first, then waiting for each, costs the slowest, not the sum.
        Comparisons still queued near ``deadline`` (a ``time.monotonic()`` value) are
        not made but counted as dropped (``shutdown``), so that the drop counts are
        written by then; the earliest deadline given holds."""
        with self._lock:
            if deadline is not None:
                margin = min(_MARGIN, max(0.0, deadline - time.monotonic()) / 4)
                self._give_up_at = min(self._give_up_at, deadline - margin)
            stopping, self._closed = not self._closed, True
            if stopping:
                self._queue.put(_STOP)

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued and the drop counts (within ``timeout``: see
        :meth:`stop`), then close the sink; True if all of it was done in time. If not
        (a comparison or a write that takes longer), what was left is said in a
        warning and counted in :attr:`unwritten`."""
        self.stop(time.monotonic() + timeout)
        self._thread.join(timeout)
        finished = not self._thread.is_alive()
        self._overdue = not finished
        if not finished:
            _log.warning(
                "task-shim: the recorder did not finish within close()'s %.2f s: %d "
                "queued records and %d rendered lines not written yet (a comparator or "
                "the log slower than that)",
                timeout,
                self._queued,
                len(self._lines.batch),
            )
        else:
            try:
                self.sink.close()
            except Exception as exc:
                self._on_error("sink_close", exc)
        return finished

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        next_drops = time.monotonic() + self.flush_interval
        batch_until = math.inf  # the batch is written by then even while work waits
        cost = 0.0  # how long the last comparison took to make
        while True:
            try:
                item = self._queue.get(timeout=self.flush_interval)
            except queue.Empty:
                item = None
            stop = item is _STOP
            waiter = None
            if isinstance(item, tuple) and item and item[0] == _FLUSH:
                waiter = item[1]
            elif item is not None and not stop:
                started = time.monotonic()
                if type(item) is not Pending:
                    self._render(item)
                elif self._closed and started + cost >= self._give_up_at:
                    # closing: one made now would end past the deadline (as the last did)
                    self.dropped(item.site.product, item.site.task, "shutdown")
                else:
                    self._render(item)
                    cost = time.monotonic() - started
                size = pending_bytes(item) if isinstance(item, Pending) else 0
                with self._lock:
                    self._queued -= 1
                    self._pairs -= type(item) is Pending
                    self._bytes -= size
                batch_until = min(batch_until, started + self.batch_wait)
                if (
                    len(self._lines.batch) < 512
                    and not self._queue.empty()
                    and time.monotonic() < batch_until
                ):
                    continue  # keep filling the batch while work is waiting
            now = time.monotonic()
            if stop or waiter is not None or now >= next_drops:
                if not self._out.failing or stop:  # while failing, counts wait
                    if stop:
                        with self._lock:
                            self._done = True  # from here, drops are counted as lost
                    self._render_drops()
                next_drops = now + self.flush_interval
            batch = self._lines.take()
            batch_until = math.inf
            self._out.write(batch, now, now=waiter is not None, final=stop)
            if waiter is not None:
                waiter.set()
            if stop:
                return
            if batch and self._queue.empty():
                # Let the next records gather: one wake-up and one write for all that
                # come within BATCH_WAIT, not one each, and their comparisons and records
                # made back to back, where the code runs warm (made on its worker as each
                # reply came, a shadowed call cost 7-11 % more CPU: README).
                # A flush or stop waits as long.
                time.sleep(self.batch_wait)

    def _render(self, item: Any) -> None:
        """Render one record into the batch. One that cannot be (a field no encoder
        can write, such as a list that holds itself) is counted as dropped, reason
        ``unrenderable``, and reported: never lost without a trace."""
        record: Any = None
        try:
            if isinstance(item, Pending):
                on_error = self._on_error
                if self._on_site_error is not None:
                    on_error = functools.partial(self._on_site_error, item.site)
                record = comparison_record(item, self.names, on_error, self.capture)
            else:
                record = item
            event = record.pop("event")
            self._log.info(event, **record)
        except Exception as exc:
            if isinstance(item, Pending):
                product, task = item.site.product, item.site.task
            else:
                product, task = names_of(item)
            self.dropped(product, task, "unrenderable")
            self._on_error("render", exc)
            return
        record["event"] = event
        self._seen(record)

    def _seen(self, record: Mapping[str, Any]) -> None:
        if self._observe is not None:
            try:
                self._observe(record)
            except Exception as exc:
                self._on_error("metrics", exc)

    def _render_drops(self) -> None:
        with self._lock:
            drops, self._drops = self._drops, Counter()
            tallies, self._tallies = self._tallies, {}
        records = [
            envelope("shim.dropped", product, task) | {"reason": reason, "count": count}
            for (product, task, reason), count in sorted(drops.items())
        ]
        records += [
            envelope(event, product, task) | dict(fields) | {"error": example, "count": count}
            for (event, product, task, fields), (count, example) in tallies.items()
        ]
        for record in records:
            self._seen(record)
            self._log.info(record.pop("event"), **record)

    # -- counts --------------------------------------------------------------------

    @property
    def written(self) -> int:
        """Record lines written."""
        return self._out.written

    @property
    def write_errors(self) -> int:
        """Failed attempts to write."""
        return self._out.write_errors

    @property
    def lost(self) -> int:
        """Lines given up on (held beyond capacity, or still held at close), and records
        made once the recorder was closed."""
        return self._out.lost + self._lost

    @property
    def unwritten(self) -> int:
        """Lines rendered and held because the sink failed, and, once the recorder
        stopped without writing them (it was not given the time), those it had; once
        :meth:`close` has returned with the thread still at work, also the records
        still queued."""
        waiting = 0
        if self._done or not self._thread.is_alive():
            waiting = len(self._lines.batch)
        elif self._overdue:
            waiting = len(self._lines.batch) + self._queued
        return len(self._out.held) + waiting


# Every recorder: in a forked child, those not closed restart their threads. One hook
# for all, registered once (os.register_at_fork cannot remove a hook per recorder).
_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()


def _restart_in_child() -> None:
    for recorder in list(_recorders):
        if not recorder._closed:
            recorder._start()


os.register_at_fork(after_in_child=_restart_in_child)
