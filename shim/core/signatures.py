"""Check, when decorating, that the decorator's callables fit the call site.

``request=``, ``key=`` (and ``product=``, ``task=``, ``service_hint=`` when they are
callables) are called with the wrapped function's arguments; ``response=``,
``legacy_model=``, ``legacy_usage=``, ``soft_failure=`` and ``stream_error=`` with one
value. A mismatch
would otherwise surface only on a call, in the background, as a failed comparison.
Each is tried with :meth:`inspect.Signature.bind` on a representative call built from
the wrapped function's signature: every parameter in its canonical form (positional
ones by position, keyword-only ones by name, one extra positional for ``*args`` and
one extra keyword for ``**kwargs``). A callable without a signature (some builtins) is
taken on trust.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["check_fits"]

#: Callables called with the call site's arguments.
_ON_ARGUMENTS = ("product", "task", "request", "key", "service_hint")
#: Callables called with one value, and what that value is.
_ON_ONE_VALUE = {
    "response": "the task path's result",
    "legacy_model": "legacy's result",
    "legacy_usage": "legacy's result",
    "soft_failure": "a value the call site returns",
    "stream_error": "the StreamInterrupted error",
}
#: The keyword a representative call passes for ``**kwargs``: one no parameter names.
_ANY_KEYWORD = "_shim_any_keyword_"


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read: taken on trust
        return None


def _shown(signature: inspect.Signature) -> str:
    """The parameters as a caller sees them: ``(system, user, *, temperature)``."""
    empty = inspect.Parameter.empty
    bare = [p.replace(annotation=empty, default=empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=empty))


def _representative(signature: inspect.Signature) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Arguments a call of this signature may pass: each parameter in canonical form."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in signature.parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = None
        elif p.kind is p.VAR_KEYWORD:
            kwargs[_ANY_KEYWORD] = None
        else:  # positional-only, positional-or-keyword, and one for *args
            args.append(None)
    return tuple(args), kwargs


def check_fits(fn: Callable[..., Any], call_site: str, given: Iterable[tuple[str, Any]]) -> None:
    """Raise TypeError, naming ``call_site`` and the keyword, when a callable among
    ``given`` (keyword, value) pairs cannot take what it will be called with."""
    wrapped = _signature(fn)
    for keyword, value in given:
        if not callable(value):
            continue
        theirs = _signature(value)
        if theirs is None:
            continue
        if keyword in _ON_ONE_VALUE:
            try:
                theirs.bind(None)
            except TypeError:
                raise TypeError(
                    f"{call_site}: {keyword}= takes {_shown(theirs)} but is called with one "
                    f"argument ({_ON_ONE_VALUE[keyword]}); give it one parameter (any others "
                    "need defaults)"
                ) from None
        elif keyword in _ON_ARGUMENTS and wrapped is not None:
            args, kwargs = _representative(wrapped)
            try:
                theirs.bind(*args, **kwargs)
            except TypeError:
                raise TypeError(
                    f"{call_site}: {keyword}= takes {_shown(theirs)} but the call site "
                    f"passes {_shown(wrapped)}; {keyword}= is called with the call site's "
                    "arguments: give it the same parameters (add *args or **kwargs to "
                    "take the ones it does not use)"
                ) from None
