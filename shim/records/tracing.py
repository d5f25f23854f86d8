"""OpenTelemetry spans for task-path calls, named and attributed per the GenAI semantic
conventions (``pip install 'task-shim[otel]'``; pass ``Shim(tracer=...)``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from shim.base.cut import cut_short
from shim.records.observe import CallSite, Observation
from shim.records.usage import usage_record

__all__ = ["end_span", "start_span"]


def start_span(tracer: Any, site: CallSite, orch_url: str, path: str) -> Any:
    """A client span for one task-path call; ``path`` is ``serve`` or ``shadow``."""
    from opentelemetry.trace import SpanKind

    model = site.expected_model
    url = urlsplit(orch_url)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "cf-orch",
        "server.address": url.hostname or "",
        "shim.task": site.name,
        "shim.path": path,
    }
    if url.port:
        attributes["server.port"] = url.port
    if model:
        attributes["gen_ai.request.model"] = model
    name = f"chat {model}" if model else f"chat {site.name}"
    return tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)


def end_span(
    span: Any,
    observed: Observation,
    result: Any,
    error: BaseException | None,
    redact: Callable[[str], str] = str,
) -> None:
    """What came back: the model, the node, tokens; or the error (its text cut short,
    then ``redact``-ed: spans leave the process as records do)."""
    from opentelemetry.trace import Status, StatusCode

    if observed.model:
        span.set_attribute("gen_ai.response.model", observed.model)
    if observed.service_type:
        span.set_attribute("shim.service_type", observed.service_type)
    if observed.node_id:
        span.set_attribute("shim.node_id", observed.node_id)
    usage = usage_record(getattr(result, "usage", None))
    for key in ("input_tokens", "output_tokens"):
        if key in usage:
            span.set_attribute(f"gen_ai.usage.{key}", int(usage[key]))
    if error is not None:
        status = getattr(error, "status", None)
        span.set_attribute("error.type", str(status) if status else type(error).__name__)
        span.set_status(Status(StatusCode.ERROR, redact(cut_short(str(error), 200))))
    span.end()
