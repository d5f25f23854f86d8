"""Opening a connection within a deadline: name resolution, TCP, TLS.

``socket.create_connection`` bounds the TCP connect by its timeout but not the name
lookup before it (``getaddrinfo`` blocks for as long as the resolver takes: 5 s and
more per attempt when a DNS server is down). Here the lookup runs in a short-lived
daemon thread that the caller waits for only until its deadline; concurrent lookups of
one name share a thread, so a resolver outage costs one thread per name, not one per
call. IP literals are never looked up. With no TLS context given, one default
(verifying) context is built per process, on first use: building one loads the
system's CA store, about 90 ms.
"""

from __future__ import annotations

import os
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

__all__ = ["default_tls", "open_socket", "readable", "resolve"]

#: What getaddrinfo answers: (family, type, protocol, canonical name, address) each.
AddrInfo = Sequence[tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]]

_tls_lock = threading.Lock()
_tls: ssl.SSLContext | None = None


def default_tls() -> ssl.SSLContext:
    """The process's default verifying TLS context (the system's CAs), built once."""
    global _tls
    if _tls is None:
        with _tls_lock:
            if _tls is None:
                _tls = ssl.create_default_context()
    return _tls


class _Lookup:
    """One name lookup in flight: waited for by every caller that wants that name."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: AddrInfo | BaseException | None = None


_lookups: dict[tuple[str, int], _Lookup] = {}
_lookups_lock = threading.Lock()


def _after_fork() -> None:
    """The child has none of the parent's lookup threads: forget their entries (and a
    lock some parent thread may have held at the fork)."""
    global _lookups_lock
    _lookups.clear()
    _lookups_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def resolve(host: str, port: int, timeout: float) -> AddrInfo:
    """The addresses of ``host``, looked up within ``timeout`` seconds.
    httpx.ConnectTimeout when the resolver takes longer, httpx.ConnectError when the
    name does not resolve."""
    try:  # an IP literal: no lookup, no thread
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    except (UnicodeError, ValueError) as exc:  # not a host name at all (a label too long)
        raise httpx.ConnectError(f"{host!r} is not a valid host name: {exc}") from None
    if timeout <= 0:
        raise httpx.ConnectTimeout(f"deadline passed before looking up {host}")
    key = (host, port)
    with _lookups_lock:
        lookup = _lookups.get(key)
        start = lookup is None
        if lookup is None:
            lookup = _lookups[key] = _Lookup()
    if start:
        try:
            threading.Thread(
                target=_look_up, args=(key, lookup), name="shim-resolve", daemon=True
            ).start()
        except RuntimeError:  # no new threads at interpreter shutdown: look up here
            _look_up(key, lookup)
    if not lookup.done.wait(timeout):
        raise httpx.ConnectTimeout(f"no address for {host} within {timeout:g} s")
    result = lookup.result
    if isinstance(result, BaseException):
        raise httpx.ConnectError(f"cannot resolve {host}: {result}")
    assert result is not None
    return result


def _look_up(key: tuple[str, int], lookup: _Lookup) -> None:
    try:
        lookup.result = socket.getaddrinfo(*key, type=socket.SOCK_STREAM)
    except Exception as exc:  # handed to the waiters
        lookup.result = exc
    finally:
        with _lookups_lock:
            if _lookups.get(key) is lookup:
                del _lookups[key]
        lookup.done.set()


def open_socket(
    scheme: str, host: str, port: int, timeout: float, tls: ssl.SSLContext | None
) -> socket.socket:
    """A connected socket to ``host:port`` (TLS-wrapped for https, verified with
    ``tls`` or :func:`default_tls`), resolved, connected and handshaken within
    ``timeout`` seconds. Errors are httpx.ConnectError and httpx.ConnectTimeout.

    Each address the name resolves to is tried in turn while the deadline allows, one
    that does not answer as well as one that refuses: each gets an equal share of the
    time left (the last one all of it), so a first address that swallows packets (an
    IPv6 one on a network without an IPv6 route) leaves time for the others."""
    if timeout <= 0:
        raise httpx.ConnectTimeout("deadline passed before connecting")
    deadline = time.perf_counter() + timeout
    errors: list[OSError] = []
    sock: socket.socket | None = None
    addresses = resolve(host, port, timeout)
    for tried, (family, kind, proto, _, address) in enumerate(addresses):
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left / (len(addresses) - tried))
            sock.connect(address)
            break
        except OSError as exc:  # TimeoutError included: the next address, if time allows
            sock.close()
            sock = None
            errors.append(exc)
    if sock is None:
        if all(isinstance(exc, TimeoutError) for exc in errors):
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {timeout:g} s")
        refused = next(exc for exc in reversed(errors) if not isinstance(exc, TimeoutError))
        raise httpx.ConnectError(f"{host}:{port}: {refused}")
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if scheme == "https":
            sock.settimeout(max(deadline - time.perf_counter(), 0.001))
            sock = (tls or default_tls()).wrap_socket(sock, server_hostname=host)
    except TimeoutError:
        sock.close()
        raise httpx.ConnectTimeout(f"TLS handshake with {host}:{port} timed out") from None
    except OSError as exc:  # ssl.SSLError included: certificate checks fail here
        sock.close()
        raise httpx.ConnectError(str(exc)) from None
    return sock


def readable(sock: socket.socket) -> bool:
    """An idle keep-alive socket with something to read was closed (or spoke out of
    turn): either way it cannot carry a request. poll (or a selector), not select():
    select() fails for descriptors above 1024, which would count every idle connection
    of a large process as closed."""
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes already buffered: spoke out of turn
        return _ready(sock)
    except (OSError, ValueError):  # closed under us
        return True


if hasattr(select, "poll"):

    def _ready(sock: socket.socket) -> bool:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))  # POLLHUP, POLLERR and POLLNVAL come back too

else:  # pragma: no cover - Windows

    def _ready(sock: socket.socket) -> bool:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            return bool(selector.select(0))
