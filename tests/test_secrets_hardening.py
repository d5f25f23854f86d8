"""Secrets as an attacker or a careless operator hands them over: a key with a newline,
a key a server echoes escaped, a token an Admin API echoes in a 400, credentials in a
URL, a key over plain http. None of them reaches a record, an exception or the CLI."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from typer.testing import CliRunner

from shim import ConfigError, ShimError, TaskClient, TaskFailed, TaskRequest
from shim.base import secrets
from shim.base.orch import OrchConfig
from shim.base.secrets import warn_if_plain_http
from shim.cli.app import app
from shim.client.task import TaskAllocation
from shim.flags import UnleashFlags
from shim.flags.store import Change, Setting, UnleashAdminStore
from shim.ops.promote import record
from shim.sim import Simulator

from .conftest import ADMIN_TOKEN, QUIET, SECRET, Infer
from .conftest import URL_PASSWORD as PASSWORD
from .shimkit import make_shim, records, wait_for

# -- a key that ends in a newline (a Kubernetes secret made with `echo`) --------------


@pytest.fixture(scope="module")
def locked(kiwi_config: OrchConfig) -> Iterator[Simulator]:
    """The simulator, wanting ``Bearer SECRET`` on every route."""
    with Simulator(kiwi_config, QUIET, require_key=SECRET) as sim:
        yield sim


def test_a_key_ending_in_a_newline_is_sent_stripped(locked: Simulator, infer: Infer) -> None:
    """The trailing newline is whitespace around the key: stripped, and the call works
    (it used to fail with the key's first 33 characters in the error)."""
    result = infer(locked.url, "kiwi", "meal_plan", TaskRequest(prompt="x"), api_key=SECRET + "\n")
    assert result.model == "qwen2.5-3b-instruct"


def test_a_key_ending_in_a_newline_never_reaches_a_shadow_record(
    locked: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the environment, as a Kubernetes secret puts it: every shadow record's
    candidate succeeds and carries no part of the key."""
    monkeypatch.setenv("CF_LICENSE_KEY", SECRET + "\n")
    s = make_shim(locked.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n")
    wrapped = s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="x"))(
        lambda: "legacy"
    )
    for _ in range(3):
        assert wrapped() == "legacy"
    s.close()
    rows = records(tmp_path / "log.jsonl")
    assert [r["candidate"]["ok"] for r in rows] == [True, True, True]
    assert SECRET[:8] not in (tmp_path / "log.jsonl").read_text()


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("cf-lic-7f3a\n9c2e5b1d", "a line break"),
        ("cf-lic-7f3a 9c2e5b1d", "a space"),
        ("cf-lic-7f3a\x1b9c2e5b1d", "a control character"),
        ("cf-lic-7f3a\u00e99c2e5b1d", "a non-ASCII character"),
    ],
)
def test_a_key_a_header_cannot_carry_is_refused_without_quoting_it(
    key: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused at construction, naming the setting and the character's kind and place,
    never the key or a part of it."""
    with pytest.raises(ConfigError) as caught:
        TaskClient("http://127.0.0.1:9", api_key=key)
    message = str(caught.value)
    assert "api_key" in message and kind in message and "character 12" in message
    assert "cf-lic" not in message and "9c2e" not in message
    monkeypatch.setenv("CF_LICENSE_KEY", key)
    with pytest.raises(ConfigError, match="CF_LICENSE_KEY") as caught:
        TaskClient("http://127.0.0.1:9")
    assert "cf-lic" not in str(caught.value)


# -- a key the coordinator echoes, escaped --------------------------------------------

QUOTED_KEY = 'cf-lic-"7f3a"\\9c2e/5b1d'


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(lambda key: json.dumps({"detail": f"bad key {key}"}), id="json-escaped"),
        pytest.param(lambda key: json.dumps([f"bad key {key}"]), id="json-list"),
        pytest.param(lambda key: f"GET /check?key={quote(key, safe='')}", id="percent"),
        pytest.param(lambda key: f"bad key {key!r}", id="repr"),
        pytest.param(lambda key: json.dumps({"detail": json.dumps(key)}), id="json-twice"),
    ],
)
def test_a_key_echoed_escaped_never_reaches_task_failed(
    infer: Infer, echo: Callable[[str], str]
) -> None:
    """A 401 body repeats the key JSON-escaped (or percent-encoded, or as a repr): the
    error the caller gets has none of it."""

    def handler(request: httpx.Request) -> httpx.Response:
        key = request.headers["authorization"].removeprefix("Bearer ")
        assert key == QUOTED_KEY
        return httpx.Response(401, text=echo(key), headers={"content-type": "application/json"})

    with pytest.raises(TaskFailed) as caught:
        infer("http://orch.test", "kiwi", "ocr", TaskRequest(), handler=handler, api_key=QUOTED_KEY)
    message = str(caught.value)
    assert "[redacted]" in message
    assert "7f3a" not in message and "5b1d" not in message, message


