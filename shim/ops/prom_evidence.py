"""Evidence from Prometheus: what every replica's ``shim.metrics`` counted, as the
always-valid tests of ``shim watch`` take it.

:class:`PromEvidence` reads the counters and histograms of
:class:`~shim.metrics.PrometheusMetrics` through Prometheus's HTTP API, series by series
(one per replica and label set), and returns what each task's stage gained since the
last read, summed over the replicas. A replica that restarts starts its counters
again: a series that went down counts from zero, once. One that is gone (killed, scaled
in) adds nothing more, and what it counted before stays counted, once.

:class:`Gains` puts them into :class:`~shim.analysis.stage_tests.StageTests` on the safe
side of each histogram bucket, so that the bounds read from buckets never roll back
more often than the bounds read from each pair: a latency ratio at its bucket's low
edge, the task path's latencies at their low edges and legacy's at their high edges,
content scores at their high edges and legacy's noise at its low edges. What the
metrics cannot carry is not tested from them: the cost per call (it needs each
record's usage and the prices: read the logs for it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from shim.analysis.stage_tests import StageTests
from shim.base.errors import ShimError

__all__ = ["Gains", "PromEvidence", "PrometheusError"]

#: The families read, after the prefix; buckets are read from ``_bucket``.
_COUNTERS = ("pairs_total", "comparisons_total", "routing_errors_total", "judge_verdicts_total")
_HISTOGRAMS = ("latency_ratio", "latency_seconds", "quality_score", "noise_score")
#: A legacy latency past the last bucket, in ms, for the p95 test (its high edge).
_PAST_LAST_MS = 1e9


class PrometheusError(ShimError):
    """Prometheus cannot be read (exit 2 at start; a warning while watching)."""


@dataclass
class Gains:
    """What one task's stage gained since the last read, summed over replicas."""

    #: pairs both paths ran, by (legacy answered, task path answered)
    pairs: Counter[tuple[bool, bool]] = field(default_factory=Counter)
    matches: int = 0
    mismatches: int = 0
    routing_errors: int = 0
    #: judge verdicts by winner
    judged: Counter[str] = field(default_factory=Counter)
    #: histogram counts by (family, path or "", bucket's upper edge: float, inf last)
    buckets: Counter[tuple[str, str, float]] = field(default_factory=Counter)

    @property
    def n(self) -> int:
        """Pairs both paths ran."""
        return sum(self.pairs.values())

    def into(self, tests: StageTests) -> None:
        """Add these pairs to ``tests`` (see the module for which bucket edge each
        test reads)."""
        for (legacy_ok, candidate_ok), count in self.pairs.items():
            for _ in range(count):
                tests.errors.add(float(not candidate_ok) - float(not legacy_ok))
        for value, count in ((0.0, self.matches), (1.0, self.mismatches)):
            for _ in range(count):
                tests.mismatches.add(value)
        for (family, path, edge), count in sorted(self.buckets.items()):
            low, high = _edges(family, path, edge)
            for _ in range(count):
                _add(tests, family, path, low, high)

    def routing_window(self) -> Iterator[bool]:
        """Each pair's routing error (True) or not, for the routing window."""
        yield from (True for _ in range(self.routing_errors))
        yield from (False for _ in range(max(0, self.n - self.routing_errors)))


def _add(tests: StageTests, family: str, path: str, low: float, high: float) -> None:
    if family == "latency_ratio":
        if low > 0:
            tests.latency.add(math.log(low))
    elif family == "latency_seconds":
        if path == "task":
            tests.candidate_ms.add(max(low * 1000, 1e-3))
        else:
            tests.legacy_ms.add(high * 1000 if high < math.inf else _PAST_LAST_MS)
    elif family == "quality_score":
        tests.quality.add(min(1.0, high))
    elif family == "noise_score":
        tests.noise.add(max(0.0, low))


_EDGES: dict[str, tuple[float, ...]] = {}


def _edges(family: str, path: str, upper: float) -> tuple[float, float]:
    """A bucket's (low, high) edges: the upper edge before it, and its own."""
    if family not in _EDGES:
        from shim.metrics import LATENCY_BUCKETS, RATIO_BUCKETS, SCORE_BUCKETS

        _EDGES.update(
            latency_ratio=RATIO_BUCKETS,
            latency_seconds=LATENCY_BUCKETS,
            quality_score=SCORE_BUCKETS,
            noise_score=SCORE_BUCKETS,
        )
    edges = _EDGES[family]
    below = [e for e in edges if e < upper]
    return (below[-1] if below else 0.0), upper


