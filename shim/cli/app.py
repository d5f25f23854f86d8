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

``options`` holds what several verbs share (consoles, options, error handling).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from . import check_status, logs, ramp, sim_demo

__all__ = ["EXIT_INTERNAL", "EXIT_PIPE", "app", "main"]

#: The exit code of an unexpected exception (EX_SOFTWARE in sysexits.h). Python's own
#: is 1, which here means ROLLBACK: a script must never take a crash for a verdict.
EXIT_INTERNAL = 70
#: The exit code when the reader of the output went away (128 + SIGPIPE, as a shell
#: pipeline reports it), which is no failure of the command.
EXIT_PIPE = 141

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


def main(args: Sequence[str] | None = None, *, command: typer.Typer = app) -> None:
    """Entry point of the ``shim`` console script: runs ``command`` (the ``shim`` app)
    on ``args`` (the command line's). An exception no verb expected prints its
    traceback, control characters escaped, and exits :data:`EXIT_INTERNAL`."""
    from shim.base.errors import ShimError

    from .options import ReaderGone

    try:
        command(args=None if args is None else list(args))
    except (BrokenPipeError, ReaderGone):  # `shim report | head`: the reader had enough
        _quiet_stdout()
        raise SystemExit(EXIT_PIPE) from None
    except (ShimError, OSError) as exc:  # bad input, or a file that cannot be written
        from .options import guard

        failure = exc if isinstance(exc, ShimError) else ShimError(_io_message(exc))
        try:
            guard(_raise, failure)  # says it as every verb does
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None
    except Exception:  # every unexpected error, so that it has its own exit code
        import traceback

        from shim.base.text import printable

        sys.stderr.write(printable(traceback.format_exc(), newlines=True))
        sys.stderr.write(
            f"shim: internal error (exit {EXIT_INTERNAL}); this is a bug: please report it "
            "with the traceback above\n"
        )
        sys.stderr.flush()
        raise SystemExit(EXIT_INTERNAL) from None


def _io_message(exc: OSError) -> str:
    """What an operating-system error says, naming the file it was about."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}; check the path and that there is room to write"


def _raise(exc: Exception) -> None:
    raise exc


def _quiet_stdout() -> None:
    """Point stdout at nothing, so that the interpreter's flush at exit does not fail
    on the closed pipe once more."""
    import contextlib
    import os

    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
