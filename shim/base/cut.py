"""Text cut short, and the mark that says so.

Fields a record copies from outside (a coordinator's model, an error message) are cut
to a bounded length before the recorder redacts the line they are in, so a secret the
cut went through would leave its first characters behind. The
:class:`~shim.base.secrets.Redactor` masks those too, where they end right at a cut's
mark: every cut of text that may carry a secret is made by :func:`cut_short`, so that
the mark is known in one place.
"""

from __future__ import annotations

__all__ = ["CUT_MARK", "cut_short"]

#: What ends text cut short, before how much was cut: ``…[cut 1024 chars]``.
CUT_MARK = "\u2026"


def cut_short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut said (``…[cut 1024 chars]``), or
    as it is when not longer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}{CUT_MARK}[cut {len(text) - limit} chars]"
