"""The ``shim`` command line. Exit codes: 0 ok, 1 check or gate failure (a ROLLBACK
verdict, a breach, a failed check), 2 usage or input (a file that cannot be read or
written too), 70 an internal error (a bug: the traceback is on stderr), 130
interrupted, 141 the reader of the output went away (``shim report | head``).

Each verb lives in a module of its group and imports what it needs when it runs, so
``shim --help`` loads typer and rich and none of the simulator, the report or httpx:

- ``sim_demo``: ``sim``, ``demo``
- ``check_status``: ``check``, ``status``
- ``ramp``: ``promote``, ``rollback``
- ``logs``: ``report``, ``watch``
- ``rollout``: ``rollout`` (and ``rollout approve``)

``options`` holds what several verbs share (options, error handling), ``console`` where
they print and how a run that fails ends. ``shim report`` with plain arguments runs
without typer at all (:mod:`shim.cli.report`, chosen in :func:`shim.cli.main`).
"""

from __future__ import annotations

from collections.abc import Sequence

import typer

from . import check_status, logs, ramp, rollout, sim_demo
from .console import EXIT_INTERNAL, EXIT_PIPE, run_guarded

__all__ = ["EXIT_INTERNAL", "EXIT_PIPE", "app", "main"]

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
    rollout.rollout,
    sim_demo.demo,
):
    app.command()(verb)


def main(args: Sequence[str] | None = None, *, command: typer.Typer = app) -> None:
    """Entry point of the ``shim`` console script: runs ``command`` (the ``shim`` app)
    on ``args`` (the command line's). An exception no verb expected prints its
    traceback, control characters escaped, and exits :data:`EXIT_INTERNAL`
    (:func:`~shim.cli.console.run_guarded`)."""
    run_guarded(lambda: command(args=None if args is None else list(args)))
