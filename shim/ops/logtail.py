"""Records appended to comparison logs since the last look: how ``shim rollout``
reads its evidence as it grows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["LogTail", "seconds_of"]


class LogTail:
    """The records appended to some logs since the last look, in order, file by file;
    a file that shrank or was replaced is read again from its start."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self._at: dict[Path, tuple[int, int]] = {Path(p): (0, -1) for p in paths}

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
                data = fh.read()
            whole = data.rfind(b"\n") + 1
            self._at[path] = (offset + whole, stat.st_ino)
            for line in data[:whole].splitlines():
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
