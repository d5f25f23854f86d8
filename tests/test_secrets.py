"""Secrets never appear in a record or an error message, even when a server echoes them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from shim import TaskClient, TaskFailed, TaskRequest

from .shimkit import make_shim

SECRET = "cf-lic-7f3a9c2e5b1d"


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
