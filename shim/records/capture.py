"""Capturing prompts and outputs into records: off by default, capped, redacted."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shim.base.cut import cut_short

__all__ = ["Capture"]

_BUILT_IN = (
    re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),  # email addresses
    re.compile(r"\b(?:\d[ -]?){12,18}\d\b"),  # card-like numbers (13-19 digits)
    re.compile(r"(?<![\w.])\+?\d[\d ().-]{7,}\d(?![\w.])"),  # phone numbers
)


@dataclass(frozen=True)
class Capture:
    """What a record may keep of prompts and outputs when capture is switched on.

    Text is redacted (emails, phone numbers, card-like numbers, and ``patterns``, each
    replaced by ``[redacted]``) and then cut to ``max_chars`` characters, the cut said.
    """

    max_chars: int = 2000
    patterns: Sequence[str] = ()
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {self.max_chars}")
        object.__setattr__(
            self, "_compiled", tuple(re.compile(p) for p in self.patterns) + _BUILT_IN
        )

    def text(self, value: Any) -> str | None:
        """``value`` as capped, redacted text (JSON for structured values)."""
        if value is None:
            return None
        text = (
            value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
        )
        for pattern in self._compiled:
            text = pattern.sub("[redacted]", text)
        text = cut_short(text, self.max_chars)
        return text
