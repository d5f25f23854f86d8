"""YAML loading that remembers where every value came from.

Config files are edited by people, so every error must point at a line. We compose
the YAML node tree (which carries marks), build plain values from it while recording
the line of every key and list item, and translate pydantic errors back to those lines.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from shim.base.errors import ConfigError, Problem

__all__ = ["Located", "load_yaml", "validate"]

_WHOLE: Any = object()

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Located:
    """Plain data from a YAML file plus the line (1-based) of every key path in it."""

    path: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()

    def line_of(self, loc: Loc) -> int | None:
        """Line of the longest prefix of ``loc`` that the file spells out."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None

    def problem(self, loc: Loc, message: str) -> Problem:
        """A Problem located at ``loc`` in this file."""
        return Problem(self.path, self.line_of(loc), _dotted(loc) or None, message)


def load_yaml(path: str | Path, *, text: str | None = None) -> Located:
    """Read ``path`` (or ``text`` attributed to it) into data with line numbers.

    Raises ConfigError for unreadable files and YAML syntax errors. A duplicate key (or
    a key that is not a plain value) is a problem in ``problems``, located at the
    repeat and naming the first line; :func:`validate` reports them, alongside the
    validation problems, so every file loaded here refuses them. The first value is the
    one in ``data``, for the messages that follow.
    """
    name = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([Problem(name, None, None, "file not found")]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                [Problem(name, None, None, f"cannot read file: {type(exc).__name__}: {exc}")]
            ) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([Problem(name, line, None, f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(name, None, None, f"invalid YAML: {exc}")]) from None
    if root is None:
        return Located(name, None, {(): 1})
    builder = _Builder(name)
    try:
        data = builder.build(root, ())
    except yaml.MarkedYAMLError as exc:  # a tag no safe constructor knows, say
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or exc.context or "cannot be read"
        raise ConfigError([Problem(name, line, None, f"invalid YAML: {what}")]) from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        raise ConfigError([Problem(name, None, None, f"invalid YAML: {exc}")]) from None
    return Located(name, data, builder.lines, tuple(builder.problems))


def validate(doc: Located, schema: Any, data: Any = _WHOLE) -> tuple[Any, list[Problem]]:
    """Validate ``data`` (default: the whole document) against ``schema``.

    ``schema`` is a pydantic model class or any type pydantic validates. Returns the
    value (None when invalid) and the located problems. When ``data`` is the document's
    own data (the default, or ``doc.data`` passed in), the document's own problems
    (duplicate keys) come first; a caller that validates parts of a document one by one
    adds ``doc.problems`` itself, once.
    """
    whole = data is _WHOLE or data is doc.data
    value = doc.data if data is _WHOLE else data
    adapter = _adapter(schema)
    problems = list(doc.problems) if whole else []
    try:
        result = adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        for err in exc.errors(include_url=False):
            # "[key]" marks a bad mapping key; the key's own line already locates it.
            loc = tuple(p for p in err["loc"] if p != "[key]")
            problems.append(doc.problem(loc, _explain(err, schema, loc)))
        return None, problems
    return result, problems


@functools.cache
def _adapter(schema: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(schema)


def _explain(err: Any, model: Any, loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"unknown field{hint}"
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    if kind == "value_error":  # our own validators already say what they got
        return msg.removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, str | int | float | bool):
        return f"{msg} (got {value!r})"
    return msg


def _fields_at(model: Any, loc: Loc) -> list[str]:
    """Names of the fields allowed at ``loc`` inside ``model``, when it can be told."""
    current = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, pydantic.BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                info = next((f for f in current.model_fields.values() if f.alias == part), None)
            if info is None:
                return []
            current = info.annotation
        else:
            args = typing.get_args(current)
            origin = typing.get_origin(current)
            if origin is dict and len(args) == 2:
                current = args[1]
            elif origin in (list, tuple) and args:
                current = args[0]
            else:
                return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, pydantic.BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _unwrap(tp: Any) -> Any:
    """The model inside Optional/Union/Annotated, if there is exactly one."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        models = [
            a
            for a in typing.get_args(tp)
            if isinstance(a, type) and issubclass(a, pydantic.BaseModel)
        ]
        return models[0] if len(models) == 1 else tp
    return tp


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Builder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._constructor.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str | int | float | bool):
                    self.problems.append(
                        Problem(self.path, line, _dotted(loc) or None, "keys must be plain values")
                    )
                    continue
                if key in out:
                    first = self.lines.get((*loc, str(key)))
                    self.problems.append(
                        Problem(
                            self.path,
                            line,
                            _dotted((*loc, str(key))),
                            f"duplicate key (first defined on line {first}); keep one",
                        )
                    )
                    continue
                self.lines[(*loc, str(key))] = line
                out[key] = self.build(value_node, (*loc, str(key)))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        return self._constructor.construct_object(node, deep=True)
