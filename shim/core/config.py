"""What a Shim is built from: its limits and timeouts, the coordinator's files, and
the environment (``Shim.from_env``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shim import flags as flagpkg
from shim.base.errors import ConfigError, Problem
from shim.base.orch import SERVICE_TYPES, AssignmentsFile, OrchConfig, RegistryFile, parse_file
from shim.comparators import ModelNames
from shim.core.judging import Judge

if TYPE_CHECKING:
    from shim.core.events import Events
    from shim.metrics import PrometheusMetrics

__all__ = [
    "FixedFlags",
    "Limits",
    "Timeouts",
    "check_judge",
    "env_config",
    "flag_listener",
    "flags_from_env",
    "judge_from_env",
    "load_orch",
    "metrics_from_env",
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


def flag_listener(events: Events) -> flagpkg.FlagListener:
    """What a Shim hears from its flag source: every event goes to
    :meth:`Events.flags`. (Not a Shim method: the source must not keep a Shim alive.)"""
    return events.flags


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


def secrets_of(api_key: str | None, *, orch_url: str | None = None) -> tuple[str, ...]:
    """What records must never contain: the coordinator's key, the Unleash tokens and
    the credentials in ``orch_url``, ``CF_ORCH_URL`` and ``UNLEASH_URL``. The recorder's
    :class:`~shim.base.secrets.Redactor` adds the forms each takes (escaped, encoded,
    an Unleash token's secret part alone)."""
    from shim.base.secrets import env_secrets, url_secrets

    return tuple(dict.fromkeys((*env_secrets(api_key), *url_secrets(orch_url))))


#: Why ``Shim.from_env`` gives a disabled Shim: the operation of its ``shim.error``
#: record, and what it says.
Off = tuple[str, str]


def env_config(overrides: dict[str, Any]) -> tuple[str, Off | None]:
    """The coordinator's URL for ``Shim.from_env``, with ``overrides`` completed from
    the environment (``CF_LICENSE_KEY``, ``SHIM_LOG``, ``SHIM_REGISTRY``,
    ``SHIM_ASSIGNMENTS``, ``SHIM_METRICS``; the flags from ``SHIM_FLAGS`` unless given); keyword
    arguments win; ``SHIM_JUDGE`` adds a judge (:func:`judge_from_env`). When the Shim
    must be off instead: ``("", (operation, why))``.

    ``flags_required`` (env ``SHIM_FLAGS_REQUIRED=1``) turns a missing flags source
    into a ConfigError: ``SHIM_FLAGS`` unset, or naming a file that is not there.
    Without it, unset ``SHIM_FLAGS`` disables the Shim (``flags.missing``) and a missing
    file is waited for (see :class:`~shim.flags.FileFlags`)."""
    env = os.environ
    required = overrides.pop("flags_required", None)
    if required is None:
        required = _yes_or_no("SHIM_FLAGS_REQUIRED")
    url = overrides.pop("orch_url", None) or env.get("CF_ORCH_URL")
    if not url:
        return "", (
            "configure",
            "CF_ORCH_URL is not set: task-shim is off and every wrapped call runs its "
            "legacy path; set CF_ORCH_URL to the coordinator's base URL to compare",
        )
    if "flags" not in overrides:
        if not env.get("SHIM_FLAGS"):
            if required:
                raise ConfigError(
                    [
                        Problem(
                            "environment",
                            None,
                            "SHIM_FLAGS",
                            "not set, and SHIM_FLAGS_REQUIRED is on; set it to a flags.yaml "
                            "path, or to 'unleash'",
                        )
                    ]
                )
            return "", (
                "flags.missing",
                "SHIM_FLAGS is not set: task-shim is off and every wrapped call runs its "
                "legacy path; set SHIM_FLAGS to a flags.yaml path, or to 'unleash'",
            )
        overrides["flags"] = flags_from_env(required=required)
    for key, var in (
        ("api_key", "CF_LICENSE_KEY"),
        ("log_path", "SHIM_LOG"),
        ("registry", "SHIM_REGISTRY"),
        ("assignments", "SHIM_ASSIGNMENTS"),
    ):
        if key not in overrides and env.get(var):
            overrides[key] = env[var]
    if "noise_sample" not in overrides and env.get("SHIM_NOISE_SAMPLE", "").strip():
        overrides["noise_sample"] = _share("SHIM_NOISE_SAMPLE")
    if "metrics" not in overrides and env.get("SHIM_METRICS", "").strip():
        overrides["metrics"] = metrics_from_env()
    if "judge" not in overrides and env.get("SHIM_JUDGE"):
        overrides["judge"] = judge_from_env()
    elif not env.get("SHIM_JUDGE"):
        for var in ("SHIM_JUDGE_SAMPLE", "SHIM_JUDGE_BUDGET"):
            if env.get(var, "").strip():
                raise ConfigError(
                    [
                        Problem(
                            "environment", None, var, "set, but SHIM_JUDGE (the judge task) is not"
                        )
                    ]
                )
    return url, None


def check_judge(judge: Judge | None, assignments: str | Path | None, names: ModelNames) -> None:
    """A ConfigError, naming the file, when ``judge``'s task is not in the assignments
    the Shim was given (its calls could only fail)."""
    if judge is None or assignments is None or judge.task in names.expected:
        return
    raise ConfigError(
        [
            Problem(
                str(assignments),
                None,
                judge.task,
                f"the judge task is assigned no model: add '{judge.task}: <model id>' (a text "
                "model), or give Judge a task that is there",
            )
        ]
    )


def judge_from_env() -> Judge:
    """The :class:`~shim.core.judging.Judge` ``SHIM_JUDGE`` names (its ``product.task``),
    sampling ``SHIM_JUDGE_SAMPLE`` of the pairs [0.1] within ``SHIM_JUDGE_BUDGET`` calls
    an hour [1000]."""
    env = os.environ
    settings: dict[str, Any] = {"task": env["SHIM_JUDGE"].strip()}
    for var, key, kind, what in (
        ("SHIM_JUDGE_SAMPLE", "sample", float, "a share from 0 to 1"),
        ("SHIM_JUDGE_BUDGET", "budget", int, "a whole number of calls"),
    ):
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            value = -1.0
        if not (0 <= value <= 1 if key == "sample" else value >= 0):
            raise ConfigError([Problem("environment", None, var, f"expected {what}, got {raw!r}")])
        settings[key] = value
    try:
        return Judge(**settings)
    except ValueError as exc:
        raise ConfigError([Problem("environment", None, "SHIM_JUDGE", str(exc))]) from None


def _share(var: str) -> float:
    """The share from 0 to 1 that environment variable ``var`` holds."""
    raw = os.environ[var].strip()
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigError(
            [Problem("environment", None, var, f"expected a share from 0 to 1, got {raw!r}")]
        )
    return value


#: The process's metrics served for ``SHIM_METRICS`` (one endpoint per process).
_SERVED: dict[str, PrometheusMetrics] = {}


def metrics_from_env() -> PrometheusMetrics:
    """Prometheus metrics served where ``SHIM_METRICS`` says: a port (on 127.0.0.1), or
    ``HOST:PORT`` (``0.0.0.0:9464`` for a scraper on another host), from a registry of
    their own. One endpoint per process: every Shim made from the environment counts
    on it. Workers forked from a process that served them (a pre-fork server) need an
    endpoint each: set ``SHIM_METRICS`` per worker, or serve from the parent only."""
    raw = os.environ["SHIM_METRICS"].strip()
    host, _, port = raw.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:9464
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        why = f"expected PORT or HOST:PORT, got {raw!r}"
        raise ConfigError([Problem("environment", None, "SHIM_METRICS", why)])
    where = f"{host or '127.0.0.1'}:{int(port)}"
    if where in _SERVED:
        return _SERVED[where]
    try:
        import prometheus_client

        from shim.metrics import PrometheusMetrics

        # a registry of its own: the endpoint serves the shim's metrics, and a failed
        # start leaves nothing registered in the app's default registry
        metrics = PrometheusMetrics(prometheus_client.CollectorRegistry())
        metrics.serve(int(port), addr=host or "127.0.0.1")
    except ImportError:
        why = "needs prometheus-client: pip install 'task-shim[metrics]'"
        raise ConfigError([Problem("environment", None, "SHIM_METRICS", why)]) from None
    except OSError as exc:
        why = f"cannot serve /metrics on {host or '127.0.0.1'}:{port}: {exc.strerror or exc}"
        raise ConfigError([Problem("environment", None, "SHIM_METRICS", why)]) from None
    _SERVED[where] = metrics
    return metrics


def _yes_or_no(var: str) -> bool:
    value = os.environ.get(var, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError([Problem("environment", None, var, "expected 1 or 0 (true or false)")])


def flags_from_env(*, required: bool = False) -> flagpkg.FlagSource:
    """The flag source ``SHIM_FLAGS`` names: a flags.yaml path, or ``unleash`` (with
    ``UNLEASH_URL``, ``UNLEASH_API_TOKEN``, ``UNLEASH_APP_NAME``,
    ``UNLEASH_REFRESH_INTERVAL``). A flags.yaml that is not there is waited for (every
    task off until it appears) unless ``required``."""
    value = os.environ.get("SHIM_FLAGS", "")
    if not value:
        raise ConfigError(
            [Problem("environment", None, "SHIM_FLAGS", "not set; set it to a flags.yaml path")]
        )
    if value != "unleash":
        return flagpkg.FileFlags(value, required=required)
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
