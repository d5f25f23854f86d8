"""The files behind ``shim report LOG...`` (and ``shim promote --evidence``), made safe
for DuckDB, one file's fault never the whole report's.

- A path that exists is read as named, even with ``[``, ``*`` or ``?`` in it; only
  one that does not is a glob. DuckDB globs every name it is given, so such a file is
  handed to it through a link with a plain name.
- ``-`` is standard input, copied to a temporary file (it is read more than once).
- A file named more than once (``a.jsonl ./a.jsonl``, a glob and a name it matches, a
  link to it) is read once, under the first name given.
- A line longer than :data:`MAX_LINE_BYTES` is skipped unread: a plain log is checked
  for one before the read, at the cost of one look per 16 MiB, and only a log that has
  one is copied without it. A ``.gz`` log is read by DuckDB as it is; when that read
  fails (a truncated or corrupt stream, or a line DuckDB cannot hold, which it refuses
  from about twice the limit) each ``.gz`` is probed, and only one with such a fault
  is decompressed here without it, keeping whatever decompressed before a cut or a
  corrupt block.
- A ``.parquet`` log (``shim report --export parquet``) is read by DuckDB as it is.

Each such fault is a :class:`FileProblem`: counted, named, shown in every format.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shim.analysis.log_lines import (
    MAX_LINE_BYTES,
    PARQUET_SUFFIX,
    Copied,
    clean_copy,
    faults,
    has_long_line,
)
from shim.base.errors import ShimError

__all__ = ["FileProblem", "LogFiles", "ReportError"]

#: Characters DuckDB takes for a glob in a file name.
_GLOB = frozenset("*?[]{}")

#: Bytes copied at a time from standard input.
_CHUNK = 1 << 20


def _identity(name: str) -> object:
    """What makes two names one file: its device and inode (links, ``./``, ``..``)."""
    try:
        st = os.stat(name)
    except OSError:  # gone since it was found: reading it says what became of it
        return os.path.realpath(name)
    return (st.st_dev, st.st_ino)


class ReportError(ShimError):
    """The logs cannot be read (exit 2)."""


@dataclass(frozen=True, slots=True)
class FileProblem:
    """Something in the logs that was not read, or not counted: which file (None for
    the logs as a whole), what kind, how many lines it cost, and a sentence."""

    file: str | None
    #: ``oversized_lines``, ``truncated_gzip``, ``corrupt_gzip``, ``unreadable``,
    #: ``negative_count``, ``bad_count``
    kind: str
    lines: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        """As ``shim report --format json`` lists it under ``problems``."""
        return {"file": self.file, "kind": self.kind, "lines": self.lines, "message": self.message}

    def describe(self) -> str:
        """One line for people."""
        return f"{self.file}: {self.message}" if self.file else self.message


@dataclass
class LogFiles:
    """The files ``inputs`` name, as DuckDB should read them; a context manager that
    deletes its temporary copies and links. ``what`` names a log in messages, ``error``
    is the ShimError raised for one that is missing."""

    inputs: Sequence[str]
    what: str = "log"
    error: Callable[[str], ShimError] = ReportError
    #: (as given or matched, as DuckDB reads it), in order
    files: list[tuple[str, str]] = field(default_factory=list, init=False)
    problems: list[FileProblem] = field(default_factory=list, init=False)
    _folder: str | None = field(default=None, init=False)
    _cleaned: set[str] = field(default_factory=set, init=False)

    def __enter__(self) -> LogFiles:
        try:
            seen: set[object] = set()
            for item in self.inputs:
                for name in self._resolve(item):
                    # ``a.jsonl ./a.jsonl``, or a glob and a name it matches: one file,
                    # read once (the first name given)
                    if (same := _identity(name)) in seen:
                        continue
                    seen.add(same)
                    self.files.append((name, self._readable(name)))
            for name, path in list(self.files):
                if name.endswith((".gz", PARQUET_SUFFIX)):
                    continue
                try:
                    long = has_long_line(path)
                except OSError as exc:  # unreadable (permissions), or gone since
                    self._drop(name, exc.strerror or str(exc))
                    continue
                if long:
                    self._clean(name)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the temporary copies and links."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    @property
    def paths(self) -> list[str]:
        """The paths to hand DuckDB, one per file."""
        return [path for _, path in self.files]

    @property
    def lines(self) -> list[str]:
        """The paths of the logs of JSON lines (not Parquet)."""
        return [path for path in self.paths if not path.endswith(PARQUET_SUFFIX)]

    def clean_rest(self) -> bool:
        """After DuckDB failed to read the files as they are: probe each file not
        copied yet, one by one, and copy only those with a fault, without it. A
        ``.gz`` is decompressed to nowhere to find one (a stream that stops short or
        breaks, a line over the limit); a plain file was checked for long lines before
        the read (a copy would be the same), so only whether it can still be opened is
        looked at. One that cannot is left out, as unreadable. False when no file
        changed, so reading them again will not help."""
        changed = False
        for name, _ in list(self.files):
            if name in self._cleaned:
                continue
            try:
                if not name.endswith(".gz"):  # plain, or Parquet: read by DuckDB as it is
                    with open(name, "rb"):
                        continue
                found = faults(name)
            except OSError as exc:  # gone since (rotated away), or unreadable
                self._drop(name, exc.strerror or str(exc))
                changed = True
                continue
            if found != Copied():
                self._clean(name)
                changed = True
        return changed

    def drop(self, path: str, reason: str) -> None:
        """Leave the file DuckDB reads as ``path`` out, as unreadable for ``reason``."""
        for name, read in self.files:
            if read == path:
                self._drop(name, reason)
                return

    def _drop(self, name: str, reason: str) -> None:
        self.files = [(n, p) for n, p in self.files if n != name]
        self.problems.append(FileProblem(name, "unreadable", 0, f"not read: {reason}"))

    def _temp(self, suffix: str) -> str:
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="shim-report-")
        return os.path.join(self._folder, f"{len(os.listdir(self._folder))}{suffix}")

    def _resolve(self, item: str) -> list[str]:
        """The files ``item`` names: itself when it exists (whatever its characters),
        else a glob's matches; standard input for ``-``."""
        if item == "-":
            copy = self._temp(".jsonl")
            with open(copy, "wb") as out:
                shutil.copyfileobj(sys.stdin.buffer, out, _CHUNK)
            return [copy]
        if os.path.lexists(item) or not any(c in item for c in "*?["):
            matched = [item]
        else:
            matched = sorted(glob.glob(item))
            if not matched:
                raise self.error(f"{item}: no {self.what} matches this pattern")
        for path in matched:
            if Path(path).is_dir():
                raise self.error(
                    f"{path}: not a file (a {self.what} is a file; for a folder, a glob)"
                )
            if not Path(path).is_file():
                raise self.error(f"{path}: no such {self.what} file")
        return matched

    def _readable(self, name: str) -> str:
        """``name``, or a link to it with a name DuckDB does not take for a glob."""
        if not _GLOB.intersection(name):
            return name
        suffix = next((s for s in (".gz", PARQUET_SUFFIX) if name.endswith(s)), "")
        link = self._temp(".jsonl" + suffix if suffix != PARQUET_SUFFIX else suffix)
        try:
            os.symlink(os.path.abspath(name), link)
        except OSError:  # no symbolic links here: a copy reads the same
            shutil.copyfile(name, link)
        return link

    def _clean(self, name: str) -> None:
        """Replace ``name``'s file with a plain copy without over-long lines, and say
        what it left out."""
        copy = self._temp(".jsonl")
        self._cleaned.add(name)
        try:
            found = clean_copy(name, copy)
        except OSError as exc:  # gone since (rotated away), or unreadable
            self._drop(name, exc.strerror or str(exc))
            return
        self.files = [(n, copy if n == name else p) for n, p in self.files]
        if found.oversized:
            self.problems.append(
                FileProblem(
                    name,
                    "oversized_lines",
                    found.oversized,
                    f"{found.oversized} line(s) over {MAX_LINE_BYTES >> 20} MiB not read "
                    "(a field copied uncapped into a record?)",
                )
            )
        if found.truncated:
            self.problems.append(
                FileProblem(
                    name,
                    "truncated_gzip",
                    0,
                    "the gzip stream ends early (still being compressed, or cut off): "
                    "read what decompressed; the rest is not in this report",
                )
            )
        if found.corrupt:
            self.problems.append(
                FileProblem(
                    name,
                    "corrupt_gzip",
                    0,
                    f"the gzip stream is corrupt ({found.corrupt}): read what "
                    "decompressed before it; the rest is not in this report",
                )
            )
