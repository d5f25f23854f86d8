"""What a path reported it used (tokens, GPU seconds), as records keep it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["usage_record"]

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
