"""TaskClient over the transport production sync calls use (its own HTTP/1.1, not an
httpx handler), against the simulator and scripted servers on real sockets: output and
allocation answers, node completion and release, the coordinator's errors, keep-alive
reuse (counted by a TCP proxy in front of the simulator), stale connections, chunked
replies, and the key kept to the coordinator's origin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shim import AsyncTaskClient, OrchConfig, TaskClient, TaskFailed, TaskNotRegistered, TaskRequest
from shim.sim import Simulator

from .conftest import QUIET
from .wirekit import Kit, Scripted

METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ")


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of ``port`` that counts the connections it is
    given. With ``cut`` set, a connection that already carried a request is closed when
    the next one arrives, unforwarded: a server that closed an idle connection while a
    request was on its way."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.connections = 0
        self.cuts = 0
        self.cut = False
        self._sockets: list[socket.socket] = []
        self._pumps: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets += [conn, upstream]
            for args in ((conn, upstream, True), (upstream, conn, False)):
                self._pumps.append(threading.Thread(target=self._pump, args=args, daemon=True))
                self._pumps[-1].start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        carried = 0
        try:
            while data := source.recv(65536):
                if requests and data.startswith(METHODS):
                    if self.cut and carried:
                        self.cuts += 1
                        return
                    carried += 1
                sink.sendall(data)
        except OSError:
            pass
        finally:  # shut down, not just closed: that wakes the other pump's recv
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        """Stop listening and end every connection; the proxy's threads are gone on
        return (a shutdown wakes a thread blocked in accept or recv; a close may not)."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for pump in self._pumps:
            pump.join(5)
        assert not self._thread.is_alive(), "the accept thread ended"
        assert not any(pump.is_alive() for pump in self._pumps), "every pump ended"


