"""What each path did on one call, and the comparison record built from both. No I/O.

How values are copied, hashed and described is :mod:`shim.records.values`; its names
are importable from here too.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from shim.comparators import Comparator, ModelNames, Quality, Structure
from shim.records.callid import new_call_id
from shim.records.capture import Capture
from shim.records.soft import is_soft_failure, soft_failure_error
from shim.records.usage import usage_record
from shim.records.values import (
    NOT_RECORDED,
    OnError,
    OutputNotRecorded,
    cap,
    capture,
    describe,
    digest,
    kept,
    restore,
    size_of,
)

__all__ = [
    "NOT_RECORDED",
    "SCHEMA",
    "CallSite",
    "Observation",
    "OutputNotRecorded",
    "Pending",
    "Stream",
    "capture",
    "comparison_record",
    "describe",
    "envelope",
    "is_soft_failure",
    "pending_bytes",
    "restore",
    "soft_failure_error",
]

SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Stream:
    """How a streamed output came: milliseconds to the first chunk (None: none came)
    and how many chunks."""

    ttft_ms: float | None
    chunks: int


@dataclass(frozen=True, slots=True)
class Observation:
    """One path's side of one call."""

    ok: bool
    latency_ms: float
    value: Any = NOT_RECORDED  # captured output (see capture/restore)
    error: str | None = None
    model: str | None = None
    service_type: str | None = None
    node_id: str | None = None
    status: int | None = None
    prompt: str | None = None  # the task request's prompt (kept only if capture is on)
    usage: Mapping[str, Any] | None = None  # as reported (OpenAI-style or GenAI names)
    stream: Stream | None = None  # a streamed output's timing


@dataclass(frozen=True, slots=True)
class CallSite:
    """A decorated call site, as records and decisions need it."""

    product: str
    task: str
    name: str  # product.task
    call_site: str  # module:qualname
    request: Callable[..., Any]
    response: Callable[[Any], Any]
    legacy_model: str | Callable[[Any], str | None] | None
    output: Comparator
    key: Callable[..., Any] | None
    fallback: bool
    expected_model: str | None
    #: False; True: returns a context manager yielding an allocation; "entered":
    #: returns ``(value, ctx)`` with ``ctx`` entered and holding one.
    allocation: bool | str = False
    legacy_usage: Callable[[Any], Mapping[str, Any] | None] | None = None
    #: The service to release a task allocation from when the answer names none.
    service_hint: str | Callable[..., str | None] | None = None
    #: True for a value the call site returns instead of failing (None, "", []).
    soft_failure: Callable[[Any], bool] | None = None
    #: Legacy has side effects that must happen once per call: False; True (legacy
    #: always runs, never twice); "serve" (the task path may serve all the same).
    side_effects: bool | str = False
    #: A stream (a generator, or ``stream=``): False, "sync" or "async".
    stream: bool | str = False
    #: What a served stream broken after its first piece raises (``stream_error=``).
    stream_error: Callable[[BaseException], BaseException] | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """A finished pair of observations waiting to become a record."""

    site: CallSite
    stage: str
    served_by: str
    legacy: Observation
    candidate: Observation
    noise: Any = NOT_RECORDED  # legacy's output from a second run, for calibration
    #: A judge's verdict on the pair (the record's ``judge``), when one was asked.
    judge: Mapping[str, Any] | None = None
    #: When the call was compared (``time.time()``), if the record is made later.
    at: float | None = None


def pending_bytes(pending: Pending) -> int:
    """The bytes a queued comparison holds, estimated
    (:func:`~shim.records.values.size_of` of its outputs and prompts)."""
    legacy, candidate = pending.legacy, pending.candidate
    return (
        size_of(legacy.value)
        + size_of(candidate.value)
        + size_of(pending.noise)
        + size_of(legacy.prompt)
        + size_of(candidate.prompt)
    )


def envelope(
    event: str, product: str | None, task: str | None, when: float | None = None
) -> dict[str, Any]:
    """The fields every record starts with, stamped now (or ``when``, in seconds since
    the epoch)."""
    return {
        "event": event,
        "schema": SCHEMA,
        "ts": _stamp(time.time() if when is None else when),
        "product": product,
        "task": task,
    }


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _stamp(when: float) -> str:
    """``2026-11-26T12:00:00.123456Z``; the seconds part is formatted once per second."""
    whole = int(when)
    return f"{_second(whole)}.{int((when - whole) * 1_000_000):06d}Z"


