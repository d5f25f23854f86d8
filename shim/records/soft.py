"""Soft failures: what a call site returns when it swallowed a failure (``None``, a
blank string, an empty container), told apart from an answer."""

from __future__ import annotations

from typing import Any

__all__ = ["is_soft_failure", "soft_failure_error"]


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
    try:
        shown = repr(value)
    except Exception:  # the value's own repr failing must not lose the record
        shown = type(value).__name__
    if value is not None and len(shown) > 20:
        shown = type(value).__name__
    return f"{side} returned {shown}, which the call site counts as a failure"
