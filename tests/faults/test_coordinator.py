"""A misbehaving coordinator, in shadow and in serve stage, from sync and async call
sites: the caller always gets legacy's own result, every call is a record or a counted
drop, the breaker opens and probes, and tasks and memory come back (threads: conftest)."""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shim import Backoff, BreakerPolicy, Shim, Timeouts

from ..shimkit import Driver, make_shim, records
from .conftest import Row
from .misbehave import OUTPUT, Misbehaving, free_port

TIMEOUT = 0.4
BREAKER = BreakerPolicy(failures=3, cooldown=0.3)
BACKOFF = Backoff(initial=0.1, maximum=0.3)  # a full coordinator (429/503) in shadow
CALLS = 24

#: name: (fault, parameters, what the comparison record's candidate error says)
SHADOW_FAULTS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "coordinator down": ("down", {}, r"ConnectError"),
    "connection reset on accept": (
        "refuse",
        {},
        r"RemoteProtocolError|ReadError|WriteError|ConnectError",
    ),
    "slow (1 s, past the timeout)": ("slow", {"delay": 1.0}, r"no answer within 0.4 s"),
    "hanging": ("hang", {}, r"no answer within 0.4 s"),
    "5xx burst (6 x 503)": ("burst", {"count": 6}, r"coordinator answered 503"),
    "404 task not registered": ("status", {"status": 404}, r"TaskNotRegistered"),
    "401 unauthorised": ("status", {"status": 401}, r"coordinator answered 401"),
    "malformed JSON": ("malformed", {}, r"malformed JSON"),
    "truncated JSON": ("truncated", {}, r"RemoteProtocolError"),
    "reset mid-body": ("reset", {}, r"RemoteProtocolError|ReadError"),
    "slow drip (a byte / 50 ms)": ("drip", {"delay": 0.05}, r"no answer within 0.4 s"),
    "node completion fails": ("node_fails", {}, r"node node-x answered 500"),
    "allocation release fails": ("release_fails", {}, None),
    "bad framing (Content-Length: \u00b2)": ("bad_framing", {}, r"RemoteProtocolError"),
    "hostile allocation id (../../../admin/keys)": ("hostile_id", {}, None),
}
#: Where the release of the allocation ``../../../admin/keys`` goes: its own segment.
HOSTILE_RELEASE = "/api/services/cf-text/allocations/..%2F..%2F..%2Fadmin%2Fkeys"
SERVE_FAULTS = ("coordinator down", "hanging", "5xx burst (6 x 503)", "reset mid-body")


class Legacy:
    """The legacy call site: a fresh object per call, and every fourth call raises."""

    def __init__(self) -> None:
        self.made: dict[int, Any] = {}

    def __call__(self, i: int) -> Any:
        if i % 4 == 3:
            error = ValueError(f"legacy failure {i}")
            self.made[i] = error
            raise error
        self.made[i] = out = {"plan": i}
        return out


class Run:
    """One scenario: a shim on ``url``, a wrapped call site, and what callers saw."""

    def __init__(self, kind: str, url: str, tmp_path: Path, flag: str) -> None:
        self.log = tmp_path / "log.jsonl"
        self.legacy = Legacy()
        self.shim: Shim = make_shim(
            url,
            tmp_path,
            flag,
            timeouts=Timeouts(serve=TIMEOUT, shadow=TIMEOUT),
            breaker=BREAKER,
            backoff=BACKOFF,
        )
        self.site = Driver(kind).wrap(self.shim, self.legacy)
        self.got: dict[int, Any] = {}
        self.slowest = 0.0
        self.n = 0

    async def call(self) -> Any:
        i, self.n = self.n, self.n + 1
        started = time.perf_counter()
        try:
            out = self.site(i)
            if inspect.isawaitable(out):
                out = await out
        except Exception as exc:
            out = exc
        self.slowest = max(self.slowest, time.perf_counter() - started)
        self.got[i] = out
        return out

    def legacy_unaffected(self, served: Callable[[Any], bool] = lambda _: False) -> int:
        """Every call got legacy's own object (or raised its own exception), unless the
        task path served it; returns how many legacy raised."""
        for i, out in self.got.items():
            assert served(out) or out is self.legacy.made[i], f"call {i} got {out!r}"
        return sum(isinstance(self.legacy.made.get(i), Exception) for i in self.got)

    def accounted(self) -> tuple[list[dict[str, Any]], Counter[str]]:
        """Comparison records and counted drops, which together are every call."""
        rows = records(self.log)
        drops: Counter[str] = Counter()
        for r in records(self.log, "shim.dropped"):
            drops[r["reason"]] += r["count"]
        return rows, drops

    async def close(self) -> None:
        await self.shim.aclose(timeout=10)


