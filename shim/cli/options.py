"""What the verbs share: the consoles (from :mod:`shim.cli.console`), the options more
than one verb takes, and the helpers that turn a config or flag error into a message
and an exit code.

Imports here stay cheap (typer, rich's console): ``shim --help`` loads this module and
nothing a verb needs only when it runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from shim.base.errors import ShimError

from .console import ReaderGone, console, emit, say, say_failure

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


# The consoles, made here as before for the verbs that print through them.
out = console()
err = console(error=True)


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
    except ShimError as exc:
        say_failure(exc)
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