def test_credentials_in_the_coordinator_url_never_reach_task_failed() -> None:
    """A URL the client cannot send to is quoted in the error: without its password."""
    with (
        TaskClient(f"ftp://ops:{PASSWORD}@orch.test", api_key=SECRET) as client,
        pytest.raises(TaskFailed) as caught,
    ):
        client.infer("kiwi", "ocr", TaskRequest())
    assert PASSWORD not in str(caught.value) and "[redacted]@orch.test" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# -- plain http ------------------------------------------------------------------------


@pytest.fixture
def unwarned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain http is warned about once per process: as if not yet, for this test."""
    monkeypatch.setattr(secrets, "_WARNED", set())


@pytest.mark.parametrize(
    ("url", "key", "warned"),
    [
        ("http://orch.example:7700", SECRET, True),
        (f"http://ops:{PASSWORD}@10.0.0.5:7700", SECRET, True),
        ("http://127.0.0.1:7700", SECRET, False),
        ("http://[::1]:7700", SECRET, False),
        ("http://localhost:7700", SECRET, False),
        ("https://orch.example", SECRET, False),
        ("http://orch.example:7700", "", False),
    ],
)
def test_a_key_over_plain_http_to_another_host_is_warned_about_once(
    url: str, key: str, warned: bool, caplog: pytest.LogCaptureFixture, unwarned: None
) -> None:
    with caplog.at_level(logging.WARNING, logger="shim"), TaskClient(url, api_key=key) as client:
        client._scrubbed(500, b"")  # what a call does with a reply: no more warnings
    said = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert len(said) == (1 if warned else 0), said
    assert all(SECRET not in m and PASSWORD not in m for m in said)
    if warned:
        assert "https://" in said[0] and "CF_ORCH_URL" in said[0]


def _plain_http_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]


def test_one_shim_warns_about_plain_http_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, unwarned: None
) -> None:
    """A Shim builds a client per lane (serve, shadow, async): one warning, not one
    per client; nor for a second Shim or client to the same URL."""
    url = f"http://ops:{PASSWORD}@orch.example:7701"
    with caplog.at_level(logging.WARNING, logger="shim"):
        for _ in range(2):
            make_shim(url, tmp_path, "{}", api_key=SECRET).close()
        with TaskClient(url, api_key=SECRET), TaskClient(url + "/", api_key=SECRET):
            pass
    [said] = _plain_http_warnings(caplog)
    assert PASSWORD not in said and "orch.example:7701" in said


def test_plain_http_is_warned_about_once_per_url_and_setting(
    caplog: pytest.LogCaptureFixture, unwarned: None
) -> None:
    with caplog.at_level(logging.WARNING, logger="shim"):
        for url, setting in [("http://a.example", "X"), ("http://b.example", "X")] * 2 + [
            ("http://a.example", "Y")
        ]:
            warn_if_plain_http(url, what="the key", setting=setting)
    assert len(_plain_http_warnings(caplog)) == 3


# -- Unleash: tokens and URL credentials ----------------------------------------------


@contextmanager
def fake_admin_api(answer: Callable[[str, str, str], tuple[int, Any]]) -> Iterator[str]:
    """A local HTTP server standing in for Unleash: ``answer(method, path,
    authorization) -> (status, JSON body)``; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            status, body = answer(self.command, self.path, self.headers.get("authorization", ""))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def echoing_400(method: str, path: str, authorization: str) -> tuple[int, Any]:
    """An Admin API that refuses the request and repeats the token, as some do."""
    return 400, {"message": f"bad request with token {authorization}", "token": [authorization]}


def test_an_admin_token_echoed_in_a_400_never_reaches_the_error() -> None:
    with fake_admin_api(echoing_400) as url:
        store = UnleashAdminStore(url, ADMIN_TOKEN)
        with pytest.raises(ShimError) as caught:
            store.read()
        store.close()
    message = str(caught.value)
    assert "cannot list flags: 400" in message and "[redacted]" in message
    assert "h1-admin-secret" not in message


def test_shim_status_never_prints_an_echoed_admin_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with fake_admin_api(echoing_400) as url:
        monkeypatch.setenv("SHIM_FLAGS", "unleash")
        monkeypatch.setenv("UNLEASH_URL", url)
        monkeypatch.setenv("UNLEASH_ADMIN_TOKEN", ADMIN_TOKEN)
        result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 2
    assert "400" in result.output and "h1-admin-secret" not in result.output


def empty_project(method: str, path: str, authorization: str) -> tuple[int, Any]:
    """An Admin API with no flags at all."""
    if path.endswith("/features"):
        return 200, {"features": []}
    return 404, {"message": "not found"}


