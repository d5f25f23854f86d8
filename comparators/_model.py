"""Model choice: are the two paths' models the same, an alias of each other, or not?"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["ModelNames"]


@dataclass(frozen=True, slots=True)
class ModelNames:
    """Model ids and their aliases, from cf-orch's model registry."""

    aliases: Mapping[str, Iterable[str]] = field(default_factory=dict)
    _canon: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        canon: dict[str, str] = {}
        for model_id, names in self.aliases.items():
            canon[model_id.casefold()] = model_id
            for name in names:
                canon.setdefault(name.casefold(), model_id)
        object.__setattr__(self, "_canon", canon)

    def canonical(self, name: str) -> str:
        """The registry id for ``name`` (an id or alias, any case); itself if unknown."""
        return self._canon.get(name.casefold(), name)

    def verdict(self, legacy: str | None, candidate: str | None) -> str:
        """``same``, ``alias``, ``different``, or ``unknown`` when a side is missing."""
        if not legacy or not candidate:
            return "unknown"
        if legacy == candidate:
            return "same"
        if self.canonical(legacy) == self.canonical(candidate):
            return "alias"
        return "different"
