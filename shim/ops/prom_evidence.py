"""Evidence from Prometheus: what every replica's ``shim.metrics`` counted, as the
always-valid tests of ``shim watch`` and ``shim rollout`` take it.

:class:`PromEvidence` reads the counters and histograms of
:class:`~shim.metrics.PrometheusMetrics` through Prometheus's HTTP API, series by series
(one per replica and label set), and returns what each task's stage gained since the
last read, summed over the replicas. A replica that restarts starts its counters again:
when any of its series went down, all of them count from zero, once. One that is gone
(killed, scaled in) adds nothing more, and what it counted before stays counted, once.

:class:`Gains` puts them into :class:`~shim.analysis.stage_tests.StageTests` at the edge
of each histogram bucket that is worse for the task path on the side tested: for the
rollback tests a latency ratio at its bucket's low edge, the task path's latencies at
their low edges and legacy's at their high edges, content scores at their high edges
and legacy's noise at its low edges; for the promotion tests the other edges. The
values read are never worse for the task path than the true ones (a rollback), nor
better (a promotion); what one bucket hides (a ratio within 10 %, each p95 within 20 %)
is not seen. What the metrics cannot carry is not tested from them: the cost per call
(it needs each record's usage and the prices: read the logs for it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shim.analysis.stage_tests import StageTests
from shim.base.errors import ShimError

__all__ = ["Gains", "PromEvidence", "PrometheusError"]

#: The families read, after the prefix; buckets are read from ``_bucket``.
_COUNTERS = ("pairs_total", "comparisons_total", "routing_errors_total", "judge_verdicts_total")
_HISTOGRAMS = ("latency_ratio", "latency_seconds", "quality_score", "noise_score")
#: A legacy latency past the last bucket, in ms, for the p95 test (its high edge).
_PAST_LAST_MS = 1e9
#: A series not seen for this many reads is forgotten (a replica long gone, whose
#: labels will not come back: memory does not grow with a fleet's churn).
_FORGET_AFTER = 720

Side = Literal["rollback", "promotion"]
Key = tuple[str, frozenset[tuple[str, str]]]


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
    #: histogram counts by (family, path or "", bucket's low edge, its high edge)
    buckets: Counter[tuple[str, str, float, float]] = field(default_factory=Counter)

    @property
    def n(self) -> int:
        """Pairs both paths ran."""
        return sum(self.pairs.values())

    def into(self, tests: StageTests, side: Side = "rollback") -> None:
        """Add these pairs to ``tests``, read on ``side`` (see the module); to its
        :attr:`~shim.analysis.stage_tests.StageTests.promotion` tests too, read on theirs."""
        if tests.promotion is not None and side == "rollback":
            self.into(tests.promotion, "promotion")
        for (legacy_ok, candidate_ok), count in self.pairs.items():
            tests.errors.add_many(float(not candidate_ok) - float(not legacy_ok), count)
        tests.mismatches.add_many(0.0, self.matches)
        tests.mismatches.add_many(1.0, self.mismatches)
        for (family, path, low, high), count in sorted(self.buckets.items()):
            if count > 0:
                _add(tests, family, path, low, high, count, side == "rollback")

    def routing_window(self) -> Iterator[bool]:
        """Each pair's routing error (True) or not, spread evenly over the pairs, for
        the routing window (however many pairs one read brought)."""
        others = max(0, self.n - self.routing_errors)
        yield from _spread({True: self.routing_errors, False: others})

    def verdicts(self) -> Iterator[str]:
        """Each judge verdict's winner, the winners spread evenly."""
        yield from _spread(self.judged)


def _spread(counts: Mapping[Any, int]) -> Iterator[Any]:
    """Each key as often as it counts, interleaved evenly (so a window over the last
    ones holds them in their shares, not whichever came last)."""
    total = sum(counts.values())
    given: Counter[Any] = Counter()
    for i in range(1, total + 1):
        key = max(counts, key=lambda k: counts[k] * i / total - given[k])
        given[key] += 1
        yield key


