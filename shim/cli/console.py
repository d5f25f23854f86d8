"""Where the verbs print: stdout and stderr with the secrets the environment configures
taken out, the messages that say a failure, and the exit codes of a run that ends
otherwise than its verb said (a crash, a reader gone, a file that cannot be written).

Nothing here imports typer, and rich only when a message is first printed through a
console: ``shim report --format json`` runs on this module alone
(:mod:`shim.cli.report`), without the command-line framework.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache
from typing import IO, TYPE_CHECKING, Any, cast

from shim.base.errors import ConfigError, ShimError
from shim.base.secrets import env_redactor
from shim.base.text import printable

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_PIPE",
    "ReaderGone",
    "console",
    "emit",
    "run_guarded",
    "say",
    "say_failure",
]

#: The exit code of an unexpected exception (EX_SOFTWARE in sysexits.h). Python's own
#: is 1, which here means ROLLBACK: a script must never take a crash for a verdict.
EXIT_INTERNAL = 70
#: The exit code when the reader of the output went away (128 + SIGPIPE, as a shell
#: pipeline reports it), which is no failure of the command.
EXIT_PIPE = 141
#: The exit code of a command interrupted with Ctrl-C (128 + SIGINT), as a shell's.
EXIT_INTERRUPTED = 130


class ReaderGone(Exception):
    """Whoever read the output went away (``shim report | head``). Not an ``OSError``:
    click would take a broken pipe for exit 1, which here means ROLLBACK."""


class _Redacted:
    """``sys.stdout`` or ``sys.stderr``, whichever is current when written to (a test
    runner swaps them), with the secrets the environment configures taken out of all
    that is written: what a verb prints cannot carry them, whatever it forgot."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def _stream(self) -> Any:
        return getattr(sys, self._name)

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(env_redactor()(text)))
        except BrokenPipeError:
            raise ReaderGone from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise ReaderGone from None

    def isatty(self) -> bool:
        return bool(self._stream.isatty())

    def fileno(self) -> int:
        return int(self._stream.fileno())


@cache
def console(*, error: bool = False) -> Console:
    """The rich console on stdout (``error``: stderr), made at its first use.

    Help texts are rich markup: "\\[" keeps a bracket that looks like a tag ("[env X]").
    Piped output has no terminal width to fit; 200 columns keep table rows on one line,
    with the error-count columns a report shows when a task has errors. No emoji codes:
    a name like ":skull:" from a log is text. Both write through a redacting stream: a
    table's cells are redacted before they are laid out (printable), and all that is
    printed again, in case something did not go through printable."""
    from rich.console import Console

    name = "stderr" if error else "stdout"
    return Console(
        file=cast(IO[str], _Redacted(name)),  # what rich uses of a text stream
        highlight=False,
        emoji=False,
        width=None if getattr(sys, name).isatty() else 200,
    )


def say(text: str, *, error: bool = False, lines: bool = False, soft_wrap: bool = False) -> None:
    """Print ``text`` on stdout (``error``: stderr) exactly as it is: never markup,
    every control character shown escaped and every secret the environment configures
    redacted (:func:`~shim.base.text.printable`), newlines too unless ``lines``. Every
    message the verbs print goes through here, since most quote something from a log,
    a config file or a path."""
    console(error=error).print(printable(text, newlines=lines), markup=False, soft_wrap=soft_wrap)


def emit(text: str, *, end: str = "\n") -> None:
    """Write ``text`` to stdout as it is (a JSON document, Markdown, a log line), with
    the secrets the environment configures taken out; for what is not for rich."""
    try:
        sys.stdout.write(env_redactor()(text) + end)
        sys.stdout.flush()
    except BrokenPipeError:
        raise ReaderGone from None


def say_failure(exc: ShimError) -> None:
    """Say on stderr why a verb cannot go on: a :class:`~shim.base.errors.ConfigError`
    as ``file:line: field: message`` per problem, one line each; another
    :class:`ShimError` as its message. The caller exits 2."""
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            say(str(problem), error=True, soft_wrap=True)
    else:
        say(str(exc), error=True, lines=True)


def run_guarded(action: Callable[[], object]) -> None:
    """Run ``action`` (a verb, or the whole command line) as the ``shim`` command does:
    Ctrl-C exits :data:`EXIT_INTERRUPTED`; a reader that went away exits
    :data:`EXIT_PIPE`; a :class:`ShimError` or a file that cannot be read or written
    says so and exits 2; an exception no verb expected prints its traceback, control
    characters escaped, and exits :data:`EXIT_INTERNAL`. ``SystemExit`` (how a verb
    ends) passes through."""
    try:
        action()
    except KeyboardInterrupt:  # Ctrl-C: quietly, as typer ends a verb it interrupts
        raise SystemExit(EXIT_INTERRUPTED) from None
    except (BrokenPipeError, ReaderGone):  # `shim report | head`: the reader had enough
        _quiet_stdout()
        raise SystemExit(EXIT_PIPE) from None
    except (ShimError, OSError) as exc:  # bad input, or a file that cannot be written
        say_failure(exc if isinstance(exc, ShimError) else ShimError(_io_message(exc)))
        raise SystemExit(2) from None
    except Exception:  # every unexpected error, so that it has its own exit code
        import traceback

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


def _quiet_stdout() -> None:
    """Point stdout at nothing, so that the interpreter's flush at exit does not fail
    on the closed pipe once more."""
    import contextlib
    import os

    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
