"""The wire client against hostile and unlucky servers: strict framing, percent-encoded
targets, header values never quoted, keep-alive in a process with many descriptors, a
stale pooled connection retried once, one TLS context, name lookup inside the deadline,
and every error an httpx one."""

from __future__ import annotations

import resource
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shim.client.wire import TooLarge

from .wirekit import Kit, ok, post


@pytest.fixture
def kit() -> Iterator[Kit]:
    kit = Kit()
    yield kit
    kit.close()


def reply(head: bytes, body: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n" + body


# -- framing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length", [b"\xb2", b"\xb9", b"+5", b"1_0", b"0x5", b"-5", b"5 5", b"5, 6", b"", b"1" * 21]
)
def test_content_length_is_ascii_digits_only(kit: Kit, length: bytes) -> None:
    """``²`` (a digit to str.isdigit, a ValueError to int) and every other spelling
    int() takes but HTTP does not: a protocol error, not a crash."""
    server = kit.serve(lambda i, _: reply(b"Content-Length: " + length, b"hello"))
    with pytest.raises(httpx.RemoteProtocolError, match="Content-Length"):
        post(kit.wire(), server.url())


def test_equal_content_lengths_are_one_and_different_ones_an_error(kit: Kit) -> None:
    same = kit.serve(lambda i, _: reply(b"Content-Length: 5\r\nContent-Length: 5", b"hello"))
    listed = kit.serve(lambda i, _: reply(b"Content-Length: 5, 5", b"hello"))
    wire = kit.wire()
    assert post(wire, same.url()) == (200, b"hello")
    assert post(wire, listed.url()) == (200, b"hello")
    assert same.connections == listed.connections == 1
    two = kit.serve(lambda i, _: reply(b"Content-Length: 5\r\nContent-Length: 3", b"hello"))
    with pytest.raises(httpx.RemoteProtocolError, match="conflicting"):
        post(wire, two.url())


CHUNKED = b"Transfer-Encoding: chunked"


@pytest.mark.parametrize(
    "chunks",
    [
        b"0x5\r\nhello\r\n0\r\n\r\n",  # int(x, 16) takes a 0x prefix
        b"-2\r\nhello\r\n0\r\n\r\n",  # and a sign
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"1_0\r\nhellohellohello!\r\n0\r\n\r\n",  # and underscores
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",  # the CRLF after a chunk's data
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n",  # trailers are fields
        b"5\r\nhello\r\n0\r\n folded\r\n\r\n",
    ],
)
def test_chunked_framing_is_strict(kit: Kit, chunks: bytes) -> None:
    server = kit.serve(lambda i, _: reply(CHUNKED, chunks))
    with pytest.raises(httpx.RemoteProtocolError):
        post(kit.wire(), server.url())


def test_chunk_extensions_and_trailers_are_taken(kit: Kit) -> None:
    chunks = b"5;name=value\r\nhello\r\n6 \r\n world\r\n0;last\r\nX-Trailer: t\r\n\r\n"
    server = kit.serve(lambda i, _: reply(CHUNKED, chunks))
    wire = kit.wire()
    assert post(wire, server.url()) == (200, b"hello world")
    assert post(wire, server.url()) == (200, b"hello world")
    assert server.connections == 1


@pytest.mark.parametrize(
    ("head", "error"),
    [
        (b"Transfer-Encoding: gzip", "other than chunked"),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "more than one"),
        (b"Content-Length : 5", "malformed header line"),
        (b"X-Odd: a\x00b\r\nContent-Length: 5", "malformed header line"),
    ],
)
def test_other_framing_a_client_must_refuse(kit: Kit, head: bytes, error: str) -> None:
    server = kit.serve(lambda i, _: reply(head, b"hello"))
    with pytest.raises(httpx.RemoteProtocolError, match=error):
        post(kit.wire(), server.url())


def test_both_lengths_chunking_wins_and_the_connection_is_not_reused(kit: Kit) -> None:
    server = kit.serve(
        lambda i, _: reply(CHUNKED + b"\r\nContent-Length: 3", b"2\r\nhi\r\n0\r\n\r\n")
    )
    wire = kit.wire()
    assert post(wire, server.url()) == (200, b"hi")
    assert post(wire, server.url()) == (200, b"hi")
    assert server.connections == 2


def test_status_lines_are_strict(kit: Kit) -> None:
    for status in (b"HTTP/1.1 \xb200 OK", b"HTTP/2.0 200 OK", b"HTTP/1.1 099 Low"):
        server = kit.serve(lambda i, _, s=status: s + b"\r\nContent-Length: 0\r\n\r\n")
        with pytest.raises(httpx.RemoteProtocolError, match="status line"):
            post(kit.wire(), server.url())
    switching = kit.serve(lambda i, _: b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + ok())
    with pytest.raises(httpx.RemoteProtocolError, match="101"):
        post(kit.wire(), switching.url())


# -- what is sent ---------------------------------------------------------------------


def test_paths_and_queries_are_percent_encoded(kit: Kit) -> None:
    """A space or a euro sign in a node URL is encoded, as UTF-8; an escape already
    there (%2F, %41) is kept as it is; a lone % is encoded."""
    server = kit.serve(lambda i, _: ok())
    wire = kit.wire()
    url = server.url("/a b/\u20ac/x%2Fy/100%?q=a b&r=%41#fragment")
    assert post(wire, url)[0] == 200
    line = server.requests[0].split(b"\r\n", 1)[0]
    assert line == b"POST /a%20b/%E2%82%AC/x%2Fy/100%25?q=a%20b&r=%41 HTTP/1.1"