def _side(
    obs: Observation,
    value: Any,
    *,
    candidate: bool,
    on_error: OnError,
    why: str | None = None,
    capture: Capture | None = None,
) -> dict[str, Any]:
    """One path's side of the record. An output that cannot be hashed (a cycle, keys
    JSON has no name for, a ``repr`` that raises) leaves ``output_sha256`` and
    ``output_bytes`` null and says why in ``render_error``, counted (``render_output``);
    so does one that was not recorded at all (``why``)."""
    sha = size = None
    if value is not NOT_RECORDED:
        try:
            sha, size = digest(value)
        except Exception as exc:  # the record is still written, without the digest
            on_error("render_output", exc)
            why, value = f"not rendered: {describe(exc)}", NOT_RECORDED
    side: dict[str, Any] = {
        "ok": obs.ok,
        "latency_ms": round(obs.latency_ms, 3),
        "model": obs.model,
    }
    if candidate:
        side.update(service_type=obs.service_type, node_id=obs.node_id, status=obs.status)
    side.update(error=obs.error, output_sha256=sha, output_bytes=size)
    usage = usage_record(obs.usage)
    if usage:
        side["usage"] = usage
    if obs.stream is not None:
        ttft = obs.stream.ttft_ms
        side.update(ttft_ms=None if ttft is None else round(ttft, 3), chunks=obs.stream.chunks)
    if capture is not None:
        side["output"] = None if value is NOT_RECORDED else _captured(capture, value, on_error)
        if candidate:
            side["prompt"] = capture.text(obs.prompt)
    if why is not None:
        side["render_error"] = why
    return side


def _captured(capture: Capture, value: Any, on_error: OnError) -> str | None:
    # The digest above rendered it already; a value that still fails here (a repr that
    # raises only sometimes) is left out and counted, and the record written.
    try:
        return capture.text(value)
    except Exception as exc:
        on_error("render_output", exc)
        return None


def _with_noise(
    structure: dict[str, Any],
    site: CallSite,
    legacy_value: Any,
    pending: Pending,
    on_error: Callable[[str, BaseException], None],
) -> dict[str, Any]:
    """Add the legacy-vs-legacy comparison, and which candidate differences it explains."""
    if pending.noise is NOT_RECORDED or legacy_value is NOT_RECORDED:
        return structure
    try:
        noise = site.output.compare(legacy_value, pending.noise)
    except Exception as exc:
        on_error("compare", exc)
        return structure
    structure["noise"] = {"match": noise.match, "diff": list(noise.diff) if noise.diff else None}
    if noise.quality is not None and noise.quality.failure is not None:
        on_error("quality", noise.quality.failure)
    elif noise.quality is not None and noise.quality.score is not None:
        # legacy against itself: pooled per task, the score an equal candidate gets
        structure["noise"]["score"] = round(noise.quality.score, 4)
    noisy = {d.split(":", 1)[0] for d in noise.diff or ()}
    structure["noise_paths"] = [
        d for d in structure.get("diff") or () if d.split(":", 1)[0] in noisy
    ]
    return structure


Side = tuple[Observation, Any, str | None]  # what a path did, its output, why none


def _structure(
    site: CallSite, legacy: Side, candidate: Side, on_error: OnError
) -> tuple[dict[str, Any], Quality | None]:
    """The record's ``structure``: the comparator's verdict on two answered sides; null
    when a side failed (its ``error`` says why), or, with ``error`` saying why, when an
    output was not recorded or the comparator raised (counted, ``compare``). Beside it,
    the content score when the comparator made one (a scorer that raised is counted,
    ``quality``, and its score is null)."""
    if not (legacy[0].ok and candidate[0].ok):
        return _NO_STRUCTURE.as_record(), None
    missing = [
        f"{name} output {why}"
        for name, (_, value, why) in (("legacy", legacy), ("candidate", candidate))
        if value is NOT_RECORDED
    ]
    if missing:
        return {**_NO_STRUCTURE.as_record(), "error": "; ".join(missing)}, None
    try:
        verdict = site.output.compare(legacy[1], candidate[1])
    except Exception as exc:
        on_error("compare", exc)
        return {**_NO_STRUCTURE.as_record(), "error": describe(exc)}, None
    quality = verdict.quality
    if quality is not None and quality.failure is not None:
        on_error("quality", quality.failure)
    return verdict.as_record(), quality


