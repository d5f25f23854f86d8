"""Request bodies the simulator accepts. Unknown fields are ignored, as a default FastAPI
model (and so the real coordinator) ignores them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AllocateBody",
    "AuthorizeBody",
    "ChatBody",
    "ExtractBody",
    "LegacyBody",
    "TaskBody",
    "content_key",
    "first_image",
    "system_prompt",
    "user_prompt",
]

NonEmpty = Annotated[str, Field(min_length=1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TaskBody(_Body):
    """``POST /api/inference/task``. Kiwi sends ``{product, task, payload: {}}`` and gets
    an allocation; a body with an input (this project's extension) gets output."""

    product: NonEmpty
    task: NonEmpty
    prompt: str | None = None
    system: str | None = None
    payload: Any = None
    params: dict[str, Any] | None = None
    mode: Literal["output", "allocate"] | None = None

    def wants_output(self) -> bool:
        """Output for ``mode: output`` or a body carrying an input (a prompt, a system
        prompt, a non-empty payload); an allocation otherwise."""
        if self.mode is not None:
            return self.mode == "output"
        carries = self.prompt is not None or self.system is not None
        return carries or self.payload not in (None, {}, [], "")


class LegacyBody(_Body):
    """``POST /api/inference``: the seed's route, with an explicit model."""

    model: NonEmpty
    prompt: str | None = None
    system: str | None = None
    payload: Any = None
    params: dict[str, Any] | None = None
    # Optional hints so the simulator answers in the right shape; real callers omit them.
    product: str | None = None
    task: str | None = None


class AllocateBody(_Body):
    """``POST /api/services/{service}/allocate``, as circuitforge-core's client sends it
    (``model`` is an older single-candidate form, kept for existing callers)."""

    model_candidates: list[str] = []
    ttl_s: Annotated[float, Field(gt=0)] = 3600.0
    caller: str = ""
    model: str | None = None
    product: str | None = None
    task: str | None = None

    def candidates(self) -> list[str]:
        return [*self.model_candidates, *([self.model] if self.model else [])]


class ChatBody(_Body):
    """An OpenAI chat completion request; fields the simulator has no use for are
    ignored."""

    model: str | None = None
    messages: Annotated[list[dict[str, Any]], Field(min_length=1)]
    stream: bool = False
    #: ``{"include_usage": true}``: a streamed answer ends with a usage chunk
    stream_options: dict[str, Any] | None = None


class ExtractBody(_Body):
    """``POST {node}/extract`` of a cf-docuvision node: a base64 image and a hint
    (``text``, ``table``, ``form``, ``auto``)."""

    image_b64: NonEmpty
    hint: str = "text"


class AuthorizeBody(_Body):
    """``POST /proxy/authorize``: kiwi's request for a recipe stream token."""

    product: NonEmpty
    product_key: str = ""
    caller: str = ""
    prompt: str = ""
    params: dict[str, Any] = {}
    ttl_s: Annotated[float, Field(gt=0)] = 300.0


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def system_prompt(messages: list[dict[str, Any]]) -> str:
    """The system messages' text."""
    return " ".join(_text(m.get("content")) for m in messages if m.get("role") == "system")


def user_prompt(messages: list[dict[str, Any]]) -> str:
    """Every message's text, for token counts."""
    return " ".join(_text(m.get("content")) for m in messages)


def first_image(messages: list[dict[str, Any]]) -> str | None:
    """The base64 data of the first image the messages carry (``image_url`` parts with a
    ``data:`` URL), or None."""
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            url = part.get("image_url") if isinstance(part, dict) else None
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str) and url.startswith("data:") and "," in url:
                return url.split(",", 1)[1]
    return None


def content_key(*parts: str | None) -> str | None:
    """What makes two requests ask the same (the simulator answers both with the same
    content): their system prompt and prompt, or their image, joined; None when there
    is none."""
    found = " ".join(p for p in parts if p)
    return found or None
