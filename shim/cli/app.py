"""The ``shim`` command line. Exit codes: 0 ok, 1 check or gate failure, 2 usage or input.

Each verb lives in a module of its group and imports what it needs when it runs, so
``shim --help`` loads typer and rich and none of the simulator, the report or httpx:

- ``sim_demo``: ``sim``, ``demo``
- ``check_status``: ``check``, ``status``
- ``ramp``: ``promote``, ``rollback``
- ``logs``: ``report``, ``watch``

``options`` holds what several verbs share (consoles, options, error handling).
"""

from __future__ import annotations

import typer

from . import check_status, logs, ramp, sim_demo

__all__ = ["app", "main"]

app = typer.Typer(
    name="shim",
    help="Move LLM call sites onto cf-orch's task endpoint: shadow, compare, ramp, roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# In the order `shim --help` lists them.
for verb in (
    sim_demo.sim,
    check_status.check,
    check_status.status,
    ramp.promote,
    ramp.rollback,
    logs.report,
    logs.watch,
    sim_demo.demo,
):
    app.command()(verb)


def main() -> None:
    """Entry point of the ``shim`` console script."""
    app()
