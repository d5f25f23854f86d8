"""Yardsticks for ``bench/cpu.py`` and ``bench/streams.py``: lean hand-written versions
of the work the shim does, measured in the same run, so the shim's figures can be read
against what the work itself costs on the machine. Not a product, and not a lower bound
for every design: one plain way of doing the work, with nothing else.

:class:`FloorShadow` shadows a call site against the same stand-in coordinator. The
caller runs legacy, copies a result that is not text (an app may change its dict once
the call returns; the shim copies it too) and puts the pair's legacy half on a queue.
One background thread sends the task request over a kept-alive socket, reads the reply
by its Content-Length, parses it, compares the outputs with the same comparator and
writes one short JSON line per comparison to a buffered file. No flags, breaker,
budget, timeouts, HTTP checks beyond the status, or record fields beyond six.

:func:`floor_relay` and :func:`afloor_relay` relay a generator's (an async generator's)
chunks to the caller, keeping them and the time to the first, and append the stream to
a deque at its end: no flags, no admission, no ``send``/``throw`` forwarding.
"""

from __future__ import annotations

import json
import pickle
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FloorShadow", "afloor_relay", "floor_relay"]

_STOP = object()


class FloorShadow:
    """``wrap(legacy)`` shadows ``legacy`` to ``url`` on one thread named
    ``floor-worker``; :meth:`flush` waits for every comparison handed over so far;
    :meth:`close` stops the thread and closes the log."""

    def __init__(self, url: str, task: str, comparator: Any, log: Path) -> None:
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._task, self._comparator = task, comparator
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handed = self._done = 0  # jobs handed over, and done
        self._failed: BaseException | None = None
        self._log = log.open("a")
        self._thread = threading.Thread(target=self._work, name="floor-worker", daemon=True)
        self._thread.start()

    def wrap(self, legacy: Callable[[int], Any]) -> Callable[[int], Any]:
        put, clock = self._jobs.put, time.perf_counter

        def shadowed(i: int) -> Any:
            started = clock()
            value = legacy(i)
            elapsed = clock() - started
            kept = value if type(value) is str else pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            self._handed += 1  # one caller thread: no lock
            put((i, kept, elapsed))
            return value

        return shadowed

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every pair handed over is compared and its line written; the
        worker's error if it failed."""
        deadline = time.monotonic() + timeout
        while self._done < self._handed:
            if self._failed is not None:
                raise RuntimeError("the floor's worker failed") from self._failed
            if time.monotonic() > deadline:
                raise TimeoutError(f"the floor's worker is {self._handed - self._done} behind")
            time.sleep(0.002)
        self._log.flush()

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join(10)
        self._log.close()

    def _work(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # flush() says so rather than waiting forever
            self._failed = exc

    def _serve(self) -> None:
        sock = socket.create_connection(self._address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = "POST /api/inference/task HTTP/1.1\r\nHost: {}:{}\r\n".format(*self._address)
        write = self._log.write
        while True:
            job = self._jobs.get()
            if job is _STOP:
                sock.close()
                return
            i, kept, elapsed = job
            value = kept if type(kept) is str else pickle.loads(kept)
            body = json.dumps({"product": "kiwi", "task": self._task, "prompt": f"request {i}"})
            started = time.perf_counter()
            sock.sendall(
                f"{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                f"{body}".encode()
            )
            answer = json.loads(_reply(sock))
            task_ms = (time.perf_counter() - started) * 1000
            verdict = self._comparator.compare(value, answer["output"])
            line = {
                "event": "floor.comparison",
                "task": self._task,
                "legacy_ms": round(elapsed * 1000, 3),
                "candidate_ms": round(task_ms, 3),
                "model": answer.get("model"),
                "match": verdict.match,
            }
            write(json.dumps(line) + "\n")
            self._done += 1


def _reply(sock: socket.socket) -> bytes:
    """The body of one 200 reply framed by Content-Length (the stand-in's only framing)."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        data += _more(sock)
    if not data.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"the coordinator answered {data[:40]!r}")
    length = 0
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, rest = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(rest)
    body = data[end + 4 :]
    while len(body) < length:
        body += _more(sock)
    return body


def _more(sock: socket.socket) -> bytes:
    if not (data := sock.recv(65536)):
        raise ConnectionError("the coordinator closed the connection mid-reply")
    return data


#: Where the floor relays leave their streams (nothing reads them).
HANDED: deque[tuple[list[Any], float | None, float]] = deque(maxlen=1024)


def floor_relay(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    perf = time.perf_counter

    def relay(inner: Iterator[Any], started: float) -> Iterator[Any]:
        chunks: list[Any] = []
        first = None
        for chunk in inner:
            if first is None:
                first = perf() - started
            chunks.append(chunk)
            yield chunk
        HANDED.append((chunks, first, perf() - started))

    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        return relay(fn(*args, **kwargs), perf())

    return wrapper


def afloor_relay(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    perf = time.perf_counter

    async def relay(inner: AsyncIterator[Any], started: float) -> AsyncIterator[Any]:
        chunks: list[Any] = []
        first = None
        async for chunk in inner:
            if first is None:
                first = perf() - started
            chunks.append(chunk)
            yield chunk
        HANDED.append((chunks, first, perf() - started))

    def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return relay(fn(*args, **kwargs), perf())

    return wrapper
