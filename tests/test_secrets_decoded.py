"""A key the coordinator echoes in JSON escapes the redaction of the raw body cannot
list (``\\/``, ``\\u002f``, the whole key in ``\\uXXXX``) is still taken out of what
the caller and the release hook see: the decoded text is redacted too."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from structlog.testing import capture_logs

from shim import AsyncTaskClient, TaskClient, TaskFailed, TaskNotRegistered, TaskRequest
from shim.client.protocol import detail

from .conftest import Infer

KEY = "cf-lic-7f3a/9c2e+5b1d"
ESCAPES = [
    pytest.param(lambda key: key.replace("/", "\\/"), id="solidus"),
    pytest.param(lambda key: key.replace("/", "\\u002f"), id="u002f"),
    pytest.param(lambda key: "".join(f"\\u{ord(c):04x}" for c in key), id="all-uXXXX"),
    pytest.param(lambda key: "".join(f"\\u{ord(c):04X}" for c in key), id="all-uXXXX-upper"),
]
Escape = Callable[[str], str]


def _echoing(status: int, escape: Escape, *, release: bool = False) -> httpx.MockTransport:
    """A coordinator that echoes the key, ``escape``d inside a JSON string, with
    ``status``: at once, or (``release``) only when the allocation is given back."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "node.test":  # allocate asks the node for its model
            return httpx.Response(404)
        key = request.headers["authorization"].removeprefix("Bearer ")
        assert key == KEY
        body = f'{{"detail": "bad key {escape(key)}, try again"}}'.encode()
        if release and request.method == "POST":
            alloc = {"url": "https://node.test", "allocation_id": "a-1", "service": "cf-text"}
            return httpx.Response(200, json=alloc)
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    return httpx.MockTransport(handler)


def _clean(text: str) -> None:
    assert "7f3a" not in text and "5b1d" not in text, text
    assert "[redacted]" in text, text


@pytest.mark.parametrize("status", [401, 404, 502])
@pytest.mark.parametrize("escape", ESCAPES)
def test_a_key_echoed_in_unlisted_json_escapes_never_reaches_task_failed(
    infer: Infer, escape: Escape, status: int
) -> None:
    """TaskFailed (TaskNotRegistered for a 404) quotes the body without the key."""
    transport = _echoing(status, escape)
    expected = TaskNotRegistered if status == 404 else TaskFailed
    with pytest.raises(expected) as caught:
        infer(
            "https://orch.test",
            "kiwi",
            "ocr",
            TaskRequest(),
            handler=transport.handle_request,
            api_key=KEY,
        )
    _clean(str(caught.value))
    assert "try again" in str(caught.value)  # the rest of the detail is still quoted


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("escape", ESCAPES)
def test_a_key_echoed_in_unlisted_json_escapes_never_reaches_a_failed_release(
    escape: Escape, mode: str
) -> None:
    """The release hook's error string and the ``shim.release_failed`` event neither."""
    told: list[str] = []
    hook = lambda product, task, allocation_id, error: told.append(error)  # noqa: E731
    transport = _echoing(401, escape, release=True)

    async def arun() -> None:
        http = httpx.AsyncClient(transport=transport)
        async with AsyncTaskClient(
            "https://orch.test", api_key=KEY, http=http, on_release_failed=hook
        ) as client:
            await client.release("kiwi", "ocr", await client.allocate("kiwi", "ocr"))

    with capture_logs() as logs:
        if mode == "sync":
            http = httpx.Client(transport=transport)
            with TaskClient(
                "https://orch.test", api_key=KEY, http=http, on_release_failed=hook
            ) as client:
                client.release("kiwi", "ocr", client.allocate("kiwi", "ocr"))
        else:
            asyncio.run(arun())
    [event] = [e for e in logs if e["event"] == "shim.release_failed"]
    [error] = told
    _clean(error)
    assert event["error"] == error and "answered 401" in error


def test_an_excerpt_is_redacted_before_it_is_cut() -> None:
    """A key across the excerpt's end leaves no start of itself behind."""
    body = ('{"detail": "' + "x" * 190 + KEY.replace("/", "\\/") + '"}').encode()
    said = detail(body, redact=lambda text: text.replace(KEY, "[redacted]"))
    assert "cf-lic" not in said and said.startswith("x" * 190 + "[redacted]")
