"""Composing one YAML document into its node graph, within the limits.

PyYAML's composer recurses once per level (a deep document ends in RecursionError) and
knows nothing of what aliases expand to. This one is a loop over the parser's events:
it refuses a document nested deeper than :data:`MAX_DEPTH`, and tracks, for every node,
how many values and levels it expands to (an alias is the node it names, counted again
wherever it is used). A document whose aliases add more than :data:`MAX_ALIAS_NODES`
values, or that is too deep once they are expanded, is refused before any value is
built, in time proportional to the file, not to what it expands to.

The events come from libyaml when PyYAML has it (several times faster than PyYAML's
own parser), else from PyYAML's parser. Nodes, tags and marks are the ones
``yaml.compose`` gives.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from shim.base.errors import ConfigError, Problem
from shim.base.yamlbounds import MAX_ALIAS_NODES, MAX_DEPTH, shown_key, yaml_problem

__all__ = ["LIBYAML", "compose", "syntax_error"]

_NULL = "tag:yaml.org,2002:null"

#: PyYAML was built with libyaml: its parser is several times faster than PyYAML's own.
LIBYAML: bool = bool(yaml.__with_libyaml__)


def compose(name: str, text: str, *, pure: bool = False) -> yaml.Node | None:
    """The node graph of ``text`` (None for an empty document), attributed to ``name``.

    Raises ConfigError, located by line (and column), for bad YAML, more than one
    document, an undefined, duplicate or recursive anchor, and documents over the
    depth or alias limits. The events come from libyaml when it is installed
    (:data:`LIBYAML`), unless ``pure``: then from PyYAML's own parser.
    """
    loader_class = yaml.SafeLoader if pure or not LIBYAML else yaml.CSafeLoader
    try:
        return _compose_with(loader_class, name, text)
    except (yaml.YAMLError, UnicodeError) as exc:  # libyaml cannot encode a lone surrogate
        raise syntax_error(name, exc, text) from None


def _compose_with(loader_class: type[Any], name: str, text: str) -> yaml.Node | None:
    loader = loader_class(text)  # PyYAML's checks the characters here
    try:
        return _Composer(name, text, loader).document()
    finally:
        loader.dispose()


def syntax_error(name: str, exc: BaseException, text: str) -> ConfigError:
    """A YAML error, located by line and column, quoting nothing of the file."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    position = getattr(exc, "position", None)  # a ReaderError's (a bad character)
    if mark is not None:
        line, where = mark.line + 1, f" at column {mark.column + 1}"
    elif isinstance(position, int):
        line, where = text.count("\n", 0, position) + 1, ""
    else:
        line, where = None, ""
    return ConfigError([Problem(name, line, None, f"invalid YAML{where}: {yaml_problem(exc)}")])


class _Open:
    """A collection being composed: its node, a key waiting for its value, and what
    its children so far expand to."""

    __slots__ = ("depth", "key", "node", "size")

    def __init__(self, node: yaml.Node) -> None:
        self.node = node
        self.key: yaml.Node | None = None
        self.size = 1
        self.depth = 0


