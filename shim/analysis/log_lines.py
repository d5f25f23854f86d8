"""A log's lines within a bound: read, checked and copied without ever holding a line
longer than :data:`MAX_LINE_BYTES`, from plain files and from ``.gz`` files that stop
short or break (what decompressed before the fault is kept).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "MAX_LINE_BYTES",
    "PARQUET_SUFFIX",
    "Copied",
    "clean_copy",
    "ends_whole",
    "faults",
    "has_long_line",
    "lines_within",
]

#: Lines longer than this (in bytes, without the newline) are skipped, never read
#: whole: a record is a few KB, and only a field copied uncapped makes one this long.
MAX_LINE_BYTES = 16 * 1024 * 1024

#: The name a Parquet log ends in (``shim report --export parquet``): read as it is.
PARQUET_SUFFIX = ".parquet"

#: Bytes read (and, for ``.gz``, decompressed) at a time while copying a log.
_CHUNK = 1 << 20

#: Bytes read at a time, backwards from a window's end, looking for its last newline.
_BACK = 1 << 16

#: Compressed bytes given to zlib at a time: what a corrupt block may cost, byte by byte.
_SLICE = 1 << 16


@dataclass(frozen=True, slots=True)
class Copied:
    """What :func:`clean_copy` left out: lines over the limit, and whether the gzip
    stream ended early (``truncated``) or broke (``corrupt``, zlib's message)."""

    oversized: int = 0
    truncated: bool = False
    corrupt: str | None = None


def lines_within(handle: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of ``handle`` of up to ``limit`` bytes; a longer one is passed over a
    bounded piece at a time, never held whole."""
    while raw := handle.readline(limit + 1):
        if raw.endswith(b"\n") or len(raw) <= limit:  # whole, or the last and short
            yield raw
            continue
        while (rest := handle.readline(_CHUNK)) and not rest.endswith(b"\n"):
            pass


def has_long_line(
    path: str | Path,
    limit: int = MAX_LINE_BYTES,
    *,
    read: Callable[[int, int, int], bytes] = os.pread,
) -> bool:
    """Whether the plain file at ``path`` has a line longer than ``limit`` bytes.

    A window of ``limit + 1`` bytes from the start of a line either holds a newline
    (then every line that starts in it up to its last newline is short enough, and the
    next window starts after that newline) or it does not (then its line is too long).
    The last newline of a window is looked for from its end backwards, a block at a
    time: it is a few hundred bytes from the end, so a 1 GB log costs about 60 small
    reads. ``read`` is how (``os.pread``'s arguments).

    The file is read, never mapped: a log truncated while it is looked at
    (logrotate's ``copytruncate``) gives short reads, not a SIGBUS. Once a read comes
    back short the answer is True: the caller copies the file, and the copy reads
    whatever is there then.
    """
    with open(path, "rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        start = 0
        while size - start > limit:
            newline = _last_newline(fd, start, start + limit + 1, read)
            if newline is None:
                return True
            start = newline + 1
    return False


def _last_newline(
    fd: int, start: int, end: int, read: Callable[[int, int, int], bytes]
) -> int | None:
    """The offset of the last newline in ``[start, end)`` of ``fd``, read backwards a
    block at a time; None when there is none, or the file ends before ``end``."""
    at = end
    while at > start:
        size = min(_BACK, at - start)
        block = read(fd, size, at - size)
        if len(block) != size:  # the file shrank under us
            return None
        found = block.rfind(b"\n")
        if found >= 0:
            return at - size + found
        at -= size
    return None


def ends_whole(path: str, window: int = 1 << 16) -> bool:
    """Whether the log at ``path`` ends with a complete JSON object on a line of its
    own (a process that died mid-write leaves a torn last line). Compressed logs
    cannot be checked cheaply: False."""
    if path.endswith(".gz"):
        return False
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - window))
            tail = handle.read()
    except OSError:  # gone since it was listed: the read says what became of it
        return False
    if not tail.endswith(b"\n"):
        return size == 0
    last = tail.rstrip(b"\n").rpartition(b"\n")[2]
    try:
        return isinstance(json.loads(last), dict) if last.strip() else True
    except ValueError:
        return False


def _gunzip(source: BinaryIO, done: list[str | None]) -> Iterator[bytes]:
    """The decompressed bytes of a gzip file (every member), at most :data:`_CHUNK` at
    a time whatever the ratio. At the end ``done`` holds None (whole), ``""`` (the
    stream stops short) or zlib's message (corrupt); what came before is yielded, to
    the byte before the one that broke it."""
    unzip = zlib.decompressobj(wbits=31)
    started = False  # the current member has been given input
    pending = b""
    while True:
        if not pending:
            data = source.read(_SLICE)
            if not data:
                while started:  # what zlib still holds of the input it was given
                    out = unzip.decompress(b"", _CHUNK)
                    if not out:
                        break
                    yield out
                done.append("" if started and not unzip.eof else None)
                return
            # NUL padding after a member is not another member
            pending = data if started else data.lstrip(b"\0")
            if not pending:
                continue
        started = True
        before = unzip.copy()
        try:
            out = unzip.decompress(pending, _CHUNK)
        except zlib.error as exc:
            yield from _salvage(before, pending)
            done.append(str(exc))
            return
        pending = unzip.unconsumed_tail
        if out:
            yield out
        if unzip.eof:  # the next member, if any (``cat a.gz b.gz``), starts here
            pending = (unzip.unused_data + pending).lstrip(b"\0")
            unzip, started = zlib.decompressobj(wbits=31), False


def _salvage(unzip: Any, data: bytes) -> Iterator[bytes]:
    """What ``unzip`` decompresses of ``data`` up to the byte zlib refuses: fed a byte
    at a time (at most one slice of input), as a failed call returns nothing."""
    for at in range(len(data)):
        try:
            out = unzip.decompress(data[at : at + 1])
        except zlib.error:
            return
        if out:
            yield out
        if unzip.eof:
            return


class _Nowhere:
    """A target that keeps nothing: :func:`faults` runs the copy's checks only."""

    def write(self, data: bytes) -> int:
        return len(data)

    def seek(self, at: int) -> int:
        return at

    def truncate(self) -> None:
        pass


def clean_copy(source: str | Path, target: str | Path, *, limit: int = MAX_LINE_BYTES) -> Copied:
    """Copy the lines of ``source`` (decompressed when its name ends in ``.gz``) to
    ``target``, leaving out every line longer than ``limit`` bytes. Memory stays
    within a chunk: a line is written as it is read, and one that grows past ``limit``
    is cut back out of ``target`` and the rest of it skipped to its newline. A gzip
    stream that stops short or breaks keeps what decompressed before it."""
    with open(source, "rb") as raw, open(target, "wb") as out:
        return _copy(raw, str(source).endswith(".gz"), out, limit)


def faults(source: str | Path, *, limit: int = MAX_LINE_BYTES) -> Copied:
    """What :func:`clean_copy` would leave out of ``source``, found without writing a
    copy (a ``.gz`` is decompressed, to nowhere)."""
    with open(source, "rb") as raw:
        return _copy(raw, str(source).endswith(".gz"), _Nowhere(), limit)


def _copy(raw: BinaryIO, gz: bool, out: Any, limit: int) -> Copied:
    """:func:`clean_copy` from ``raw`` (gzip when ``gz``) to ``out`` (a file, or
    nowhere)."""
    chunk = min(_CHUNK, limit)
    oversized = 0
    done: list[str | None] = []
    chunks: Iterator[bytes]
    if gz:
        chunks = _gunzip(raw, done)
    else:
        chunks = iter(lambda: raw.read(chunk), b"")
    written = 0  # bytes in ``target``
    start = 0  # where the line being read starts in ``target``
    length = 0  # its length so far
    skipping = False  # it is over ``limit``: cut out, read on to its newline

    def cut() -> None:
        nonlocal written
        out.seek(start)
        out.truncate()
        written = start

    for data in chunks:
        for at in range(0, len(data), chunk):
            piece = data[at : at + chunk]
            first = piece.find(b"\n")
            if first < 0:
                length += len(piece)
                if skipping:
                    continue
                if length > limit:
                    cut()
                    skipping = True
                else:
                    written += out.write(piece)
                continue
            # The line being read ends in this piece.
            if skipping or length + first > limit:
                oversized += 1
                if not skipping:
                    cut()
            else:
                written += out.write(piece[: first + 1])
            skipping = False
            # Every line between the first and the last newline lies within the
            # piece, so is no longer than ``chunk <= limit``: written as it is.
            last = piece.rfind(b"\n")
            written += out.write(piece[first + 1 : last + 1])
            start, length = written, len(piece) - last - 1
            written += out.write(piece[last + 1 :])
    if skipping:
        oversized += 1
    failure = done[0] if done else None
    return Copied(oversized, failure == "", failure or None)
