"""The ``shim`` command line (``pip install 'task-shim[cli]'``)."""

from __future__ import annotations

import sys


def main() -> None:
    """The console script: the command line, or what to install to get it."""
    try:
        import rich  # noqa: F401
        import typer  # noqa: F401
    except ImportError as exc:
        sys.stderr.write(
            f"shim: the command line needs the 'cli' extra ({exc.name} is not installed);\n"
            "      install it with: pip install 'task-shim[cli]'\n"
        )
        raise SystemExit(2) from None
    from shim.cli.app import main as run

    run()