class _Composer:
    def __init__(self, name: str, text: str, loader: Any) -> None:
        self.name = name
        self.loader = loader
        self.anchors: dict[str, yaml.Node] = {}
        #: Values and collection levels each finished node expands to, by id(node).
        self.size: dict[int, int] = {}
        self.depth: dict[int, int] = {}
        self.nodes = 0
        #: Nodes spelled out when each child of the top-level collection was attached.
        self.spelled: list[int] = []
        # Sizes stop growing past this, so nine lines of aliases stay small numbers:
        # it is more than any document spells out plus what aliases may add.
        self.ceiling = MAX_ALIAS_NODES + 2 * len(text) + 8

    def problem(self, mark: Any, message: str) -> ConfigError:
        return ConfigError(
            [
                Problem(
                    self.name,
                    mark.line + 1,
                    None,
                    f"invalid YAML at column {mark.column + 1}: {message}",
                )
            ]
        )

    def document(self) -> yaml.Node | None:
        get, check = self.loader.get_event, self.loader.check_event
        get()  # stream start
        if check(StreamEndEvent):
            return None
        get()  # document start
        root = self.node()
        get()  # document end
        if not check(StreamEndEvent):
            raise self.problem(
                get().start_mark, "a second YAML document (---); a config file holds one"
            )
        if isinstance(root, ScalarNode) and root.tag == _NULL and not root.value:
            return None  # "---" and nothing: where that nothing is, parsers disagree
        self.check_expansion(root)
        return root

    def node(self) -> yaml.Node:
        """The next node, with everything in it: a loop, however deep it nests."""
        get, resolve = self.loader.get_event, self.loader.resolve
        size, depth, ceiling = self.size, self.depth, self.ceiling
        stack: list[_Open] = []
        while True:
            event = get()
            kind = type(event)
            node: yaml.Node
            if kind is AliasEvent:
                found = self.anchors.get(event.anchor)
                if found is None:
                    raise self.problem(
                        event.start_mark, "found undefined alias; define its anchor (&) first"
                    )
                if id(found) not in size:  # still open: it would contain itself
                    raise self.problem(
                        event.start_mark,
                        "an alias refers to itself (a recursive alias); write the value out",
                    )
                node = found
            elif kind is ScalarEvent:
                tag, implicit = event.tag, event.implicit
                if tag == "!" and not event.value:  # libyaml reads it as no plain scalar
                    implicit = (True, False)
                if tag is None or tag == "!":
                    tag = resolve(ScalarNode, event.value, implicit)
                node = ScalarNode(
                    tag, event.value, event.start_mark, event.end_mark, style=event.style
                )
                self.anchor(event, node)
                size[id(node)] = 1
                depth[id(node)] = 0
                self.nodes += 1
            elif kind is SequenceStartEvent or kind is MappingStartEvent:
                if len(stack) >= MAX_DEPTH:
                    raise self.problem(
                        event.start_mark, f"nested more than {MAX_DEPTH} levels deep; flatten it"
                    )
                cls = SequenceNode if kind is SequenceStartEvent else MappingNode
                tag = event.tag
                if tag is None or tag == "!":
                    tag = resolve(cls, None, event.implicit)
                opened = cls(tag, [], event.start_mark, None, flow_style=event.flow_style)
                self.anchor(event, opened)
                self.nodes += 1
                stack.append(_Open(opened))
                continue
            else:  # the end of the innermost open collection
                done = stack.pop()
                node = done.node
                node.end_mark = event.end_mark
                size[id(node)] = min(done.size, ceiling)
                depth[id(node)] = done.depth + 1
            if not stack:
                return node
            if len(stack) == 1:
                self.spelled.append(self.nodes)
            parent = stack[-1]
            parent.size = min(parent.size + size[id(node)], ceiling)
            parent.depth = max(parent.depth, depth[id(node)])
            if isinstance(parent.node, SequenceNode):
                parent.node.value.append(node)
            elif parent.key is None:
                parent.key = node
            else:
                parent.node.value.append((parent.key, node))
                parent.key = None

    def anchor(self, event: Any, node: yaml.Node) -> None:
        if event.anchor is None:
            return
        first = self.anchors.get(event.anchor)
        if first is not None:
            raise self.problem(
                event.start_mark,
                f"an anchor (&) defined again (first on line {first.start_mark.line + 1}); "
                "rename one",
            )
        self.anchors[event.anchor] = node

    def check_expansion(self, root: yaml.Node) -> None:
        """Refuse a document whose aliases add too many values, or that is too deep
        once they are expanded; located at the first top-level entry that goes over."""
        added = self.size[id(root)] - self.nodes  # values beyond those spelled out
        if added <= MAX_ALIAS_NODES and self.depth[id(root)] <= MAX_DEPTH:
            return
        # (node that locates it, its parts, the field it names, nodes spelled by its end)
        entries: list[tuple[yaml.Node, list[yaml.Node], str | None, int]] = []
        if isinstance(root, MappingNode):
            for i, (key, value) in enumerate(root.value):
                field = shown_key(key.value) if isinstance(key, ScalarNode) else None
                entries.append((key, [key, value], field, self.spelled[2 * i + 1]))
        elif isinstance(root, SequenceNode):
            entries = [
                (item, [item], f"[{i}]", self.spelled[i]) for i, item in enumerate(root.value)
            ]
        total, at, field = 1, root, None
        for node, parts, name, spelled in entries:
            total += sum(self.size[id(p)] for p in parts)
            if total - spelled > MAX_ALIAS_NODES or (
                max(self.depth[id(p)] for p in parts) + 1 > MAX_DEPTH
            ):
                at, field = node, name
                break
        if added > MAX_ALIAS_NODES:
            message = (
                f"aliases here expand to more than {MAX_ALIAS_NODES:,} values (an alias "
                "bomb?); write the values out or use fewer aliases"
            )
        else:
            message = f"nested more than {MAX_DEPTH} levels deep once aliases are expanded"
        raise ConfigError([Problem(self.name, at.start_mark.line + 1, field, message)])