def _add(
    tests: StageTests,
    family: str,
    path: str,
    low: float,
    high: float,
    count: int,
    rollback: bool,
) -> None:
    """``count`` observations of one bucket, at the edge worse for the task path on the
    side tested."""
    if family == "latency_ratio":
        ratio = low if rollback else high
        if ratio == math.inf:
            ratio = low * 2  # past the last bucket: at least its edge
        tests.latency.add_many(math.log(max(ratio, 1e-6)), count)
    elif family == "latency_seconds":
        task_ms, legacy_ms = (low, high) if rollback else (high, low)
        if path == "task":
            ms = task_ms * 1000 if task_ms < math.inf else _PAST_LAST_MS
            tests.candidate_ms.add(max(ms, 1e-3), count)
        else:
            ms = legacy_ms * 1000 if legacy_ms < math.inf else _PAST_LAST_MS
            tests.legacy_ms.add(max(ms, 1e-3), count)
    elif family == "quality_score":
        tests.quality.add_many(min(1.0, high if rollback else low), count)
    elif family == "noise_score":
        tests.noise.add_many(max(0.0, min(1.0, low if rollback else high)), count)


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
        self._last: dict[Key, float] = {}
        self._seen: dict[Key, int] = {}  # the read each series was last in
        self._reads = 0
        self._first = not from_start
        #: series in the last read, and replicas found restarted
        self.series = 0
        self.resets = 0

    def close(self) -> None:
        self._client.close()

    def poll(self) -> dict[tuple[str, str], Gains]:
        """What each (task, stage) gained since the last poll (or :meth:`rebase`);
        PrometheusError when the server cannot be asked."""
        now = self._read()
        # a replica whose counters went down restarted: all of its series begin again
        restarted = {
            _replica(key)
            for key, value in now.items()
            if key in self._last and value < self._last[key]
        }
        self.resets += len(restarted)
        counts: dict[Key, int] = {}
        for key, value in now.items():
            before = self._last.get(key)
            if before is None:
                gained = 0.0 if self._first else value
            elif _replica(key) in restarted:
                gained = value
            else:
                gained = value - before
            counts[key] = round(gained)
        self._keep(now)
        self._first = False
        return _gains(counts)

    def rebase(self, at: float | None = None) -> None:
        """Count from the counters' values at ``at`` (seconds since the epoch; None:
        now): the next :meth:`poll` gives what was gained since. A series that did not
        exist then counts from zero. A replica that restarted or left in between is
        seen only as the two reads show it (its counts then may be short)."""
        self._last, self._seen = {}, {}
        self._keep(self._read(at))
        self._first = False

    def _keep(self, now: dict[Key, float]) -> None:
        """Remember this read; a series not in it (its replica is gone) keeps its last
        value for a while, so that, were it to come back with the same labels, only
        what it gained since counts."""
        self._reads += 1
        self._last.update(now)
        self._seen.update(dict.fromkeys(now, self._reads))
        for key in [k for k, read in self._seen.items() if self._reads - read > _FORGET_AFTER]:
            del self._last[key], self._seen[key]
        self.series = len(now)

    def _read(self, at: float | None = None) -> dict[Key, float]:
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
        except httpx.HTTPError as exc:
            raise PrometheusError(f"cannot ask Prometheus at {self.url}: {exc}") from None
        try:
            body = reply.json()
        except ValueError:
            raise PrometheusError(
                f"{self.url} answered {reply.status_code} with no JSON to /api/v1/query: "
                "give the Prometheus server's base URL (as http://prometheus:9090, with its "
                "route prefix if it has one), not a replica's /metrics"
            ) from None
        ok = isinstance(body, dict) and body.get("status") == "success"
        result = (body.get("data") or {}).get("result") if ok else None
        if reply.status_code != 200 or not isinstance(result, list):
            why = body.get("error") if isinstance(body, dict) else None
            said = why if why else f"{reply.text[:200]!r} (is it Prometheus's API?)"
            raise PrometheusError(f"Prometheus at {self.url} answered {reply.status_code}: {said}")
        for item in result:
            try:
                labels, value = dict(item["metric"]), float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                yield labels, value


def _replica(key: Key) -> tuple[str | None, str | None]:
    labels = dict(key[1])
    return labels.get("instance"), labels.get("job")


def _gains(counts: Mapping[Key, int]) -> dict[tuple[str, str], Gains]:
    """The counts gained, series by series, as each (task, stage)'s gains."""
    gains: dict[tuple[str, str], Gains] = {}
    cumulative: dict[tuple[str, str, str, str], Counter[float]] = {}
    for (name, frozen), n in counts.items():
        labels = dict(frozen)
        task, stage = labels.get("task"), labels.get("stage")
        if not task or not stage:
            continue
        if name.endswith("_bucket"):  # cumulative: made per bucket below
            le = labels.get("le", "+Inf")
            edge = math.inf if le in ("+Inf", "Inf") else float(le)
            group = (task, stage, name.removesuffix("_bucket"), labels.get("path", ""))
            cumulative.setdefault(group, Counter())[edge] += n
            continue
        if n <= 0:
            continue
        found = gains.setdefault((task, stage), Gains())
        if name == "pairs_total":
            found.pairs[(labels.get("legacy") == "ok", labels.get("candidate") == "ok")] += n
        elif name == "comparisons_total" and labels.get("outcome") in ("match", "mismatch"):
            if labels["outcome"] == "match":
                found.matches += n
            else:
                found.mismatches += n
        elif name == "routing_errors_total":
            found.routing_errors += n
        elif name == "judge_verdicts_total":
            found.judged[str(labels.get("winner"))] += n
    for (task, stage, family, path), by_edge in cumulative.items():
        # Prometheus buckets count everything up to their edge: keep what each holds
        # alone, between the edge before it (as the series' own labels say) and its own
        below, low = 0, 0.0
        for edge in sorted(by_edge):
            count = by_edge[edge]
            if count > below:
                found = gains.setdefault((task, stage), Gains())
                found.buckets[(family, path, low, edge)] += count - below
            below, low = max(below, count), edge
    return gains