async def _scenario(kind: str, name: str, tmp_path: Path, fault_row: Row, *, serve: bool) -> None:
    runs: list[Run] = []
    try:
        await _faulty(kind, name, tmp_path, fault_row, serve=serve, runs=runs)
    finally:
        for run in runs:  # closed even when an assertion failed (closing twice is a no-op)
            await run.close()


async def _faulty(
    kind: str, name: str, tmp_path: Path, fault_row: Row, *, serve: bool, runs: list[Run]
) -> None:
    fault, params, error = SHADOW_FAULTS[name]
    port = free_port()
    server = None if fault == "down" else Misbehaving(port)
    if server:
        server.set(fault, **params)
    tasks = len(asyncio.all_tasks())
    flag = "kiwi.meal_plan: {serve: 100}\n" if serve else "kiwi.meal_plan: {shadow: 100}\n"
    run = Run(kind, f"http://127.0.0.1:{port}", tmp_path, flag)
    runs.append(run)
    tracemalloc.start()
    try:  # three rounds: the first warms up (lazy imports, pools); then memory stays flat
        traced = []
        for _ in range(3):
            for _ in range(CALLS // 3):
                await run.call()
            await run.shim.aflush(10)
            traced.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    grew = traced[2] - traced[0]
    raised = run.legacy_unaffected()
    assert grew < 256 * 1024, f"memory grew {grew} bytes over {2 * CALLS // 3} failing calls"
    if serve:
        assert run.slowest < TIMEOUT + 0.5, "a failing task path falls back within the timeout"
    else:
        # Waiting for the task path would take its whole timeout (the faults last that
        # long); anything shorter is the machine, not the shim.
        assert run.slowest < TIMEOUT, "the caller never waits for the shadow"

    # Every call is a comparison record or a counted drop.
    rows, drops = run.accounted()
    assert len(rows) + sum(drops.values()) == CALLS, (len(rows), drops)
    if error is not None:
        failed = [r for r in rows if not r["candidate"]["ok"]]
        assert failed, "the failures are recorded"
        for r in failed:
            assert re.search(error, r["candidate"]["error"]), r["candidate"]["error"]
        busy = fault == "burst" and not serve
        if busy:  # no capacity is not broken: shadowing pauses, the breaker stays closed
            paused = records(run.log, "shim.backoff")
            assert paused and paused[0]["state"] == "paused" and paused[0]["status"] == 503
            assert not records(run.log, "shim.breaker")
        else:
            breaker = records(run.log, "shim.breaker")
            assert breaker and breaker[0]["to"] == "open", "the breaker opens"
        if fault != "burst":  # a burst may end while the first calls are still in flight
            assert drops["breaker_open"] > 0
            assert run.shim.breaker_state("kiwi.meal_plan") != "closed"
        if serve:
            assert {r["served_by"] for r in rows} == {"legacy_fallback"}
    elif fault == "hostile_id":  # released, the id kept in its one path segment
        assert server and not drops and all(r["candidate"]["ok"] for r in rows)
        assert not records(run.log, "shim.release_failed")
        assert {p for p in server.paths if p.startswith("DELETE")} == {f"DELETE {HOSTILE_RELEASE}"}
    else:  # the release fails: each comparison stands, each failed release is recorded
        released = records(run.log, "shim.release_failed")
        assert len(released) == len(rows) == CALLS and not drops
        assert all(r["candidate"]["ok"] for r in rows)
        assert run.shim.stats()["internal_errors"] == {"release": CALLS}

    # Recovery: the fault clears; how long until the task path answers again?
    if server is None:
        server = Misbehaving(port)
    server.set("ok")
    cleared = time.monotonic()
    recovered = None
    while recovered is None and time.monotonic() - cleared < 10:
        await asyncio.sleep(0.005)  # traffic at a steady pace, not a spin
        out = await run.call()
        if serve:
            recovered = time.monotonic() if out == OUTPUT else None
        else:
            await run.shim.aflush(10)
            if any(r["candidate"]["ok"] for r in records(run.log)[len(rows) :]):
                recovered = time.monotonic()
    assert recovered is not None, "the task path is used again once the fault clears"
    run.legacy_unaffected(served=lambda out: serve and out == OUTPUT)
    await run.close()
    server.close()
    assert len(asyncio.all_tasks()) == tasks, "no asyncio task is left behind"

    rows, drops = run.accounted()
    served = sum(out == OUTPUT for out in run.got.values())  # no comparison asked for
    assert len(rows) + sum(drops.values()) + served == run.n, "nothing lost after recovery"
    stage = "serve" if serve else "shadow"
    caller = (
        f"{'legacy fallback' if serve else 'legacy'} result, same object, {CALLS}/{CALLS} "
        f"({raised} legacy exceptions re-raised as is); slowest call "
        f"{run.slowest * 1000:.0f} ms"
    )
    why = f"; candidate error `{_short(rows, error)}`" if error else ""
    written = (
        f"{len(rows)} comparisons + {sum(drops.values())} counted drops "
        f"({', '.join(f'{k} {v}' for k, v in sorted(drops.items())) or 'none'})"
        + (f" + {served} served by the task path" if served else "")
        + f" = {run.n} calls{why}"
    )
    if fault == "hostile_id":
        written += f"; every release sent to `{HOSTILE_RELEASE}` (one path segment), none failed"
    elif error is None:
        written += f"; {len(records(run.log, 'shim.release_failed'))} shim.release_failed"
    fault_row(
        f"{name} ({stage}, {kind})",
        caller,
        written,
        f"{recovered - cleared:.2f} s to the first good task-path call"
        + (
            " (back-off 0.1-0.3 s)"
            if fault == "burst" and not serve
            else " (breaker cooldown 0.3 s)"
            if error
            else ""
        ),
    )


def _short(rows: list[dict[str, Any]], error: str | None) -> str:
    for r in rows:
        if not r["candidate"]["ok"] and error and re.search(error, r["candidate"]["error"]):
            return str(r["candidate"]["error"])[:70].replace("|", "/")
    return ""


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("name", list(SHADOW_FAULTS))
def test_shadow_stage_fault(kind: str, name: str, tmp_path: Path, fault_row: Row) -> None:
    asyncio.run(_scenario(kind, name, tmp_path, fault_row, serve=False))


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("name", SERVE_FAULTS)
def test_serve_stage_fault(kind: str, name: str, tmp_path: Path, fault_row: Row) -> None:
    asyncio.run(_scenario(kind, name, tmp_path, fault_row, serve=True))


def test_an_untrusted_certificate_is_refused(tmp_path: Path, fault_row: Row) -> None:
    """TLS verification is on by default: a coordinator with a self-signed certificate
    is never talked to, and the caller does not notice."""
    import http.server
    import ssl
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    self_signed = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    self_signed += " -addext subjectAltName=IP:127.0.0.1"
    subprocess.run(
        ["openssl", *self_signed.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="misbehaving-tls", daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    run = Run("sync", url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n")
    try:
        for _ in range(3):
            asyncio.run(run.call())
        asyncio.run(run.close())
    finally:
        server.shutdown()
        server.server_close()
    raised = run.legacy_unaffected()
    rows, drops = run.accounted()
    assert len(rows) == 3 and not drops
    errors = {r["candidate"]["error"] for r in rows}
    assert all("CERTIFICATE_VERIFY_FAILED" in e for e in errors), errors
    fault_row(
        "coordinator with an untrusted (self-signed) certificate",
        f"legacy result, same object, 3/3 ({raised} legacy exceptions re-raised as is)",
        "3 comparisons; candidate error `ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED]`",
        "n/a: verification stays on (pass a configured http= client to trust a private CA)",
    )


def test_a_stale_keep_alive_connection_is_retried(tmp_path: Path, fault_row: Row) -> None:
    """Each connection answers once and is closed as its next request arrives, without
    a byte of reply (a server whose idle timeout fired while the request was on its
    way): the sync client's own HTTP/1.1 sends that request again, once, on a fresh
    connection, and no call fails."""
    server = Misbehaving()
    server.set("stale")
    run = Run("sync", server.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n")

    async def calls() -> None:
        for _ in range(CALLS):
            await run.call()
            await asyncio.sleep(0.005)  # traffic at a steady pace, as in the rows above
        await run.shim.aflush(10)
        await run.close()

    try:
        asyncio.run(calls())
    finally:
        server.close()
    raised = run.legacy_unaffected()
    rows, drops = run.accounted()
    assert len(rows) == CALLS and not drops
    assert all(r["candidate"]["ok"] for r in rows), [r["candidate"] for r in rows]
    assert server.seen["stale"] > 0, "connections were reused, and cut"
    assert not records(run.log, "shim.breaker")
    fault_row(
        "stale keep-alive connection, closed as the next request arrives (shadow, sync)",
        f"legacy result, same object, {CALLS}/{CALLS} ({raised} legacy exceptions re-raised "
        f"as is); slowest call {run.slowest * 1000:.0f} ms",
        f"{len(rows)} comparisons, all ok: {server.seen['stale']} requests sent again on a "
        "fresh connection (once each)",
        "n/a: no call failed",
    )
