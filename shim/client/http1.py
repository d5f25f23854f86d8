"""HTTP/1.1 replies read off a socket, with strict framing.

A reply is accepted exactly when h11 (the parser httpx uses) accepts it, with two
deliberate differences: only HTTP/1.x status lines, and heads up to 64 KB (h11: 16 KB).
The rules that decide where a body ends, from RFC 9112:

- ``Content-Length`` is ASCII digits only (not ``+5``, ``1_0``, ``0x5`` or ``²``, all of
  which int() takes), at most 20 of them; a list of equal values is one value; two
  different values are an error.
- ``Transfer-Encoding`` is ``chunked`` or the reply is refused (we ask for no other
  coding); it wins over ``Content-Length``, and a connection that carried both is not
  reused. Chunk sizes are 1 to 20 hex digits (not ``0x5``, ``-2``, ``1_0``), optionally
  followed by ``;`` extensions; each chunk's data ends in CRLF; trailers are fields,
  checked like the head's and then ignored.
- Head and trailer lines end in CRLF or a bare LF (RFC 9112 2.2 lets a recipient accept
  LF); a bare CR anywhere is refused. Folded lines (obs-fold) are joined with a space.
- A head (blank line included), a chunk-size line (CRLF included) and a trailer section
  are at most 64 KB each, however the reads split them. Each line is matched once,
  from its start: the time a reply costs grows with its size, never with its square.
- No length and no chunking: the body runs to the end of the connection.

Every error is an httpx exception (:class:`TooLarge` included), and no message quotes a
header line of the reply: it may echo a credential.
"""

from __future__ import annotations

import re
import socket
import time
from typing import cast

import httpx

from shim.base.cut import cut_short
from shim.base.text import printable

__all__ = ["MAX_HEAD", "Conn", "Head", "TooLarge", "parse_head", "read_reply"]

#: The largest reply head (or chunk-size line, or trailer section) taken.
MAX_HEAD = 64 * 1024
_CHUNK = 256 * 1024

_BLANK_LINE = re.compile(rb"\n\r?\n")
_STATUS = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: [^\x00\n\r\x0b\x0c]*)?")
# A field line as RFC 9110 5.5 (and h11) has it: a token, a colon, optional whitespace,
# a value of visible bytes (and obs-text) separated by spaces or tabs; its LF taken off.
# Matched whole against one line at a time: searched for in the head instead, a line of
# token characters with no colon was tried again from each of its bytes (22 s for 64 KB).
_FIELD = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*\r?"
)
_FOLDED = (b" ", b"\t")  # a line starting so continues the one before (obs-fold)
_FRAMING = frozenset({10, 14, 17})  # the lengths of the three names that matter here
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\n]*)?[ \t]*")
_DIGITS = re.compile(rb"[0-9]{1,20}")


class TooLarge(httpx.RemoteProtocolError):
    """The reply is larger than the client takes."""


class Conn:
    """One connection: its socket, what was read and not yet used, when it went idle,
    and how many bytes the reply in progress has brought so far."""

    __slots__ = ("buffer", "idle_since", "received", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.idle_since = 0.0
        self.received = 0


class Head:
    """A reply head: the status, how its body is framed, and whether the connection
    can carry another request afterwards."""

    __slots__ = ("chunked", "keep_alive", "length", "status")

    def __init__(self, status: int, length: int | None, chunked: bool, keep_alive: bool) -> None:
        self.status = status
        self.length = length
        self.chunked = chunked
        self.keep_alive = keep_alive


def read_reply(
    conn: Conn,
    method: str,
    deadline: float,
    max_body: int,
    arrivals: list[tuple[int, float]] | None = None,
) -> tuple[int, bytes, bool]:
    """Read one final reply from ``conn`` before ``deadline`` (a
    ``time.perf_counter()`` value): its status, body, and whether the connection can be
    reused. ``max_body`` bounds the body (:class:`TooLarge` beyond). Informational
    (1xx) replies are skipped; 101 is refused: no request here asks to switch protocols.
    ``arrivals``, if given, hears when each piece of the body came: ``(bytes of the body
    so far, perf_counter)``."""
    head = _read_head(conn, deadline)
    while head.status < 200:
        if head.status == 101:
            raise httpx.RemoteProtocolError("101 Switching Protocols, which was not asked for")
        head = _read_head(conn, deadline)  # 100 Continue and the like
    if method == "HEAD" or head.status in (204, 304):
        return head.status, b"", head.keep_alive
    if head.chunked:
        return head.status, _read_chunked(conn, deadline, max_body, arrivals), head.keep_alive
    size = head.length
    if size is None:  # read to the end of the connection
        _arrived(arrivals, len(conn.buffer))  # what came with the head
        while _fill(conn, deadline, "reply body"):
            _check_size(len(conn.buffer), max_body)
            _arrived(arrivals, len(conn.buffer))
        return head.status, _take(conn.buffer, len(conn.buffer)), False
    _check_size(size, max_body)
    _arrived(arrivals, min(len(conn.buffer), size))
    while len(conn.buffer) < size:
        if not _fill(conn, deadline, "reply body"):
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body "
                f"(received {len(conn.buffer)} bytes, expected {size})"
            )
        _arrived(arrivals, min(len(conn.buffer), size))
    return head.status, _take(conn.buffer, size), head.keep_alive


