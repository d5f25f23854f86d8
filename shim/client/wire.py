"""A small HTTP/1.1 client for the task path: keep-alive sockets, one send per request.

The task path is a handful of JSON POSTs to known hosts, often a thousand a second from
one process. httpx spends about three times the CPU of the request itself in its
layers (measured: 462 against 150 us per call against the simulator), so
:class:`TaskClient` speaks HTTP/1.1 itself unless it is given an httpx.Client (for
proxies, client certificates, HTTP/2 or transports of your own).

What it does: one connection per request in flight, idle ones kept per origin (LIFO, at
most ``idle`` each, none older than ``keepalive`` seconds, none the server has closed);
``Content-Length``, chunked and read-to-close bodies; 1xx replies skipped; one deadline
for the whole reply, so a reply dripped a byte at a time still ends on time; TLS with a
verifying context. Errors are httpx's exception types, so callers handle one family.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

__all__ = ["TooLarge", "Wire"]

_MAX_HEAD = 64 * 1024
_CHUNK = 256 * 1024


class _Conn:
    __slots__ = ("buffer", "idle_since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.idle_since = 0.0


class _Reply:
    __slots__ = ("headers", "keep_alive", "status")

    def __init__(self, status: int, headers: dict[str, str], keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive


class Wire:
    """Pooled HTTP/1.1 over sockets; safe to share between threads."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        idle: int = 32,
        keepalive: float = 4.0,
        max_body: int = 32 * 1024 * 1024,
    ) -> None:
        self._headers = "".join(
            f"{_checked(k)}: {_checked(v)}\r\n" for k, v in (headers or {}).items()
        )
        self._tls = tls
        self._idle_max = idle
        self._keepalive = keepalive  # below the usual server keep-alive of 5 s
        self.max_body = max_body
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        deadline: float,
    ) -> tuple[int, bytes]:
        """One request; the status and the whole body, read before ``deadline``
        (a ``time.perf_counter()`` value). Raises httpx.HTTPError subclasses."""
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname
        if scheme not in ("http", "https") or not host:
            raise httpx.UnsupportedProtocol(f"cannot send to {url!r}: not an http(s) URL")
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc.rpartition('@')[2]}\r\n"]
        head.append(self._headers)
        for name, value in headers.items():
            head.append(f"{_checked(name)}: {_checked(value)}\r\n")
        if body is not None:
            head.append(f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
        elif method in ("POST", "PUT", "PATCH"):
            head.append("Content-Length: 0\r\n")
        head.append("\r\n")
        message = "".join(head).encode("latin-1") + (body or b"")
        origin = (scheme, host, port)
        conn = self._checkout(origin)
        if conn is None:
            conn = self._connect(scheme, host, port, min(connect_timeout, _left(deadline)))
        try:
            _set_timeout(conn.sock, deadline)
            try:
                conn.sock.sendall(message)
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
            except OSError as exc:
                raise httpx.WriteError(f"{type(exc).__name__}: {exc}") from None
            reply = self._read_head(conn, deadline)
            while 100 <= reply.status < 200 and reply.status != 101:
                reply = self._read_head(conn, deadline)  # 100 Continue and the like
            content = self._read_body(conn, method, reply, deadline)
        except BaseException:
            conn.sock.close()
            raise
        if reply.keep_alive and not conn.buffer:
            self._checkin(origin, conn)
        else:
            conn.sock.close()
        return reply.status, content

    def close(self) -> None:
        """Close every idle connection; those in use close when their request ends."""
        with self._lock:
            self._closed = True
            pools, self._idle = self._idle, {}
        for pool in pools.values():
            for conn in pool:
                conn.sock.close()

    # -- connections ----------------------------------------------------------------

    def _checkout(self, origin: tuple[str, str, int]) -> _Conn | None:
        pool = self._idle.get(origin)
        now = time.monotonic()
        while pool:
            try:
                conn = pool.pop()
            except IndexError:
                return None
            if now - conn.idle_since < self._keepalive and not _readable(conn.sock):
                return conn
            conn.sock.close()  # closed by the server, or about to be
        return None

    def _checkin(self, origin: tuple[str, str, int], conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        pool = self._idle.get(origin)
        if pool is None:
            with self._lock:
                pool = self._idle.setdefault(origin, deque())
        if self._closed or len(pool) >= self._idle_max:
            conn.sock.close()
            return
        pool.append(conn)

    def _connect(self, scheme: str, host: str, port: int, timeout: float) -> _Conn:
        if timeout <= 0:
            raise httpx.ConnectTimeout("deadline passed before connecting")
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {host}:{port} within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(f"{host}:{port}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                context = self._tls or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            raise httpx.ConnectTimeout(f"TLS handshake with {host}:{port} timed out") from None
        except OSError as exc:  # ssl.SSLError included: certificate checks fail here
            sock.close()
            raise httpx.ConnectError(str(exc)) from None
        return _Conn(sock)

    # -- replies --------------------------------------------------------------------

    def _fill(self, conn: _Conn, deadline: float, what: str) -> bool:
        """Read more into the buffer; False at end of stream."""
        _set_timeout(conn.sock, deadline)
        try:
            chunk = conn.sock.recv(_CHUNK)
        except TimeoutError:
            raise httpx.ReadTimeout(f"timed out reading the {what}") from None
        except OSError as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None
        conn.buffer += chunk
        return bool(chunk)

    def _read_head(self, conn: _Conn, deadline: float) -> _Reply:
        buffer = conn.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("reply headers larger than 64 KB")
            if not self._fill(conn, deadline, "reply headers"):
                if buffer:
                    raise httpx.RemoteProtocolError("peer closed connection in the reply headers")
                raise httpx.RemoteProtocolError("server disconnected without sending a response")
        lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        del buffer[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise httpx.RemoteProtocolError(f"malformed header line: {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        connection = headers.get("connection", "").lower()
        keep_alive = (
            "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        )
        return _Reply(int(code), headers, keep_alive)

    def _read_body(self, conn: _Conn, method: str, reply: _Reply, deadline: float) -> bytes:
        if method == "HEAD" or reply.status in (204, 304):
            return b""
        if "chunked" in reply.headers.get("transfer-encoding", "").lower():
            return self._read_chunked(conn, deadline)
        length = reply.headers.get("content-length")
        if length is None:
            reply.keep_alive = False
            while self._fill(conn, deadline, "reply body"):
                self._check_size(len(conn.buffer))
            return _take(conn.buffer, len(conn.buffer))
        if not length.isdigit():
            raise httpx.RemoteProtocolError(f"bad Content-Length: {length[:40]!r}")
        size = int(length)
        self._check_size(size)
        while len(conn.buffer) < size:
            if not self._fill(conn, deadline, "reply body"):
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body "
                    f"(received {len(conn.buffer)} bytes, expected {size})"
                )
        return _take(conn.buffer, size)

    def _read_chunked(self, conn: _Conn, deadline: float) -> bytes:
        body = bytearray()
        buffer = conn.buffer
        while True:
            while (end := buffer.find(b"\r\n")) < 0:
                if len(buffer) > _MAX_HEAD or not self._fill(conn, deadline, "chunk size"):
                    raise httpx.RemoteProtocolError("peer closed connection in a chunked body")
            field = bytes(buffer[:end]).split(b";", 1)[0].strip()
            try:
                size = int(field, 16)
            except ValueError:
                raise httpx.RemoteProtocolError(f"bad chunk size: {field[:20]!r}") from None
            del buffer[: end + 2]
            if size == 0:  # trailers, then an empty line
                while (end := buffer.find(b"\r\n")) != 0:
                    if end > 0:
                        del buffer[: end + 2]
                    elif not self._fill(conn, deadline, "chunk trailer"):
                        raise httpx.RemoteProtocolError("peer closed connection in a chunked body")
                del buffer[:2]
                return bytes(body)
            self._check_size(len(body) + size)
            while len(buffer) < size + 2:
                if not self._fill(conn, deadline, "chunk"):
                    raise httpx.RemoteProtocolError("peer closed connection in a chunked body")
            body += buffer[:size]
            del buffer[: size + 2]

    def _check_size(self, size: int) -> None:
        if size > self.max_body:
            raise TooLarge(f"reply larger than {self.max_body} bytes")


class TooLarge(Exception):
    """The reply is larger than the client takes."""


def _take(buffer: bytearray, size: int) -> bytes:
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


def _left(deadline: float) -> float:
    return deadline - time.perf_counter()


def _set_timeout(sock: socket.socket, deadline: float) -> None:
    left = _left(deadline)
    if left <= 0:
        raise httpx.ReadTimeout("the deadline passed")
    sock.settimeout(left)


def _readable(sock: socket.socket) -> bool:
    """An idle keep-alive socket with something to read was closed (or spoke out of
    turn): either way it cannot carry a request."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _checked(text: str) -> str:
    if "\r" in text or "\n" in text:
        raise httpx.LocalProtocolError(f"line break in a header: {text[:40]!r}")
    return text
