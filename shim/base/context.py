"""Per-request flag context: who is calling, so a caller stays on one path."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

__all__ = ["context", "current_context", "sticky_value"]

_EMPTY: Mapping[str, str] = MappingProxyType({})
_FIELDS: ContextVar[Mapping[str, str]] = ContextVar("shim_context", default=_EMPTY)

# Unleash's context names and ours, for the same thing.
_ALIASES = {"userId": "user_id", "sessionId": "session_id"}


@contextmanager
def context(**fields: object) -> Iterator[Mapping[str, str]]:
    """Set flag context for the calls made inside, e.g.
    ``with shim.context(user_id=user.id): plan_week(...)``.

    Values are turned into strings; ``None`` values are left out. Contexts nest: inner
    fields add to (and override) outer ones. Works across threads started inside only
    if they copy the context (``contextvars.copy_context``); asyncio tasks do.
    """
    merged = {**_FIELDS.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _FIELDS.set(MappingProxyType(merged))
    try:
        yield _FIELDS.get()
    finally:
        _FIELDS.reset(token)


def current_context() -> Mapping[str, str]:
    """The flag context in force here."""
    return _FIELDS.get()


def sticky_value(stickiness: str) -> str | None:
    """The context value that keeps a caller on one path for this stickiness.

    ``default`` is Unleash's rule: the user id, else the session id, else none (a
    random draw per call); ``random`` is always none.
    """
    fields = _FIELDS.get()
    if not fields or stickiness == "random":
        return None
    if stickiness == "default":
        return fields.get("user_id") or fields.get("session_id")
    return fields.get(_ALIASES.get(stickiness, stickiness))
