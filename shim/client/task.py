"""What a call site asks of a task and what comes back: the task client's values."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from shim.base.secrets import without_credentials

__all__ = ["TaskAllocation", "TaskRequest", "TaskResult"]


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What a call site asks of a task: the prompt and anything else the task takes.

    ``payload`` is any JSON value; ``params`` are generation parameters
    (``temperature``, ``max_tokens``, ...; ``hint`` for a document node's
    ``/extract``). ``images`` are base64 images (or ``data:`` URLs): image parts of the
    chat message on a vision node, ``image_b64`` on a document node. ``mode="allocate"``
    asks the coordinator for an allocation that the client completes itself.
    """

    prompt: str | None = None
    system: str | None = None
    payload: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    mode: Literal["output", "allocate"] | None = None
    images: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What the task path produced, and where.

    ``output`` is a string or a JSON value, as the coordinator (or node) sent it;
    ``text`` is the same as a string. ``latency_ms`` runs from the first byte sent to
    the output received (an allocation's release is not included).
    """

    output: Any
    model: str | None
    service_type: str | None
    node_id: str | None
    allocation_id: str | None
    latency_ms: float
    usage: Mapping[str, Any] | None = None
    #: A streamed output: milliseconds to its first piece of text, and its pieces.
    ttft_ms: float | None = None
    chunks: int | None = None

    @property
    def text(self) -> str:
        """``output`` as a string: itself if it is one, else compact JSON."""
        if isinstance(self.output, str):
            return self.output
        return json.dumps(self.output, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class TaskAllocation:
    """An allocation the coordinator granted for a task: a node at ``url`` until
    released. Only ``url`` and ``allocation_id`` come from every coordinator;
    ``service`` is the answer's or else the caller's hint, ``model`` the answer's or
    else the first model the node lists; the rest is ``None`` when not told."""

    url: str
    allocation_id: str
    service: str | None
    node_id: str | None
    gpu_id: int | str | None
    model: str | None
    started: bool | None
    warm: bool | None
    latency_ms: float

    @property
    def service_type(self) -> str | None:
        """``service``, under the name a TaskResult uses."""
        return self.service

    def __repr__(self) -> str:
        # A node URL may carry credentials; a repr ends up in logs and tracebacks.
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["url"] = without_credentials(self.url)
        return f"TaskAllocation({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def as_dict(self) -> dict[str, Any]:
        """The allocation as the coordinator's JSON names it: every field but
        ``latency_ms``, which is ours."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "latency_ms"}
