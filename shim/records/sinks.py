"""Where record lines go: the :class:`RecordSink` protocol, a file that several processes
append to and logrotate may move (:class:`FileSink`), and a text stream (:class:`StreamSink`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
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

    Lines stay whole: a line a failed write cut (disk full) is finished by the next
    write, or, when it is given up (closed, rotated away, not retried), the file is
    truncated back to where it started, as long as nothing was appended after it.
    (A half line another process leaves is not looked for: with several processes
    appending, the file's last byte is read while another's line is half written.)
    """

    def __init__(self, path: str | Path, *, check_every: float = 1.0) -> None:
        self.path = Path(path)
        self.check_every = check_every
        self._fd = -1
        self._ino: tuple[int, int] | None = None
        self._checked = 0.0
        self._cut: _Piece | None = None  # a line a failed write left half out
        # Where that half line starts and ends in the file: cut back to its start when
        # it is given up, if the file still ends where it does.
        self._span: tuple[int, int] | None = None
        try:
            self._open()
        except OSError:
            self._checked = 0.0  # the first write tries again and reports the error

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o644)
        st = os.fstat(fd)
        if self._fd >= 0:
            self._drop_cut()  # its start is in the old file: the line goes whole here
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
        """Append whole lines. On a failure (disk full) raises, as
        :class:`PartialWrite` if some whole lines went out (how many); a line the
        failure cut short is finished, not written again, when it comes first in the
        next write (the recorder retries it so), so no line is ever glued to half of
        another. One given up instead is truncated back out of the file, unless another
        process appended after it."""
        self._reopen_if_moved()
        pieces = [_Piece(line.encode()) for line in lines]
        cut = self._cut
        if cut is not None and pieces and pieces[0].data == cut.data and self._cut_is_last():
            pieces[0] = cut
        else:
            self._drop_cut()
        done = 0  # whole lines of ``lines`` written
        for chunk in _chunks(pieces):
            data = b"".join(p.data[p.start :] if p.start else p.data for p in chunk)
            try:
                self._write_all(data)
            except _Short as short:
                done += self._cut_at(chunk, short.sent)
                if done:
                    raise PartialWrite(done, short.error) from short.error
                raise short.error from None
            done += sum(p.line for p in chunk)
        self._cut = self._span = None

    def _cut_is_last(self) -> bool:
        """The half line we left still ends the file: nothing was appended after it."""
        if self._span is None:
            return False
        try:
            return os.fstat(self._fd).st_size == self._span[1]
        except OSError:
            return False

    def _drop_cut(self) -> None:
        """Give up the line a failed write cut: truncate the file back to where it
        starts, unless another process appended after it."""
        if self._cut is not None and self._span is not None and self._cut_is_last():
            # Another process may append between the check and the truncate: a window
            # of one system call, against a half line left in every log.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._span[0])
        self._cut = self._span = None

    def _cut_at(self, chunk: list[_Piece], sent: int) -> int:
        """A write failed ``sent`` bytes into ``chunk``: keep the line it cut (with how
        much of it is out); the whole lines that went out before it."""
        whole = 0
        for piece in chunk:
            left = len(piece.data) - piece.start
            if sent < left:
                if piece.line:
                    out = piece.start + sent
                    self._cut = _Piece(piece.data, out) if out else None
                    if not out:
                        self._span = None
                    elif sent:  # the fragment grew: it ends where this write stopped
                        self._span = self._fragment(out)
                # else: the end of a line given up did not go out: still to be written
                return whole
            sent -= left
            whole += piece.line
            if not piece.line:
                self._cut = None  # the line given up is ended
        return whole

    def _fragment(self, out: int) -> tuple[int, int] | None:
        """Where the ``out`` bytes of a cut line lie in the file: the descriptor's
        offset is where its last write ended (``O_APPEND`` moves it to the end first)."""
        try:
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
        except OSError:
            return None
        return (end - out, end) if end >= out else None

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        sent = 0
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as exc:
                raise _Short(sent, exc) from exc
            sent += written
            view = view[written:]

    def close(self) -> None:
        """Close the file. A line a failed write cut is given up (the recorder counts
        it lost): the file is truncated back to where it started, unless another
        process appended after it."""
        if self._fd >= 0:
            self._drop_cut()
            os.close(self._fd)
            self._fd = -1


class _Piece:
    """A line to write, from ``start`` (bytes of it already out); ``line`` False for
    the newline that ends a line given up."""

    __slots__ = ("data", "line", "start")

    def __init__(self, data: bytes, start: int = 0, *, line: bool = True) -> None:
        self.data, self.start, self.line = data, start, line


class _Short(Exception):
    """A write that failed after ``sent`` bytes."""

    def __init__(self, sent: int, error: OSError) -> None:
        super().__init__(sent, error)
        self.sent, self.error = sent, error


def _chunks(pieces: list[_Piece]) -> Iterator[list[_Piece]]:
    """Whole pieces, in runs of at most ``_MAX_WRITE`` bytes (one longer goes alone)."""
    chunk: list[_Piece] = []
    size = 0
    for piece in pieces:
        length = len(piece.data) - piece.start
        if chunk and size + length > _MAX_WRITE:
            yield chunk
            chunk, size = [], 0
        chunk.append(piece)
        size += length
    if chunk:
        yield chunk


class PartialWrite(OSError):
    """A sink wrote the first ``written`` lines of a batch, then failed."""

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.written = written


class StreamSink:
    """Writes to a text stream (stdout by default), line by line, flushing after every
    batch.

    A write the stream fails part-way (disk full under a redirected stdout) raises
    :class:`PartialWrite` with the whole lines that went out. The line it cut is
    finished when it comes first in the next write if the stream said how much of it
    went out (``characters_written``); if not, it is ended where it was cut, so the
    retried line stands alone: never glued to half of another."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        # A line a failed write cut, and how many of its characters went out (-1: the
        # stream did not say).
        self._cut: tuple[str, int] | None = None

    def write(self, lines: Sequence[str]) -> None:
        """Write and flush."""
        done = 0
        try:
            if self._cut is not None:
                line, out = self._cut
                if out >= 0 and lines and lines[0] == line:
                    self._put(line, out)
                    done = 1
                else:
                    self._put("\n", 0, line=False)
            for line in lines[done:]:
                self._put(line, 0)
                done += 1
        except OSError as exc:
            if done:
                raise PartialWrite(done, exc) from exc
            raise
        self.stream.flush()

    def _put(self, text: str, start: int, *, line: bool = True) -> None:
        try:
            self.stream.write(text[start:] if start else text)
        except OSError as exc:
            if line:
                out = getattr(exc, "characters_written", None)
                if out is None:
                    self._cut = (text, -1)
                elif start + out:
                    self._cut = (text, start + out)
                else:
                    self._cut = None  # none of it went out
            raise
        self._cut = None

    def close(self) -> None:
        """Flush; the stream is not ours to close."""
        self.stream.flush()
