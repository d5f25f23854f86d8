"""Check every import in the source against the layering contract in layers.toml.

    python scripts/check_layers.py                  # the repository this script is in
    python scripts/check_layers.py --root DIR       # another tree (the tests use copies)

Reads the source, imports nothing of it. Every ``import`` and ``from ... import``
counts, wherever it stands (module level, inside a function, under ``if
TYPE_CHECKING:``), and so does ``importlib.import_module("literal")``. Relative imports
are resolved; files reached through the symlinks under ``shim/`` (``shim/flags`` ->
``../flags``) are modules of ``shim``. ``from shim import Name`` is followed through
the facade's lazy map (``_HOME`` in ``shim/__init__.py``) to the module that defines
``Name``. Each broken rule is one line ``file:line: import: rule`` on stderr, and the
exit status is 1; a tree that keeps the contract prints one summary line.

import-linter's grimp follows the symlinks too, but sees ``from shim import Shim`` only
as an import of ``shim``, and reads packages only, not ``bench/``.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Allow:
    """One import the contract lets through, and why."""

    module: str
    imports: str
    why: str


@dataclass(frozen=True, slots=True)
class Contract:
    """layers.toml, read."""

    facade: str
    layers: tuple[tuple[str, ...], ...]  # top to bottom
    forbidden: dict[str, str]  # top-level name -> the name to import instead
    forbidden_paths: tuple[str, ...]
    allow: tuple[Allow, ...]

    def place(self, module: str) -> tuple[int, str] | None:
        """(layer index, package) of the most specific package holding ``module``."""
        found: tuple[int, str] | None = None
        for index, packages in enumerate(self.layers):
            for package in packages:
                if _within(module, package) and (found is None or len(package) > len(found[1])):
                    found = (index, package)
        return found


@dataclass(frozen=True, slots=True)
class Source:
    """One file to check: where it is, what to call it, and its module name if it is
    part of the layered package."""

    path: Path
    shown: str
    module: str | None
    is_package: bool


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement's target, resolved."""

    line: int
    text: str
    target: str
    absolute: bool


class ContractError(Exception):
    """layers.toml cannot be used as it is."""


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def read_contract(path: Path) -> Contract:
    """Parse and check the contract file."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
        layers = data["layers"]
        forbidden = data.get("forbidden", {})
        contract = Contract(
            facade=str(layers["facade"]),
            layers=tuple(tuple(str(p) for p in row) for row in layers["order"]),
            forbidden={str(k): str(v) for k, v in forbidden.get("modules", {}).items()},
            forbidden_paths=tuple(str(p) for p in forbidden.get("paths", ())),
            allow=tuple(
                Allow(str(a["module"]), str(a["imports"]), str(a["why"]))
                for a in data.get("allow", ())
            ),
        )
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ContractError(f"{path}: {type(exc).__name__}: {exc}") from exc
    named = [p for row in contract.layers for p in row]
    if len(named) != len(set(named)):
        raise ContractError(f"{path}: a package is named in more than one place")
    return contract


def find_sources(root: Path, contract: Contract) -> list[Source]:
    """Every .py file under the facade's folder (through its symlinks) and the other
    forbidden paths, each once."""
    sources: list[Source] = []
    seen: set[Path] = set()  # files and folders, by where they really are
    real_root = root.resolve()
    package_dir = root / contract.facade.replace(".", "/")
    others = [root / p for p in contract.forbidden_paths if root / p != package_dir]
    for folder in [package_dir, *others]:
        in_package = folder == package_dir
        seen.add(folder.resolve())
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d != "__pycache__" and d[0] != "." and (here / d).resolve() not in seen
            )
            seen.update((here / d).resolve() for d in dirnames)
            for name in sorted(filenames):
                path = here / name
                real = path.resolve()
                if not name.endswith(".py") or real in seen:
                    continue
                seen.add(real)
                module = None
                if in_package:
                    parts = [*contract.facade.split("."), *path.relative_to(folder).parts]
                    parts[-1] = parts[-1].removesuffix(".py")
                    if parts[-1] == "__init__":
                        parts.pop()
                    module = ".".join(parts)
                try:
                    shown = str(real.relative_to(real_root))
                except ValueError:
                    shown = str(path)
                sources.append(Source(path, shown, module, name == "__init__.py"))
    return sources


def facade_names(root: Path, contract: Contract) -> dict[str, str]:
    """The facade's lazy map: name -> the module that defines it."""
    init = root / contract.facade.replace(".", "/") / "__init__.py"
    try:
        tree = ast.parse(init.read_text(), str(init))
    except OSError:
        return {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_HOME" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
    return {}


def _statements(nodes: list[Any]) -> Iterator[ast.AST]:
    # Every statement, however nested (functions, classes, if/try/with/match bodies);
    # much faster than ast.walk, which visits every expression too.
    for node in nodes:
        yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, name, None)
            if isinstance(children, list):
                yield from _statements(children)