class PromEvidence:
    """Reads the shim's metrics from the Prometheus server at ``url`` (its base, such
    as ``http://127.0.0.1:9090``). The first :meth:`poll` takes what the counters hold
    as its starting point (nothing gained), unless ``from_start``, when everything they
    counted is new."""

    def __init__(
        self, url: str, *, prefix: str = "shim", from_start: bool = False, timeout: float = 10.0
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.prefix = prefix
        self._client = httpx.Client(timeout=timeout)
        self._last: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self._first = not from_start
        #: series seen, and series that went down (a replica restarted)
        self.series = 0
        self.resets = 0

    def close(self) -> None:
        self._client.close()

    def poll(self) -> dict[tuple[str, str], Gains]:
        """What each (task, stage) gained since the last poll (or :meth:`rebase`);
        PrometheusError when the server cannot be asked."""
        gains: dict[tuple[str, str], Gains] = {}
        now = self._read()
        for key, value in now.items():
            before = self._last.get(key)
            if before is None:
                gained = 0.0 if self._first else value
            elif value < before:  # the replica restarted: its counter began again
                self.resets += 1
                gained = value
            else:
                gained = value - before
            if gained > 0:
                _credit(gains, key[0], dict(key[1]), round(gained))
        # a series not in this read (its replica is gone) keeps its last value: were it
        # to come back with the same labels, only what it gained since counts
        self._last.update(now)
        self.series = len(now)
        self._first = False
        for found in gains.values():
            _uncumulate(found)
        return gains

    def rebase(self, at: float | None = None) -> None:
        """Count from the counters' values at ``at`` (seconds since the epoch; None:
        now): the next :meth:`poll` gives what was gained since. A series that did not
        exist then counts from zero."""
        self._last = self._read(at)
        self._first = False

    def _read(self, at: float | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        found = {}
        for name in (*_COUNTERS, *(f"{h}_bucket" for h in _HISTOGRAMS)):
            for labels, value in self._query(f"{self.prefix}_{name}", at):
                found[(name, frozenset(labels.items()))] = value
        return found

    def _query(self, selector: str, at: float | None) -> Iterator[tuple[dict[str, str], float]]:
        import httpx

        params = {"query": selector} | ({} if at is None else {"time": f"{at:.3f}"})
        try:
            reply = self._client.get(f"{self.url}/api/v1/query", params=params)
            body = reply.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusError(f"cannot ask Prometheus at {self.url}: {exc}") from None
        if reply.status_code != 200 or body.get("status") != "success":
            why = body.get("error") if isinstance(body, dict) else reply.text[:200]
            raise PrometheusError(f"Prometheus at {self.url} answered {reply.status_code}: {why}")
        for item in body["data"]["result"]:
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                yield dict(item["metric"]), value


def _credit(
    gains: dict[tuple[str, str], Gains], name: str, labels: Mapping[str, str], n: int
) -> None:
    task, stage = labels.get("task"), labels.get("stage")
    if not task or not stage:
        return
    found = gains.setdefault((task, stage), Gains())
    if name == "pairs_total":
        found.pairs[(labels.get("legacy") == "ok", labels.get("candidate") == "ok")] += n
    elif name == "comparisons_total":
        if labels.get("outcome") == "match":
            found.matches += n
        elif labels.get("outcome") == "mismatch":
            found.mismatches += n
    elif name == "routing_errors_total":
        found.routing_errors += n
    elif name == "judge_verdicts_total":
        found.judged[str(labels.get("winner"))] += n
    else:  # a histogram's cumulative bucket, made per bucket in _uncumulate
        family = name.removesuffix("_bucket")
        le = labels.get("le", "+Inf")
        edge = math.inf if le in ("+Inf", "Inf") else float(le)
        found.buckets[(family, labels.get("path", ""), edge)] += n


def _uncumulate(found: Gains) -> None:
    """Prometheus buckets count everything up to their edge: keep what each holds alone."""
    cumulative: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for (family, path, edge), count in found.buckets.items():
        cumulative.setdefault((family, path), []).append((edge, count))
    found.buckets = Counter()
    for (family, path), edges in cumulative.items():
        below = 0
        for edge, count in sorted(edges):
            if count > below:
                found.buckets[(family, path, edge)] = count - below
            below = max(below, count)
