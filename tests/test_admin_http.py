"""The Unleash Admin API client against a server that closes a connection without
answering, as one does when its keep-alive timeout meets the next request."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from shim.base.errors import ShimError
from shim.flags._admin_http import AdminApi


class Closing:
    """Reads the first connection's request and closes it unanswered; answers 200 on
    every later connection. Keeps the method of each request it read."""

    def __init__(self, reset: bool = False) -> None:
        self.reset = reset  # close with a TCP reset, not a FIN
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[str] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = conn.recv(65536)
                self.requests.append(data.split(b" ", 1)[0].decode())
                if self.connections > 1:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                    )
                elif self.reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["closed", "reset"])
def server(request: pytest.FixtureRequest) -> Iterator[Closing]:
    found = Closing(reset=request.param == "reset")
    yield found
    found.close()


def api(server: Closing) -> AdminApi:
    http = httpx.Client(base_url=server.url, timeout=5)
    return AdminApi(
        server.url, "*:*.token", environment="development", project="default", http=http
    )


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_an_idempotent_request_is_sent_again_on_a_new_connection(
    server: Closing, method: str
) -> None:
    client = api(server)
    try:
        assert client.call(method, "/api/admin/archive/x").status_code == 200
    finally:
        client.close()
    assert server.requests == [method, method]


def test_a_post_is_not_sent_twice(server: Closing) -> None:
    client = api(server)
    try:
        with pytest.raises(ShimError, match=r"RemoteProtocolError|ReadError"):
            client.call("POST", "/api/admin/projects/default/features", json={"name": "x"})
    finally:
        client.close()
    assert server.requests == ["POST"]  # the server may have acted on it


def test_a_refused_connection_is_tried_again_until_the_server_listens() -> None:
    """Nothing was sent: even a POST goes out once the server is up (CI saw one
    connection refused while the suite's server ran)."""
    port = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()  # refused from here on
    later: list[Closing] = []

    def listen() -> None:
        server = Closing.__new__(Closing)
        server.reset, server.url, server.requests, server.connections = False, url, [], 1
        server.sock = socket.create_server(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        threading.Thread(target=server._serve, daemon=True).start()
        later.append(server)

    timer = threading.Timer(0.4, listen)
    timer.start()
    http = httpx.Client(base_url=url, timeout=5)
    client = AdminApi(url, "*:*.token", environment="development", project="default", http=http)
    try:
        assert client.call("POST", "/api/admin/projects/default/features").status_code == 200
    finally:
        client.close()
        timer.join()
        for server in later:
            server.close()
    assert later[0].requests == ["POST"]


def test_a_server_that_never_listens_is_an_error_within_two_seconds() -> None:
    port = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    http = httpx.Client(base_url=url, timeout=5)
    client = AdminApi(url, "*:*.token", environment="development", project="default", http=http)
    started = time.monotonic()
    try:
        with pytest.raises(ShimError, match=r"ConnectError.*is the server up"):
            client.call("GET", "/api/admin/projects")
    finally:
        client.close()
    assert 1.5 < time.monotonic() - started < 3