def test_url_credentials_never_reach_the_status_title(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store describes itself without the password: in the table's title and in
    ``--json``."""
    with fake_admin_api(empty_project) as url:
        with_password = url.replace("http://", f"http://ops:{PASSWORD}@")
        monkeypatch.setenv("SHIM_FLAGS", "unleash")
        monkeypatch.setenv("UNLEASH_URL", with_password)
        monkeypatch.setenv("UNLEASH_ADMIN_TOKEN", ADMIN_TOKEN)
        table = CliRunner().invoke(app, ["status"])
        shown = CliRunner().invoke(app, ["status", "--json"])
    assert table.exit_code == 0, table.output
    assert "flags: Unleash http://ops:" in table.output and "@127.0.0.1:" in table.output
    assert json.loads(shown.stdout)["flags"].startswith("Unleash http://ops:[redacted]@")
    assert PASSWORD not in table.output + shown.output


def test_url_credentials_never_reach_shim_flags_events() -> None:
    """UnleashFlags says where it polls without the password (an unreachable server,
    so the 'did not answer' event is the one that carries the URL)."""
    events: list[Any] = []
    flags = UnleashFlags(
        url=f"http://ops:{PASSWORD}@127.0.0.1:9/api", api_token="*:development.h1-client-42\n"
    )
    try:
        flags.subscribe(events.append)
        wait_for(lambda: bool(events))
    finally:
        flags.close()
    assert "did not answer" in events[0].message
    assert all(PASSWORD not in e.message and PASSWORD not in e.source for e in events)
    assert flags.url == "http://ops:[redacted]@127.0.0.1:9/api"


def test_an_unleash_token_with_a_line_break_inside_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigError, match="UNLEASH_API_TOKEN") as caught:
        UnleashFlags(url="http://127.0.0.1:9/api", api_token="*:development.h1\nsecret")
    assert "h1" not in str(caught.value) and "secret" not in str(caught.value)
    with pytest.raises(ConfigError, match="UNLEASH_ADMIN_TOKEN") as caught:
        UnleashAdminStore("http://127.0.0.1:9", "*:*.h1 secret")
    assert "h1" not in str(caught.value)


def test_operation_records_go_through_the_redaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``shim.promote`` records are written outside the recorder: the backend named
    without its password, and any secret in the reason or evidence taken out."""
    monkeypatch.setenv("CF_LICENSE_KEY", SECRET)
    store = UnleashAdminStore(f"http://ops:{PASSWORD}@unleash.test:4242", ADMIN_TOKEN)
    log = tmp_path / "ops.jsonl"
    change = Change("kiwi.ocr", Setting(0, 100), Setting(5, 100))
    record(
        "shim.promote",
        [change],
        store,
        log,
        reason=f"asked by {SECRET} at http://admin:{PASSWORD}@elsewhere.test/x",
        extra={"evidence": {"token": ADMIN_TOKEN, "escaped": json.dumps(SECRET + '"')}},
    )
    store.close()
    text = log.read_text()
    [row] = [json.loads(line) for line in text.splitlines()]
    assert row["backend"] == "Unleash http://ops:[redacted]@unleash.test:4242 (development)"
    for secret in (SECRET, PASSWORD, "h1-admin-secret"):
        assert secret not in text


def test_an_allocations_repr_shows_its_node_url_without_credentials() -> None:
    """A repr lands in logs and tracebacks; a node URL may carry a token."""
    alloc = TaskAllocation(
        f"http://node:{PASSWORD}@10.0.0.7:8000", "a-1", "cf-text", None, None, "m", None, None, 1
    )
    assert PASSWORD not in repr(alloc) and "node:[redacted]@10.0.0.7:8000" in repr(alloc)
    assert alloc.as_dict()["url"].endswith("@10.0.0.7:8000"), "the value itself is untouched"


def test_records_never_carry_url_credentials_from_the_environment(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UNLEASH_URL's password, percent-decoded, written into a record by a failing
    legacy path: taken out by the recorder, as the raw and escaped key are."""
    monkeypatch.setenv("UNLEASH_URL", f"http://ops:{quote(PASSWORD + '@x')}@unleash.test/api")
    s = make_shim(sim.url, tmp_path, "kiwi.meal_plan: {shadow: 100}\n", api_key=QUOTED_KEY)

    @s.shadow(product="kiwi", task="meal_plan", request=lambda: TaskRequest(prompt="x"))
    def plan() -> str:
        raise RuntimeError(f"{PASSWORD}@x {json.dumps(QUOTED_KEY)} http://a:b-c@elsewhere/")

    with pytest.raises(RuntimeError):
        plan()
    s.close()
    text = (tmp_path / "log.jsonl").read_text()
    [row] = records(tmp_path / "log.jsonl")
    assert row["legacy"]["error"].count("[redacted]") == 3, row["legacy"]["error"]
    assert PASSWORD not in text and "7f3a" not in text and "b-c@" not in text
