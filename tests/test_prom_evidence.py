"""Reading the fleet's evidence from Prometheus's query API (shim.ops.prom_evidence),
against a stand-in server whose answers a test sets: counters per replica, resets,
replicas gone, histogram buckets, and the tests they feed."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from shim.analysis.policy import Policy
from shim.analysis.stage_tests import StageTests
from shim.metrics import LATENCY_BUCKETS, RATIO_BUCKETS
from shim.ops.prom_evidence import Gains, PrometheusError, PromEvidence
from shim.ops.watch import Watch

Series = dict[str, list[tuple[dict[str, str], float]]]


class FakePrometheus:
    """Answers ``/api/v1/query?query=NAME`` with the series set for NAME."""

    def __init__(self) -> None:
        self.series: Series = {}
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = parse_qs(urlparse(self.path).query)["query"][0]
                result = [
                    {"metric": labels, "value": [0, str(value)]}
                    for labels, value in outer.series.get(name, [])
                ]
                body = json.dumps({"status": "success", "data": {"result": result}})
                if outer.status != 200:
                    body = json.dumps({"status": "error", "error": "bad_data: no"})
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def pairs(self, **per_instance: int) -> None:
        """Each replica's ``shim_pairs_total`` of good pairs (ok, ok)."""
        self.series["shim_pairs_total"] = [
            (_labels(instance, legacy="ok", candidate="ok"), float(n))
            for instance, n in per_instance.items()
        ]


def _labels(instance: str, **more: str) -> dict[str, str]:
    return {"instance": instance, "job": "kiwi", "task": "kiwi.a", "stage": "shadow", **more}


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def gained(evidence: PromEvidence) -> int:
    return sum(g.n for g in evidence.poll().values())


def test_each_replica_is_counted_once_through_restarts_and_departures(
    prom: FakePrometheus,
) -> None:
    evidence = PromEvidence(prom.url)
    prom.pairs(a=100, b=50)
    assert gained(evidence) == 0  # the first read is the starting point
    prom.pairs(a=130, b=70)
    assert gained(evidence) == 50
    prom.pairs(a=10, b=80)  # a restarted: its counter began again
    assert gained(evidence) == 20 and evidence.resets == 1
    prom.pairs(b=90)  # a is gone
    assert gained(evidence) == 10
    prom.pairs(a=15, b=90)  # a is back with the same labels: only what it gained since
    assert gained(evidence) == 5
    evidence.close()
    from_start = PromEvidence(prom.url, from_start=True)
    assert gained(from_start) == 105
    from_start.close()


def test_histograms_are_read_bucket_by_bucket_over_replicas(prom: FakePrometheus) -> None:
    edge = RATIO_BUCKETS[40]  # 1.1 ** 9
    below = RATIO_BUCKETS[39]
    cumulative = {str(below): 2.0, str(edge): 10.0, "+Inf": 10.0}
    prom.series["shim_latency_ratio_bucket"] = [
        (_labels(i, le=le), count) for i in ("a", "b") for le, count in cumulative.items()
    ]
    evidence = PromEvidence(prom.url, from_start=True)
    (gains,) = evidence.poll().values()
    assert gains.buckets == {
        ("latency_ratio", "", 0.0, below): 4,
        ("latency_ratio", "", below, edge): 16,
    }
    evidence.close()


def test_bucket_edges_are_read_on_the_safe_side() -> None:
    """The task path's latencies at their buckets' low edges, legacy's at their high
    edges, ratios at their low edges: a fleet's bounds never roll back more readily
    than a log's."""
    gains = Gains()
    gains.pairs[(True, True)] = 400
    ms = LATENCY_BUCKETS[20]  # about 190 ms
    low_ms = LATENCY_BUCKETS[19]
    gains.buckets[("latency_seconds", "task", low_ms, ms)] = 400
    gains.buckets[("latency_seconds", "legacy", low_ms, ms)] = 400
    gains.buckets[("latency_ratio", "", RATIO_BUCKETS[30], RATIO_BUCKETS[31])] = 400
    # in one bucket the task path reads 20 % faster than legacy: no p95 breach, however
    # many pairs, where the bucket would hide a task path up to 20 % slower
    watch = Watch(Policy())
    for _ in range(10):
        assert watch.feed_gains("kiwi.a", "canary", gains) is None
    slower = Gains()
    slower.pairs[(True, True)] = 400
    slower.buckets[("latency_ratio", "", RATIO_BUCKETS[38], RATIO_BUCKETS[39])] = 400
    breach = Watch(Policy()).feed_gains("kiwi.a", "canary", slower)
    assert breach is not None
    assert any("typical latency ratio 1.95" in reason for reason in breach.reasons)


