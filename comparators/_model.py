"""Model choice, three ways: the model legacy used, the model assignments.yaml expects
for the task, and the model the task path resolved to."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelCheck", "ModelNames", "normalise"]

# Quantisation and packaging suffixes that name the same weights: -q4_k_m, -Q8_0, -awq,
# -gptq-int4, -fp16, -gguf ... (repeated: qwen2.5-3b-instruct-gguf-q4_k_m).
_SUFFIX = re.compile(
    r"[-_.](?:q\d(?:_k)?(?:_[a-z0-9]+)?|iq\d\w*|gguf|ggml|awq|gptq(?:-int\d)?|exl2|mlx|"
    r"int[48]|fp(?:8|16|32)|bf16|\d+bit)$"
)


def normalise(name: str) -> str:
    """A model name stripped of case, organisation prefix and quantisation suffixes:
    ``Qwen/Qwen2.5-3B-Instruct`` and ``qwen2.5-3b-instruct-q4_k_m`` both give
    ``qwen2.5-3b-instruct``."""
    base = name.strip().casefold().rsplit("/", 1)[-1]
    while True:
        stripped = _SUFFIX.sub("", base)
        if stripped == base:
            return base
        base = stripped


@dataclass(frozen=True, slots=True)
class ModelCheck:
    """The ``model`` part of a comparison record.

    ``verdict`` compares legacy with the resolved model (``same``, ``alias``,
    ``different``, ``unknown``). ``routing_error`` says the task path went somewhere
    the configuration does not send it: another model than assignments.yaml expects,
    or a service type that does not fit the task (a vision task on ``cf-text``). A
    different model that *is* the expected one is an intended change, not an error.
    """

    verdict: str
    expected: str | None
    routing_error: bool | None
    reason: str | None

    def as_record(self) -> dict[str, Any]:
        """The JSON object the record carries."""
        return {
            "verdict": self.verdict,
            "expected": self.expected,
            "routing_error": self.routing_error,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ModelNames:
    """Model ids, their aliases and the tasks' expectations, from cf-orch's config.

    ``aliases``: model id -> other names; ``expected``: ``product.task`` -> model id;
    ``allowed_services``: ``product.task`` -> service types that fit it.
    """

    aliases: Mapping[str, Iterable[str]] = field(default_factory=dict)
    expected: Mapping[str, str] = field(default_factory=dict)
    allowed_services: Mapping[str, frozenset[str]] = field(default_factory=dict)
    _canon: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        canon: dict[str, str] = {}
        for model_id, names in self.aliases.items():
            for name in (model_id, *names):
                canon.setdefault(name.casefold(), model_id)
                canon.setdefault(normalise(name), model_id)
        object.__setattr__(self, "_canon", canon)

    def canonical(self, name: str) -> str:
        """The registry id for ``name`` (id, alias, any case, with org prefix or
        quantisation suffix); its normalised form when the registry does not know it."""
        return (
            self._canon.get(name.casefold())
            or self._canon.get(normalise(name))
            or (normalise(name))
        )

    def verdict(self, legacy: str | None, candidate: str | None) -> str:
        """``same``, ``alias``, ``different``, or ``unknown`` when a side is missing."""
        if not legacy or not candidate:
            return "unknown"
        if legacy == candidate:
            return "same"
        if self.canonical(legacy) == self.canonical(candidate):
            return "alias"
        return "different"

    def check(
        self,
        task: str,
        legacy: str | None,
        resolved: str | None,
        service_type: str | None,
        expected: str | None = None,
    ) -> ModelCheck:
        """The three-way verdict for one call of ``task`` (``product.task``)."""
        expected = expected or self.expected.get(task)
        verdict = self.verdict(legacy, resolved)
        if resolved is None:
            return ModelCheck(verdict, expected, None, None)
        allowed = self.allowed_services.get(task)
        if service_type is not None and allowed and service_type not in allowed:
            return ModelCheck(
                verdict,
                expected,
                True,
                f"{task} resolved to service {service_type}; it needs "
                f"{' or '.join(sorted(allowed))}",
            )
        if expected is not None and self.canonical(resolved) != self.canonical(expected):
            return ModelCheck(
                verdict, expected, True, f"resolved {resolved}; assignments.yaml expects {expected}"
            )
        if expected is None:
            return ModelCheck(verdict, expected, None, None)
        reason = "intended change (the expected model)" if verdict == "different" else None
        return ModelCheck(verdict, expected, False, reason)
