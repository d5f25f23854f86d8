"""Shared fixtures: the simulator on a real 127.0.0.1 socket, and sync/async clients."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim import AsyncTaskClient, OrchConfig, TaskClient, TaskRequest, TaskResult
from shim.base.secrets import Redactor
from shim.sim import Profile, Simulator

KIWI = Path(__file__).resolve().parent.parent / "examples" / "kiwi"

#: The license key tests hand to the shim; no record the suite writes may contain it.
SECRET = "cf-lic-7f3a9c2e5b1d"
#: More secrets tests hand over (a password in a URL, an Unleash admin token): the
#: after-suite scan looks for them too.
URL_PASSWORD = "h1-url-pass-8c2d"
ADMIN_TOKEN = "*:*.h1-admin-secret-4f9e2a"

#: No waiting, no faults: tests that want knobs set them.
QUIET = Profile(seed=1, defaults={"latency_ms": 0, "latency_p99_ms": 0})


# A URL whose password was not redacted (matched from "://" on, possessively: linear).
_URL_PASSWORD = re.compile(r"://[^\s/?#@:\"'\\<>]*+:(?!\[redacted\]@)[^\s/?#@\"'\\<>]++@")
# What the suite's captured output (stdout, stderr, logs) leaked, test by test.
_OUTPUT_LEAKS: dict[str, list[str]] = {}
#: The characters of a secret that, side by side, count as a leak of it.
_SLICE = 12


def _secrets() -> list[str]:
    tokens = [os.environ.get(k) for k in ("UNLEASH_API_TOKEN", "UNLEASH_ADMIN_TOKEN")]
    return [s for s in (SECRET, URL_PASSWORD, ADMIN_TOKEN, *tokens) if s]


def _leaks(text: str) -> list[str]:
    """The secrets the suite uses found in ``text``: in any form the shim's redaction
    knows (escaped, percent-encoded, an Unleash token's secret part); any
    ``_SLICE`` characters of one side by side, as written (what a cut before the
    redaction leaves, found without asking the redaction); and unredacted URL
    passwords. Each named by its first characters only."""
    secrets = _secrets()
    found = [f"{form[:4]}..." for form in Redactor(secrets).forms if form in text]
    slices = {s[i : i + _SLICE] for s in secrets for i in range(len(s) - _SLICE + 1)}
    found += [f"{piece[:4]}... ({_SLICE} characters)" for piece in sorted(slices) if piece in text]
    return found + [f"{m.group()[:12]}..." for m in _URL_PASSWORD.finditer(text)]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Note a passing or failing test whose captured output carries a secret (CLI
    output, log lines, warnings); the after-suite check fails on it."""
    text = "\n".join(content for _, content in report.sections)
    found = _leaks(text) if text else []
    if found:
        _OUTPUT_LEAKS.setdefault(report.nodeid, []).extend(found)


@pytest.fixture(scope="session", autouse=True)
def _no_record_carries_a_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite: every log any test wrote (in-process or by a subprocess,
    under the session's temporary directory) and every test's captured output is free
    of the secrets the suite used, in every form, of any 12 of their characters side by
    side, and of URL passwords."""
    yield
    found = []
    for folder, _, files in os.walk(tmp_path_factory.getbasetemp()):  # symlinks not followed
        for name in files:
            if name.endswith(".jsonl"):
                text = Path(folder, name).read_text(errors="replace")
                found += [f"{folder}/{name}: {leak}" for leak in _leaks(text)]
    assert not found, f"secrets in records: {found}"
    assert not _OUTPUT_LEAKS, f"secrets in captured output: {_OUTPUT_LEAKS}"


def _unleash_healthy(url: str) -> bool:
    try:
        answer = httpx.get(f"{url.rstrip('/').removesuffix('/api')}/health", timeout=2)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and "GOOD" in answer.text


@pytest.fixture(autouse=True)
def _unleash_server_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test of the suite's Unleash server finds it up. The server has gone away
    mid-run (its node process and PostgreSQL both stopped, as by another run's
    `unleash.sh stop` when runs shared the fixed ports; scripts/with-unleash.sh now
    gives each run ports of its own); should it happen again it is started again, and
    that is said in the run's output, rather than every later Unleash test failing.
    A server that goes down during a test is said too, with the last lines of its log
    (the whole logs of a finished run are in .cache/unleash/last-run/)."""
    url = os.environ.get("UNLEASH_URL")
    if not url or "unleash" not in request.node.nodeid.lower():
        yield
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str) -> None:
        if reporter is not None:  # in the run's output, not only in a passing test's capture
            reporter.write_line(line)
        sys.stderr.write(line + "\n")

    if not _unleash_healthy(url):
        say(
            "conftest: the suite's Unleash server is down; starting it again "
            f"(before {request.node.nodeid})"
        )
        script = Path(__file__).resolve().parent.parent / "scripts" / "unleash.sh"
        subprocess.run([str(script), "start"], check=True, capture_output=True, timeout=300)
    yield
    if not _unleash_healthy(url):
        port = os.environ.get("UNLEASH_PORT", "44242")
        log = (
            Path(__file__).resolve().parent.parent
            / ".cache"
            / "unleash"
            / f"run-{port}"
            / "unleash.log"
        )
        tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
        say(
            f"conftest: the Unleash server went down during {request.node.nodeid}; "
            f"the last lines of {log}:"
        )
        for line in tail:
            say("  " + line)


@pytest.fixture(scope="session")
def kiwi_config() -> OrchConfig:
    return OrchConfig(KIWI / "orch" / "assignments.yaml", KIWI / "orch" / "model_registry.yaml")


@pytest.fixture(scope="session")
def _session_sim(kiwi_config: OrchConfig) -> Iterator[Simulator]:
    with Simulator(kiwi_config, QUIET) as sim:
        yield sim


@pytest.fixture
def sim(_session_sim: Simulator) -> Iterator[Simulator]:
    """The shared simulator, reset to the quiet profile after each test."""
    yield _session_sim
    _session_sim.reset(QUIET)


Infer = Callable[..., TaskResult]
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(params=["sync", "async"])
def infer(request: pytest.FixtureRequest) -> Infer:
    """``infer(url, product, task, TaskRequest, **client_options)`` through the sync or
    the async client, so every client scenario runs on both. ``handler=`` swaps the
    network for an ``httpx.MockTransport`` handler, for replies no server gives."""

    def sync(
        url: str,
        product: str,
        task: str,
        req: TaskRequest,
        *,
        handler: Handler | None = None,
        **kw: Any,
    ) -> TaskResult:
        if handler is not None:
            kw["http"] = httpx.Client(transport=httpx.MockTransport(handler))
        with TaskClient(url, **kw) as client:
            return client.infer(product, task, req)

    def async_(
        url: str,
        product: str,
        task: str,
        req: TaskRequest,
        *,
        handler: Handler | None = None,
        **kw: Any,
    ) -> TaskResult:
        async def run() -> TaskResult:
            if handler is not None:
                kw["http"] = httpx.AsyncClient(transport=httpx.MockTransport(handler))
            async with AsyncTaskClient(url, **kw) as client:
                return await client.infer(product, task, req)

        return asyncio.run(run())

    return sync if request.param == "sync" else async_
