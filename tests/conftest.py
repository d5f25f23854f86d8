"""Shared fixtures: the simulator on a real 127.0.0.1 socket, and sync/async clients."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim import AsyncTaskClient, OrchConfig, TaskClient, TaskRequest, TaskResult
from shim.sim import Profile, Simulator

KIWI = Path(__file__).resolve().parent.parent / "examples" / "kiwi"

#: The license key tests hand to the shim; no record the suite writes may contain it.
SECRET = "cf-lic-7f3a9c2e5b1d"

#: No waiting, no faults: tests that want knobs set them.
QUIET = Profile(seed=1, defaults={"latency_ms": 0, "latency_p99_ms": 0})


@pytest.fixture(scope="session", autouse=True)
def _no_record_carries_a_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite: every log any test wrote (in-process or by a subprocess,
    under the session's temporary directory) is free of the secrets the suite used."""
    yield
    tokens = [os.environ.get(k, "") for k in ("UNLEASH_API_TOKEN", "UNLEASH_ADMIN_TOKEN")]
    secrets = {SECRET, *(t for t in tokens if t), *(t.rsplit(".", 1)[-1] for t in tokens if t)}
    found = []
    for folder, _, files in os.walk(tmp_path_factory.getbasetemp()):  # symlinks not followed
        for name in files:
            if name.endswith(".jsonl"):
                text = Path(folder, name).read_text(errors="replace")
                found += [f"{folder}/{name}: {s[:6]}..." for s in secrets if s in text]
    assert not found, f"secrets in records: {found}"


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
