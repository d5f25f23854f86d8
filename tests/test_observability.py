"""Prometheus metrics scraped over HTTP after a known sequence of calls, and
OpenTelemetry spans with the GenAI attributes, from a Shim against the simulator."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from typing import Any

import prometheus_client
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from shim import BreakerPolicy, TaskRequest
from shim.metrics import PrometheusMetrics
from shim.sim import Profile, Simulator

from .conftest import QUIET
from .shimkit import make_shim, records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def plan(i: int) -> list[dict[str, Any]]:
    return [{"day": 1, "meal_type": "dinner", "recipe_id": i, "suggestion": "soup"}]


def test_prometheus_metrics_after_a_known_sequence(sim: Simulator, tmp_path: Path) -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    port = free_port()
    server, _ = metrics.serve(port)
    shim = make_shim(
        sim.url,
        tmp_path,
        "kiwi.meal_plan: {serve: 0, shadow: 100}\nkiwi.ocr: {serve: 100}\n",
        metrics=metrics,
        breaker=BreakerPolicy(failures=3, window=60, cooldown=60),
    )
    shadowed = shim.shadow(
        product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=f"p{i}")
    )(plan)
    served = shim.shadow(
        product="kiwi", task="ocr", request=lambda i: TaskRequest(prompt="scan", payload={"i": i})
    )(lambda i: {"legacy": i})
    try:
        for i in range(10):
            shadowed(i)
        shim.flush()
        for i in range(4):
            served(i)  # the task path serves
        sim.set_profile(Profile(seed=3, defaults={"error_rate": 1.0, "error_status": 500}))
        for i in range(5):
            served(i)  # 3 fall back and open the breaker; 2 go straight to legacy
        shim.flush()
        found = scrape(port)
    finally:
        sim.set_profile(QUIET)
        shim.close()
        server.shutdown()
        server.server_close()
    meal = (("task", "kiwi.meal_plan"),)
    ocr = (("task", "kiwi.ocr"),)
    assert found[("shim_calls_total", (("served_by", "legacy"), *meal))] == 10
    assert found[("shim_calls_total", (("served_by", "task"), *ocr))] == 4
    assert found[("shim_calls_total", (("served_by", "legacy_fallback"), *ocr))] == 3
    assert found[("shim_calls_total", (("served_by", "legacy"), *ocr))] == 2
    shadow, live = ("stage", "shadow"), ("stage", "live")
    match = (("outcome", "match"), ("served_by", "legacy"), shadow, *meal)
    assert found[("shim_comparisons_total", match)] == 10
    fell_back = (("outcome", "error"), ("served_by", "legacy_fallback"), live, *ocr)
    assert found[("shim_comparisons_total", fell_back)] == 3
    assert found[("shim_dropped_total", (("reason", "breaker_open"), *ocr))] == 2
    assert found[("shim_breaker_state", ocr)] == 2  # open
    assert found[("shim_latency_seconds_count", (("path", "task"), shadow, *meal))] == 10
    assert found[("shim_latency_seconds_count", (("path", "legacy"), shadow, *meal))] == 10
    assert found[("shim_latency_seconds_count", (("path", "legacy"), live, *ocr))] == 3
    # the evidence shim watch --prometheus reads
    ok_ok = (("candidate", "ok"), ("legacy", "ok"), shadow, *meal)
    assert found[("shim_pairs_total", ok_ok)] == 10
    assert found[("shim_pairs_total", (("candidate", "error"), ("legacy", "ok"), live, *ocr))] == 3
    timed = [r for r in records(tmp_path / "log.jsonl") if r["task"] == "meal_plan"]
    timed = [r for r in timed if r["legacy"]["latency_ms"] > 0]  # legacy here takes ~0 ms
    assert found[("shim_latency_ratio_count", (shadow, *meal))] == len(timed)
    assert ("shim_latency_ratio_count", (live, *ocr)) not in found  # no pair both answered


def test_opentelemetry_spans_carry_the_genai_attributes(sim: Simulator, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    shim = make_shim(
        sim.url, tmp_path, "kiwi.meal_plan: {serve: 100}\n", tracer=provider.get_tracer("t")
    )
    served = shim.shadow(
        product="kiwi", task="meal_plan", request=lambda i: TaskRequest(prompt=f"plan week {i}")
    )(plan)
    served(1)
    sim.set_profile(Profile(seed=3, defaults={"error_rate": 1.0, "error_status": 429}))
    served(2)  # falls back: the span says why
    sim.set_profile(QUIET)
    shim.close()
    ok, busy = exporter.get_finished_spans()
    assert ok.name == "chat qwen2.5-3b-instruct"
    assert ok.kind.name == "CLIENT"
    attributes = dict(ok.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "qwen2.5-3b-instruct"
    assert attributes["gen_ai.response.model"] == "qwen2.5-3b-instruct"
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["shim.task"] == "kiwi.meal_plan" and attributes["shim.path"] == "serve"
    assert ok.status.is_ok
    assert dict(busy.attributes or {})["error.type"] == "429"
    assert not busy.status.is_ok


def test_a_span_never_carries_the_key_an_error_quoted() -> None:
    """A task-path error quoting the key reaches the span's status redacted, as it
    reaches records: spans leave the process too."""
    from shim.testing import TestShim

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    key = "sk-span-secret-0123456789"

    def answer(request: TaskRequest) -> str:
        raise RuntimeError(f"node refused Bearer {key}")

    with TestShim(
        {"kiwi.ocr": {"shadow": 100}}, api_key=key, answer=answer, tracer=provider.get_tracer("t")
    ) as s:
        s.shadow(product="kiwi", task="ocr", request=lambda: TaskRequest())(lambda: "legacy")()
        s.flush()
    [span] = exporter.get_finished_spans()
    description = span.status.description or ""
    assert "Bearer [redacted]" in description and key[:6] not in description
