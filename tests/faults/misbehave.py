"""A coordinator (with its node) on a real 127.0.0.1 socket that misbehaves on demand.

HTTP/1.1 is spoken by hand so that every fault is the real thing on the wire: a
refused or reset connection, a body cut short, a reply dripped a byte at a time.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections import Counter
from typing import Any

#: What the coordinator's task endpoint does; see ``Misbehaving.set``.
FAULTS = (
    "ok",  # a well-formed answer with output
    "refuse",  # accept, then reset the connection before reading the request
    "slow",  # answer after ``delay`` seconds
    "hang",  # never answer (until the server stops)
    "burst",  # ``count`` replies of ``status`` (503), then answers normally
    "status",  # always ``status`` with a JSON error body
    "malformed",  # 200 with a body that is not JSON
    "truncated",  # 200 whose Content-Length promises more than is sent, then close
    "reset",  # headers and half the body, then a TCP reset
    "drip",  # a valid body, one byte every ``delay`` seconds
    "node_fails",  # an allocation; the node's completion answers 500
    "release_fails",  # an allocation; the node answers, the release answers 500
    "bad_framing",  # 200 with "Content-Length: \xb2" (a digit to str.isdigit, not to HTTP)
    "hostile_id",  # an allocation whose id is "../../../admin/keys"; node and release fine
    "stale",  # each connection answers once, then closes as its next request arrives
)

OUTPUT = {"days": [{"day": "mon", "meals": ["oats"]}]}


class Misbehaving:
    def __init__(self, port: int = 0) -> None:
        self._sock = socket.create_server(("127.0.0.1", port))
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.fault = "ok"
        self.params: dict[str, Any] = {}
        self.seen: Counter[str] = Counter()
        self.paths: list[str] = []  # "METHOD /path" of every request
        self._burst = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="misbehaving", daemon=True)
        self._thread.start()

    def set(self, fault: str, **params: Any) -> None:
        """Misbehave this way from the next request on (``ok`` to recover)."""
        assert fault in FAULTS, fault
        with self._lock:
            self.fault, self.params = fault, params
            self._burst = params.get("count", 0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _close(conn)

    def __enter__(self) -> Misbehaving:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving ---------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name="misbehaving-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        answered = 0
        try:
            with conn:
                while not self._stop.is_set():
                    if self.fault == "refuse":
                        self.seen["refused"] += 1
                        _reset(conn)
                        return
                    request = _read_request(conn)
                    if request is None:
                        return
                    method, path = request
                    self.paths.append(f"{method} {path}")
                    with self._lock:  # the fault in force when the request came in
                        fault, params = self.fault, dict(self.params)
                    if fault == "stale" and answered:  # as if closed idle just before
                        self.seen["stale"] += 1
                        return
                    if not self._answer(conn, method, path, fault, params):
                        return
                    answered += 1
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)

    def _answer(
        self, conn: socket.socket, method: str, path: str, fault: str, params: dict[str, Any]
    ) -> bool:
        """Answer one request; False when the connection is done with."""
        if method == "DELETE":
            self.seen["release"] += 1
            if fault == "release_fails":
                return _send(conn, 500, {"detail": "release store unavailable"})
            return _send(conn, 204, None)
        if path.startswith("/node/"):
            self.seen["node"] += 1
            if fault == "node_fails":
                return _send(conn, 500, {"error": {"message": "CUDA out of memory"}})
            completion = {"model": "qwen2.5-3b-instruct", "choices": [{"message": {}}]}
            completion["choices"][0]["message"]["content"] = json.dumps(OUTPUT)
            return _send(conn, 200, completion)
        with self._lock:
            self.seen["task"] += 1
            bursting = fault == "burst" and self._burst > 0
            self._burst -= bursting
        answer = {"output": OUTPUT, "model": "qwen2.5-3b-instruct", "service_type": "cf-text"}
        if fault == "slow":
            self._stop.wait(params["delay"])
        elif fault == "hang":
            self._stop.wait()
            return False
        elif bursting:
            return _send(conn, params.get("status", 503), {"detail": "no capacity"})
        elif fault == "status":
            return _send(conn, params["status"], {"detail": params.get("detail", "refused")})
        elif fault == "malformed":
            return _send_raw(conn, 200, b'{"output": {"days": [')
        elif fault == "bad_framing":
            body = json.dumps(answer).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n" + body)
            return False
        elif fault == "truncated":
            body = json.dumps(answer).encode()
            head = _head(200, len(body) + 500)
            conn.sendall(head + body)
            return False
        elif fault == "reset":
            body = json.dumps(answer).encode()
            conn.sendall(_head(200, len(body)) + body[: len(body) // 2])
            _reset(conn)
            return False
        elif fault == "drip":
            body = json.dumps(answer).encode()
            conn.sendall(_head(200, len(body)))
            for i in range(len(body)):
                if self._stop.wait(params["delay"]):
                    return False
                conn.sendall(body[i : i + 1])
            return True
        elif fault in ("node_fails", "release_fails", "hostile_id"):
            hostile = fault == "hostile_id"
            answer = {
                "url": f"{self.url}/node",
                "allocation_id": "../../../admin/keys" if hostile else f"alloc-{self.seen['task']}",
                "service": "cf-text",
                "node_id": "node-x",
                "model": "qwen2.5-3b-instruct",
            }
        return _send(conn, 200, answer)


def _read_request(conn: socket.socket) -> tuple[str, str] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return method, path


def _head(status: int, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _send(conn: socket.socket, status: int, payload: Any) -> bool:
    return _send_raw(conn, status, b"" if payload is None else json.dumps(payload).encode())


def _send_raw(conn: socket.socket, status: int, body: bytes) -> bool:
    conn.sendall(_head(status, len(body)) + body)
    return True


def _reset(conn: socket.socket) -> None:
    """Close with a TCP RST rather than a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(conn)


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.close()


def free_port() -> int:
    """A port nothing listens on (bound, then closed): connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
