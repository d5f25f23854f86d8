"""Values as records keep them: private copies of outputs (:func:`capture`,
:func:`restore`), their digests, and errors described in one line. Whatever a call
site returns or raises, these say what they can of it, and why when they cannot."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
from collections.abc import Callable
from typing import Any

__all__ = [
    "NOT_RECORDED",
    "OutputNotRecorded",
    "capture",
    "describe",
    "digest",
    "kept",
    "restore",
]

OnError = Callable[[str, BaseException], None]


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: A value that was not recorded (the path failed, or its output could not be copied).
NOT_RECORDED: Any = _Sentinel("NOT_RECORDED")

_IMMUTABLE = (str, bytes, int, float, bool, type(None), frozenset)

#: Why an answered side has no output in its record: capture() could not copy it.
_UNCOPIED = "not recorded: it could be neither pickled nor deep-copied"


class _Pickled:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class OutputNotRecorded(Exception):
    """A path answered, but its output could not be kept for the record (counted as
    the shim's own failure, ``copy_output``)."""


def capture(value: Any) -> Any:
    """A private copy of ``value`` that later changes to ``value`` cannot reach.

    Immutable values are kept as they are; others are pickled here (a few µs) and
    unpickled off the caller's path by :func:`restore`. A value that can be neither
    pickled nor deep-copied gives :data:`NOT_RECORDED`, which its record explains.
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


def kept(captured: Any, ok: bool, side: str, on_error: OnError) -> tuple[Any, str | None]:
    """The value :func:`capture` kept for ``side`` (``legacy``, ``candidate``), and
    why there is none when the side answered (``ok``) yet has none: it could not be
    copied, or its copy not restored. Each such failure is counted (``copy_output``)."""
    if captured is NOT_RECORDED:
        if ok:
            on_error("copy_output", OutputNotRecorded(f"{side} output {_UNCOPIED}"))
            return NOT_RECORDED, _UNCOPIED
        return NOT_RECORDED, None
    try:
        return restore(captured), None
    except Exception as exc:
        on_error("copy_output", exc)
        return NOT_RECORDED, f"not recorded: its copy could not be restored ({describe(exc)})"


def digest(value: Any) -> tuple[str | None, int | None]:
    """SHA-256 and size of an output (JSON for structured values; ``None, None`` for
    :data:`NOT_RECORDED`). Raises for what JSON cannot hold: a cycle, keys that are
    not text or numbers, a ``repr`` that raises."""
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


def describe(exc: BaseException) -> str:
    """``ClassName: message``, one line, short; never a traceback (nor a failure of its
    own: an exception whose message cannot be read is named by its class)."""
    try:
        message = " ".join(str(exc).split())
    except Exception:
        message = "(its message could not be read)"
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
