"""The ``shim`` command line (``pip install 'task-shim[cli]'``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
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


def main(args: Sequence[str] | None = None) -> None:
    """The console script: the command line on ``args`` (the process's own by default),
    or what to install to get it. ``shim report`` with plain arguments runs without
    typer (:mod:`shim.cli.report`): its start-up is most of a small report's time."""
    require("cli")
    given = sys.argv[1:] if args is None else list(args)
    if given[:1] == ["report"]:
        from shim.cli.report import parse_plain

        plain = parse_plain(given[1:])
        if plain is not None:
            from shim.cli.console import run_guarded
            from shim.cli.report import run_report

            def report() -> None:
                raise SystemExit(run_report(plain))

            run_guarded(report)
    from shim.cli.app import main as run

    run(args)
