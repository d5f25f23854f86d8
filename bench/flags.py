"""What one flag decision costs the caller, backend by backend, side by side in one run.

    python bench/flags.py            # 200,000 decisions per backend (~40 s)
    python bench/flags.py --quick    # 20,000, for CI

Every backend decides the same task (serve 10 %, shadow 50 %) for the same sticky ids,
in alternating blocks so all see the same machine:

- ``FileFlags``: a flags.yaml;
- ``UnleashFlags``: the flags fetched from a stand-in Unleash server (a local HTTP
  server answering ``/api/client/features``), decided by the compiled rules;
- ``OpenFeatureFlags``, Unleash provider: the same server through the official
  OpenFeature provider (``openfeature-provider-unleash``), each call two evaluations;
- ``OpenFeatureFlags``, in-memory provider: the OpenFeature SDK's own share;
- ``UnleashClient.is_enabled``: the SDK asked for one flag, as an anchor.

Each figure is the median of the blocks' mean time per decision, in microseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shim import flags

TASK, SERVE, SHADOW = "kiwi.meal_plan", 10, 50


def feature(name: str, percent: int) -> dict[str, Any]:
    parameters = {"rollout": str(percent), "stickiness": "default", "groupId": name}
    strategy = {"name": "flexibleRollout", "parameters": parameters}
    return {"name": name, "enabled": True, "type": "release", "strategies": [strategy]}


FEATURES = [feature(f"{TASK}.serve", SERVE), feature(f"{TASK}.shadow", SHADOW)]


@contextmanager
def unleash_server() -> Iterator[str]:
    """A stand-in Unleash server: the features, and 202 for registration and metrics."""
    body = json.dumps({"version": 1, "features": FEATURES}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def wait_until(ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/flags.py: {what} never got the flags")
        time.sleep(0.05)


def deciders(url: str, tmp: Path) -> tuple[dict[str, Callable[[str], Any]], list[Any]]:
    from openfeature import api
    from openfeature.contrib.provider.unleash import UnleashProvider
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    path = tmp / "flags.yaml"
    path.write_text(f"{TASK}: {{serve: {SERVE}, shadow: {SHADOW}}}\n")
    file_flags = flags.FileFlags(path)
    unleash = flags.UnleashFlags(url=url, api_token="bench-token")
    wait_until(lambda: TASK in unleash.rules.active, "UnleashFlags")

    domain = f"bench-{uuid.uuid4().hex[:8]}"
    provider = UnleashProvider(url=url, app_name="task-shim-bench", api_token="bench-token")
    api.set_provider(provider, domain=domain)
    by_unleash = flags.OpenFeatureFlags(api.get_client(domain=domain), [TASK])
    wait_until(
        lambda: any(by_unleash.decide(TASK, f"u{i}").compare for i in range(50)),
        "OpenFeatureFlags (Unleash provider)",
    )
    on_off = {"on": True, "off": False}
    memory = InMemoryProvider(
        {f"{TASK}.serve": InMemoryFlag("off", on_off), f"{TASK}.shadow": InMemoryFlag("on", on_off)}
    )
    api.set_provider(memory, domain=domain + "-memory")
    in_memory = flags.OpenFeatureFlags(api.get_client(domain=domain + "-memory"), [TASK])

    sdk = provider.client
    shadow_flag = flags.shadow_flag(TASK)
    backends: dict[str, Callable[[str], Any]] = {
        "FileFlags": lambda sticky: file_flags.decide(TASK, sticky),
        "UnleashFlags": lambda sticky: unleash.decide(TASK, sticky),
        "OpenFeatureFlags (Unleash provider)": lambda sticky: by_unleash.decide(TASK, sticky),
        "OpenFeatureFlags (in-memory provider)": lambda sticky: in_memory.decide(TASK, sticky),
        "UnleashClient.is_enabled (one flag)": lambda sticky: sdk.is_enabled(
            shadow_flag, {"userId": sticky}
        ),
    }
    return backends, [file_flags, unleash, by_unleash, in_memory, provider, memory]


def measure(backends: dict[str, Callable[[str], Any]], decisions: int) -> dict[str, Any]:
    ids = [f"user-{i}" for i in range(10_000)]
    block = 2_000
    means: dict[str, list[float]] = {name: [] for name in backends}
    for start in range(0, decisions, block):
        chunk = [ids[(start + i) % len(ids)] for i in range(block)]
        for name, decide in backends.items():
            t0 = time.perf_counter_ns()
            for sticky in chunk:
                decide(sticky)
            means[name].append((time.perf_counter_ns() - t0) / block / 1000)
    file_us = statistics.median(means["FileFlags"])
    return {
        name: {
            "median_us": round(statistics.median(m), 3),
            "ratio_to_file": round(statistics.median(m) / file_us, 1),
            "blocks": len(m),
        }
        for name, m in means.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 decisions per backend")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    decisions = 20_000 if args.quick else 200_000
    with unleash_server() as url, tempfile.TemporaryDirectory() as tmp:
        backends, closers = deciders(url, Path(tmp))
        try:
            for decide in backends.values():  # warm up
                for i in range(500):
                    decide(f"warm-{i}")
            results = measure(backends, decisions)
        finally:
            for thing in closers:
                (getattr(thing, "close", None) or thing.shutdown)()
    print(f"{decisions:,} decisions per backend ({TASK}: serve {SERVE} %, shadow {SHADOW} %)")
    for name, r in results.items():
        print(f"  {name:40} {r['median_us']:8.2f} us   {r['ratio_to_file']:6.1f}x FileFlags")
    figures = {"decisions": decisions, "task": TASK, "backends": results}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
