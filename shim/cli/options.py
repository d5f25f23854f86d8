"""What the verbs share: the consoles, the options more than one verb takes, and the
helpers that turn a config or flag error into a message and an exit code.

Imports here stay cheap (typer, rich's console): ``shim --help`` loads this module and
nothing a verb needs only when it runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from rich.console import Console

from shim.base.errors import ConfigError, ShimError
from shim.base.secrets import env_redactor
from shim.base.text import printable

if TYPE_CHECKING:
    from shim.analysis.policy import Policy
    from shim.base.orch import OrchConfig
    from shim.flags.store import FlagStore

__all__ = [
    "AssignmentsOpt",
    "DryRunOpt",
    "FlagsOpt",
    "JsonOpt",
    "LogOpt",
    "PolicyOpt",
    "ReaderGone",
    "RegistryOpt",
    "config_paths",
    "emit",
    "err",
    "guard",
    "load_config",
    "load_policy",
    "log_path",
    "open_store",
    "out",
    "say",
]


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


# Help texts are rich markup: "\\[" keeps a bracket that looks like a tag ("[env X]").
# Piped output has no terminal width to fit; 200 columns keep table rows on one line,
# with the error-count columns a report shows when a task has errors. No emoji codes:
# a name like ":skull:" from a log is text. Both write through _Redacted: a table's
# cells are redacted before they are laid out (printable), and all that is printed
# again, in case something did not go through printable.
out = Console(
    file=cast(IO[str], _Redacted("stdout")),  # what rich uses of a text stream
    highlight=False,
    emoji=False,
    width=None if sys.stdout.isatty() else 200,
)
err = Console(
    file=cast(IO[str], _Redacted("stderr")),
    highlight=False,
    emoji=False,
    width=None if sys.stderr.isatty() else 200,
)


def say(text: str, *, error: bool = False, lines: bool = False, soft_wrap: bool = False) -> None:
    """Print ``text`` on stdout (``error``: stderr) exactly as it is: never markup,
    every control character shown escaped and every secret the environment configures
    redacted (:func:`~shim.base.text.printable`), newlines too unless ``lines``. Every
    message the verbs print goes through here, since most quote something from a log,
    a config file or a path."""
    (err if error else out).print(
        printable(text, newlines=lines), markup=False, soft_wrap=soft_wrap
    )


def emit(text: str, *, end: str = "\n") -> None:
    """Write ``text`` to stdout as it is (a JSON document, Markdown, a log line), with
    the secrets the environment configures taken out; for what is not for rich."""
    try:
        sys.stdout.write(env_redactor()(text) + end)
        sys.stdout.flush()
    except BrokenPipeError:
        raise ReaderGone from None


AssignmentsOpt = Annotated[
    Path | None,
    typer.Option(
        "--assignments",
        help="assignments.yaml \\[env SHIM_ASSIGNMENTS; default: kiwi's]",
        dir_okay=False,
    ),
]
RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="model_registry.yaml \\[env SHIM_REGISTRY; default: kiwi's]",
        dir_okay=False,
    ),
]
FlagsOpt = Annotated[
    Path | None,
    typer.Option("--flags", help="flags.yaml \\[env SHIM_FLAGS when it is a path]", dir_okay=False),
]
LogOpt = Annotated[
    Path | None,
    typer.Option(
        "--log",
        help="Comparison log: breaker states are read from it, changes recorded in it "
        "\\[env SHIM_LOG]",
        dir_okay=False,
    ),
]
PolicyOpt = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="policy.yaml: the promotion gates, the rollback lines and the watch windows "
        "\\[default: built-in]",
        exists=True,
        dir_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the change only.")]

T = TypeVar("T")


def guard(action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``action``; a :class:`ShimError` becomes its message on stderr and exit 2 (a
    :class:`~shim.base.errors.ConfigError` says ``file:line: field: message`` per
    problem, one line each)."""
    try:
        return action(*args, **kwargs)
    except ConfigError as exc:
        for problem in exc.problems:
            say(str(problem), error=True, soft_wrap=True)
        raise typer.Exit(2) from None
    except ShimError as exc:
        say(str(exc), error=True, lines=True)
        raise typer.Exit(2) from None


def config_paths(assignments: Path | None, registry: Path | None) -> tuple[Path, Path]:
    """The assignments and registry to use: given, else the environment, else kiwi's."""
    from shim.base.orch import default_config_path

    def pick(given: Path | None, env: str, name: str) -> Path:
        if given is not None:
            return given
        if os.environ.get(env):
            return Path(os.environ[env])
        return default_config_path(name)

    return (
        pick(assignments, "SHIM_ASSIGNMENTS", "assignments.yaml"),
        pick(registry, "SHIM_REGISTRY", "model_registry.yaml"),
    )


def load_config(assignments: Path | None, registry: Path | None) -> OrchConfig:
    """The coordinator's config, or its problems and exit 2."""
    from shim.base.orch import OrchConfig

    return guard(OrchConfig, *config_paths(assignments, registry))


def load_policy(path: Path | None) -> Policy:
    """The gates from ``path``, or the built-in ones; a bad file exits 2."""
    from shim.analysis.policy import Policy

    return guard(Policy.load, path) if path else Policy()


def log_path(given: Path | None) -> Path | None:
    """The comparison log: given, else ``SHIM_LOG`` unless it is ``-`` (stdout)."""
    if given is not None:
        return given
    env = os.environ.get("SHIM_LOG", "")
    return Path(env) if env and env != "-" else None


def open_store(flags: Path | None) -> FlagStore:
    """Where the flags live (file or Unleash), or the reason there is none and exit 2.
    A store that holds connections (Unleash) is closed when the command ends."""
    import click

    from shim.ops.promote import open_store

    store = guard(open_store, flags)
    close = getattr(store, "close", None)
    context = click.get_current_context(silent=True)
    if close is not None and context is not None:
        context.call_on_close(close)
    return store