def _arrived(arrivals: list[tuple[int, float]] | None, size: int) -> None:
    """Note when the body reached ``size`` bytes (only when asked: ``arrivals``)."""
    if arrivals is not None and size and (not arrivals or arrivals[-1][0] < size):
        arrivals.append((size, time.perf_counter()))


def parse_head(head: bytes) -> Head:
    """The head of a reply: the status line and field lines, each ending in ``\\n``
    (the blank line that ends the head not included)."""
    end = head.find(b"\n")
    if end < 0:
        end = len(head)
    line = head[:end]
    if line[-1:] == b"\r":
        line = line[:-1]
    status = _STATUS.fullmatch(line)
    if status is None or status[2] < b"100":
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: '{_quoted(line)}'")
    length, chunked, tokens = _framing(head[end + 1 :])
    if status[1] == b"0":
        keep_alive = b"keep-alive" in tokens and not chunked
    else:
        keep_alive = b"close" not in tokens and not (chunked and length is not None)
    return Head(int(status[2]), length, chunked, keep_alive)


def _quoted(line: bytes, limit: int = 40) -> str:
    """The start of a line the peer sent (at most a head's size), as a message may show
    it: bytes that are not UTF-8 as ``\\xNN``, control characters escaped, secrets out,
    the cut said."""
    return printable(cut_short(line.decode("utf-8", "backslashreplace"), limit))


def _framing(fields: bytes) -> tuple[int | None, bool, list[bytes]]:
    """Checks every field line; the Content-Length, whether the body is chunked, and
    the Connection tokens."""
    lines = fields.split(b"\n")
    if lines.pop():  # each line ends in LF: what follows the last one is empty
        raise httpx.RemoteProtocolError("malformed header line in the reply")
    matched = [_FIELD.fullmatch(line) for line in lines]
    found = _unfolded(lines) if None in matched else cast(list[re.Match[bytes]], matched)
    length: bytes | None = None
    chunked = False
    tokens: list[bytes] = []
    for field in found:
        name, value = field.groups()
        if len(name) not in _FRAMING:
            continue
        key = name.lower()
        if key == b"content-length":
            if not (value.isdigit() and len(value) <= 20):  # bytes.isdigit: ASCII only
                value = _one_length(value)
            if length is not None and length != value:
                raise httpx.RemoteProtocolError("conflicting Content-Length headers")
            length = value
        elif key == b"transfer-encoding":
            if chunked:
                raise httpx.RemoteProtocolError("more than one Transfer-Encoding header")
            if value.lower() != b"chunked":
                raise httpx.RemoteProtocolError(
                    "Transfer-Encoding other than chunked, which was not asked for"
                )
            chunked = True
        elif key == b"connection":
            tokens += [t.strip().lower() for t in value.split(b",")]
    return (None if length is None else int(length)), chunked, tokens


def _unfolded(lines: list[bytes]) -> list[re.Match[bytes]]:
    """The fields of a head that has folded lines (obs-fold: a line starting with a
    space or tab continues the one before; the line break and that whitespace become
    one space); an error for any other line that is not a field."""
    joined: list[list[bytes]] = []
    for line in lines:
        if not line.startswith(_FOLDED):
            joined.append([line])
        elif joined:
            parts = joined[-1]
            if parts[-1].endswith(b"\r"):
                parts[-1] = parts[-1][:-1]
            parts.append(b" " + line.lstrip(b" \t"))
        else:  # the first line cannot continue anything
            raise httpx.RemoteProtocolError("malformed header line in the reply")
    found = []
    for parts in joined:
        field = _FIELD.fullmatch(b"".join(parts))
        if field is None:
            raise httpx.RemoteProtocolError("malformed header line in the reply")
        found.append(field)
    return found


