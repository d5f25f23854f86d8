"""Run the simulator on a real socket: in a background thread, or in the foreground."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import uvicorn

from shim.base.orch import OrchConfig

from ._app import SimState, create_app
from ._profile import Profile

__all__ = ["Simulator", "serve"]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server(
    config: OrchConfig, profile: Profile | None, require_key: str | None, product_key: str | None
) -> tuple[uvicorn.Server, SimState]:
    app = create_app(config, profile, require_key=require_key, product_key=product_key)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
            backlog=2048,
        )
    )
    return server, app.state.sim


class Simulator:
    """The cf-orch simulator on 127.0.0.1 in a background thread.

    ::

        with Simulator() as sim:            # kiwi's embedded assignments and registry
            client = TaskClient(sim.url)

    ``port=0`` picks a free port; ``url`` tells which. ``set_profile`` changes the
    knobs while it runs; ``stats()`` returns its counters. ``require_key`` makes every
    route but ``/health`` and the stream URL want ``Authorization: Bearer KEY``;
    ``product_key`` is the only key ``/proxy/authorize`` takes (None: any non-empty).
    """

    def __init__(
        self,
        config: OrchConfig | None = None,
        profile: Profile | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        require_key: str | None = None,
        product_key: str | None = None,
    ) -> None:
        self._server, self._state = _server(
            config or OrchConfig.default(), profile, require_key, product_key
        )
        self._host, self._port = host, port
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self, timeout: float = 10.0) -> Self:
        """Bind, start serving, and return once the server accepts requests."""
        sock = _bind(self._host, self._port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="shim-sim", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start on {self.url} within {timeout} s")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; requests still hanging are cut after one second."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._thread = None

    def set_profile(self, profile: Profile) -> None:
        """Use these knobs from the next request on."""
        self._state.set_profile(profile)

    def reset(self, profile: Profile) -> int:
        """Use ``profile`` and forget active allocations and stream grants (an answer the
        client could not read leaves one behind): a clean slate between runs. Returns
        how many allocations were forgotten."""
        self._state.set_profile(profile)
        return self._state.forget_allocations()

    @property
    def profile(self) -> Profile:
        """The knobs in force."""
        return self._state.profile

    def stats(self) -> dict[str, Any]:
        """Request, fault and allocation counters."""
        return self._state.snapshot()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    config: OrchConfig,
    profile: Profile | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    require_key: str | None = None,
    product_key: str | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve in the foreground until interrupted; ``announce`` gets the listening line
    before the first request can arrive."""
    server, _ = _server(config, profile, require_key, product_key)
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    announce(f"listening on http://{bound_host}:{bound_port}")
    server.run(sockets=[sock])
