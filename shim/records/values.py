"""Values as records keep them: private copies of outputs (:func:`capture`,
:func:`restore`), their digests and sizes, errors described in one line, and text from
outside cut to a bounded length. Whatever a call site returns or raises, these say
what they can of it, and why when they cannot."""

from __future__ import annotations

import collections
import copy
import datetime
import decimal
import hashlib
import io
import json
import pickle
import threading
from collections.abc import Callable
from typing import Any

from shim.base.cut import cut_short

__all__ = [
    "FIELD_CHARS",
    "NOT_RECORDED",
    "OutputNotRecorded",
    "cap",
    "capture",
    "describe",
    "digest",
    "kept",
    "restore",
    "restore_argument",
    "settle",
    "size_of",
]

OnError = Callable[[str, BaseException], None]

#: The longest text a record keeps of a field that comes from outside the app (the
#: coordinator's model, service type, node and allocation ids, ...): longer is cut, and
#: the cut said (:func:`cap`).
FIELD_CHARS = 512


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: A value that was not recorded (the path failed, or its output could not be copied).
NOT_RECORDED: Any = _Sentinel("NOT_RECORDED")

#: Why an answered side has no output in its record: capture() could not copy it.
_UNCOPIED = (
    "not recorded: it could not be copied (nested too deep, or neither picklable nor deep-copyable)"
)


class _Pickled:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class OutputNotRecorded(Exception):
    """A path answered, but its output could not be kept for the record (counted as
    the shim's own failure, ``copy_output``)."""


# -- the copy on the caller's thread ----------------------------------------------------

_NONE = type(None)


def _immutable(kind: type) -> bool:
    """``kind`` is one of the exact types whose values are kept as they are: nothing can
    change them. Identity tests, not a set lookup: hashing a class runs its metaclass's
    ``__hash__``, which may be the app's."""
    return (
        kind is str
        or kind is int
        or kind is bytes
        or kind is float
        or kind is bool
        or kind is _NONE
    )


def _all_immutable(values: tuple[Any, ...] | frozenset[Any]) -> bool:
    for v in values:  # a loop, not all(): this runs on every compared call
        if not _immutable(type(v)):
            break
    else:
        return True
    return False


#: Types besides those pickle writes itself (exact list, dict, tuple, set, str, bytes,
#: numbers, bytearray) whose pickling is C and runs no code of the app's: pickled on the
#: caller's thread like a list. Everything else (the app's classes, subclasses of
#: builtins, functions, classes, enum members) is left for a worker (:func:`settle`).
_PLAIN = frozenset(
    {
        collections.OrderedDict,
        collections.defaultdict,
        collections.deque,
        complex,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        datetime.timezone,
        decimal.Decimal,
        range,
        slice,
    }
)


def _held(index: int) -> Any:
    """What a pickle made on the caller's thread names in place of the app's object
    ``index``: :class:`_Loader` puts that object's copy there instead. Never called."""
    raise pickle.UnpicklingError(f"object {index} of a split copy loaded without its objects")


