"""Prometheus metrics for a Shim (``pip install 'task-shim[metrics]'``).

    from shim.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()            # the default prometheus_client registry
    metrics.serve(9464)                      # GET http://127.0.0.1:9464/metrics
    shim = Shim(..., metrics=metrics)

Everything but the call counter is read from the records as they are made, off the
callers' threads (on a worker or the recorder's thread): the callers pay for one
labelled counter increment per call, and nothing at all without ``metrics``.

``shim_calls_total{task, served_by}``, ``shim_comparisons_total{task, outcome}``
(``match``, ``mismatch``, ``error``: either path failed, ``unchecked``: nothing to
compare), ``shim_dropped_total{task, reason}``, ``shim_breaker_state{task}`` (0 closed,
1 half-open, 2 open), ``shim_backoff_total{task}`` (pauses after a 429 or 503) and
``shim_latency_seconds{task, path}`` (``legacy``, ``task``); with a judge,
``shim_judge_verdicts_total{task, winner}`` (``legacy``, ``candidate``, ``tie``) and
``shim_judge_skipped_total{task, reason}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PrometheusMetrics"]

_BREAKER = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
#: From 5 ms to 2 minutes: LLM calls.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
#: Each family's help, by its name after the prefix.
_HELP = {
    "calls": "Calls by task and the path that served them",
    "comparisons": "Comparisons by task and outcome",
    "dropped": "Comparisons not made, by reason",
    "breaker_state": "Circuit breaker: 0 closed, 1 half-open, 2 open",
    "backoff": "Shadow pauses after the coordinator had no capacity",
    "latency_seconds": "Latency of each path in compared calls",
    "judge_verdicts": "Judge verdicts on compared pairs, by the path preferred",
    "judge_skipped": "Sampled pairs recorded without a judge's verdict, by reason",
}


class PrometheusMetrics:
    """A Shim's counters, gauge and histograms on a prometheus_client registry."""

    def __init__(self, registry: Any = None, *, prefix: str = "shim") -> None:
        import prometheus_client as prom

        self.registry = registry if registry is not None else prom.REGISTRY

        def family(kind: Any, name: str, *labels: str, **options: Any) -> Any:
            return kind(f"{prefix}_{name}", _HELP[name], labels, registry=self.registry, **options)

        self.calls = family(prom.Counter, "calls", "task", "served_by")
        self.comparisons = family(prom.Counter, "comparisons", "task", "outcome")
        self.dropped = family(prom.Counter, "dropped", "task", "reason")
        self.breaker = family(prom.Gauge, "breaker_state", "task")
        self.backoff = family(prom.Counter, "backoff", "task")
        self.latency = family(prom.Histogram, "latency_seconds", "task", "path", buckets=_BUCKETS)
        self.judge_verdicts = family(prom.Counter, "judge_verdicts", "task", "winner")
        self.judge_skipped = family(prom.Counter, "judge_skipped", "task", "reason")
        self._served: dict[tuple[str, str], Any] = {}

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Expose ``/metrics`` on ``addr:port`` from a background thread."""
        import prometheus_client as prom

        return prom.start_http_server(port, addr=addr, registry=self.registry)

    # -- what the Shim calls --------------------------------------------------------

    def served(self, task: str, served_by: str) -> None:
        """One call of ``task``, served by ``legacy``, ``task`` or ``legacy_fallback``."""
        child = self._served.get((task, served_by))
        if child is None:
            child = self._served[(task, served_by)] = self.calls.labels(task, served_by)
        child.inc()

    def record(self, record: Mapping[str, Any]) -> None:
        """A record being written (on the thread that made it: a worker or the
        recorder's)."""
        event = record.get("event")
        task = f"{record.get('product')}.{record.get('task')}"
        if event == "shim.comparison":
            legacy, candidate = record.get("legacy") or {}, record.get("candidate") or {}
            match = (record.get("structure") or {}).get("match")
            if not (legacy.get("ok") and candidate.get("ok")):
                outcome = "error"
            elif match is None:
                outcome = "unchecked"
            else:
                outcome = "match" if match else "mismatch"
            self.comparisons.labels(task, outcome).inc()
            for side, path in ((legacy, "legacy"), (candidate, "task")):
                if side.get("ok") and isinstance(side.get("latency_ms"), int | float):
                    self.latency.labels(task, path).observe(side["latency_ms"] / 1000)
            judge = record.get("judge")
            if isinstance(judge, dict) and judge.get("winner") in ("legacy", "candidate", "tie"):
                self.judge_verdicts.labels(task, judge["winner"]).inc()
        elif event == "shim.dropped":
            self.dropped.labels(task, str(record.get("reason"))).inc(record.get("count") or 1)
        elif event == "shim.judge_skipped":
            self.judge_skipped.labels(task, str(record.get("reason"))).inc(record.get("count") or 1)
        elif event == "shim.breaker":
            self.breaker.labels(task).set(_BREAKER.get(str(record.get("to")), 0))
        elif event == "shim.backoff" and record.get("state") == "paused":
            self.backoff.labels(task).inc()
