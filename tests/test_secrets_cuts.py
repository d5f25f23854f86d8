"""The redaction against hostile and cut text: a line built to make a regular expression
backtrack costs what any line costs, and a secret that text was cut in the middle of
leaves none of its first characters behind the cut."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from shim import TaskRequest, TaskResult
from shim.base.secrets import MASK, Redactor
from shim.testing import TestShim

from .conftest import ADMIN_TOKEN, SECRET, URL_PASSWORD, _leaks

#: A key with characters that JSON, a repr and a URL each escape.
SPECIAL = 'cf-lic-"7f3a"\\9c2e/5b1d'

# -- a line built to make the URL pattern backtrack -----------------------------------

HOSTILE = [
    pytest.param("a." * 40_000 + "://x@", id="scheme-run"),
    pytest.param("a://" * 20_000 + "@", id="many-schemes"),
    pytest.param("x://:" + "a" * 80_000, id="password-run-without-at"),
    pytest.param("x://" + "a" * 80_000 + ":@", id="user-run"),
    pytest.param(("x://u:" + "a" * 100) * 800 + "@", id="many-passwords"),
]


@pytest.mark.parametrize("line", HOSTILE)
def test_a_hostile_line_is_redacted_in_linear_time(line: str) -> None:
    """80 KB that used to take the recorder thread 14 s, holding the GIL: now well
    under 50 ms of the thread's CPU, as text and as bytes."""
    redact = Redactor([SECRET, URL_PASSWORD, ADMIN_TOKEN])
    started = time.thread_time()
    redact(line)
    redact.redact_bytes(line.encode())
    assert time.thread_time() - started < 0.05


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        pytest.param(f"{SECRET[:6]}..." * 9_000, 9_000, id="starts-and-cuts"),
        pytest.param(f"...{SECRET[:6]}" * 9_000, 8_999, id="cuts-and-starts"),
        pytest.param((SECRET[:6] * 30 + "\u2026") * 400, 400, id="starts-before-a-cut"),
        pytest.param(f"{SECRET[:-2]}..." * 4_000, 4_000, id="long-starts"),
    ],
)
def test_a_line_of_cut_secrets_is_redacted_in_linear_time(line: str, masked: int) -> None:
    """A line an attacker fills with a key's public first characters and cut markers:
    each start before a marker is masked, at the cost of a search, not of a slice per
    marker."""
    redact = Redactor([SECRET, URL_PASSWORD, ADMIN_TOKEN, SPECIAL])
    started = time.thread_time()
    shown = redact(line)
    assert time.thread_time() - started < 0.05
    assert shown.count(MASK) == masked


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("at http://ops:pw@h/x", "at http://ops:[redacted]@h/x"),
        ('{"u":"svn+ssh://me:p:w@h"}', '{"u":"svn+ssh://me:[redacted]@h"}'),
        ("a http://u:1@h and ftp://v:2@g", "a http://u:[redacted]@h and ftp://v:[redacted]@g"),
        ("HTTPS://U:P@H", "HTTPS://U:[redacted]@H"),
        ("no password http://token@h", "no password http://token@h"),
        ("a path http://h/x:y@z", "a path http://h/x:y@z"),
        ("mail me: a@b and see http://h", "mail me: a@b and see http://h"),
    ],
)
def test_url_passwords_are_found_as_before(text: str, shown: str) -> None:
    assert Redactor()(text) == shown
    assert Redactor().redact_bytes(text.encode()) == shown.encode()


# -- a secret cut in the middle ---------------------------------------------------------


@pytest.mark.parametrize("kept", range(6, len(SPECIAL)))
@pytest.mark.parametrize("marker", ["...", "\u2026[cut 12 chars]", "... [7 more chars]"])
def test_a_secret_cut_short_leaves_none_of_its_first_characters(kept: int, marker: str) -> None:
    """Text cut before it was redacted ends in the secret's first characters and the
    cut's marker: those characters go, in every form the secret takes in a line."""
    redact = Redactor([SPECIAL])
    once = json.dumps(SPECIAL)[1:-1]
    for form, in_a_line in ((SPECIAL, True), (once, True), (json.dumps(once)[1:-1], False)):
        for cut in (form[:kept], form[: kept + 1]):
            raw = f"error: {cut}{marker}"
            # In a record line, the text is escaped once more (the redaction knows two
            # escapings): as the recorder writes it, and as JSON escaped to ASCII does.
            lines = [raw, json.dumps(raw, ensure_ascii=False), json.dumps(raw)]
            for line in lines if in_a_line else lines[:1]:
                shown = redact(line)
                assert MASK in shown, line
                assert SPECIAL[:6] not in shown and once[:6] not in shown


