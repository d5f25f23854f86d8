"""Output safe to show: text from logs and config files, as text on a terminal, and JSON
that strict parsers accept, without the secrets the environment configures.

Log records carry what the coordinator and the call sites sent (a ``model``, a
``node_id``, a task name, an error message); a terminal acts on the escape sequences in
them (``\\x1b]0;title\\x07`` retitles the window, ``\\x1b[2J`` clears it) and rich
parses their brackets as markup (``acme/v[/fp8]`` raises MarkupError, ``v[fp8]`` loses
``[fp8]``). Every such string the command line prints goes through :func:`printable`,
and through :func:`escape_markup` where it is put into rich markup; every JSON document
through :func:`strict_json`. Both take out the secrets
:func:`~shim.base.secrets.env_secrets` names, in every form (a task named after the key
by a careless call site, a path typed with a token in it), so no verb has to remember.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from shim.base.secrets import env_redactor

__all__ = ["CONTROLS", "escape_markup", "printable", "strict_json"]


_SHORT = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def _escaped(code: int) -> str:
    """``code`` as Python writes it in a string: ``\\n``, ``\\x1b``, ``\\u202e``."""
    if code in _SHORT:
        return _SHORT[code]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# C0, DEL and C1 (a terminal acts on each, or on sequences they start), the Unicode
# line and paragraph separators (a new line on some terminals) and the bidirectional
# controls (they reorder what is shown: "evil\u202egpj.exe" reads as "evilexe.jpg").
_CONTROLS = [
    *range(0x20),
    *range(0x7F, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
#: Any one of the control characters :func:`printable` escapes, for a message that
#: drops them instead.
CONTROLS = re.compile("[" + "".join(re.escape(chr(code)) for code in _CONTROLS) + "]")
_ESCAPE = {code: _escaped(code) for code in _CONTROLS}
_ESCAPE_KEEPING_NEWLINES = {code: text for code, text in _ESCAPE.items() if code != 0x0A}


def printable(value: object, *, newlines: bool = False) -> str:
    """``value`` as text a terminal shows and does not act on: every secret the
    environment configures replaced by ``[redacted]``, and every control character
    (C0, DEL, C1, bidirectional controls, line separators) written out as its escape,
    ``\\x1b`` for ESC. ``newlines`` keeps ``\\n`` for text of several lines (a config
    error's problems); a name or a field is one line, so not by default."""
    text = env_redactor()(str(value))
    if text.isprintable():  # the common case, checked in C
        return text
    return text.translate(_ESCAPE_KEEPING_NEWLINES if newlines else _ESCAPE)


def escape_markup(value: object) -> str:
    """``value`` made :func:`printable` and escaped for rich markup, to put inside a
    markup string (``f"[bold]{escape_markup(task)}[/]"``) and show exactly. Where no
    markup is wanted, prefer ``Text(printable(value))`` or ``markup=False``."""
    from rich.markup import escape

    return escape(printable(value))


def _shown(value: Any, redact: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinities) made None and every
    string (keys too) redacted (containers are copied; a report is small)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {
            redact(key) if isinstance(key, str) else key: _shown(item, redact)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_shown(item, redact) for item in value]
    return value


def strict_json(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON that any parser accepts, without the secrets the environment
    configures (each string redacted before it is written, so the document stays
    JSON): NaN and infinities (which :func:`json.dumps` writes as the non-JSON
    ``NaN``/``Infinity``) become ``null``; anything else that is not JSON raises, as
    ``allow_nan=False`` makes it."""
    return json.dumps(_shown(value, env_redactor()), indent=indent, allow_nan=False)
