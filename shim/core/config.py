"""What a Shim is built from: its limits and timeouts, the coordinator's files, and
the environment (``Shim.from_env``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shim import flags as flagpkg
from shim.base.errors import ConfigError, Problem
from shim.base.orch import SERVICE_TYPES, AssignmentsFile, OrchConfig, RegistryFile, parse_file
from shim.comparators import ModelNames

__all__ = [
    "FixedFlags",
    "Limits",
    "Timeouts",
    "env_config",
    "flags_from_env",
    "load_orch",
    "secrets_of",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """How much work a Shim takes on at once. Past a limit a call is never made to
    wait: its comparison is skipped and counted (``shim.dropped``), or legacy serves it.

    ``workers`` threads run the comparisons of sync and async call sites, with at most
    ``queue_size`` of them queued or running (past it: ``queue_full``). A served async
    call that is compared runs legacy in the background on its event loop, at most
    ``concurrency`` per loop. At most ``max_serving`` task-path calls serve at once,
    threads and event loops together; a call past it is served by legacy at once
    (``serve_full``), so a hanging coordinator holds no more callers than that.
    """

    workers: int = 4
    queue_size: int = 1000
    concurrency: int = 64
    max_serving: int = 64

    def __post_init__(self) -> None:
        for name in ("workers", "queue_size", "concurrency", "max_serving"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a whole number >= 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds a task-path call may take: ``serve`` when it serves the caller,
    ``shadow`` when it only runs for comparison. ``shadow`` also bounds a served async
    call's legacy run in the background."""

    serve: float = 30.0
    shadow: float = 30.0

    def __post_init__(self) -> None:
        for name in ("serve", "shadow"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"Timeouts.{name} must be positive seconds, got {value!r}")


class FixedFlags:
    """A flag source whose rules are set in code, not read from anywhere: every task
    off (the flags of a disabled Shim), or the flags a test gives (``shim.testing``)."""

    def __init__(self, rules: flagpkg.Rules | None = None) -> None:
        self.rules = rules if rules is not None else flagpkg.Rules()

    def decide(self, task: str, sticky: str | None) -> flagpkg.Decision:
        """The decision for one call of ``task``."""
        return self.rules.decide(task, sticky)

    def subscribe(self, listener: flagpkg.FlagListener) -> None:
        """Nothing to hear: the rules change only when code sets them."""

    def close(self) -> None:
        """Nothing to stop."""


def load_orch(
    registry: str | Path | None, assignments: str | Path | None
) -> tuple[ModelNames, dict[str, str]]:
    """Aliases, expected models and fitting service types from the optional files; and
    each task's service type (its model's, in the registry) when both files are given."""
    aliases: dict[str, list[str]] = {}
    assigned: dict[str, Any] = {}
    services: dict[str, str] = {}
    if registry is not None and assignments is not None:
        config = OrchConfig(assignments, registry)
        models = config.registry.models
        aliases = {m: list(e.alias) for m, e in models.items()}
        assigned = dict(config.assignments.assignments)
        for name in assigned:
            resolved = config.resolve(name)
            if resolved is not None:
                services[name] = resolved.service_type
    else:
        if registry is not None:
            models = parse_file(registry, RegistryFile)[0].models
            aliases = {m: list(e.alias) for m, e in models.items()}
        if assignments is not None:
            assigned = dict(parse_file(assignments, AssignmentsFile)[0].assignments)
    names = ModelNames(
        aliases,
        expected={t: a.model for t, a in assigned.items()},
        allowed_services={t: SERVICE_TYPES[a.modality] for t, a in assigned.items()},
    )
    return names, services


def secrets_of(api_key: str | None) -> tuple[str, ...]:
    """What records must never contain: the coordinator's key and the Unleash tokens
    (an Unleash token is ``project:environment.secret``: the secret part alone leaks
    too)."""
    env = os.environ
    key = env.get("CF_LICENSE_KEY") if api_key is None else api_key
    tokens = [env.get("UNLEASH_API_TOKEN"), env.get("UNLEASH_ADMIN_TOKEN")]
    return tuple(v for v in (key, *tokens, *(t.rsplit(".", 1)[-1] for t in tokens if t)) if v)


def env_config(overrides: dict[str, Any]) -> tuple[str, str | None]:
    """The coordinator's URL for ``Shim.from_env``, with ``overrides`` completed from
    the environment (``CF_LICENSE_KEY``, ``SHIM_LOG``, ``SHIM_REGISTRY``,
    ``SHIM_ASSIGNMENTS``; the flags from ``SHIM_FLAGS`` unless given); keyword
    arguments win. When the Shim must be off instead: ``("", why)``."""
    env = os.environ
    url = overrides.pop("orch_url", None) or env.get("CF_ORCH_URL")
    if not url:
        return "", (
            "CF_ORCH_URL is not set: task-shim is off and every wrapped call runs its "
            "legacy path; set CF_ORCH_URL to the coordinator's base URL to compare"
        )
    if "flags" not in overrides:
        if not env.get("SHIM_FLAGS"):
            return "", (
                "SHIM_FLAGS is not set: task-shim is off and every wrapped call runs its "
                "legacy path; set SHIM_FLAGS to a flags.yaml path, or to 'unleash'"
            )
        overrides["flags"] = flags_from_env()
    for key, var in (
        ("api_key", "CF_LICENSE_KEY"),
        ("log_path", "SHIM_LOG"),
        ("registry", "SHIM_REGISTRY"),
        ("assignments", "SHIM_ASSIGNMENTS"),
    ):
        if key not in overrides and env.get(var):
            overrides[key] = env[var]
    return url, None


def flags_from_env() -> flagpkg.FlagSource:
    """The flag source ``SHIM_FLAGS`` names: a flags.yaml path, or ``unleash`` (with
    ``UNLEASH_URL``, ``UNLEASH_API_TOKEN``, ``UNLEASH_APP_NAME``,
    ``UNLEASH_REFRESH_INTERVAL``)."""
    value = os.environ.get("SHIM_FLAGS", "")
    if not value:
        raise ConfigError(
            [Problem("environment", None, "SHIM_FLAGS", "not set; set it to a flags.yaml path")]
        )
    if value != "unleash":
        return flagpkg.FileFlags(value)
    env = os.environ
    missing = [v for v in ("UNLEASH_URL", "UNLEASH_API_TOKEN") if not env.get(v)]
    if missing:
        raise ConfigError(
            [
                Problem("environment", None, v, "not set; SHIM_FLAGS=unleash needs it")
                for v in missing
            ]
        )
    try:
        refresh = int(env.get("UNLEASH_REFRESH_INTERVAL") or 15)
    except ValueError:
        raise ConfigError(
            [Problem("environment", None, "UNLEASH_REFRESH_INTERVAL", "expected seconds")]
        ) from None
    return flagpkg.UnleashFlags(
        url=env["UNLEASH_URL"],
        api_token=env["UNLEASH_API_TOKEN"],
        app_name=env.get("UNLEASH_APP_NAME") or "task-shim",
        refresh_interval=refresh,
    )
