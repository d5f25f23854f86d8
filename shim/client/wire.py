"""A small HTTP/1.1 client for the task path: keep-alive sockets, one send per request.

The task path is a handful of JSON POSTs to known hosts, often a thousand a second from
one process. httpx spends about three times the CPU of the request itself in its
layers (measured: 462 against 150 us per call against the simulator), so
:class:`TaskClient` speaks HTTP/1.1 itself unless it is given an httpx.Client (for
proxies, client certificates, HTTP/2 or transports of your own).

What it does: one connection per request in flight, idle ones kept per origin (LIFO, at
most ``idle`` each, none older than ``keepalive`` seconds, none the server has closed);
paths and queries percent-encoded (``%XX`` already there kept); strict reply framing
(:mod:`shim.client.http1`); one deadline for the whole exchange, name lookup included
(:mod:`shim.client.dial`), so a reply dripped a byte at a time still ends on time; TLS
with one verifying context per process unless given one. Errors are httpx's exception
types, so callers handle one family; none quotes a header value.

A stale connection (closed by the server while it sat idle, the close still on its
way) is retried once, on a fresh connection, when the failure says the server did not
take the request: the send itself failed, or a reused connection ended (EOF or reset)
before a single byte of the reply. A server closing an idle keep-alive connection does
not read what arrives on it afterwards, so that request was never processed: what RFC
9110 9.2.2 asks to know before a POST is sent again. One case looks the same and is
not: a server that read the request and died before the first byte of its reply, on a
connection it had kept alive. That request is then sent twice: the coordinator may run
the task twice, or grant an allocation nobody releases (it lasts until its TTL). A
fresh connection, a reply already begun, or a timeout is never retried.

A forked child (a pre-fork server's worker, after ``--preload``) starts with an empty
pool: the idle connections it inherited are the parent's too, and two processes on one
socket read each other's replies. Their descriptors are closed in the child only (the
parent's connections stay open), and the lock is new (a parent thread may have held it).
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from shim.client.dial import open_socket, readable
from shim.client.http1 import Conn, TooLarge, read_reply

__all__ = ["TooLarge", "Wire"]

_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# A header value as sent: tab, visible ASCII, space and Latin-1; no CR, LF or other
# control character (a line break would inject a header).
_BAD_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
# What a request target may carry unencoded (RFC 3986 pchar, "/" and "?"); anything
# else is percent-encoded as UTF-8, and so is a "%" not starting a %XX escape.
_UNSAFE = re.compile(r"[^-A-Za-z0-9._~!$&'()*+,;=:@/?%]+|%(?![0-9A-Fa-f]{2})")
_HOST = re.compile(r"[-A-Za-z0-9._~!$&'()*+,;=:%]+")
_TARGETS_MAX = 256

Origin = tuple[str, str, int]


class _Target:
    """A URL made ready to send: where to connect, and the request line's tail."""

    __slots__ = ("host", "origin", "port", "scheme", "tail")

    def __init__(self, scheme: str, host: str, port: int, tail: str) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.origin: Origin = (scheme, host, port)
        self.tail = tail  # " /path?query HTTP/1.1\r\nHost: host:port\r\n"