_NO_STRUCTURE = Structure(None, None, None, None)


def _model_name(name: Any) -> str | None:
    """What ``legacy_model=`` read from legacy's output, if it is a name (capped)."""
    if name is None or isinstance(name, str):
        return cap(name)
    raise TypeError(f"legacy_model returned a {type(name).__name__}, not a model name")


def comparison_record(
    pending: Pending,
    names: ModelNames,
    on_error: OnError,
    capture: Capture | None = None,
) -> dict[str, Any]:
    """The schema-1 ``shim.comparison`` record for one call.

    Whatever the outputs are, the record is made: an output that was not recorded or
    cannot be rendered says why in its side's ``render_error``; a comparison that could
    not be made leaves ``structure.match`` null and says why in ``structure.error``.
    Each of these is counted through ``on_error``."""
    site = pending.site
    legacy_value, legacy_why = kept(pending.legacy.value, pending.legacy.ok, "legacy", on_error)
    candidate_value, candidate_why = kept(
        pending.candidate.value, pending.candidate.ok, "candidate", on_error
    )
    legacy_model = pending.legacy.model
    if legacy_model is None and pending.legacy.ok and callable(site.legacy_model):
        try:
            legacy_model = _model_name(site.legacy_model(legacy_value))
        except Exception as exc:
            on_error("legacy_model", exc)
    legacy_usage = pending.legacy.usage
    if site.legacy_usage is not None and pending.legacy.ok and legacy_value is not NOT_RECORDED:
        try:
            legacy_usage = site.legacy_usage(legacy_value)
        except Exception as exc:
            on_error("legacy_usage", exc)
    legacy = pending.legacy
    if legacy_model is not legacy.model or legacy_usage is not legacy.usage:
        legacy = replace(legacy, model=legacy_model, usage=legacy_usage)
    if legacy.ok and legacy_value is not NOT_RECORDED and site.soft_failure is not None:
        try:
            soft = bool(site.soft_failure(legacy_value))
        except Exception as exc:
            on_error("soft_failure", exc)
            soft = False
        if soft:  # legacy swallowed a failure into an empty value: never a match
            error = f"SoftFailure: {soft_failure_error('legacy', legacy_value)}"
            legacy = replace(legacy, ok=False, error=error)
    structure, quality = _structure(
        site,
        (legacy, legacy_value, legacy_why),
        (pending.candidate, candidate_value, candidate_why),
        on_error,
    )
    try:
        compared = _with_noise(structure, site, legacy_value, pending, on_error)
    except Exception as exc:  # a comparator's diff that is not text: keep the record
        on_error("compare", exc)
        compared = structure
    ratio = None
    if legacy.ok and pending.candidate.ok and legacy.latency_ms > 0:
        ratio = round(pending.candidate.latency_ms / legacy.latency_ms, 4)
    record = envelope("shim.comparison", site.product, site.task)
    if pending.at is not None:  # made later than the call (a judge's answer waited for)
        record["ts"] = _stamp(pending.at)
    record.update(
        {
            "call_site": site.call_site,
            "call_id": new_call_id(),
            "stage": pending.stage,
            "served_by": pending.served_by,
            "legacy": _side(
                legacy,
                legacy_value,
                candidate=False,
                on_error=on_error,
                why=legacy_why,
                capture=capture,
            ),
            "candidate": _side(
                pending.candidate,
                candidate_value,
                candidate=True,
                on_error=on_error,
                why=candidate_why,
                capture=capture,
            ),
            "model": names.check(
                site.name,
                legacy_model,
                pending.candidate.model,
                pending.candidate.service_type,
                site.expected_model,
            ).as_record(),
            "structure": compared,
            "latency_ratio": ratio,
        }
    )
    if quality is not None:
        record["quality"] = quality.as_record()
    if pending.judge is not None:
        record["judge"] = dict(pending.judge)
    return record