def test_the_promotion_tests_read_the_other_edge() -> None:
    """Ratios of 1.0 and 1.25 alike, typical 1.12 (over a 1.10 line): read at the low
    edges the ratio looks 1.05 and would promote; the promotion tests read the high
    edges and hold."""
    tests = StageTests(promotion=StageTests())
    gains = Gains()
    gains.pairs[(True, True)] = 4000
    gains.buckets[("latency_ratio", "", RATIO_BUCKETS[30], RATIO_BUCKETS[31])] = 2000  # to 1.0
    gains.buckets[("latency_ratio", "", RATIO_BUCKETS[33], RATIO_BUCKETS[34])] = 2000  # to 1.33
    gains.matches = 4000
    gains.into(tests)
    lines = {"error_increase": 0.005, "mismatch": 0.01, "latency_ratio": 1.10, "min_quality": None}
    plain = StageTests()
    Gains(pairs=gains.pairs, matches=4000, buckets=gains.buckets).into(plain)
    assert plain.shortfalls(**lines) == []  # low edges alone: would promote
    short = tests.shortfalls(**lines)
    assert len(short) == 1 and short[0].startswith("typical latency ratio: upper bound 1.1")


def test_a_replica_that_restarted_counts_all_its_series_from_zero(prom: FakePrometheus) -> None:
    """Only one of its series went down; all of them began again: 150 good pairs and 5
    failed ones, not 55 pairs with 5 failed (an error rate made up)."""

    def both(ok: float, failed: float) -> None:
        prom.series["shim_pairs_total"] = [
            (_labels("a", legacy="ok", candidate="ok"), ok),
            (_labels("a", legacy="ok", candidate="error"), failed),
        ]

    evidence = PromEvidence(prom.url)
    both(100, 10)
    evidence.poll()
    both(150, 5)
    (gains,) = evidence.poll().values()
    assert gains.pairs == {(True, True): 150, (True, False): 5}
    assert evidence.resets == 1
    evidence.close()


def test_routing_errors_stay_in_the_window_however_many_pairs_a_read_brings() -> None:
    for per_read in (100, 1000):
        watch, breached = Watch(Policy()), 0
        for _ in range(10):
            gains = Gains(routing_errors=per_read // 10)
            gains.pairs[(True, True)] = per_read
            gains.matches = per_read
            breached += watch.feed_gains("kiwi.a", "canary", gains) is not None
        assert breached, per_read


def test_errors_and_judges_reach_their_tests() -> None:
    gains = Gains()
    gains.pairs.update({(True, True): 260, (True, False): 40})
    gains.judged.update({"legacy": 30})
    breach = Watch(Policy()).feed_gains("kiwi.a", "canary", gains)
    assert breach is not None
    assert any("candidate error rate higher by 13.33 %" in r for r in breach.reasons)


def test_a_server_that_answers_badly_is_a_clear_error(prom: FakePrometheus) -> None:
    prom.status = 400
    evidence = PromEvidence(prom.url)
    with pytest.raises(PrometheusError, match="answered 400: bad_data"):
        evidence.poll()
    evidence.close()
    gone = PromEvidence("http://127.0.0.1:9", timeout=2)
    with pytest.raises(
        PrometheusError, match=re.escape("cannot ask Prometheus at http://127.0.0.1:9")
    ):
        gone.poll()
    gone.close()
