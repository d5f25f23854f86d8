"""cf-orch's task protocol without I/O: what one inference or allocation sends, in order.

Each exchange is a generator that yields the HTTP calls it needs (:class:`Call`) and
receives their replies (:class:`Reply`), or the error they raised, thrown in. The sync
and async clients in :mod:`shim.client.task_client` only send and hand back. This
module holds what every exchange shares (the calls, the coordinator's answer, errors);
:mod:`shim.client.allocation` allocates and releases, :mod:`shim.client.inference`
runs a request.

The coordinator, as kiwi's code and tests describe it:

- ``POST /api/inference/task`` with ``{"product", "task", "payload": {}}`` answers an
  allocation ``{"url", "allocation_id", "service"?, ...}``; ``service`` is missing on
  coordinators before cf-orch#63, so the caller brings a ``service_hint``. A request
  that carries a prompt may be answered with output instead (this project's
  extension); either answer is accepted.
- The allocation is completed on the node: ``{url}/v1/models`` and
  ``{url}/v1/chat/completions`` (OpenAI-compatible), or ``POST {url}/extract`` on a
  ``cf-docuvision`` node; then released with
  ``DELETE /api/services/{service}/allocations/{allocation_id}``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pydantic

from shim.base.cut import cut_short
from shim.base.errors import TaskFailed, TaskNotRegistered
from shim.base.jsonload import loads

__all__ = [
    "AllocationReply",
    "Call",
    "Exchange",
    "OutputReply",
    "ReleaseHook",
    "Reply",
    "WireModel",
    "ask",
    "detail",
    "listed_model",
    "node_headers",
]

#: ``(product, task, allocation_id, error)``: told of every allocation release that failed.
ReleaseHook = Callable[[str, str, str, str], None]
#: How many characters of an error body an error message quotes.
DETAIL_CHARS = 200


def _as_is(text: str) -> str:
    return text


# -- calls and replies ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call a step needs. ``release`` calls get their own short timeout,
    outside the exchange's deadline; a ``stream`` call's reply says when its body came."""

    method: str
    url: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    release: bool = False
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back: the status and the whole body; for a ``stream`` call, when each
    piece of it came (``(bytes of the body so far, perf_counter)``, in order)."""

    status: int
    content: bytes
    arrivals: tuple[tuple[int, float], ...] = ()


@dataclass(slots=True)  # not frozen: one is built per call, and that costs 4x as much
class Exchange:
    """What every step of one exchange shares: the coordinator (``base``, ``auth``),
    the task asked for, who hears of failed releases, the service to release from when
    the coordinator names none, the clock latencies are read from, what takes the
    client's secrets out of a message, and whether the output is asked for as a stream.
    Never changed once built."""

    base: str
    product: str
    task: str
    auth: Mapping[str, str]
    hook: ReleaseHook | None = None
    hint: str | None = None
    clock: Callable[[], float] = time.perf_counter
    redact: Callable[[str], str] = _as_is
    stream: bool = False

    def fail(self, message: str, status: int | None) -> TaskFailed:
        """The error this exchange raises, naming its task, its message redacted as
        text: a body redacted as bytes can still decode to a secret."""
        return TaskFailed(
            f"{self.product}.{self.task}: {self.redact(message)}",
            product=self.product,
            task=self.task,
            status=status,
        )

    def parse(self, reply: Reply, what: str) -> Any:
        """The reply's JSON body; TaskFailed when ``what`` sent something else."""
        try:
            return loads(reply.content)
        except ValueError as exc:
            raise self.fail(f"{what} sent malformed JSON: {exc}", reply.status) from None


def detail(content: bytes, *, redact: Callable[[str], str] = _as_is) -> str:
    """A short excerpt of an error body, redacted with ``redact`` once decoded and
    before it is cut. Decoded: JSON escapes no redaction of the raw bytes can list
    (``\\/`` as PHP writes "/", ``\\u002f``, a key written all in ``\\uXXXX``) decode
    to the secret itself. Before the cut: a cut through a secret would leave its start."""
    try:
        data = loads(content)
    except ValueError:
        text = content[: DETAIL_CHARS * 4].decode("utf-8", "replace").strip()
    else:
        text = json.dumps(data)
        if isinstance(data, dict):
            said = [data[k] for k in ("detail", "error", "message") if isinstance(data.get(k), str)]
            text = said[0] if said else text
    return cut_short(redact(text), DETAIL_CHARS)


_HEADER_SAFE = re.compile(r"(?:[\x21-\x7e]+(?: +[\x21-\x7e]+)*)?")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def node_headers(ex: Exchange, node: str, allocation_id: str) -> dict[str, str]:
    """Headers for a node call: the allocation's id, and the key only when the node is
    served from the coordinator's own origin (a proxied node): never to another host.
    The origin is read with the same parser the request is sent with (``urlsplit``), so
    a URL that hides its host (``user@``, a backslash) is judged by the host it reaches.
    TaskFailed when the id cannot be a header value."""
    if _HEADER_SAFE.fullmatch(allocation_id) is None:
        raise ex.fail(
            "the coordinator's allocation id has characters a header cannot carry "
            "(only printable ASCII): not sent to the node",
            None,
        )
    headers = {"X-Allocation-Id": allocation_id}
    if _origin(node) == _origin(ex.base):
        headers.update(ex.auth)
    return headers


# -- the coordinator's answer -----------------------------------------------------------


class WireModel(pydantic.BaseModel):
    """A JSON body from the coordinator or a node."""

    # Coordinators add fields over time; take what we know, ignore the rest.
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


class OutputReply(WireModel):
    """The coordinator ran the task itself: its output."""

    output: Any
    model: str | None = None
    service_type: str | None = None
    node_id: str | None = None
    allocation_id: str | None = None
    usage: dict[str, Any] | None = None


class AllocationReply(WireModel):
    """The coordinator granted a node for the task: the caller completes it there."""

    url: str
    allocation_id: str
    service: str | None = None
    node_id: str | None = None
    gpu_id: int | str | None = None
    model: str | None = None
    started: bool | None = None
    warm: bool | None = None


def ask(
    ex: Exchange, body: dict[str, Any]
) -> Generator[Call, Reply, tuple[OutputReply | AllocationReply, int]]:
    """POST the task; the coordinator's output or allocation, and the reply status."""
    reply = yield Call("POST", f"{ex.base}/api/inference/task", body, ex.auth)
    if reply.status == 404:
        said = detail(reply.content, redact=ex.redact)
        raise TaskNotRegistered(product=ex.product, task=ex.task, detail=said)
    if reply.status >= 300:
        message = f"coordinator answered {reply.status}: {detail(reply.content, redact=ex.redact)}"
        raise ex.fail(message, reply.status)
    data = ex.parse(reply, "coordinator")
    try:
        if isinstance(data, dict) and "output" in data:
            return OutputReply.model_validate(data), reply.status
        return AllocationReply.model_validate(data), reply.status
    except pydantic.ValidationError as exc:
        raise ex.fail(
            "coordinator reply has neither output nor an allocation "
            f"(url, allocation_id): {exc.error_count()} problem(s)",
            reply.status,
        ) from None


def listed_model(node: str, headers: Mapping[str, str]) -> Generator[Call, Reply, str | None]:
    """The first model the node lists (``/v1/models`` ``data[0]``), as kiwi reads it;
    None when the node does not say."""
    try:
        reply = yield Call("GET", f"{node}/v1/models", None, headers)
    except TaskFailed:
        return None
    if reply.status >= 300:
        return None
    try:
        first = loads(reply.content)["data"][0]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return first if isinstance(first, str) else None
