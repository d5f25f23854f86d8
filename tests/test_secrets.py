"""Secrets never appear in a record or an error message, even when a server echoes them."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest

from shim import ConfigError, TaskClient, TaskFailed, TaskRequest
from shim.base.secrets import (
    Redactor,
    checked_secret,
    plain_http_to_remote,
    url_secrets,
    without_credentials,
)

from .conftest import SECRET
from .shimkit import make_shim


def echoing(request: httpx.Request) -> httpx.Response:
    """A coordinator that repeats the request's headers in its error body."""
    return httpx.Response(500, json={"detail": f"bad request: {dict(request.headers)}"})


def test_an_echoed_key_never_reaches_the_error_message() -> None:
    http = httpx.Client(transport=httpx.MockTransport(echoing))
    with (
        TaskClient("http://orch.test", api_key=SECRET, http=http) as client,
        pytest.raises(TaskFailed) as caught,
    ):
        client.infer("kiwi", "ocr", TaskRequest())
    assert SECRET not in str(caught.value)
    assert "[redacted]" in str(caught.value)


def test_no_record_carries_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNLEASH_API_TOKEN", "*:development.unleash-secret-123")
    http = httpx.Client(transport=httpx.MockTransport(echoing))
    s = make_shim(
        "http://orch.test", tmp_path, "kiwi.ocr: {shadow: 100}\n", api_key=SECRET, http=http
    )

    @s.shadow(product="kiwi", task="ocr", request=lambda: TaskRequest())
    def scan() -> dict[str, str]:
        raise RuntimeError(f"legacy failed with key {SECRET} and unleash-secret-123")

    for _ in range(3):
        with pytest.raises(RuntimeError):
            scan()
    s.close()
    text = (tmp_path / "log.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert len([r for r in rows if r["event"] == "shim.comparison"]) == 3
    assert SECRET not in text
    assert "unleash-secret-123" not in text
    assert "[redacted]" in text


def test_prompts_and_outputs_are_not_recorded_unless_captured(sim: Any, tmp_path: Path) -> None:
    from shim import Capture

    for name, capture in (("off", None), ("on", Capture(max_chars=60, patterns=(r"ID-\d+",)))):
        (tmp_path / name).mkdir()
        s = make_shim(sim.url, tmp_path / name, "kiwi.meal_plan: {shadow: 100}\n", capture=capture)
        wrapped = s.shadow(
            product="kiwi",
            task="meal_plan",
            request=lambda: TaskRequest(
                prompt="plan for ann@example.com, card 4111 1111 1111 1111, ID-42"
            ),
        )(lambda: "Call +44 20 7946 0958 or ann@example.com; " + "x" * 200)
        wrapped()
        s.close()
        [row] = [
            json.loads(line)
            for line in (tmp_path / name / "log.jsonl").read_text().splitlines()
            if '"shim.comparison"' in line
        ]
        if capture is None:
            assert "output" not in row["legacy"] and "prompt" not in row["candidate"]
            assert "ann@example.com" not in json.dumps(row)
            continue
        assert row["candidate"]["prompt"] == ("plan for [redacted], card [redacted], [redacted]")
        assert row["legacy"]["output"].startswith("Call [redacted] or [redacted]; xxx")
        assert row["legacy"]["output"].endswith(" chars]")
        assert row["candidate"]["output"]


# -- shim.base.secrets: the one check and the one redaction ----------------------------


@pytest.mark.parametrize("raw", [SECRET + "\n", f"  {SECRET}\r\n", f"\t{SECRET}"])
def test_whitespace_around_a_secret_is_stripped(raw: str) -> None:
    assert checked_secret(raw, name="CF_LICENSE_KEY") == SECRET


@pytest.mark.parametrize("raw", [None, "", " \n"])
def test_a_blank_secret_is_no_secret(raw: str | None) -> None:
    assert checked_secret(raw, name="CF_LICENSE_KEY") is None


def test_a_refused_secret_names_the_setting_and_never_the_value() -> None:
    with pytest.raises(ConfigError) as caught:
        checked_secret("abcd\nefgh", name="UNLEASH_API_TOKEN", where="UnleashFlags")
    problem = caught.value.problems[0]
    assert (problem.path, problem.field) == ("UnleashFlags", "UNLEASH_API_TOKEN")
    assert "a line break at character 5" in problem.message
    assert "abcd" not in str(caught.value) and "efgh" not in str(caught.value)


SPECIAL = 'k3y"with\\odd/chars+and spaces?'


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(SPECIAL, id="raw"),
        pytest.param(json.dumps(SPECIAL)[1:-1], id="json"),
        pytest.param(json.dumps(json.dumps(SPECIAL))[1:-1], id="json-twice"),
        pytest.param(repr(SPECIAL)[1:-1], id="repr"),
        pytest.param(quote(SPECIAL, safe=""), id="percent"),
        pytest.param(quote(SPECIAL, safe="").lower(), id="percent-lower"),
        pytest.param(quote(SPECIAL), id="percent-path"),
        pytest.param(quote_plus(SPECIAL), id="form"),
    ],
)
def test_the_redactor_knows_a_secrets_escaped_forms(form: str) -> None:
    redact = Redactor([SPECIAL])
    text = redact(f"said: {form}.")
    assert "[redacted]" in text and "k3y" not in text and "chars" not in text, text
    assert redact.redact_bytes(f"said: {form}.".encode()) == text.encode()


