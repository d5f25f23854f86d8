"""What reading one config file may cost, and what its error messages may show.

Config files are small, but the path to one can point anywhere (a symlink to a device,
a log, a system file) and YAML can be made to expand: nine lines of aliases (a
"billion laughs") name 387 million values. So a file is read only if it is a regular
file of at most :data:`MAX_BYTES`, reading no more than one byte past that; it may nest
:data:`MAX_DEPTH` levels deep at most; and its aliases (``*name``, and merge keys
``<<: *name``) may add at most :data:`MAX_ALIAS_NODES` values to what it spells out.
The expansion is measured as the document is composed (:mod:`shim.base.yamlcompose`),
where an alias is one shared node, before a single value is built: a bomb is refused
in milliseconds.

Messages about a file never quote its values: a key is shown only when it looks like
a name (letters, digits, ``_ . - / @ +``), a YAML error keeps only what names the
problem (a token, one character), and control characters never get through.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from shim.base.errors import ConfigError, Problem
from shim.base.text import CONTROLS

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "decode_text",
    "read_capped",
    "read_config_text",
    "shown_key",
    "yaml_problem",
]

#: The largest config file read (flags, assignments, registry, policy, profile): 1 MiB.
MAX_BYTES = 1 << 20
#: How deep a config file may nest (a mapping in a list in a mapping is three levels),
#: counting what aliases expand to.
MAX_DEPTH = 64
#: How many values aliases may add, in total, to those a file spells out.
MAX_ALIAS_NODES = 100_000


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n:,} bytes"


def read_capped(path: str | Path, *, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of ``path``, reading at most ``max_bytes + 1`` of them.

    Raises OSError as ``open`` does (FileNotFoundError for a missing file), and
    ConfigError for what is no config file: not a regular file (a FIFO would block the
    reader for ever, a device never ends) or larger than ``max_bytes``.
    """
    name = str(path)
    # O_NONBLOCK: opening a FIFO must not wait for a writer before fstat can refuse it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                [Problem(name, None, None, "not a regular file; point at a YAML file")]
            )
        limit = max_bytes + 1
        parts: list[bytes] = []
        total = 0 if info.st_size <= max_bytes else limit  # too big: nothing to read
        while total < limit:  # the size fstat gave may have changed since: read to EOF
            chunk = os.read(fd, min(limit - total, max(info.st_size - total + 1, 1 << 16)))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > max_bytes:
        raise ConfigError(
            [
                Problem(
                    name,
                    None,
                    None,
                    f"file is larger than {_size(max_bytes)}, the most a config file may "
                    "be; check that this is the right file",
                )
            ]
        )
    return b"".join(parts)


def decode_text(name: str, content: bytes) -> str:
    """``content`` as text, line ends made ``\\n`` (as text mode reads them)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(name, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_config_text(path: str | Path, *, name: str | None = None) -> str:
    """The text of a config file, within the limits; every failure a ConfigError about
    ``name`` (default: ``path``)."""
    name = str(path) if name is None else name
    try:
        content = read_capped(path)
    except FileNotFoundError:
        raise ConfigError([Problem(name, None, None, "file not found")]) from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError([Problem(name, None, None, f"cannot read file: {why}")]) from None
    return decode_text(name, content)


# -- what messages may show -------------------------------------------------------------

_NAME = re.compile(r"[\w.\-/@+]{1,80}", re.ASCII)
_QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")


def shown_key(key: Any) -> str:
    """A key as an error message may show it: itself when it looks like a name, else
    ``<key>`` (a line of a system file parsed as a key is no name to repeat)."""
    text = str(key)
    return text if _NAME.fullmatch(text) else "<key>"


def _keep(match: re.Match[str]) -> str:
    inner = match.group(0)[1:-1]
    # A token name (<stream end>) or one character ('\t', ':') names the problem; a
    # longer quote (an alias, a tag) is the file's own text.
    if (
        re.fullmatch(r"<[a-z ]+>", inner)
        or len(inner) == 1
        or re.fullmatch(r"\\[a-z0-9]{1,5}", inner)
    ):
        return match.group(0)
    return ""


def yaml_problem(exc: BaseException) -> str:
    """PyYAML's account of a problem, without the file's text: the first line only
    (the rest quotes the document), long quotes dropped, control characters gone."""
    if isinstance(exc, yaml.MarkedYAMLError):
        text = exc.problem or exc.context or "invalid YAML"
    else:
        lines = str(exc).splitlines()
        text = lines[0] if lines else type(exc).__name__
    text = _QUOTED.sub(_keep, text)
    # The control characters the command line escapes (bidirectional ones and line
    # separators too): one list, in shim.base.text, for both.
    text = " ".join(CONTROLS.sub(" ", text).split())
    return text[:200] or "invalid YAML"
