"""Where record lines go: the :class:`RecordSink` protocol, a file that several processes
append to and logrotate may move (:class:`FileSink`), and a text stream (:class:`StreamSink`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

__all__ = ["FileSink", "PartialWrite", "RecordSink", "StreamSink"]

# Concurrent O_APPEND writers never interleave inside one write() of a regular file on
# Linux; keep each write to whole lines and well under the page-cache chunk sizes.
_MAX_WRITE = 64 * 1024


@runtime_checkable
class RecordSink(Protocol):
    """Where record lines go. ``write`` gets whole lines, each ending in a newline."""

    def write(self, lines: Sequence[str]) -> None:
        """Write these lines, in order."""
        ...

    def close(self) -> None:
        """Release the destination."""
        ...


class FileSink:
    """Appends to a file that other processes append to and that logrotate may move.

    Opened with ``O_APPEND``; every batch goes out as whole lines in writes of at most
    64 KiB. When the path stops naming the open file (rotated, deleted), the sink
    reopens the path, at most once per ``check_every`` seconds. A path that cannot be
    opened does not stop the program: each write raises (the recorder counts and logs
    it) and the sink tries the path again, so recording resumes once it is fixed.
    """

    def __init__(self, path: str | Path, *, check_every: float = 1.0) -> None:
        self.path = Path(path)
        self.check_every = check_every
        self._fd = -1
        self._ino: tuple[int, int] | None = None
        self._checked = 0.0
        try:
            self._open()
        except OSError:
            self._checked = 0.0  # the first write tries again and reports the error

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        self._checked = time.monotonic()

    def _reopen_if_moved(self) -> None:
        if self._fd < 0:
            self._open()  # raises while the path is unusable: the batch counts as failed
            return
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ino:
                return
        except FileNotFoundError:
            pass
        self._open()

    def write(self, lines: Sequence[str]) -> None:
        """Append whole lines; on a failure after some batches went out, raises
        :class:`PartialWrite` saying how many lines did."""
        self._reopen_if_moved()
        chunk: list[bytes] = []
        size = done = 0
        try:
            for line in lines:
                data = line.encode()
                if chunk and size + len(data) > _MAX_WRITE:
                    self._write_all(b"".join(chunk))
                    done += len(chunk)
                    chunk, size = [], 0
                chunk.append(data)
                size += len(data)
            if chunk:
                self._write_all(b"".join(chunk))
        except OSError as exc:
            if done:
                raise PartialWrite(done, exc) from exc
            raise

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PartialWrite(OSError):
    """A sink wrote the first ``written`` lines of a batch, then failed."""

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.written = written


class StreamSink:
    """Writes to a text stream (stdout by default), flushing after every batch."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def write(self, lines: Sequence[str]) -> None:
        """Write and flush."""
        self.stream.write("".join(lines))
        self.stream.flush()

    def close(self) -> None:
        """Flush; the stream is not ours to close."""
        self.stream.flush()
