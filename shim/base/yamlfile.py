"""YAML loading that remembers where every value came from.

Config files are edited by people, so every error must point at a line. We compose
the YAML node tree (which carries marks), build plain values from it while recording
the line of every key and list item, and translate pydantic errors back to those lines.

Reading is bounded (:mod:`shim.base.yamlbounds`): a file of at most 1 MiB, at most 64
levels deep, whose aliases add at most 100,000 values; and errors never quote the
file's values. Merge keys (``<<: *defaults``, YAML 1.1) are read as PyYAML's safe
loader reads them: keys written in the mapping win, then the merged mappings in the
order named.
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
from shim.base.yamlbounds import (
    MAX_ALIAS_NODES,
    MAX_BYTES,
    MAX_DEPTH,
    read_config_text,
    shown_key,
    yaml_problem,
)
from shim.base.yamlcompose import LIBYAML, compose, syntax_error

__all__ = ["MAX_ALIAS_NODES", "MAX_BYTES", "MAX_DEPTH", "Located", "load_yaml", "validate"]

_WHOLE: Any = object()
_MERGE = "tag:yaml.org,2002:merge"

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Located:
    """Plain data from a YAML file plus the line (1-based) of every key path in it.

    ``borrowed`` holds the key paths whose value is written somewhere else in the file
    and reached through an alias or a merge key (their line is that other place's):
    an edit must not rewrite those lines for this key.
    """

    path: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    borrowed: frozenset[Loc] = frozenset()

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


def load_yaml(path: str | Path, *, text: str | None = None, pure: bool = False) -> Located:
    """Read ``path`` (or ``text`` attributed to it) into data with line numbers.

    Raises ConfigError for a missing, unreadable or oversized file (over
    :data:`MAX_BYTES`), YAML syntax errors, documents nested deeper than
    :data:`MAX_DEPTH` and aliases that expand past :data:`MAX_ALIAS_NODES` values. A
    duplicate key (or a key that is not a plain value, or a merge key that merges no
    mapping) is a problem in ``problems``, located at the repeat and naming the first
    line; :func:`validate` reports them, alongside the validation problems, so every
    file loaded here refuses them. The first value is the one in ``data``, for the
    messages that follow. ``pure`` parses with PyYAML's own parser, not libyaml.
    """
    name = str(path)
    if text is None:
        text = read_config_text(path)
    try:
        return _located(name, text, pure=pure)
    except ConfigError:
        if pure or not LIBYAML:
            raise
    # Refused with libyaml's events: said as PyYAML's own parser says it, so errors read
    # the same whichever parser is installed. (libyaml accepts a few documents that
    # parser refuses, a tab after a scalar for one, and is taken at its word there.)
    return _located(name, text, pure=True)


def _located(name: str, text: str, *, pure: bool) -> Located:
    root = compose(name, text, pure=pure)
    if root is None:
        return Located(name, None, {(): 1})
    builder = _Builder(name)
    try:
        data = builder.build(root, ())
    except yaml.MarkedYAMLError as exc:  # a tag no safe constructor knows, say
        raise syntax_error(name, exc, text) from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        raise ConfigError(
            [Problem(name, None, None, f"invalid YAML: {yaml_problem(exc)}")]
        ) from None
    return Located(name, data, builder.lines, tuple(builder.problems), frozenset(builder.borrowed))


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
            is_key = len(loc) < len(err["loc"])
            problems.append(doc.problem(loc, _explain(err, schema, loc, is_key=is_key)))
        return None, problems
    return result, problems


@functools.cache
def _adapter(schema: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(schema)


#: Errors about a value of the right type: a number outside its range may be shown.
_RANGE = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"}
)
_KINDS: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _explain(err: Any, model: Any, loc: Loc, *, is_key: bool = False) -> str:
    """pydantic's message in the file's terms. The value is never quoted (the path may
    point at a file of secrets): a type error says what kind of value it got, a range
    error the number."""
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"unknown field{hint}"
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, str) and value:  # our validators say what they got: not here
        msg = msg.replace(repr(value), "this key" if is_key else "this value")
    if kind == "value_error":
        return msg
    if kind in _RANGE and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{msg} (got {value!r})"
    if kind.endswith(("_type", "_parsing")) and type(value) in _KINDS:
        return f"{msg} (got {_KINDS[type(value)]})"
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
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{shown_key(part)}" if out else shown_key(part)
    return out


class _Builder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self.borrowed: set[Loc] = set()
        self._built: set[int] = set()
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, loc: Loc, borrowed: bool = False) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        # The composer makes one node per place in the file; a node met again was
        # reached through an alias (an anchor comes before its aliases).
        borrowed = borrowed or id(node) in self._built
        self._built.add(id(node))
        if borrowed:
            self.borrowed.add(loc)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc, borrowed)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i), borrowed) for i, item in enumerate(node.value)]
        return self._constructor.construct_object(node, deep=True)

    def _key(self, node: yaml.Node, loc: Loc, report: bool) -> Any:
        key = self._constructor.construct_object(node, deep=True)
        if isinstance(key, str | int | float | bool):
            return key
        if report:
            line = node.start_mark.line + 1
            self.problems.append(
                Problem(self.path, line, _dotted(loc) or None, "keys must be plain values")
            )
        return None

    def _mapping(self, node: yaml.MappingNode, loc: Loc, borrowed: bool) -> dict[Any, Any]:
        entries: dict[Any, tuple[int, yaml.Node]] = {}
        merges: list[tuple[int, yaml.Node]] = []
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            merge = key_node.tag == _MERGE
            name = "<<" if merge else self._key(key_node, loc, not borrowed)
            if name is None:
                continue
            if (merge and merges) or (not merge and name in entries):
                if not borrowed:  # reported where it is written, once
                    first = self.lines.get((*loc, str(name)))
                    self.problems.append(
                        Problem(
                            self.path,
                            line,
                            _dotted((*loc, str(name))),
                            f"duplicate key (first defined on line {first}); keep one",
                        )
                    )
                continue
            self.lines[(*loc, str(name))] = line
            if merge:
                merges.append((line, value_node))
            else:
                entries[name] = (line, value_node)
        merged: dict[Any, tuple[int, yaml.Node]] = {}
        for line, value_node in merges:
            for key, entry in self._merged(value_node, loc, borrowed, line).items():
                if key not in entries:
                    merged.setdefault(key, entry)  # the first mapping named wins
        out: dict[Any, Any] = {}
        # Merged keys first, then the mapping's own: the order PyYAML gives them.
        for key, (line, value_node) in merged.items():
            self.lines[(*loc, str(key))] = line
            out[key] = self.build(value_node, (*loc, str(key)), True)
        for key, (_, value_node) in entries.items():
            out[key] = self.build(value_node, (*loc, str(key)), borrowed)
        return out

    def _merged(
        self, value: yaml.Node, loc: Loc, borrowed: bool, line: int
    ) -> dict[Any, tuple[int, yaml.Node]]:
        """The entries a merge key (on ``line``) brings: of one mapping, or of a list of
        mappings (the first named wins); each mapping's own merge keys resolved first."""
        sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
        if not all(isinstance(s, yaml.MappingNode) for s in sources) or not sources:
            if not borrowed:
                self.problems.append(
                    Problem(
                        self.path,
                        line,
                        _dotted(loc) or None,
                        "a merge key (<<) takes a mapping or a list of mappings, such as "
                        "<<: *defaults or <<: [*a, *b]",
                    )
                )
            return {}
        out: dict[Any, tuple[int, yaml.Node]] = {}
        for source in sources:
            own: dict[Any, tuple[int, yaml.Node]] = {}
            inner: list[yaml.Node] = []
            for key_node, value_node in source.value:
                if key_node.tag == _MERGE:
                    inner.append(value_node)
                    continue
                # Its problems were reported where it is written.
                key = self._key(key_node, loc, False)
                if key is not None:
                    own.setdefault(key, (key_node.start_mark.line + 1, value_node))
            for node in inner:
                for key, entry in self._merged(node, loc, True, line).items():
                    own.setdefault(key, entry)
            for key, entry in own.items():
                out.setdefault(key, entry)
        return out
