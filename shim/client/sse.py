"""A node's streamed chat completion, read: server-sent events of OpenAI
``chat.completion.chunk`` objects, then ``data: [DONE]``.

Two readers: :func:`read_completion_stream` reads a body read whole (the reply's
``arrivals`` say when each piece of it came), so the text, its pieces and the time to
the first piece of text are known at the end; :class:`CompletionReader` reads the body
as its bytes come, handing on each piece of text as soon as its event is whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from shim.base.jsonload import loads

__all__ = ["CompletionReader", "SSEError", "Streamed", "arrived_by", "read_completion_stream"]

# Lines end in CRLF, LF or CR (the SSE spec allows each); a blank line ends an event.
_LINE_END = re.compile(rb"\r\n|\n|\r")


class SSEError(ValueError):
    """The stream is not a chat completion's events."""


@dataclass(frozen=True, slots=True)
class Streamed:
    """What a streamed completion said: its text, in how many pieces, the model and
    usage its chunks named, and the byte offset at which its first piece of text ended
    (None: no text came)."""

    text: str
    chunks: int
    model: str | None
    usage: dict[str, Any] | None
    first_end: int | None


def _events(body: bytes) -> Iterator[tuple[str, int]]:
    """Each event's data (its ``data:`` lines joined by newlines) and the offset where
    the event ended. Events without data (comments, names, retry hints) and empty data
    are skipped, as a browser skips them; a last event without its blank line counts."""
    lines: list[bytes] = []
    start = 0
    for end in _LINE_END.finditer(body):
        line = body[start : end.start()]
        start = end.end()
        if line:
            lines.append(line)
        elif lines:
            if (data := _data(lines)) is not None:
                yield data, start
            lines = []
    if start < len(body):
        lines.append(body[start:])
    if lines and (data := _data(lines)) is not None:
        yield data, len(body)


def _data(lines: list[bytes]) -> str | None:
    found = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
    if not found or not any(found):
        return None
    try:
        return b"\n".join(found).decode("utf-8")
    except UnicodeDecodeError:
        raise SSEError("an event is not UTF-8") from None


def read_completion_stream(body: bytes) -> Streamed:
    """The text of a streamed chat completion, from its whole body; SSEError when an
    event is not a chat completion chunk."""
    events: list[tuple[str, int]] = []
    for data, end in _events(body):
        if data == "[DONE]":
            break
        events.append((data, end))
    else:  # a node that ignored stream: true, or a stream cut short
        raise SSEError("the stream ended without data: [DONE]")
    pieces: list[str] = []
    said = _Said()
    first_end: int | None = None
    for chunk, (_, end) in zip(_chunks(events), events, strict=True):
        content = said.take(chunk)
        if content:
            pieces.append(content)
            if first_end is None:
                first_end = end
    return Streamed("".join(pieces), len(pieces), said.model, said.usage, first_end)


class _Said:
    """What a completion's chunks named so far (the last model and usage given); a
    chunk's text from :meth:`take`."""

    __slots__ = ("model", "usage")

    def __init__(self) -> None:
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None

    def take(self, chunk: Any) -> str:
        """The text of one chunk (empty: none); SSEError for what is not a chunk."""
        if not isinstance(chunk, dict):
            raise SSEError("an event is not a chat completion chunk")
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise SSEError("an event has no choices")
        return _content(choices)


class CompletionReader:
    """A streamed completion read as it comes: :meth:`feed` it the body's bytes in
    any pieces and get the text of each event made whole by them; :meth:`finish` at
    the end of the body. ``model`` and ``usage`` are the last the chunks named;
    ``done`` once ``data: [DONE]`` came (what follows it is not read)."""

    __slots__ = ("_buffer", "_error", "_lines", "_said", "_searched", "done")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._searched = 0  # the buffer holds no line end before this
        self._lines: list[bytes] = []
        self._said = _Said()
        self._error: SSEError | None = None
        self.done = False

    @property
    def model(self) -> str | None:
        return self._said.model

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._said.usage

    def feed(self, data: bytes) -> list[str]:
        """The pieces of text of the events ``data`` completes (none that are empty).
        An event that is not a chunk raises SSEError, after the pieces before it are
        given (at the next call)."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        pieces: list[str] = []
        start = 0
        try:
            # searched once: a long event coming in small pieces is not scanned again
            for end in _LINE_END.finditer(buffer, self._searched):
                if end.end() == len(buffer) and buffer[-1:] == b"\r":
                    break  # perhaps half of a CRLF: decided by the next bytes
                line = bytes(buffer[start : end.start()])
                start = end.end()
                if line:
                    self._lines.append(line)
                elif self._lines:
                    self._event(pieces)
        except SSEError as exc:
            if not pieces:
                raise
            self._error = exc  # what came before it is given first
        del buffer[:start]
        # a CR at the end may be half of a CRLF: searched again with the next bytes
        self._searched = max(0, len(buffer) - 1)
        return pieces

    def finish(self) -> list[str]:
        """The body ended: the pieces of a last event without its blank line; SSEError
        if no ``data: [DONE]`` came (a stream cut short, or not a stream)."""
        if self._error is not None:
            raise self._error
        pieces: list[str] = []
        if self._buffer.rstrip(b"\r"):
            self._lines.append(bytes(self._buffer.rstrip(b"\r")))
        self._buffer.clear()
        if self._lines:
            self._event(pieces)
        if not self.done:
            raise SSEError("the stream ended without data: [DONE]")
        return pieces

    def _event(self, pieces: list[str]) -> None:
        lines, self._lines = self._lines, []
        if self.done:  # nothing after [DONE] is read
            return
        data = _data(lines)
        if data is None:
            return
        if data == "[DONE]":
            self.done = True
            return
        try:
            chunk = loads(data)
        except ValueError:
            raise SSEError("an event's data is not JSON") from None
        content = self._said.take(chunk)
        if content:
            pieces.append(content)


def _chunks(events: list[tuple[str, int]]) -> list[Any]:
    """Each event's data as JSON: parsed as one array (a parse per event costs several
    times as much), one by one when that fails, to name the event that is not JSON."""
    parsed = None
    # Only objects, each whole: then no event's text can pair up with another's.
    if all(data[:1] == "{" and data[-1:] == "}" for data, _ in events):
        try:
            parsed = loads("[" + ",".join(data for data, _ in events) + "]")
        except ValueError:
            parsed = None
    if isinstance(parsed, list) and len(parsed) == len(events):
        return parsed
    chunks = []
    for data, _ in events:  # an event that is not JSON, or holds more than one value
        try:
            chunks.append(loads(data))
        except ValueError:
            raise SSEError("an event's data is not JSON") from None
    return chunks


def _content(choices: Sequence[Any]) -> str:
    if not choices:
        return ""  # the usage chunk some servers send last
    first = choices[0]
    delta = first.get("delta") if isinstance(first, dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    if content is not None and not isinstance(content, str):
        raise SSEError("a chunk's delta.content is not text")
    return content or ""


def arrived_by(arrivals: Sequence[tuple[int, float]], offset: int) -> float | None:
    """When the body had ``offset`` bytes (the first arrival that brought them)."""
    for size, at in arrivals:
        if size >= offset:
            return at
    return None
