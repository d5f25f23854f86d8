"""The task path's HTTP/1.1 client against servers that answer byte for byte as scripted:
keep-alive, chunked and read-to-close bodies, 1xx replies, closed idle connections, one
deadline for a dripping reply, size limits, header injection, TLS, threads. Strict
framing, encoding, stale connections and the deadline's reach: test_wire_hardening.py."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shim.client.wire import TooLarge, Wire

from .wirekit import Answer, Scripted, ok, post


@pytest.fixture
def serve() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def start(answer: Answer, **kwargs: object) -> Scripted:
        server = Scripted(answer, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def wires() -> Iterator[Callable[..., Wire]]:
    made: list[Wire] = []

    def make(**kwargs: object) -> Wire:
        made.append(Wire(**kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for wire in made:
        wire.close()


def test_requests_share_one_keep_alive_connection(
    serve: Callable[..., Scripted], wires: Callable[..., Wire]
) -> None:
    server = serve(lambda i, _: ok(b'{"n": %d}' % i))
    wire = wires(headers={"User-Agent": "t/1"})
    for i in range(20):
        assert post(wire, server.url(), b'{"q": 1}') == (200, b'{"n": %d}' % i)
    assert server.connections == 1
    first = server.requests[0].decode()
    assert first.startswith("POST /api/inference/task HTTP/1.1\r\n")
    for header in ("Host: 127.0.0.1:", "User-Agent: t/1", "Content-Length: 8"):
        assert header in first
    assert first.endswith('\r\n\r\n{"q": 1}')
    wire.close()


def test_chunked_read_to_close_and_informational_replies(
    serve: Callable[..., Scripted], wires: Callable[..., Wire]
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    server = serve(lambda i, _: chunked)
    wire = wires()
    assert post(wire, server.url()) == (200, b"hello world")
    assert post(wire, server.url()) == (200, b"hello world")
    assert server.connections == 1  # the trailer was read: the connection stayed usable

    to_close = serve(lambda i, _: b"HTTP/1.0 200 OK\r\n\r\n" + b"z" * 100_000, close_after=1)
    assert post(wire, to_close.url()) == (200, b"z" * 100_000)
    assert post(wire, to_close.url()) == (200, b"z" * 100_000)
    assert to_close.connections == 2  # read to the end: never reused

    informational = serve(lambda i, _: b"HTTP/1.1 100 Continue\r\n\r\n" + ok())
    assert post(wire, informational.url()) == (200, b'{"output": "x"}')
    no_body = serve(lambda i, _: b"HTTP/1.1 204 No Content\r\n\r\n")
    assert post(wire, no_body.url()) == (204, b"")
    assert post(wire, no_body.url()) == (204, b"")
    assert no_body.connections == 1


def test_connections_the_server_closes_are_not_reused(
    serve: Callable[..., Scripted], wires: Callable[..., Wire]
) -> None:
    says_close = serve(lambda i, _: ok(b"{}", "Connection: close"), close_after=1)
    closes_quietly = serve(lambda i, _: ok(), close_after=1)
    wire = wires()
    for server in (says_close, closes_quietly):
        for _ in range(3):
            assert post(wire, server.url())[0] == 200
            time.sleep(0.05)  # the quiet close reaches us before the next request
        assert server.connections == 3
    aged = serve(lambda i, _: ok())
    short = wires(keepalive=0.05)
    post(short, aged.url())
    time.sleep(0.1)
    post(short, aged.url())
    assert aged.connections == 2  # idle past keepalive: a fresh connection


def test_errors_are_httpx_errors(
    serve: Callable[..., Scripted], wires: Callable[..., Wire]
) -> None:
    wire = wires()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(httpx.ConnectError, match="Connection refused"):
        post(wire, f"http://127.0.0.1:{port}/")
    with pytest.raises(httpx.UnsupportedProtocol):
        post(wire, "ftp://127.0.0.1/")
    silent = serve(lambda i, _: None)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        post(wire, silent.url())
    short = serve(lambda i, _: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", close_after=1)
    with pytest.raises(httpx.RemoteProtocolError, match="received 2 bytes, expected 50"):
        post(wire, short.url())
    garbage = serve(lambda i, _: b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(httpx.RemoteProtocolError, match=r"not an HTTP/1\.x status line"):
        post(wire, garbage.url())
    with pytest.raises(httpx.LocalProtocolError, match="line break"):
        wire.send(
            "POST",
            short.url(),
            b"{}",
            {"X-Allocation-Id": "a\r\nX-Evil: 1"},
            connect_timeout=1,
            deadline=time.perf_counter() + 1,
        )
    huge = serve(lambda i, _: b"HTTP/1.1 200 OK\r\nContent-Length: 1000001\r\n\r\n")
    with pytest.raises(TooLarge):
        post(wires(max_body=1_000_000), huge.url())
    endless = serve(
        lambda i, _: (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"FFFF\r\n" + b"x" * 0xFFFF + b"\r\n") * 20
        )
    )
    with pytest.raises(TooLarge):
        post(wires(max_body=1_000_000), endless.url())


def test_one_deadline_for_a_dripping_reply(
    serve: Callable[..., Scripted], wires: Callable[..., Wire]
) -> None:
    """Each byte comes well within any per-read timeout; the whole reply does not."""

    class Dripping(Scripted):
        def _talk(self, conn: socket.socket) -> None:
            with conn:
                conn.recv(65536)
                reply = ok(b'{"output": "' + b"x" * 200 + b'"}')
                for k in range(len(reply)):
                    try:
                        conn.sendall(reply[k : k + 1])
                    except OSError:
                        return
                    time.sleep(0.01)

    server = Dripping(lambda i, _: None)
    try:
        started = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            post(wires(), server.url(), seconds=0.5)
        assert time.perf_counter() - started < 1.5  # the reply would take about 2.6 s
    finally:
        server.close()


def test_threads_share_a_pool(serve: Callable[..., Scripted], wires: Callable[..., Wire]) -> None:
    server = serve(lambda i, request: ok(request.rpartition(b"\r\n\r\n")[2]))
    wire = wires()
    failures: list[str] = []

    def worker(k: int) -> None:
        for n in range(50):
            body = b'{"k": %d, "n": %d}' % (k, n)
            status, content = post(wire, server.url(), body)
            if (status, content) != (200, body):
                failures.append(f"{k}/{n}: {status} {content!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(server.requests) == 400
    assert server.connections <= 8  # one per request in flight at most
    wire.close()


def test_tls_verifies_with_the_given_context(
    tmp_path: Path, serve: Callable[..., Scripted], wires: Callable[..., Wire]
) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    server = serve(lambda i, _: ok(), tls=server_side)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        post(wires(), server.url())
    trusting = wires(tls=ssl.create_default_context(cafile=str(cert)))
    assert post(trusting, server.url()) == (200, b'{"output": "x"}')
    assert post(trusting, server.url()) == (200, b'{"output": "x"}')
    assert server.connections == 1  # kept alive (the refused handshake never connected)


def test_a_proxy_in_the_environment_is_used_through_httpx(
    serve: Callable[..., Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only httpx knows proxies: with HTTP_PROXY set, the task client's requests reach
    the proxy, in absolute form."""
    from shim import TaskClient, TaskRequest

    proxy = serve(lambda i, _: ok(b'{"output": "via proxy", "model": "m"}'))
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with TaskClient("http://cf-orch.internal:8700", api_key="k") as client:
        result = client.infer("kiwi", "meal_plan", TaskRequest(prompt="x"))
    assert result.output == "via proxy"
    assert proxy.requests[0].startswith(b"POST http://cf-orch.internal:8700/api/inference/task ")
