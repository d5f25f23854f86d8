"""What a Shim tells about itself: its records (through the recorder), metrics, spans,
and its own failures, which never reach a caller."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from shim import flags as flagpkg
from shim.comparators import ModelNames
from shim.core.lifecycle import renew_in_child
from shim.records.capture import Capture
from shim.records.observe import CallSite, Pending, Stream, describe
from shim.records.recorder import Recorder
from shim.records.sinks import RecordSink
from shim.records.tracing import start_span
from shim.records.values import cap

if TYPE_CHECKING:
    from shim.core.judging import JudgePool
    from shim.metrics import PrometheusMetrics

__all__ = ["Events"]

_log = logging.getLogger("shim")
#: The call site's callables a record is made with: their errors are the call site's.
_CALLABLES = frozenset({"legacy_model", "legacy_usage", "soft_failure"})


class Events:
    """The records, counters, metrics and spans of one Shim. Every failure of the
    shim's own work goes through :meth:`internal_error`: counted, logged, recorded."""

    def __init__(
        self,
        sink: RecordSink,
        *,
        names: ModelNames,
        secrets: tuple[str, ...],
        capture: Capture | None,
        metrics: PrometheusMetrics | None,
        tracer: Any,
        orch_url: str,
    ) -> None:
        self.metrics = metrics
        self.tracer = tracer
        self.orch_url = orch_url
        self._errors: Counter[str] = Counter()
        self._told: set[tuple[str | None, str]] = set()
        self._lock = threading.Lock()
        renew_in_child(self)
        #: The judges' pool, when the Shim has a Judge (:meth:`compared` offers to it).
        self.judges: JudgePool | None = None
        self.recorder = Recorder(
            sink,
            names=names,
            on_error=self.internal_error,
            secrets=secrets,
            capture=capture,
            observe=None if metrics is None else metrics.record,
            on_site_error=self.site_error,
        )

    def after_fork(self) -> None:
        """In a forked child: a lock of its own (a parent's thread may hold this one)."""
        self._lock = threading.Lock()

    def internal_error(
        self, operation: str, exc: BaseException, site: CallSite | None = None
    ) -> None:
        """A failure of the shim's own work (``operation``; for one call site's task,
        if ``site``): counted, logged, recorded."""
        where = None if site is None else site.call_site
        with self._lock:
            self._errors[operation] += 1
            first = site is None or (where, operation) not in self._told
            self._told.add((where, operation))
        if first:  # a call site's: logged once, counted and recorded every time
            _log.warning("task-shim internal error in %s: %s", operation, describe(exc))
        if site is not None:  # one call site's: may come on every call, so tallied
            self.recorder.tally(
                "shim.error", site.product, site.task, describe(exc), operation=operation
            )
        elif operation not in ("write", "render", "sink_close"):  # the recorder is the problem
            self.recorder.event("shim.error", None, None, operation=operation, error=describe(exc))

    def site_error(self, site: CallSite, operation: str, exc: BaseException) -> None:
        """A failure while a comparison of ``site`` became a record: the call site's own
        callable's (``legacy_model=``, ``legacy_usage=``, ``soft_failure=``), or the
        shim's (a comparator, an output that cannot be rendered), tied to its task."""
        if operation in _CALLABLES:
            self.call_site_error(operation, getattr(site, operation), exc, site=site)
        else:
            self.internal_error(operation, exc, site)

    def call_site_error(
        self,
        name: str,
        fn: Any,
        exc: BaseException,
        *,
        site: CallSite | None = None,
        call_site: str | None = None,
        then: str = "the call goes on as legacy",
    ) -> None:
        """The call site's own callable ``name`` (``request``, ``response``, ``key``,
        ...: the user's code, ``fn``) raised: not the task path's failure, so neither
        the breaker nor the verdict hears of it. Counted (``call_site.<name>``),
        recorded as ``shim.error`` naming the call site and the callable (one record
        per flush interval with ``count``, so an error on every call cannot flood the
        log), and logged as a warning the first time per call site and callable."""
        operation = f"call_site.{name}"
        where = site.call_site if site is not None else call_site
        function = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        with self._lock:
            self._errors[operation] += 1
            first = (where, name) not in self._told
            self._told.add((where, name))
        if first:
            _log.warning(
                "task-shim: %s= of %s raised %s (counted and recorded as shim.error; %s)",
                name,
                where,
                describe(exc),
                then,
            )
        self.recorder.tally(
            "shim.error",
            site.product if site is not None else None,
            site.task if site is not None else None,
            describe(exc),
            operation=operation,
            call_site=where or "",
            callable=name,
            function=function,
        )

    def errors(self) -> dict[str, int]:
        """Internal errors so far, by operation."""
        with self._lock:
            return dict(self._errors)

    # -- comparisons -------------------------------------------------------------------

    def compared(self, pending: Pending) -> None:
        """A finished pair: to the judges if they sample it (recorded once judged),
        else to the recorder, whose thread compares and records it."""
        if self.judges is not None and self.judges.offer(pending):
            return
        self.recorder.comparison(pending)

    def judge_skipped(self, pending: Pending, reason: str, detail: str) -> None:
        """A sampled pair recorded without a judge's verdict: counted per task and
        reason (``shim.judge_skipped``, one record per flush interval with ``count``);
        a failing judge is said once on the ``shim`` logger."""
        site = pending.site
        if reason == "failed":
            with self._lock:
                self._errors["judge"] += 1
                first = ("judge", site.name) not in self._told
                self._told.add(("judge", site.name))
            if first:
                _log.warning("task-shim: the judge failed on %s: %s", site.name, detail)
        self.recorder.tally(
            "shim.judge_skipped", site.product, site.task, cap(detail) or "", reason=reason
        )

    def cancelled(self, task: str) -> None:
        """A background comparison cancelled before it finished (at shutdown, or when
        its event loop ended): counted as dropped, reason ``shutdown``."""
        product, _, name = task.partition(".")
        self.recorder.dropped(product, name, "shutdown")

    def abandoned(
        self, site: CallSite, stage: str, served_by: str, seen: Stream, busy: float
    ) -> None:
        """The caller left a compared stream early: its comparison counted as dropped
        (``abandoned``), and recorded with what the caller had seen (``shim.abandoned``:
        the call site, who served it, its chunks, time to first chunk and the
        milliseconds its path spent)."""
        self.recorder.dropped(site.product, site.task, "abandoned")
        ttft = None if seen.ttft_ms is None else round(seen.ttft_ms, 3)
        self.recorder.event(
            "shim.abandoned",
            site.product,
            site.task,
            call_site=site.call_site,
            stage=stage,
            served_by=served_by,
            chunks=seen.chunks,
            ttft_ms=ttft,
            latency_ms=round(busy * 1000, 3),
        )

    def release_failed(self, product: str, task: str, allocation_id: str, error: str) -> None:
        """An allocation the coordinator would not take back: counted and recorded."""
        with self._lock:
            self._errors["release"] += 1
        self.recorder.event(
            "shim.release_failed",
            product,
            task,
            allocation_id=cap(allocation_id),  # the coordinator's: capped
            error=cap(error),
        )

    def breaker(self, task: str, before: str, after: str, details: dict[str, Any]) -> None:
        """A task's circuit breaker changed state."""
        product, _, name = task.partition(".")
        self.recorder.event(
            "shim.breaker", product, name, **{"from": before, "to": after}, **details
        )

    def flags(self, event: flagpkg.FlagEvent) -> None:
        """The flag source said something (reloaded, or kept the last good flags); a
        problem it names (``flags.missing``, ``flags.invalid``...) is also counted among
        the internal errors, said once on the ``shim`` logger and recorded as
        ``shim.error``."""
        self.recorder.event(
            "shim.flags",
            None,
            None,
            level=event.level,
            message=cap(event.message),  # may quote a flag service's answer
            source=event.source,
            version=event.version,
        )
        if event.operation:  # the flags are missing or unusable: counted, said, recorded
            with self._lock:
                self._errors[event.operation] += 1
            _log.warning("task-shim: %s (%s)", event.message, event.operation)
            self.recorder.event(
                "shim.error", None, None, operation=event.operation, error=cap(event.message)
            )

    def served(self, site: CallSite, by: str) -> None:
        """Count who served a call (``legacy``, ``task``, ``legacy_fallback``)."""
        if self.metrics is not None:
            try:
                self.metrics.served(site.name, by)
            except Exception as exc:
                self.internal_error("metrics", exc)

    def span(self, site: CallSite, serving: bool) -> Any:
        """A tracing span for a task-path call; None if tracing failed (it never costs
        a call)."""
        try:
            return start_span(self.tracer, site, self.orch_url, "serve" if serving else "shadow")
        except Exception as exc:
            self.internal_error("tracing", exc)
            return None