def imports_of(
    source: Source, text: str, known: set[str], facade: str, home: dict[str, str]
) -> Iterator[Import]:
    """What each import in the file reaches: ``from a import b`` is ``a.b`` when that
    is a module of the tree, else ``a``; a name of the facade is its defining module."""
    module = source.module or ""
    package = module if source.is_package else module.rpartition(".")[0]
    tree = ast.parse(text, source.shown)
    nodes = ast.walk(tree) if "import_module(" in text else _statements(tree.body)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(node.lineno, ast.unparse(node), alias.name, absolute=True)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if source.module is None:
                    continue  # tests' and benchmarks' own relative imports
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            for alias in node.names:
                whole = f"{stem}.{alias.name}"
                if whole in known:
                    target = whole
                elif stem == facade and alias.name in home:
                    target = home[alias.name]
                else:
                    target = stem
                yield Import(node.lineno, ast.unparse(node), target, absolute=not node.level)
        elif (
            isinstance(node, ast.Call)
            and _called(node.func) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            yield Import(node.lineno, ast.unparse(node), node.args[0].value, absolute=True)


def _called(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


class Checker:
    """The contract applied to one tree; ``problems`` collects the broken rules."""

    def __init__(self, root: Path, contract: Contract) -> None:
        self.contract = contract
        self.sources = find_sources(root, contract)
        self.known = {s.module for s in self.sources if s.module}
        self.home = facade_names(root, contract)
        self.problems: list[str] = []
        self.imports = 0
        self._used: set[Allow] = set()

    def run(self) -> list[str]:
        """Check every file, then the exceptions themselves."""
        for source in self.sources:
            try:
                self._check_file(source, source.path.read_text())
            except SyntaxError as exc:
                self.problems.append(f"{source.shown}:{exc.lineno}: cannot be parsed: {exc.msg}")
        for allow in self.contract.allow:
            if allow not in self._used:
                self.problems.append(
                    f"layers.toml: the exception for {allow.module} importing {allow.imports} "
                    f"({allow.why}) matches no import any more: remove it"
                )
        return self.problems

    def _check_file(self, source: Source, text: str) -> None:
        contract, importer = self.contract, source.module
        where = contract.place(importer) if importer else None
        if importer and importer != contract.facade and where is None:
            self.problems.append(
                f"{source.shown}:1: module {importer} is in no layer: add its package to "
                "[layers] order in layers.toml"
            )
        for imp in imports_of(source, text, self.known, contract.facade, self.home):
            self.imports += 1
            said = f"{source.shown}:{imp.line}: {imp.text}:"
            top = imp.target.split(".")[0]
            if imp.absolute and top in contract.forbidden:
                if not self._allowed(source, imp.target):
                    self.problems.append(
                        f"{said} top-level {top!r} is forbidden: import "
                        f"{contract.forbidden[top]} (the same files, loaded once)"
                    )
                continue
            if importer in (None, contract.facade) or not _within(imp.target, contract.facade):
                continue  # tests, benchmarks, the facade; the standard library, other packages
            if imp.target == contract.facade:
                self.problems.append(
                    f"{said} imports the facade {contract.facade} itself: import the name "
                    "from the module that defines it"
                )
                continue
            reached = contract.place(imp.target)
            if where is None or reached is None or reached[1] == where[1]:
                continue
            if reached[0] < where[0]:
                self.problems.append(
                    f"{said} {where[1]} may not import {imp.target}: layer "
                    f"[{self._layer(reached)}] is above layer [{self._layer(where)}]; a layer "
                    "imports only the layers below it"
                )
            elif reached[0] == where[0]:
                self.problems.append(
                    f"{said} {where[1]} may not import {imp.target}: {where[1]} and "
                    f"{reached[1]} share layer [{self._layer(where)}] and stay independent"
                )

    def _allowed(self, source: Source, target: str) -> bool:
        # An exception names a module (or, outside the package, a file) and what it imports.
        for allow in self.contract.allow:
            importer = source.module if source.module is not None else source.shown
            if _within(importer, allow.module) and _within(target, allow.imports):
                self._used.add(allow)
                return True
        return False

    def _layer(self, place: tuple[int, str]) -> str:
        return " | ".join(self.contract.layers[place[0]])


def main(argv: list[str] | None = None) -> int:
    """Check the tree; 0 when it keeps the contract, 1 when it does not, 2 when the
    contract cannot be read."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--contract", type=Path, help="default: ROOT/layers.toml")
    args = parser.parse_args(argv)
    try:
        contract = read_contract(args.contract or args.root / "layers.toml")
    except ContractError as exc:
        print(f"layers: {exc}", file=sys.stderr)
        return 2
    checker = Checker(args.root, contract)
    problems = checker.run()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"layers: {len(problems)} import(s) break layers.toml", file=sys.stderr)
        return 1
    print(f"layers: {len(checker.sources)} files, {checker.imports} imports keep layers.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
