"""A wire client made before a fork (a pre-fork server's ``--preload``): the child
starts with no idle connection of the parent's, and the parent keeps its own."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator

import pytest

from .wirekit import Kit, ok, post

#: Python 3.12+ warns that a fork with threads running (the test server's) may deadlock
#: the child: the child here only sends one request.
FORKS_WITH_THREADS = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)


@pytest.fixture
def kit() -> Iterator[Kit]:
    k = Kit()
    yield k
    k.close()


def _echo(number: int, request: bytes) -> bytes:
    return ok(request.partition(b"\r\n\r\n")[2])


def _in_child(work: object) -> str:
    """Run ``work()`` in a forked child; what it returned (or its traceback)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; never returns into pytest
        try:
            os.close(read)
            try:
                said = repr(work())  # type: ignore[operator]
            except BaseException:
                said = traceback.format_exc()
            os.write(write, said.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return said


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@FORKS_WITH_THREADS
def test_a_forked_child_never_uses_the_parents_pooled_connection(kit: Kit) -> None:
    server = kit.serve(_echo)
    wire = kit.wire()
    assert post(wire, server.url(), b'{"from": "parent"}') == (200, b'{"from": "parent"}')
    assert server.connections == 1

    def child() -> tuple[int, bytes, int]:
        idle = sum(len(pool) for pool in wire._idle.values())
        status, body = post(wire, server.url(), b'{"from": "child"}')
        return idle, body, status

    assert _in_child(child) == repr((0, b'{"from": "child"}', 200))
    assert server.connections == 2, "the child dialled a connection of its own"
    # The parent's connection survived the child closing its copy of the descriptor.
    assert post(wire, server.url(), b'{"again": 1}') == (200, b'{"again": 1}')
    assert server.connections == 2, "the parent reused its pooled connection"
