"""Connecting to a name with several addresses, and what a bad status line's error
shows."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shim.client.http1 import parse_head

from .wirekit import Kit, ok, post

NAME = "two-addresses.test"


@pytest.fixture
def kit() -> Iterator[Kit]:
    k = Kit()
    yield k
    k.close()


@pytest.fixture
def swallowing(kit: Kit) -> Iterator[int]:
    """A port: on 127.0.0.2 connects to it go unanswered (its accept queue is full, so
    the SYNs are dropped, as a route that swallows packets does); on 127.0.0.1 a server
    answers."""
    server = kit.serve(lambda i, _: ok())
    listener = socket.socket()
    listener.bind(("127.0.0.2", server.port))
    listener.listen(0)
    filler = socket.create_connection(("127.0.0.2", server.port), timeout=1)
    yield server.port
    filler.close()
    listener.close()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The system resolver, answering :data:`NAME` with the addresses the test puts in
    the list it gets, in that order."""
    answers: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host != NAME:
            return real(host, port, *args, **kw)
        if kw.get("flags", 0) & socket.AI_NUMERICHOST:
            raise socket.gaierror(socket.EAI_NONAME, "not a numeric host")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_a_first_address_that_never_answers_leaves_time_for_the_next(
    kit: Kit, swallowing: int, resolver: list[str]
) -> None:
    resolver += ["127.0.0.2", "127.0.0.1"]
    started = time.perf_counter()
    deadline = started + 5
    reply = kit.wire().send(
        "POST", f"http://{NAME}:{swallowing}/", b"{}", {}, connect_timeout=0.6, deadline=deadline
    )
    assert reply == (200, b'{"output": "x"}')
    assert time.perf_counter() - started < 0.6, "within the connect timeout"


def test_every_address_silent_is_a_connect_timeout_within_the_timeout(
    kit: Kit, swallowing: int, resolver: list[str]
) -> None:
    resolver += ["127.0.0.2", "127.0.0.2"]
    started = time.perf_counter()
    with pytest.raises(httpx.ConnectTimeout, match=rf"no connection to {NAME}:\d+ within"):
        post(kit.wire(), f"http://{NAME}:{swallowing}/", seconds=0.4)
    assert time.perf_counter() - started < 1.0


def test_a_bad_status_line_is_quoted_cut_and_escaped() -> None:
    """Forty characters at most, the cut said; a control character or a byte that is
    not UTF-8 shown escaped, never raw."""
    line = b"HTTP/1.1 2000 \x1b]0;owned\x07 \xff" + b"x" * 100
    with pytest.raises(httpx.RemoteProtocolError) as caught:
        parse_head(line + b"\r\nContent-Length: 0\r\n")
    message = str(caught.value)
    assert "\x1b" not in message and "\x07" not in message
    assert "\\x1b]0;owned\\x07 \\xff" in message
    assert "\u2026[cut 89 chars]" in message


def test_a_short_bad_status_line_is_quoted_whole() -> None:
    with pytest.raises(httpx.RemoteProtocolError, match=r"status line: 'SSH-2\.0-OpenSSH'$"):
        parse_head(b"SSH-2.0-OpenSSH\r\n")
