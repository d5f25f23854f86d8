"""Helpers for decorator tests: a Shim on the simulator, its log, and sync/async drivers."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shim import Shim, flags

from .conftest import KIWI


def write_flags(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def make_shim(url: str, tmp_path: Path, flag_text: str, **kw: Any) -> Shim:
    """A Shim over the simulator with kiwi's registry and a log in ``tmp_path``."""
    source = flags.FileFlags(write_flags(tmp_path / "flags.yaml", flag_text), poll_interval=0.05)
    kw.setdefault("log_path", tmp_path / "log.jsonl")
    kw.setdefault("registry", KIWI / "orch" / "model_registry.yaml")
    kw.setdefault("assignments", KIWI / "orch" / "assignments.yaml")
    shim = Shim(url, flags=source, **kw)
    shim._owns_flags = True
    return shim


def records(path: Path, event: str | None = "shim.comparison") -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if event is None or r["event"] == event]


def log_rows(text: str) -> tuple[list[dict[str, Any]], int]:
    """The records of a log's text, and how many of its lines are not records."""
    rows, bad = [], 0
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            bad += 1
    return rows, bad


def dropped(path: Path, reason: str | None = None) -> int:
    return sum(
        r["count"] for r in records(path, "shim.dropped") if reason is None or r["reason"] == reason
    )


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait on the thing itself, with a deadline; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - started


class Driver:
    """Runs the same scenario through a sync or an async call site."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def wrap(self, shim: Shim, body: Callable[..., Any], **shadow: Any) -> Callable[..., Any]:
        shadow.setdefault("product", "kiwi")
        shadow.setdefault("task", "meal_plan")
        shadow.setdefault("request", lambda *a, **k: __import__("shim").TaskRequest(prompt="x"))
        if self.kind == "sync":

            def site(*args: Any, **kwargs: Any) -> Any:
                return body(*args, **kwargs)
        else:

            async def site(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                return body(*args, **kwargs)

        # The call site takes what the body takes: the decorator checks its options
        # against this signature.
        site.__signature__ = inspect.signature(body)  # type: ignore[attr-defined]
        return shim.shadow(**shadow)(site)

    def run(
        self,
        shim: Shim,
        wrapped: Callable[..., Any],
        calls: Iterable[tuple[Any, ...]],
        *,
        close: bool = True,
    ) -> list[Any]:
        """Call ``wrapped`` with each args tuple; results or raised exceptions, in order.
        Then close the shim (draining) unless ``close=False``."""
        calls = list(calls)
        if self.kind == "sync":
            out = [_outcome(lambda a=a: wrapped(*a)) for a in calls]
            if close:
                shim.close(timeout=30)
            return out

        async def main() -> list[Any]:
            results = []
            for args in calls:
                try:
                    results.append(await wrapped(*args))
                except Exception as exc:
                    results.append(exc)
            if close:
                await shim.aclose(timeout=30)
            return results

        return asyncio.run(main())


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        return exc


@contextmanager
def running_sim(*args: str) -> Iterator[str]:
    """``shim sim --port 0 ARGS`` in its own process; yields its first line."""
    with subprocess.Popen(
        [sys.executable, "-m", "shim", "sim", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            yield proc.stdout.readline().strip()
        finally:
            proc.terminate()
            proc.wait(10)
