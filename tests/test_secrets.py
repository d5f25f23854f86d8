"""Secrets never appear in a record or an error message, even when a server echoes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim import TaskClient, TaskFailed, TaskRequest

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
        assert row["legacy"]["output"].endswith("more chars]")
        assert row["candidate"]["output"]
