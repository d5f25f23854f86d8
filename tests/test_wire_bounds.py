"""The wire client's bounds: a hostile reply costs CPU time linear in its size (a 64 KB
head line is refused in milliseconds of CPU, not seconds holding the GIL), the 64 KB
cap on a head, a chunk-size line and trailers holds however the bytes arrive, and a pool
closed while other threads use it neither raises nor leaks a connection."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from shim.client.http1 import MAX_HEAD, Conn, read_reply
from shim.client.wire import Wire

from .shimkit import wait_for
from .wirekit import Kit, Pieces, Scripted, ok, post

STATUS = b"HTTP/1.1 200 OK\r\n"
CHUNKED = STATUS + b"Transfer-Encoding: chunked\r\n\r\n"
#: What one hostile line may fill while the head stays within the cap.
ROOM = MAX_HEAD - 200
#: CPU seconds a 64 KB reply may cost at most: generous (it takes milliseconds).
BUDGET = 0.5


@pytest.fixture
def kit() -> Iterator[Kit]:
    kit = Kit()
    yield kit
    kit.close()


def read(pieces: list[bytes], max_body: int = 1 << 20) -> tuple[int, bytes]:
    """The status and body read from a socket handing out ``pieces``."""
    conn = Conn(Pieces(pieces))  # type: ignore[arg-type]
    status, body, _ = read_reply(conn, "GET", time.perf_counter() + 60, max_body)
    return status, body


def cpu(fn: Callable[[], object]) -> float:
    """The CPU seconds this thread spent in ``fn`` (others' load does not count)."""
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def drip(data: bytes) -> list[bytes]:
    return [data[k : k + 1] for k in range(len(data))]


# -- linear time ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        STATUS + b"a" * ROOM + b"\r\n\r\n",  # token characters and no colon
        STATUS + b"a:" * (ROOM // 2) + b"\x00\r\n\r\n",  # colons in a value, then a NUL
        STATUS + b"X: a\r\n b\r\n" + b"a" * ROOM + b"\r\n\r\n",  # after a folded line
        CHUNKED + b"0\r\n" + b"a" * ROOM + b"\r\n\r\n",  # in the trailers
        CHUNKED + b"0\r\nX: a\r\n\tb\r\n" + b"a:" * (ROOM // 2) + b"\x0b\r\n\r\n",
    ],
    ids=["token", "colons", "folded", "trailer", "folded-trailer"],
)
def test_a_hostile_64_kb_line_is_refused_in_linear_time(reply: bytes) -> None:
    """One read of a 64 KB line that is almost a field: seconds of CPU (with the GIL
    held, outside any deadline) when each position retried the whole line."""

    def refuse() -> None:
        with pytest.raises(httpx.RemoteProtocolError, match="malformed header line"):
            read([reply])

    assert cpu(refuse) < BUDGET


@pytest.mark.parametrize(
    "fields",
    [
        b"X: " + b"v" * ROOM + b"\r\n",
        b"X-A: b\r\n" * (ROOM // 8),
        b"X-A: b\r\n c\r\n" * (ROOM // 13),  # folded
    ],
    ids=["long", "many", "many-folded"],
)
def test_long_and_many_fields_are_read_in_linear_time(fields: bytes) -> None:
    reply = STATUS + b"Content-Length: 2\r\n" + fields + b"\r\nok"
    assert cpu(lambda: read([reply])) < BUDGET
    assert read([reply]) == (200, b"ok")


def test_a_chunk_size_line_dripped_a_byte_at_a_time_costs_linear_time() -> None:
    """Each read searched the whole line again for its end: 1.7 s for 64 KB."""
    reply = CHUNKED + b"2;" + b"x" * ROOM + b"\r\nok\r\n0\r\n\r\n"
    assert cpu(lambda: read(drip(reply))) < BUDGET
    assert read(drip(reply)) == (200, b"ok")


# -- the 64 KB cap, however the bytes arrive ------------------------------------------


def head_of(size: int) -> bytes:
    """A well-formed reply (body ``ok``) whose head is ``size`` bytes, blank line
    included."""
    fixed = STATUS + b"Content-Length: 2\r\nX: \r\n\r\n"
    return STATUS + b"Content-Length: 2\r\nX: " + b"v" * (size - len(fixed)) + b"\r\n\r\nok"


@pytest.mark.parametrize("split", [None, 1000, 65536], ids=["one-read", "1000", "65536"])
def test_the_head_cap_holds_however_the_bytes_arrive(split: int | None) -> None:
    """A read of 256 KB could bring a head of up to 320 KB past a cap checked only
    before reading."""

    def pieces(data: bytes) -> list[bytes]:
        if split is None:
            return [data]
        return [data[k : k + split] for k in range(0, len(data), split)]

    assert read(pieces(head_of(MAX_HEAD))) == (200, b"ok")
    for size in (MAX_HEAD + 1, 300 * 1024):
        with pytest.raises(httpx.RemoteProtocolError, match="reply head larger than 64 KB"):
            read(pieces(head_of(size)))


def test_the_cap_holds_for_chunk_size_lines_and_trailers_in_one_read() -> None:
    line = b"2;" + b"x" * (MAX_HEAD - 4)  # with its CRLF: MAX_HEAD bytes
    assert read([CHUNKED + line + b"\r\nok\r\n0\r\n\r\n"]) == (200, b"ok")
    with pytest.raises(httpx.RemoteProtocolError, match="chunk-size line too long"):
        read([CHUNKED + line + b"x\r\nok\r\n0\r\n\r\n"])
    trailer = b"X: " + b"t" * (MAX_HEAD - 7) + b"\r\n"  # with the blank line: MAX_HEAD
    assert read([CHUNKED + b"2\r\nok\r\n0\r\n" + trailer + b"\r\n"]) == (200, b"ok")
    with pytest.raises(httpx.RemoteProtocolError, match="chunked trailers larger than 64 KB"):
        read([CHUNKED + b"2\r\nok\r\n0\r\nY" + trailer + b"\r\n"])


# -- closing a pool in use ------------------------------------------------------------


class Hooked(socket.socket):
    """An unconnected socket (it polls as closed: a stale connection) that runs
    ``on_close`` the first time it is closed."""

    def __init__(self, on_close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.on_close = on_close

    def close(self) -> None:
        hook, self.on_close = self.on_close, None
        if hook is not None:
            hook()
        super().close()


def test_close_while_another_thread_takes_from_the_pool() -> None:
    """A thread checking out (finding stale connections, so popping again) while
    ``close()`` goes through the same pool: "deque mutated during iteration" from
    close(), before. Driven step by step through sockets that pause when closed."""
    wire = Wire()
    origin = ("http", "127.0.0.1", 1)
    paused, closing, done = threading.Event(), threading.Event(), threading.Event()

    def pause_the_taker() -> None:  # on the taking thread, inside its checkout
        paused.set()
        closing.wait(5)

    def let_the_taker_go_on() -> None:  # on the closing thread, inside close()
        closing.set()
        done.wait(5)

    first = Hooked(let_the_taker_go_on)
    socks = [first, Hooked(), Hooked(), Hooked(pause_the_taker)]
    for sock in socks:
        wire._checkin(origin, Conn(sock))

    def take() -> None:
        try:
            assert wire._checkout(origin) is None, "every pooled connection is stale"
        finally:
            done.set()

    taker = threading.Thread(target=take)
    taker.start()
    assert paused.wait(5), "the taker found the first stale connection"
    wire.close()
    taker.join(5)
    assert not taker.is_alive()
    assert all(sock.fileno() == -1 for sock in socks), "every connection is closed"


def close_while_sending(url: str, threads: int) -> None:
    """``threads`` threads sending to ``url`` while their wire is closed."""
    wire = Wire()
    stop = threading.Event()
    sent = [0] * threads

    def send(k: int) -> None:
        while not stop.is_set():
            post(wire, url)
            sent[k] += 1

    senders = [threading.Thread(target=send, args=(k,)) for k in range(threads)]
    for sender in senders:
        sender.start()
    wait_for(lambda: min(sent) >= 3)  # each thread has a connection going
    wire.close()
    stop.set()
    for sender in senders:
        sender.join(5)
    assert post(wire, url) == (200, b'{"output": "x"}'), "a closed wire still sends"


def test_close_while_threads_send_leaves_nothing_open(kit: Kit) -> None:
    """Threads sending while the pool closes: close() does not raise, every connection
    ends closed (a leaked one would also fail the test as an unclosed-socket warning),
    and a request after close() still gets its answer, on a connection then closed."""
    server = kit.serve(lambda i, _: ok())
    for _ in range(20):
        close_while_sending(server.url(), threads=4)
        wait_for(lambda: server.talking == 0)  # every connection closed by the client


# -- the test kit itself --------------------------------------------------------------


def test_a_scripted_server_leaves_no_thread_behind() -> None:
    """Its accept thread and the threads talking on connections a client keeps open
    end with ``close()``."""
    before = set(threading.enumerate())
    server = Scripted(lambda i, _: ok())
    wire = Wire()
    try:
        assert post(wire, server.url())[0] == 200
        server.close()
        assert [t for t in threading.enumerate() if t not in before] == []
    finally:
        wire.close()
