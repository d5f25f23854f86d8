"""The layering contract (layers.toml) holds for the tree, and `make lint` fails the
moment a forbidden import is added: checked on a copy of the tree with one import more."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "scripts" / "check_layers.py"
TREE = ("shim", "flags", "comparators", "examples", "tests", "bench", "layers.toml")


def check(root: Path) -> subprocess.CompletedProcess[str]:
    """The checker as make lint runs it."""
    return subprocess.run(
        [sys.executable, str(CHECKER), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", CHECKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


def problems(root: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The checker run in this process (no interpreter start per case): its complaints,
    after asserting it exited 1."""
    assert checker.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("layers: ") and "break layers.toml" in err[-1]
    return err[:-1]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the tree, its symlinks (shim/flags -> ../flags, ...) kept as links."""
    for name in TREE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source,
                tmp_path / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.jsonl"),
            )
        else:
            shutil.copy(source, tmp_path / name)
    return tmp_path


def add_lines(path: Path, text: str) -> int:
    """Append ``text`` to a file; the line number of its last line."""
    before = path.read_text()
    path.write_text(before.rstrip("\n") + "\n" + text + "\n")
    return before.rstrip("\n").count("\n") + 1 + text.count("\n") + 1


def test_the_tree_keeps_the_contract() -> None:
    result = check(ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert re.fullmatch(r"layers: \d+ files, \d+ imports keep layers.toml\n", result.stdout)


def test_a_forbidden_import_fails_the_command(tree: Path) -> None:
    line = add_lines(tree / "shim" / "core" / "breaker.py", "from shim.cli import app")
    result = check(tree)
    assert result.returncode == 1
    assert f"shim/core/breaker.py:{line}: from shim.cli import app: " in result.stderr


def test_make_lint_runs_the_layer_check() -> None:
    recipe = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "$(BIN)/python scripts/check_layers.py" in recipe


# (file as written to, lines added, file as reported, the rule's words)
BROKEN = {
    "core imports the CLI": (
        "shim/core/breaker.py",
        "from shim.cli import app",
        "shim/core/breaker.py",
        "shim.core may not import shim.cli.app: layer [shim.cli] is above",
    ),
    "flags import the core": (
        "shim/flags/_rules.py",
        "from shim.core import shim",
        "flags/_rules.py",
        "shim.flags may not import shim.core.shim",
    ),
    "a relative import across the link": (
        "comparators/_model.py",
        "from ..flags import OFF",
        "comparators/_model.py",
        "shim.comparators and shim.flags share layer",
    ),
    "client and records stay independent": (
        "shim/client/task.py",
        "def later() -> None:\n    from shim.records import observe",
        "shim/client/task.py",
        "shim.client and shim.records share layer",
    ),
    "an import only for the type checker": (
        "shim/core/spend.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shim.sim import Profile",
        "shim/core/spend.py",
        "shim.core may not import shim.sim",
    ),
    "a facade name resolved": (
        "shim/records/capture.py",
        "from shim import Shim",
        "shim/records/capture.py",
        "shim.records may not import shim.core.shim",
    ),
    "a test imports top-level flags": (
        "tests/test_watch.py",
        "import flags",
        "tests/test_watch.py",
        "top-level 'flags' is forbidden: import shim.flags",
    ),
    "a benchmark imports top-level comparators": (
        "bench/records.py",
        "from comparators import JsonOutput",
        "bench/records.py",
        "top-level 'comparators' is forbidden",
    ),
    "the demo imports top-level examples": (
        "shim/demo/run.py",
        "from examples.kiwi import callsites",
        "shim/demo/run.py",
        "top-level 'examples' is forbidden: import shim.demo.kiwi",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_forbidden_import_fails_with_its_file_and_line(
    tree: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    written, lines, reported, rule = BROKEN[case]
    line = add_lines(tree / written, lines)
    [problem] = problems(tree, capsys)
    assert problem.startswith(f"{reported}:{line}: {lines.splitlines()[-1].strip()}: ")
    assert rule in problem


def test_a_package_missing_from_the_contract_fails(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "shim" / "extra").mkdir()
    (tree / "shim" / "extra" / "__init__.py").write_text('"""Not placed in any layer."""\n')
    [problem] = problems(tree, capsys)
    assert problem.startswith("shim/extra/__init__.py:1: module shim.extra is in no layer")


def test_an_exception_that_no_import_uses_fails(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one allowed top-level import (traffic.py's script entry point) must exist:
    an exception left behind would let the next such import through unseen."""
    traffic = tree / "examples" / "kiwi" / "traffic.py"
    traffic.write_text(traffic.read_text().replace("from examples.kiwi", "from shim.demo.kiwi"))
    [problem] = problems(tree, capsys)
    assert "matches no import any more" in problem
