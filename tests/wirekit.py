"""A TCP server on 127.0.0.1 that answers HTTP requests byte for byte as a test scripts
it, for the wire client's tests: framing, keep-alive, stale connections, TLS."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from shim.client.wire import Wire

#: Given the request number (from 0; on its connection with ``per_connection``) and the
#: raw request, what to send back; None closes the connection without a word.
Answer = Callable[[int, bytes], bytes | None]


class Scripted:
    """Answers each request with ``answer``'s bytes and counts connections;
    ``close_after`` closes a connection after that many replies; ``reset`` closes
    with a TCP reset rather than a FIN when ``answer`` says None."""

    def __init__(
        self,
        answer: Answer,
        *,
        close_after: int = 0,
        tls: ssl.SSLContext | None = None,
        per_connection: bool = False,
        reset: bool = False,
    ) -> None:
        self.answer = answer
        self.close_after = close_after
        self.tls = tls
        self.per_connection = per_connection
        self.reset = reset
        self.connections = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._talks: dict[threading.Thread, socket.socket] = {}
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def talking(self) -> int:
        """Connections still open: the client has not closed them."""
        with self._lock:
            return sum(thread.is_alive() for thread in self._talks)

    def url(self, path: str = "/api/inference/task") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self.tls:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except OSError:
                    conn.close()
                    continue
            talk = threading.Thread(target=self._talk, args=(conn,), daemon=True)
            with self._lock:
                self.connections += 1
                self._talks[talk] = conn
            talk.start()

    def _talk(self, conn: socket.socket) -> None:
        data, replies = b"", 0
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    if not (chunk := _received(conn)):
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    if not (chunk := _received(conn)):
                        return
                    rest += chunk
                request, data = head + b"\r\n\r\n" + rest[:length], rest[length:]
                with self._lock:
                    number = replies if self.per_connection else len(self.requests)
                    self.requests.append(request)
                reply = self.answer(number, request)
                if reply is None:
                    if self.reset:
                        conn.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    return
                try:
                    conn.sendall(reply)
                except OSError:
                    return
                replies += 1
                if self.close_after and replies >= self.close_after:
                    return

    def close(self) -> None:
        """Stop listening and end every connection; their threads are gone on return
        (a shutdown wakes a thread blocked in accept or recv, where a close may not)."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        with self._lock:
            talks = list(self._talks.items())
        for _, conn in talks:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for talk, _ in talks:
            talk.join(5)
        assert not self._thread.is_alive(), "the accept thread ended"
        assert not any(talk.is_alive() for talk, _ in talks), "every connection ended"


class Pieces:
    """A socket that hands out the given pieces one ``recv`` at a time (no more than it
    asks for), then the end of the stream: reads split exactly where the test says."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = deque(p for p in pieces if p)

    def recv(self, size: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.popleft()
        if len(piece) > size:
            self.pieces.appendleft(piece[size:])
        return piece[:size]

    def settimeout(self, timeout: float) -> None:
        pass


def ok(body: bytes = b'{"output": "x"}', *extra: str) -> bytes:
    """A 200 reply with ``body`` and the ``extra`` header lines."""
    head = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def post(wire: Wire, url: str, body: bytes = b"{}", seconds: float = 5.0) -> tuple[int, bytes]:
    """POST ``body`` with ``seconds`` to connect and answer."""
    deadline = time.perf_counter() + seconds
    return wire.send("POST", url, body, {}, connect_timeout=seconds, deadline=deadline)


class Kit:
    """Servers and clients a test starts, closed at its end."""

    def __init__(self) -> None:
        self.servers: list[Scripted] = []
        self.wires: list[Wire] = []

    def serve(self, answer: Answer, **options: Any) -> Scripted:
        """A :class:`Scripted` server answering with ``answer``."""
        self.servers.append(Scripted(answer, **options))
        return self.servers[-1]

    def wire(self, **options: Any) -> Wire:
        """A wire client with ``options``."""
        self.wires.append(Wire(**options))
        return self.wires[-1]

    def close(self) -> None:
        for wire in self.wires:
            wire.close()
        for server in self.servers:
            server.close()


def _received(conn: socket.socket) -> bytes:
    """What the client sent next; nothing once it closed or the connection failed."""
    try:
        return conn.recv(65536)
    except OSError:
        return b""