class _SplitPickler(pickle.Pickler):
    """Pickles a value at C speed, leaving out each object whose pickling would be the
    app's code: it goes into ``objects``, and the pickle names its place (``_held``).
    Pickle asks ``reducer_override`` about no exact list, dict, tuple, set, str, bytes
    or number: a value of builtins costs no Python call at all."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.objects: list[Any] = []

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        # type(kind) is type: the class has no metaclass whose __hash__ could be the app's.
        if (type(kind) is type and kind in _PLAIN) or obj is _held:
            return NotImplemented
        self.objects.append(obj)
        return _held, (len(self.objects) - 1,)


#: A pickle longer than this grows the pickler's buffer for good (CPython allocates its
#: largest output size anew on every dump): such a pickler is not reused.
_REUSE_BYTES = 4096


class _Copier(threading.local):
    """One pickler and buffer per thread, reused: making them costs more than a small
    value's pickling. ``busy``: in use on this thread (a finaliser or signal handler
    that copies a value while a copy is being made gets a pickler of its own)."""

    def __init__(self) -> None:
        self.busy = False
        self.renew()

    def renew(self) -> None:
        self.buffer = io.BytesIO()
        self.pickler = _SplitPickler(self.buffer)


_copier = _Copier()


def _split(value: Any) -> tuple[bytes, list[Any]]:
    """``value`` pickled at C speed, and the objects of the app's classes left out."""
    copier = _copier
    if copier.busy:
        buffer = io.BytesIO()
        pickler = _SplitPickler(buffer)
        pickler.dump(value)
        return buffer.getvalue(), pickler.objects
    copier.busy = True
    buffer, pickler = copier.buffer, copier.pickler
    try:
        pickler.dump(value)
        data = buffer.getvalue()
        objects = pickler.objects
        if objects:
            pickler.objects = []
        if len(data) > _REUSE_BYTES:
            copier.renew()
        return data, objects
    except BaseException:
        copier.renew()  # a dump that failed half-way may leave a frame or objects behind
        raise
    finally:
        buffer.seek(0)
        buffer.truncate()
        pickler.clear_memo()
        copier.busy = False