@pytest.mark.parametrize("value", ["s3cret\n", "s3cret\r\nX-Evil: 1", "s3cret\x00", "s3cret\u20ac"])
def test_a_header_value_is_never_quoted_in_an_error(kit: Kit, value: str) -> None:
    """The value may be a key: the error names the header, not what it holds."""
    server = kit.serve(lambda i, _: ok())
    wire = kit.wire()
    deadline = time.perf_counter() + 5
    with pytest.raises(httpx.LocalProtocolError, match="Authorization header") as caught:
        wire.send(
            "POST",
            server.url(),
            b"{}",
            {"Authorization": f"Bearer {value}"},
            connect_timeout=5,
            deadline=deadline,
        )
    assert "s3cret" not in str(caught.value)
    with pytest.raises(httpx.LocalProtocolError) as made:
        kit.wire(headers={"Authorization": f"Bearer {value}"})
    assert "s3cret" not in str(made.value)
    assert not server.requests, "nothing was sent"


def test_every_error_is_an_httpx_error(kit: Kit) -> None:
    wire = kit.wire()
    with pytest.raises(httpx.UnsupportedProtocol):
        post(wire, "http://127.0.0.1:99999/")  # urlsplit: ValueError
    with pytest.raises(httpx.ConnectError):
        post(wire, f"http://{'a' * 70}.test/")  # getaddrinfo: UnicodeError
    assert issubclass(TooLarge, httpx.HTTPError)


# -- connections ----------------------------------------------------------------------


def test_keep_alive_holds_with_descriptors_above_1024(kit: Kit) -> None:
    """select() cannot watch a descriptor above 1023: the idle connection looked closed
    and every request took a new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip(f"the hard limit on open files ({hard}) is below 1200")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    server = kit.serve(lambda i, _: ok())
    held = [socket.socket() for _ in range(1100)]
    try:
        assert max(s.fileno() for s in held) >= 1024
        wire = kit.wire()
        for _ in range(5):
            assert post(wire, server.url()) == (200, b'{"output": "x"}')
        assert server.connections == 1
    finally:
        for s in held:
            s.close()
        if soft < 1200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("reset", [False, True], ids=["FIN", "RST"])
def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one(kit: Kit, reset: bool) -> None:
    """Each connection answers one request and is closed (FIN or RST) as the next one
    arrives, without a byte of reply: as a server whose idle timeout fired while the
    request was on its way. Every request is answered, on a fresh connection."""
    server = kit.serve(lambda i, _: ok(b"[]") if i == 0 else None, per_connection=True, reset=reset)
    wire = kit.wire()
    for _ in range(5):
        assert post(wire, server.url()) == (200, b"[]")
    assert server.connections == 5
    assert len(server.requests) == 9  # 4 of them on a stale connection, then again


def test_no_retry_once_the_reply_began_on_a_fresh_connection_or_on_timeout(kit: Kit) -> None:
    fresh = kit.serve(lambda i, _: None)
    wire = kit.wire()
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        post(wire, fresh.url())
    assert len(fresh.requests) == 1, "a fresh connection proves nothing stale: no retry"

    began = kit.serve(
        lambda i, _: ok() if i == 0 else b"HTTP/1.1 200 OK\r\nContent-Le", close_after=2
    )
    post(wire, began.url())
    with pytest.raises(httpx.RemoteProtocolError, match="reply head"):
        post(wire, began.url())
    assert len(began.requests) == 2, "part of a reply came: the request was taken"

    answered = threading.Event()
    slow = kit.serve(lambda i, _: ok() if i == 0 or answered.wait(2) else None)
    post(wire, slow.url())
    with pytest.raises(httpx.ReadTimeout):
        post(wire, slow.url(), seconds=0.2)
    answered.set()
    assert len(slow.requests) == 2, "a timeout may be a request being processed"


def test_one_default_tls_context_per_process(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a context loads the CA store (about 90 ms): not on every connection."""
    built: list[ssl.SSLContext] = []
    create = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(create(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def refuse_handshakes() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=refuse_handshakes, daemon=True).start()
    try:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                post(kit.wire(), f"https://127.0.0.1:{port}/")
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
    assert len(built) <= 1
    from shim.client import dial

    assert dial.default_tls() is dial.default_tls()


class SlowResolver:
    """getaddrinfo for ``slow.test`` held until released (at most 3 s), as a resolver
    whose DNS server does not answer; every other name resolves as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.lookups = 0
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        numeric = kwargs.get("flags", 0) & socket.AI_NUMERICHOST
        if host != "slow.test" or numeric:
            return self._real(host, port, *args, **kwargs)
        self.lookups += 1
        self.release.wait(3)
        return self._real("127.0.0.1", port, *args, **kwargs)


def test_name_lookup_is_inside_the_deadline(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = SlowResolver(monkeypatch)
    wire = kit.wire()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            post(wire, "http://slow.test:1/", seconds=0.3)
        except httpx.HTTPError as exc:
            errors.append(exc)

    started = time.perf_counter()
    callers = [threading.Thread(target=call) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    took = time.perf_counter() - started
    resolver.release.set()
    assert [type(e) for e in errors] == [httpx.ConnectTimeout] * 4
    assert took < 1.5, f"the lookup held the callers {took:.1f} s past a 0.3 s deadline"
    assert resolver.lookups == 1, "callers waiting for one name share one lookup"
