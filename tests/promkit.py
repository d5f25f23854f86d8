"""A real Prometheus server for the fleet tests: the Debian package's binary (installed
by scripts/ensure-prometheus.sh under `make test`), started on 127.0.0.1 with its data in
a temporary folder, scraping the ports a test names, stopped and deleted afterwards."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

SCRAPE_MS = 500

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="needs the prometheus binary: run through `make test` (scripts/ensure-prometheus.sh)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A running server: its URL."""

    def __init__(self, url: str) -> None:
        self.url = url

    def up(self) -> dict[str, float]:
        """Each target's ``up`` value, by instance."""
        with urllib.request.urlopen(f"{self.url}/api/v1/query?query=up", timeout=5) as r:
            found = json.load(r)["data"]["result"]
        return {item["metric"]["instance"]: float(item["value"][1]) for item in found}


@contextmanager
def prometheus_server(ports: Sequence[int]) -> Iterator[Prometheus]:
    """Prometheus scraping ``127.0.0.1:PORT/metrics`` for each port every
    :data:`SCRAPE_MS` ms."""
    folder = Path(tempfile.mkdtemp(prefix="shim-prometheus-"))
    config = folder / "prometheus.yml"
    targets = json.dumps([f"127.0.0.1:{p}" for p in ports])
    config.write_text(
        f"global: {{scrape_interval: {SCRAPE_MS}ms, scrape_timeout: {SCRAPE_MS}ms}}\n"
        "scrape_configs:\n"
        f"  - {{job_name: kiwi, static_configs: [{{targets: {targets}}}]}}\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(folder / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "prometheus did not start: " + (folder / "prometheus.log").read_text()[-2000:]
                )
            time.sleep(0.1)
        server = Prometheus(url)
        # targets reach the scrape loop through service discovery, which passes its
        # updates on every 5 s: wait until each one is known
        while len(server.up()) < len(ports):
            if time.monotonic() > deadline + 30:
                raise RuntimeError(f"prometheus never listed its targets: {server.up()}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
