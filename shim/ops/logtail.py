"""Records appended to comparison logs since the last look: how ``shim rollout`` and
``shim watch`` with several logs read their evidence as it grows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from shim.analysis.log_lines import MAX_LINE_BYTES

__all__ = ["LogTail", "seconds_of"]


class LogTail:
    """The records appended to some logs since the last look, in order, file by file
    (from each one's start, or with ``from_end`` from its end as it is now); a file that
    shrank or was replaced is read again from its start. Read a chunk at a
    time (a log of gigabytes is never held whole); a line longer than
    :data:`~shim.analysis.log_lines.MAX_LINE_BYTES` is skipped."""

    CHUNK = 4 << 20

    def __init__(self, paths: Iterable[Path], *, from_end: bool = False) -> None:
        self._at: dict[Path, tuple[int, int]] = {}
        for path in paths:
            self.add(path, from_end=from_end)

    @property
    def paths(self) -> list[Path]:
        """The logs read."""
        return list(self._at)

    def add(self, path: Path, *, from_end: bool = False) -> None:
        """Read ``path`` too, from its start (``from_end``: from what it holds now on)."""
        path = Path(path)
        if path in self._at:
            return
        self._at[path] = (0, -1)
        if from_end:
            try:
                stat = path.stat()
            except FileNotFoundError:
                return
            self._at[path] = (stat.st_size, stat.st_ino)

    def poll(self) -> Iterator[dict[str, Any]]:
        for path, (offset, inode) in list(self._at.items()):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if stat.st_ino != inode or stat.st_size < offset:
                offset = 0
            with path.open("rb") as fh:
                fh.seek(offset)
                carry, skipping = b"", False  # skipping: the rest of a line too long
                while chunk := fh.read(self.CHUNK):
                    data, start = carry + chunk, 0
                    if skipping:
                        start = data.find(b"\n") + 1
                        skipping = start == 0
                    whole = data.rfind(b"\n") + 1
                    lines, carry = data[start:whole], b"" if skipping else data[whole:]
                    if len(carry) > MAX_LINE_BYTES:  # let it go, up to its newline
                        carry, skipping = b"", True
                    offset = fh.tell() - len(carry)
                    self._at[path] = (offset, stat.st_ino)  # before the records are taken
                    yield from _records(lines)
            self._at[path] = (offset, stat.st_ino)


def _records(lines: bytes) -> Iterator[dict[str, Any]]:
    for line in lines.splitlines():
        if len(line) > MAX_LINE_BYTES:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


def seconds_of(ts: Any) -> float | None:
    """A record's ``ts`` as seconds since the epoch."""
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