class Wire:
    """Pooled HTTP/1.1 over sockets; safe to share between threads, and across a fork
    (the child starts with no idle connections)."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        idle: int = 32,
        keepalive: float = 4.0,
        max_body: int = 32 * 1024 * 1024,
    ) -> None:
        self._headers = "".join(_header(k, v) for k, v in (headers or {}).items())
        self._tls = tls
        self._idle_max = idle
        self._keepalive = keepalive  # below the usual server keep-alive of 5 s
        self.max_body = max_body
        self._idle: dict[Origin, deque[Conn]] = {}
        self._targets: dict[str, _Target] = {}
        self._lock = threading.Lock()
        self._closed = False
        _WIRES.add(self)

    def send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        deadline: float,
        arrivals: list[tuple[int, float]] | None = None,
    ) -> tuple[int, bytes]:
        """One request; the status and the whole body, read before ``deadline``
        (a ``time.perf_counter()`` value); ``arrivals`` hears when each piece of the body
        came (see :func:`~shim.client.http1.read_reply`). Raises httpx.HTTPError
        subclasses."""
        target = self._targets.get(url) or self._target(url)
        head = [method, target.tail, self._headers]
        for name, value in headers.items():
            head.append(_header(name, value))
        if body is not None:
            head.append(f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
        elif method in ("POST", "PUT", "PATCH"):
            head.append("Content-Length: 0\r\n")
        head.append("\r\n")
        message = "".join(head).encode("latin-1") + (body or b"")
        conn = self._checkout(target.origin)
        if conn is not None:
            try:
                return self._exchange(target, conn, method, message, deadline, arrivals)
            except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
                if conn.received or isinstance(exc, TooLarge):
                    raise
                # Stale: the server closed the connection before taking the request
                # (see the module's docstring). Once more, on a fresh connection.
        conn = self._connect(target, min(connect_timeout, deadline - time.perf_counter()))
        return self._exchange(target, conn, method, message, deadline, arrivals)

    def close(self) -> None:
        """Close every idle connection; those in use close when their request ends."""
        idle: list[Conn] = []
        with self._lock:  # no check-in from here on: _checkin looks at _closed under it
            self._closed = True
            for pool in self._idle.values():
                # Taken one at a time, not iterated: a thread checking out may pop
                # from the same pool meanwhile (without the lock).
                while pool:
                    try:
                        idle.append(pool.popleft())
                    except IndexError:
                        break
        for conn in idle:
            conn.sock.close()

    def _forget_pool(self) -> None:
        """In a forked child: no idle connection of the parent's, and a lock no parent
        thread holds. Only the child's descriptors are closed (no shutdown, which would
        end the connection for the parent too)."""
        self._lock = threading.Lock()
        pools, self._idle = self._idle, {}
        for pool in pools.values():
            for conn in pool:
                conn.sock.close()

    # -- requests -------------------------------------------------------------------

    def _target(self, url: str) -> _Target:
        """``url`` parsed, checked and encoded, remembered for the next request."""
        try:
            parts = urlsplit(url)
            scheme, host, port = parts.scheme, parts.hostname, parts.port
        except ValueError as exc:  # a port out of range, an unclosed "[" in the host
            raise httpx.UnsupportedProtocol(f"cannot send to this URL: {exc}") from None
        if scheme not in ("http", "https") or not host:
            raise httpx.UnsupportedProtocol(f"cannot send to {url!r}: not an http(s) URL")
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise httpx.UnsupportedProtocol("cannot send to a URL with this host") from None
        if _HOST.fullmatch(host) is None:
            raise httpx.UnsupportedProtocol("cannot send to a URL with this host")
        path = _encoded(parts.path or "/")
        if not path.startswith("/"):
            path = "/" + path
        query = f"?{_encoded(parts.query)}" if parts.query else ""
        name = f"[{host}]" if ":" in host else host
        netloc = name if port is None else f"{name}:{port}"
        port = port or (443 if scheme == "https" else 80)
        target = _Target(scheme, host, port, f" {path}{query} HTTP/1.1\r\nHost: {netloc}\r\n")
        if len(self._targets) >= _TARGETS_MAX:  # node URLs differ per allocation
            self._targets.clear()
        self._targets[url] = target
        return target

    def _exchange(
        self,
        target: _Target,
        conn: Conn,
        method: str,
        message: bytes,
        deadline: float,
        arrivals: list[tuple[int, float]] | None,
    ) -> tuple[int, bytes]:
        """Send ``message`` on ``conn`` and read the reply; ``conn`` goes back to the
        pool when it can carry another request, and is closed otherwise."""
        conn.received = 0
        try:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise httpx.WriteTimeout("the deadline passed before sending")
            conn.sock.settimeout(left)
            try:
                conn.sock.sendall(message)
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
            except OSError as exc:
                raise httpx.WriteError(f"{type(exc).__name__}: {exc}") from None
            status, content, keep_alive = read_reply(
                conn, method, deadline, self.max_body, arrivals
            )
        except BaseException:
            conn.sock.close()
            raise
        if keep_alive and not conn.buffer:
            self._checkin(target.origin, conn)
        else:
            conn.sock.close()
        return status, content

    # -- connections ----------------------------------------------------------------

    def _checkout(self, origin: Origin) -> Conn | None:
        pool = self._idle.get(origin)
        now = time.monotonic()
        while pool:
            try:
                conn = pool.pop()
            except IndexError:
                return None
            if now - conn.idle_since < self._keepalive and not readable(conn.sock):
                return conn
            conn.sock.close()  # closed by the server, or about to be
        return None

    def _checkin(self, origin: Origin, conn: Conn) -> None:
        """Keep ``conn`` for the next request to ``origin``, or close it: the pool is
        full, or closed (decided under the lock, so a close() that ran meanwhile has
        not missed it)."""
        conn.idle_since = time.monotonic()
        with self._lock:
            if not self._closed:
                pool = self._idle.get(origin)
                if pool is None:
                    pool = self._idle[origin] = deque()
                if len(pool) < self._idle_max:
                    pool.append(conn)
                    return
        conn.sock.close()

    def _connect(self, target: _Target, timeout: float) -> Conn:
        sock = open_socket(target.scheme, target.host, target.port, timeout, self._tls)
        return Conn(sock)


# Every Wire alive, reset in a forked child by one hook (os.register_at_fork cannot
# unregister: a hook per Wire would outlive it).
_WIRES: weakref.WeakSet[Wire] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for wire in list(_WIRES):
        wire._forget_pool()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _encoded(text: str) -> str:
    """``text`` with what a request target cannot carry percent-encoded."""
    if _UNSAFE.search(text) is None:
        return text
    try:
        return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode()), text)
    except UnicodeError:  # a lone surrogate
        raise httpx.UnsupportedProtocol("cannot send to a URL with this path") from None


def _header(name: str, value: str) -> str:
    """One header line, refused (without quoting the value, which may be a secret)
    when it could not be sent as one line."""
    if _TOKEN.fullmatch(name) is None:
        raise httpx.LocalProtocolError("a header name is not an HTTP token: not sent")
    if _BAD_VALUE.search(value) is not None:
        raise httpx.LocalProtocolError(
            f"the {name} header has a line break, a control character or a character "
            "outside Latin-1: the request was not sent (check where its value comes from)"
        )
    return f"{name}: {value}\r\n"