def test_text_that_merely_looks_cut_keeps_its_words() -> None:
    """Five characters are not a secret's start, nor anything not followed by a cut."""
    redact = Redactor([SECRET])
    assert (
        redact(f"{SECRET[:5]}... and {SECRET[:12]} ok") == f"{SECRET[:5]}... and {SECRET[:12]} ok"
    )
    assert redact("see the docs...") == "see the docs..."


def test_an_unleash_tokens_public_part_cut_short_stays() -> None:
    """``project:environment`` is not secret: a cut inside it masks nothing; a cut in
    the secret part masks that part only."""
    redact = Redactor(["*:development.unleash-secret-123"])
    assert redact("token *:develop...") == "token *:develop..."
    assert redact("token *:development.unleash-s...") == f"token *:development.{MASK}..."


def _shim(**options: Any) -> TestShim:
    return TestShim({"kiwi.ocr": {"shadow": 100}}, api_key=SECRET, **options)


@pytest.mark.parametrize("kept", range(6, len(SECRET)))
def test_a_secret_straddling_the_error_cut_never_reaches_a_record(kept: int) -> None:
    """A legacy error is cut at 300 characters, before the recorder redacts it: the
    key's first characters before the cut are masked all the same."""
    message = "x" * (300 - kept) + SECRET + " and more"

    def fail() -> str:
        raise RuntimeError(message)

    with _shim(answer=lambda req: "ok") as s:
        wrapped = s.shadow(product="kiwi", task="ocr", request=lambda: TaskRequest())(fail)
        with pytest.raises(RuntimeError):
            wrapped()
        [row] = s.comparisons
        lines = json.dumps(s.records)
    assert f"{MASK}\u2026[cut " in row["legacy"]["error"], row["legacy"]["error"]
    assert SECRET[:6] not in lines


@pytest.mark.parametrize("kept", range(6, len(SECRET)))
def test_a_secret_straddling_the_field_cap_never_reaches_a_record(kept: int) -> None:
    """The coordinator's model name is capped at 512 characters, before the recorder
    redacts it: the key's first characters before the cut are masked all the same."""
    model = "m" * (512 - kept) + SECRET + "-tail"

    def answer(req: TaskRequest) -> TaskResult:
        return TaskResult("ok", model, None, None, None, 1.0)

    with _shim(answer=answer) as s:
        wrapped = s.shadow(product="kiwi", task="ocr", request=lambda: TaskRequest())(lambda: "ok")
        assert wrapped() == "ok"
        [row] = s.comparisons
        lines = json.dumps(s.records)
    assert f"{MASK}\u2026[cut" in row["candidate"]["model"], row["candidate"]["model"][-40:]
    assert SECRET[:6] not in lines


def test_a_line_without_a_secrets_start_costs_a_search_per_start() -> None:
    """A record line (1.5 KB, cut marks in it) with none of the secrets' first
    characters pays one substring search for each, not the cut handling."""
    redact = Redactor([SECRET, ADMIN_TOKEN, SPECIAL])
    line = json.dumps({"event": "shim.comparison", "legacy": {"error": "E: x" * 350 + "..."}})
    started = time.perf_counter()
    for _ in range(2000):
        assert redact(line) is line
    assert (time.perf_counter() - started) / 2000 < 50e-6


def test_the_after_suite_scan_finds_a_cut_secret_without_the_redaction() -> None:
    """The scan's own oracle: twelve characters of a key side by side are a leak,
    whatever the redaction knows; what the redaction leaves of a cut is not."""
    cut = f'{{"error":"RuntimeError: {SECRET[:12]}..."}}'
    assert _leaks(cut) == [f"{SECRET[:4]}... (12 characters)"]
    assert _leaks(Redactor([SECRET])(cut)) == []
    assert _leaks(f"token {ADMIN_TOKEN[4:16]}") and _leaks(f"at http://u:{URL_PASSWORD[:12]}@h")
