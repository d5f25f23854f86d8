"""What each path did on one call, and the comparison record built from both. No I/O."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import pickle
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from shim.comparators import Comparator, ModelNames, Structure
from shim.records.capture import Capture

__all__ = [
    "NOT_RECORDED",
    "SCHEMA",
    "CallSite",
    "Observation",
    "Pending",
    "capture",
    "comparison_record",
    "describe",
    "envelope",
    "is_soft_failure",
    "restore",
    "soft_failure_error",
]

SCHEMA = 1


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: A value that was not recorded (the path failed, or its output could not be copied).
NOT_RECORDED: Any = _Sentinel("NOT_RECORDED")

_IMMUTABLE = (str, bytes, int, float, bool, type(None), frozenset)


class _Pickled:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def capture(value: Any) -> Any:
    """A private copy of ``value`` that later changes to ``value`` cannot reach.

    Immutable values are kept as they are; others are pickled here (a few µs) and
    unpickled off the caller's path by :func:`restore`.
    """
    if isinstance(value, _IMMUTABLE) or (
        type(value) is tuple and all(isinstance(v, _IMMUTABLE) for v in value)
    ):
        return value
    try:
        return _Pickled(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        try:
            return copy.deepcopy(value)
        except Exception:
            return NOT_RECORDED


def restore(captured: Any) -> Any:
    """The value :func:`capture` kept."""
    if isinstance(captured, _Pickled):
        return pickle.loads(captured.data)
    return captured


def describe(exc: BaseException) -> str:
    """``ClassName: message``, one line, short; never a traceback."""
    message = " ".join(str(exc).split())
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


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


@dataclass(frozen=True, slots=True)
class Pending:
    """A finished pair of observations waiting to become a record."""

    site: CallSite
    stage: str
    served_by: str
    legacy: Observation
    candidate: Observation
    noise: Any = NOT_RECORDED  # legacy's output from a second run, for calibration


def envelope(event: str, product: str | None, task: str | None) -> dict[str, Any]:
    """The fields every record starts with, stamped now."""
    return {
        "event": event,
        "schema": SCHEMA,
        "ts": _stamp(time.time()),
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


def _digest(value: Any) -> tuple[str | None, int | None]:
    if value is NOT_RECORDED:
        return None, None
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    else:
        data = json.dumps(
            value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=repr
        ).encode()
    return hashlib.sha256(data).hexdigest(), len(data)


_USAGE_NAMES = (
    ("input_tokens", ("input_tokens", "prompt_tokens")),
    ("output_tokens", ("output_tokens", "completion_tokens")),
    ("gpu_s", ("gpu_s", "gpu_seconds")),
)


def usage_record(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """A path's usage as records keep it: ``input_tokens``, ``output_tokens`` (from the
    OpenAI names too) and ``gpu_s``, each only if reported as a number."""
    if not usage:
        return {}
    out: dict[str, Any] = {}
    for name, accepted in _USAGE_NAMES:
        for key in accepted:
            value = usage.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                out[name] = value
                break
    return out


def _side(
    obs: Observation, value: Any, *, candidate: bool, capture: Capture | None = None
) -> dict[str, Any]:
    sha, size = _digest(value)
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
    if capture is not None:
        side["output"] = None if value is NOT_RECORDED else capture.text(value)
        if candidate:
            side["prompt"] = capture.text(obs.prompt)
    return side


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
    noisy = {d.split(":", 1)[0] for d in noise.diff or ()}
    structure["noise_paths"] = [
        d for d in structure.get("diff") or () if d.split(":", 1)[0] in noisy
    ]
    return structure


def is_soft_failure(value: Any) -> bool:
    """The default soft-failure rule: ``None``, a blank string, or an empty container
    is what a call site returns when it swallowed a failure, not an answer."""
    if value is None:
        return True
    if isinstance(value, str | bytes):
        return not value.strip()
    if isinstance(value, list | tuple | dict | set | frozenset):
        return not value
    return False


def soft_failure_error(side: str, value: Any) -> str:
    """Why a side's value was a soft failure (the message of a ``SoftFailure``)."""
    shown = repr(value) if value is None or len(repr(value)) <= 20 else type(value).__name__
    return f"{side} returned {shown}, which the call site counts as a failure"


def comparison_record(
    pending: Pending,
    names: ModelNames,
    on_error: Callable[[str, BaseException], None],
    capture: Capture | None = None,
) -> dict[str, Any]:
    """The schema-1 ``shim.comparison`` record for one call."""
    site = pending.site
    legacy_value = restore(pending.legacy.value)
    candidate_value = restore(pending.candidate.value)
    legacy_model = pending.legacy.model
    if legacy_model is None and pending.legacy.ok and callable(site.legacy_model):
        try:
            legacy_model = site.legacy_model(legacy_value)
        except Exception as exc:
            on_error("legacy_model", exc)
    legacy_usage = pending.legacy.usage
    if site.legacy_usage is not None and pending.legacy.ok and legacy_value is not NOT_RECORDED:
        try:
            legacy_usage = site.legacy_usage(legacy_value)
        except Exception as exc:
            on_error("legacy_usage", exc)
    legacy = replace(pending.legacy, model=legacy_model, usage=legacy_usage)
    if legacy.ok and legacy_value is not NOT_RECORDED and site.soft_failure is not None:
        try:
            soft = site.soft_failure(legacy_value)
        except Exception as exc:
            on_error("soft_failure", exc)
            soft = False
        if soft:  # legacy swallowed a failure into an empty value: never a match
            error = f"SoftFailure: {soft_failure_error('legacy', legacy_value)}"
            legacy = replace(legacy, ok=False, error=error)
    if (
        legacy.ok
        and pending.candidate.ok
        and legacy_value is not NOT_RECORDED
        and candidate_value is not NOT_RECORDED
    ):
        try:
            structure = site.output.compare(legacy_value, candidate_value)
        except Exception as exc:
            on_error("compare", exc)
            structure = Structure(None, None, None, None)
    else:
        structure = Structure(None, None, None, None)
    ratio = None
    if legacy.ok and pending.candidate.ok and legacy.latency_ms > 0:
        ratio = round(pending.candidate.latency_ms / legacy.latency_ms, 4)
    record = envelope("shim.comparison", site.product, site.task)
    record.update(
        {
            "call_site": site.call_site,
            "call_id": uuid.uuid4().hex,
            "stage": pending.stage,
            "served_by": pending.served_by,
            "legacy": _side(legacy, legacy_value, candidate=False, capture=capture),
            "candidate": _side(pending.candidate, candidate_value, candidate=True, capture=capture),
            "model": names.check(
                site.name,
                legacy_model,
                pending.candidate.model,
                pending.candidate.service_type,
                site.expected_model,
            ).as_record(),
            "structure": _with_noise(structure.as_record(), site, legacy_value, pending, on_error),
            "latency_ratio": ratio,
        }
    )
    return record
