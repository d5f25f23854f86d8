"""Prometheus metrics for a Shim (``pip install 'task-shim[metrics]'``).

    from shim.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()            # the default prometheus_client registry
    metrics.serve(9464)                      # GET http://127.0.0.1:9464/metrics
    shim = Shim(..., metrics=metrics)

Everything but the call counter is read from the records as they are made, off the
callers' threads (on the recorder's thread): the callers pay for one
labelled counter increment per call, and nothing at all without ``metrics``.

``shim_calls_total{task, served_by}``, ``shim_comparisons_total{task, stage,
served_by, outcome}`` (``match``, ``mismatch``, ``error``: either path failed,
``unchecked``: nothing to compare), ``shim_dropped_total{task, reason}``,
``shim_breaker_state{task}`` (0 closed, 1 half-open, 2 open), ``shim_backoff_total{task}``
(pauses after a 429 or 503) and ``shim_latency_seconds{task, stage, path}``
(``legacy``, ``task``); with a judge, ``shim_judge_verdicts_total{task, stage, winner}``
(``legacy``, ``candidate``, ``tie``) and ``shim_judge_skipped_total{task, reason}``.

The evidence ``shim watch --prometheus`` tests, summed over replicas by PromQL:
``shim_pairs_total{task, stage, legacy, candidate}`` (each ``ok`` or ``error``: the
pairs both paths ran), ``shim_latency_ratio{task, stage}`` (task path over legacy, per
pair both answered; buckets 10 % apart), ``shim_quality_score{task, stage}`` (content
scores, buckets 0.02 wide), ``shim_noise_score{task, stage}`` (legacy against itself)
and ``shim_routing_errors_total{task, stage}``. Labels are
bounded: tasks, the four stages, and fixed values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["LATENCY_BUCKETS", "RATIO_BUCKETS", "SCORE_BUCKETS", "PrometheusMetrics"]

_BREAKER = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
#: From 5 ms to 2 minutes, each 20 % over the one before: LLM calls (fine enough for
#: the p95 test read from them, whose bounds are taken at a bucket's far edge).
LATENCY_BUCKETS = tuple(round(0.005 * 1.2**i, 6) for i in range(56))
#: Task path over legacy, from 1/20 to 20, each 10 % over the one before.
RATIO_BUCKETS = tuple(round(1.1**i, 6) for i in range(-31, 32))
#: Content scores, 0.02 wide.
SCORE_BUCKETS = tuple(round(i / 50, 2) for i in range(1, 51))
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
    "pairs": "Pairs both paths ran, by whether each answered",
    "latency_ratio": "Task path latency over legacy's, per pair both answered",
    "quality_score": "Content scores of compared pairs",
    "noise_score": "Legacy scored against a second answer of its own (noise runs)",
    "routing_errors": "Pairs whose task path went where the configuration does not send it",
}


class PrometheusMetrics:
    """A Shim's counters, gauge and histograms on a prometheus_client registry."""

    def __init__(self, registry: Any = None, *, prefix: str = "shim") -> None:
        import prometheus_client as prom

        self.registry = registry if registry is not None else prom.REGISTRY

        def family(kind: Any, name: str, *labels: str, **options: Any) -> Any:
            return kind(f"{prefix}_{name}", _HELP[name], labels, registry=self.registry, **options)

        self.calls = family(prom.Counter, "calls", "task", "served_by")
        self.comparisons = family(
            prom.Counter, "comparisons", "task", "stage", "served_by", "outcome"
        )
        self.dropped = family(prom.Counter, "dropped", "task", "reason")
        self.breaker = family(prom.Gauge, "breaker_state", "task")
        self.backoff = family(prom.Counter, "backoff", "task")
        self.latency = family(
            prom.Histogram, "latency_seconds", "task", "stage", "path", buckets=LATENCY_BUCKETS
        )
        self.judge_verdicts = family(prom.Counter, "judge_verdicts", "task", "stage", "winner")
        self.pairs = family(prom.Counter, "pairs", "task", "stage", "legacy", "candidate")
        self.latency_ratio = family(
            prom.Histogram, "latency_ratio", "task", "stage", buckets=RATIO_BUCKETS
        )
        self.quality = family(
            prom.Histogram, "quality_score", "task", "stage", buckets=SCORE_BUCKETS
        )
        self.noise = family(prom.Histogram, "noise_score", "task", "stage", buckets=SCORE_BUCKETS)
        self.routing = family(prom.Counter, "routing_errors", "task", "stage")
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
        """A record being written (on the recorder's thread)."""
        event = record.get("event")
        task = f"{record.get('product')}.{record.get('task')}"
        if event == "shim.comparison":
            self._comparison(task, record)
        elif event == "shim.dropped":
            self.dropped.labels(task, str(record.get("reason"))).inc(record.get("count") or 1)
        elif event == "shim.judge_skipped":
            self.judge_skipped.labels(task, str(record.get("reason"))).inc(record.get("count") or 1)
        elif event == "shim.breaker":
            self.breaker.labels(task).set(_BREAKER.get(str(record.get("to")), 0))
        elif event == "shim.backoff" and record.get("state") == "paused":
            self.backoff.labels(task).inc()

    def _comparison(self, task: str, record: Mapping[str, Any]) -> None:
        legacy, candidate = record.get("legacy") or {}, record.get("candidate") or {}
        stage = str(record.get("stage"))
        structure = record.get("structure") or {}
        match = structure.get("match")
        both = bool(legacy.get("ok")) and bool(candidate.get("ok"))
        if not both:
            outcome = "error"
        elif match is None:
            outcome = "unchecked"
        else:
            outcome = "match" if match else "mismatch"
        self.comparisons.labels(task, stage, str(record.get("served_by")), outcome).inc()
        if legacy.get("ok") is not None and candidate.get("ok") is not None:
            sides = ("ok" if legacy["ok"] else "error", "ok" if candidate["ok"] else "error")
            self.pairs.labels(task, stage, *sides).inc()
        times = {}
        for side, path in ((legacy, "legacy"), (candidate, "task")):
            ms = side.get("latency_ms")
            if side.get("ok") and isinstance(ms, int | float) and 0 <= ms < math.inf:
                self.latency.labels(task, stage, path).observe(ms / 1000)
                times[path] = ms
        if both and len(times) == 2 and times["legacy"] > 0:
            self.latency_ratio.labels(task, stage).observe(times["task"] / times["legacy"])
        quality, noise = record.get("quality"), structure.get("noise")
        for histogram, part in ((self.quality, quality), (self.noise, noise)):
            score = _score(part)
            if score is not None:
                histogram.labels(task, stage).observe(score)
        if (record.get("model") or {}).get("routing_error"):
            self.routing.labels(task, stage).inc()
        judge = record.get("judge")
        if isinstance(judge, dict) and judge.get("winner") in ("legacy", "candidate", "tie"):
            self.judge_verdicts.labels(task, stage, judge["winner"]).inc()


def _score(part: Any) -> float | None:
    """A ``quality`` (or ``noise``) part's score, within 0..1; None without one."""
    score = part.get("score") if isinstance(part, dict) else None
    if not isinstance(score, int | float) or isinstance(score, bool) or score != score:
        return None
    return min(1.0, max(0.0, float(score)))
