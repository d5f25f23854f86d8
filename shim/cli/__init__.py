"""The ``shim`` command line (``pip install 'task-shim[cli]'``)."""

from __future__ import annotations

import sys
from importlib.util import find_spec

__all__ = ["main", "require"]

#: What each extra brings that the command line imports.
_EXTRAS = {"cli": ("typer", "rich", "duckdb", "numpy"), "sim": ("fastapi", "uvicorn")}


def require(extra: str, needed_by: str = "the command line") -> None:
    """Exit 2 with what to install unless the modules of ``extra`` can be imported
    (found, not imported: the check costs no start-up time)."""
    missing = [name for name in _EXTRAS[extra] if find_spec(name) is None]
    if missing:
        names = ", ".join(missing)
        sys.stderr.write(
            f"shim: {needed_by} needs the '{extra}' extra ({names} "
            f"{'is' if len(missing) == 1 else 'are'} not installed);\n"
            f"      install it with: pip install 'task-shim[{extra}]'\n"
        )
        raise SystemExit(2)


def main() -> None:
    """The console script: the command line, or what to install to get it."""
    require("cli")
    from shim.cli.app import main as run

    run()
