"""Call ids: random version-4 UUIDs as 32 hex digits, as ``uuid.uuid4().hex`` makes them,
from random bytes read in bulk (``uuid4`` reads 16 at a time, a system call per record).
A forked child reads its own."""

from __future__ import annotations

import os
import threading

__all__ = ["new_call_id"]

_CHUNK = 16 * 256  # 256 ids per read

_lock = threading.Lock()
_pool = b""
_at = 0


def new_call_id() -> str:
    """A fresh random UUID (version 4) as 32 lower-case hex digits."""
    global _pool, _at
    with _lock:
        if _at >= len(_pool):
            _pool, _at = os.urandom(_CHUNK), 0
        raw = bytearray(_pool[_at : _at + 16])
        _at += 16
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()


def _forget() -> None:
    """In a forked child: the parent's unread bytes would repeat the parent's ids."""
    global _pool, _at, _lock
    _lock = threading.Lock()
    _pool, _at = b"", 0


os.register_at_fork(after_in_child=_forget)