class _Loader(pickle.Unpickler):
    """Loads a split pickle, the copies of the app's objects put back in their places."""

    def __init__(self, data: bytes, objects: list[Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._objects = objects

    def find_class(self, module: str, name: str) -> Any:
        if name == "_held" and module == __name__:
            return self._objects.__getitem__
        return super().find_class(module, name)


def _copied(objects: list[Any]) -> Any:
    """A private copy of ``objects``: pickled, else deep-copied, else NOT_RECORDED."""
    try:
        return _Pickled(pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        try:
            return copy.deepcopy(objects)
        except Exception:
            return NOT_RECORDED


class _Split:
    """A value that holds objects of the app's classes: pickled on the caller's thread
    without them (``data``), those objects still shared with the caller (``objects``)
    until :meth:`settle` copies them (``copies``), off the caller's thread."""

    __slots__ = ("copies", "data", "objects")

    def __init__(self, data: bytes, objects: list[Any]) -> None:
        self.data = data
        self.objects = objects
        self.copies: Any = None

    def settle(self) -> bool:
        """Copy the app's objects now, once; False if they can be neither pickled nor
        deep-copied. Two threads settling at once make the same copy twice: harmless."""
        if self.copies is None:
            self.copies = _copied(self.objects)
        return self.copies is not NOT_RECORDED

    def load(self, objects: list[Any]) -> Any:
        """The value, with ``objects`` in the places of the app's objects."""
        return _Loader(self.data, objects).load()


def capture(value: Any) -> Any:
    """A private copy of ``value`` that later changes to ``value`` cannot reach, as far
    as the caller's thread can make it cheaply. Never raises, and runs none of the
    app's code (no ``__reduce__``, ``__getstate__``, ``__deepcopy__``, ``__hash__`` or
    ``__eq__`` of its classes).

    Immutable values are kept as they are. The rest is pickled here, in one pass at C
    speed, and unpickled off the caller's path by :func:`restore`. Objects of other
    classes than the builtins in it (a dataclass, a pydantic model, the app's own) are
    not pickled here: their pickling is the app's code (a ``__reduce__`` may take any
    time). They are left out of the pickle and copied off the caller's thread
    (:func:`settle`) as the job is handed over, before it waits behind others: a caller
    that changes such an object within a millisecond may have the change compared.
    A value that cannot be copied (nested deeper than the recursion limit,
    changed by another thread meanwhile, or holding objects that can be neither
    pickled nor deep-copied) gives :data:`NOT_RECORDED`, which its record explains.
    """
    try:
        kind = type(value)
        if _immutable(kind) or ((kind is tuple or kind is frozenset) and _all_immutable(value)):
            return value
        data, objects = _split(value)
        return _Split(data, objects) if objects else _Pickled(data)
    except Exception:  # too deep, changed meanwhile, out of memory: never the caller's
        return NOT_RECORDED


def settle(captured: Any) -> Any:
    """What :func:`capture` kept, with the app's objects in it copied now (off the
    caller's thread, as soon as it can): NOT_RECORDED if they can be neither pickled
    nor deep-copied."""
    if type(captured) is _Split and not captured.settle():
        return NOT_RECORDED
    return captured


def restore(captured: Any) -> Any:
    """The value :func:`capture` kept (NOT_RECORDED if it held an object that could
    not be copied)."""
    kind = type(captured)
    if kind is _Pickled:
        return pickle.loads(captured.data)
    if kind is _Split:
        if not captured.settle():
            return NOT_RECORDED
        return captured.load(restore(captured.copies))
    return captured


def restore_argument(captured: Any) -> Any:
    """An argument :func:`capture` kept, for a run in the background: as
    :func:`restore`, except that objects that cannot be copied are passed as they are
    (in copied containers), as legacy was given them."""
    if type(captured) is _Split:
        try:
            restored = restore(captured)
        except Exception:
            restored = NOT_RECORDED
        return captured.load(captured.objects) if restored is NOT_RECORDED else restored
    return restore(captured)


def size_of(value: Any) -> int:
    """The bytes a queued value holds, estimated: text by its length, a copy by its
    pickled size (with the copies of the app's objects in it once :func:`settle` made
    them); 0 for anything else (objects of the app's classes are not weighed)."""
    kind = type(value)
    if kind is _Pickled:
        return len(value.data)
    if kind is _Split:
        copies = value.copies
        return len(value.data) + (len(copies.data) if type(copies) is _Pickled else 0)
    if kind is str or kind is bytes or kind is bytearray:
        return len(value)
    return 0


def cap(text: str | None, limit: int = FIELD_CHARS) -> str | None:
    """``text`` cut to ``limit`` characters, the cut said (``…[cut 1024 chars]``); what
    is not text, or not longer, as it is. For fields a record copies from outside."""
    return cut_short(text, limit) if isinstance(text, str) else text


def kept(captured: Any, ok: bool, side: str, on_error: OnError) -> tuple[Any, str | None]:
    """The value :func:`capture` kept for ``side`` (``legacy``, ``candidate``), and
    why there is none when the side answered (``ok``) yet has none: it could not be
    copied, or its copy not restored. Each such failure is counted (``copy_output``)."""
    captured = settle(captured)  # if not settled on a worker yet: now
    if captured is NOT_RECORDED:
        if ok:
            on_error("copy_output", OutputNotRecorded(f"{side} output {_UNCOPIED}"))
            return NOT_RECORDED, _UNCOPIED
        return NOT_RECORDED, None
    try:
        return restore(captured), None
    except Exception as exc:
        on_error("copy_output", exc)
        return NOT_RECORDED, f"not recorded: its copy could not be restored ({describe(exc)})"


def digest(value: Any) -> tuple[str | None, int | None]:
    """SHA-256 and size of an output (JSON for structured values; ``None, None`` for
    :data:`NOT_RECORDED`). Raises for what JSON cannot hold: a cycle, keys that are
    not text or numbers, a ``repr`` that raises."""
    if value is NOT_RECORDED:
        return None, None
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    else:
        data = json.dumps(
            value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=repr
        ).encode()
    return hashlib.sha256(data).hexdigest(), len(data)


def describe(exc: BaseException) -> str:
    """``ClassName: message``, one line, short; never a traceback (nor a failure of its
    own: an exception whose message cannot be read is named by its class)."""
    try:
        message = " ".join(str(exc).split())
    except Exception:
        message = "(its message could not be read)"
    message = cut_short(message, 300)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