def _one_length(value: bytes) -> bytes:
    """A Content-Length that is a list (``5, 5``) as its one value; an error when the
    values differ or are not digits."""
    values = {v.strip() for v in value.split(b",")}
    if len(values) != 1:
        raise httpx.RemoteProtocolError("conflicting Content-Length values")
    one = values.pop()
    if _DIGITS.fullmatch(one) is None:
        raise httpx.RemoteProtocolError("Content-Length is not a number of ASCII digits")
    return one


# -- reading ------------------------------------------------------------------------


def _fill(conn: Conn, deadline: float, what: str) -> bool:
    """Read more into the buffer; False at end of stream."""
    _set_timeout(conn.sock, deadline)
    try:
        chunk = conn.sock.recv(_CHUNK)
    except TimeoutError:
        raise httpx.ReadTimeout(f"timed out reading the {what}") from None
    except OSError as exc:
        raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None
    conn.buffer += chunk
    conn.received += len(chunk)
    return bool(chunk)


def _lines(conn: Conn, deadline: float, what: str) -> bytes:
    """Lines up to a blank one (a head, or trailers), taken off the buffer; the blank
    line dropped, each kept line ending in ``\\n``. At most ``MAX_HEAD`` bytes, blank
    line included, however many one read brought."""
    buffer = conn.buffer
    searched = 0  # a dripped head is searched once, not once per byte
    while True:
        if buffer[:1] == b"\n" or buffer[:2] == b"\r\n":
            del buffer[: 1 if buffer[:1] == b"\n" else 2]
            return b""
        blank = _BLANK_LINE.search(buffer, searched, MAX_HEAD)
        if blank is not None:
            lines = bytes(buffer[: blank.start() + 1])
            del buffer[: blank.end()]
            return lines
        if len(buffer) >= MAX_HEAD:
            raise httpx.RemoteProtocolError(f"{what} larger than {MAX_HEAD // 1024} KB")
        searched = max(0, len(buffer) - 2)
        if not _fill(conn, deadline, what):
            if what == "reply head" and not buffer:
                raise httpx.RemoteProtocolError("server disconnected without sending a response")
            raise httpx.RemoteProtocolError(f"peer closed connection in the {what}")


def _read_head(conn: Conn, deadline: float) -> Head:
    lines = _lines(conn, deadline, "reply head")
    if not lines:
        raise httpx.RemoteProtocolError("reply starts with an empty line, not a status line")
    return parse_head(lines)


def _read_chunked(
    conn: Conn, deadline: float, max_body: int, arrivals: list[tuple[int, float]] | None
) -> bytes:
    body = bytearray()
    buffer = conn.buffer
    while True:
        searched = 0  # a dripped line is searched once, not once per byte
        while (end := buffer.find(b"\r\n", searched, MAX_HEAD)) < 0:
            if len(buffer) >= MAX_HEAD:
                raise httpx.RemoteProtocolError(
                    f"chunk-size line too long (over {MAX_HEAD // 1024} KB)"
                )
            searched = max(0, len(buffer) - 1)
            if not _fill(conn, deadline, "chunk size"):
                raise httpx.RemoteProtocolError("peer closed connection in a chunked body")
        size_line = _CHUNK_LINE.fullmatch(buffer, 0, end)
        if size_line is None:
            raise httpx.RemoteProtocolError(
                "bad chunk-size line (hex digits, then optional ;extensions)"
            )
        size = int(size_line[1], 16)
        del buffer[: end + 2]
        if size == 0:
            _framing(_lines(conn, deadline, "chunked trailers"))  # checked, then ignored
            return bytes(body)
        _check_size(len(body) + size, max_body)
        while len(buffer) < size + 2:
            if not _fill(conn, deadline, "chunk"):
                raise httpx.RemoteProtocolError("peer closed connection in a chunked body")
        if buffer[size : size + 2] != b"\r\n":
            raise httpx.RemoteProtocolError("chunk data not followed by CRLF")
        body += buffer[:size]
        del buffer[: size + 2]
        _arrived(arrivals, len(body))


def _check_size(size: int, max_body: int) -> None:
    if size > max_body:
        raise TooLarge(f"reply larger than {max_body} bytes")


def _take(buffer: bytearray, size: int) -> bytes:
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


def _set_timeout(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.perf_counter()
    if left <= 0:
        raise httpx.ReadTimeout("the deadline passed")
    sock.settimeout(left)