def test_the_redactor_takes_an_unleash_tokens_secret_part_alone() -> None:
    redact = Redactor(["*:development.unleash-secret-123"])
    assert redact("token *:development.unleash-secret-123") == "token *:development.[redacted]"
    assert redact("secret unleash-secret-123") == "secret [redacted]"


def test_the_redactor_takes_url_passwords_out_known_or_not() -> None:
    redact = Redactor(url_secrets("http://ops:p%40ss-word@unleash:4242"))
    # Known credentials go whole (user:password is a secret too: a Basic header carries it).
    assert redact("at http://ops:p%40ss-word@unleash:4242/api") == (
        "at http://[redacted]@unleash:4242/api"
    )
    assert redact("decoded p@ss-word") == "decoded [redacted]"
    basic = base64.b64encode(b"ops:p@ss-word").decode()
    assert redact(f"Authorization: Basic {basic}") == "Authorization: Basic [redacted]"
    assert Redactor()('{"url":"https://u:anything@h/x"}') == '{"url":"https://u:[redacted]@h/x"}'


def test_short_secrets_are_not_searched_for() -> None:
    """Three characters would mask ordinary words everywhere."""
    assert Redactor(["abc"])("abcdef") == "abcdef"
    assert "abc" not in repr(Redactor(["abcdefgh"]))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://ops:pw@unleash:4242/api", "http://ops:[redacted]@unleash:4242/api"),
        ("https://token@orch.example/", "https://[redacted]@orch.example/"),
        ("http://orch.example:7700", "http://orch.example:7700"),
    ],
)
def test_without_credentials(url: str, shown: str) -> None:
    assert without_credentials(url) == shown


@pytest.mark.parametrize(
    ("url", "remote"),
    [
        ("http://orch.example", True),
        ("http://10.1.2.3:7700", True),
        ("http://127.0.0.2:7700", False),
        ("http://[::1]:7700", False),
        ("http://localhost:7700", False),
        ("http://api.localhost", False),
        ("https://orch.example", False),
    ],
)
def test_plain_http_to_remote(url: str, remote: bool) -> None:
    assert plain_http_to_remote(url) is remote


def test_the_redaction_keeps_up_with_the_recorder() -> None:
    """Run on every record line (on the recorder's thread): a few microseconds."""
    redact = Redactor([SECRET, "*:development.unleash-secret-123", "*:*.admin-secret-456"])
    line = json.dumps({"event": "shim.comparison", "candidate": {"error": "x" * 400}})
    started = time.perf_counter()
    for _ in range(2000):
        redact(line)
    assert (time.perf_counter() - started) / 2000 < 50e-6


def test_a_secret_inside_another_leaves_nothing_of_the_longer_one() -> None:
    redact = Redactor(["7f3a", SECRET])
    assert redact(f"key {SECRET} and 7f3a") == "key [redacted] and [redacted]"