@pytest.fixture
def proxy(sim: Simulator) -> Iterator[Proxy]:
    proxy = Proxy(int(sim.url.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


@pytest.fixture
def client(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[TaskClient]:
    """A TaskClient on its own HTTP/1.1 (no proxy in the environment to hand it to
    httpx), through the counting proxy to the simulator."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    with TaskClient(proxy.url, timeout=5) as client:
        assert client._wire is not None, "the client must speak its own HTTP/1.1 here"
        yield client


def test_output_answers_share_one_connection(client: TaskClient, proxy: Proxy) -> None:
    for _ in range(5):
        plan = client.infer("kiwi", "meal_plan", TaskRequest(prompt="plan"))
        assert isinstance(plan.output, str) and json.loads(plan.text)[0]["suggestion"]
    receipt = client.infer("kiwi", "ocr", TaskRequest(payload={"image_b64": "AAAA"}))
    assert isinstance(receipt.output, dict) and "merchant" in receipt.output
    assert proxy.connections == 1


@pytest.mark.parametrize(
    ("task", "images"),
    [("meal_plan", ()), ("barcode_scan", ("iVBORw0KGgo=",)), ("ocr", ("iVBORw0KGgo=",))],
)
def test_allocations_are_completed_on_the_node_and_released(
    client: TaskClient,
    proxy: Proxy,
    sim: Simulator,
    kiwi_config: OrchConfig,
    task: str,
    images: tuple[str, ...],
) -> None:
    for _ in range(3):
        result = client.infer("kiwi", task, TaskRequest(prompt="p", mode="allocate", images=images))
        resolved = kiwi_config.resolve(f"kiwi.{task}")
        assert resolved is not None and result.model == resolved.model
        assert result.text and result.allocation_id
    alloc = client.allocate("kiwi", task)
    assert sim.stats()["allocations_active"] == 1
    client.release("kiwi", task, alloc)
    assert sim.stats()["allocations_active"] == 0, "every allocation was released"
    assert proxy.connections == 1, "coordinator and node (its own origin): one connection"


def test_the_coordinators_errors(
    client: TaskClient, proxy: Proxy, sim: Simulator, kiwi_config: OrchConfig
) -> None:
    with pytest.raises(TaskNotRegistered) as unknown:
        client.infer("kiwi", "soup", TaskRequest(prompt="x"))
    assert unknown.value.status == 404
    for status in (429, 503, 500):
        sim.set_profile(
            QUIET.with_knob("defaults", "error_rate", 1.0).with_knob(
                "defaults", "error_status", status
            )
        )
        with pytest.raises(TaskFailed, match=f"coordinator answered {status}") as caught:
            client.infer("kiwi", "meal_plan", TaskRequest(prompt="x"))
        assert caught.value.status == status
    sim.set_profile(QUIET)
    assert client.infer("kiwi", "meal_plan", TaskRequest(prompt="x")).text
    assert proxy.connections == 1, "an error reply leaves the connection usable"
    with Simulator(kiwi_config, QUIET, require_key="s3cret") as locked:
        with TaskClient(locked.url, api_key="wrong") as wrong:
            with pytest.raises(TaskFailed, match="coordinator answered 401") as refused:
                wrong.infer("kiwi", "meal_plan", TaskRequest(prompt="x"))
            assert refused.value.status == 401
        with TaskClient(locked.url, api_key="s3cret") as right:
            assert right.infer("kiwi", "ocr", TaskRequest(mode="allocate")).model


def test_a_connection_closed_as_a_request_arrives_is_retried(
    client: TaskClient, proxy: Proxy, sim: Simulator
) -> None:
    client.infer("kiwi", "meal_plan", TaskRequest(prompt="x"))
    proxy.cut = True
    for _ in range(4):
        assert client.infer("kiwi", "meal_plan", TaskRequest(prompt="x")).text
        assert client.infer("kiwi", "ocr", TaskRequest(mode="allocate")).text
    assert proxy.cuts >= 4, "each connection was cut at its second request"
    assert sim.stats()["allocations_active"] == 0


def chunked(payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    half = len(body) // 2
    chunks = f"{half:x}\r\n".encode() + body[:half] + b"\r\n"
    chunks += f"{len(body) - half:X};part=2\r\n".encode() + body[half:] + b"\r\n0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks


def coordinator(kit: Kit, node_url: Any, *, chunk: bool = False) -> Scripted:
    """A coordinator granting an allocation on ``node_url(coordinator's port)`` (or
    answering output, for ``"output"`` in the prompt), whose node is itself."""

    def answer(i: int, request: bytes) -> bytes:
        line = request.split(b"\r\n", 1)[0]
        if line.startswith(b"DELETE "):
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if line.startswith(b"POST /api/inference/task "):
            if b'"output' in request:
                payload: Any = {"output": {"ok": True}, "model": "m"}
            else:
                payload = {
                    "url": node_url(server.port),
                    "allocation_id": "a-1",
                    "service": "cf-text",
                }
        elif b"/v1/models" in line:
            payload = {"data": [{"id": "m"}]}
        else:
            payload = {"model": "m", "choices": [{"message": {"content": "done"}}]}
        if chunk:
            return chunked(payload)
        body = json.dumps(payload).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    server = kit.serve(answer)
    return server


@pytest.fixture
def kit() -> Iterator[Kit]:
    kit = Kit()
    yield kit
    kit.close()


def test_chunked_replies_from_coordinator_and_node(kit: Kit) -> None:
    server = coordinator(kit, lambda port: f"http://127.0.0.1:{port}/node", chunk=True)
    with TaskClient(f"http://127.0.0.1:{server.port}") as client:
        assert client.infer("kiwi", "t", TaskRequest(prompt="output")).output == {"ok": True}
        result = client.infer("kiwi", "t", TaskRequest(prompt="p"))
    assert (result.output, result.model, result.allocation_id) == ("done", "m", "a-1")
    assert server.connections == 1, "chunked replies end where they say: the connection stays"


@pytest.mark.parametrize(
    "node",
    [
        "http://127.0.0.1:{node}",
        "http://127.0.0.1:{orch}@127.0.0.1:{node}",  # names the coordinator as a user
        "http://localhost:{node}",
        "HTTP://127.0.0.1:{node}/",
    ],
)
def test_the_key_never_reaches_a_node_on_another_origin(kit: Kit, node: str) -> None:
    """The key goes to a node only on the coordinator's own origin, judged on the URL
    the request is sent to, over the real transport."""
    node_server = kit.serve(lambda i, _: b'HTTP/1.1 200 OK\r\nContent-Length: 47\r\n\r\n'
                            b'{"choices": [{"message": {"content": "done"}}]}')  # fmt: skip
    orch = coordinator(kit, lambda port: node.format(orch=port, node=node_server.port))
    with TaskClient(f"http://127.0.0.1:{orch.port}", api_key="s3cret") as client:
        result = client.infer("kiwi", "t", TaskRequest(prompt="p"))
    assert result.output == "done"
    assert node_server.requests, "the node was called"
    assert not [r for r in node_server.requests if b"s3cret" in r]
    keyed = [r.split(b" ", 2)[:2] for r in orch.requests if b"Bearer s3cret" in r]
    assert keyed == [
        [b"POST", b"/api/inference/task"],
        [b"DELETE", b"/api/services/cf-text/allocations/a-1"],
    ]


def test_a_node_on_the_coordinators_origin_gets_the_key(kit: Kit) -> None:
    orch = coordinator(kit, lambda port: f"http://127.0.0.1:{port}/nodes/n/a/a-1")
    with TaskClient(f"http://127.0.0.1:{orch.port}", api_key="s3cret") as client:
        client.infer("kiwi", "t", TaskRequest(prompt="p"))
    assert all(b"Bearer s3cret" in r for r in orch.requests)
    assert any(b"/nodes/n/a/a-1/v1/chat/completions" in r for r in orch.requests)


def test_clients_build_no_tls_context_they_do_not_need(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TaskClient on its own HTTP/1.1 built an httpx client as well, never used, and
    with it a TLS context (~20 ms, per client and again after a fork); each
    AsyncTaskClient built its own. Now: none until a connection needs one, then one
    per process."""
    built: list[object] = []
    real = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    for _ in range(3):
        TaskClient("https://127.0.0.1:1").close()
    assert built == []
    for _ in range(3):
        asyncio.run(AsyncTaskClient("https://127.0.0.1:1").aclose())
    assert len(built) <= 1, "the process's default context, built once"
