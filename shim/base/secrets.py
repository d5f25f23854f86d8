"""Secrets: checked once where they enter, and kept out of every message after.

A key is checked when a client or store is built (:func:`checked_secret`): the
whitespace around it is stripped (a Kubernetes secret made with ``echo`` ends in a
newline) and anything an HTTP header cannot carry is refused, with a message that names
the setting and never the value. From then on one :class:`Redactor` takes the secrets
out of whatever leaves the process: records, operation records, error messages, error
bodies a server echoed. It knows the forms a secret takes on the way (JSON-escaped once
or twice, percent-encoded, a Python repr, base64 in a Basic header, the secret part of
an Unleash token) and scrubs the password of any ``scheme://user:password@host`` URL,
known or not. Text cut short before it was redacted keeps no start of a secret either:
a secret's first characters (six or more) right before a cut's marker are masked too.
:func:`without_credentials` is a URL as it may be shown.
"""

from __future__ import annotations

import base64
import bisect
import ipaddress
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

from shim.base.cut import CUT_MARK
from shim.base.errors import ConfigError, Problem

__all__ = [
    "MASK",
    "MIN_CUT_START",
    "MIN_SECRET",
    "Redactor",
    "checked_secret",
    "env_redactor",
    "env_secrets",
    "plain_http_to_remote",
    "url_secrets",
    "warn_if_plain_http",
    "without_credentials",
]

#: What a secret is replaced with.
MASK = "[redacted]"
#: Secrets shorter than this are not searched for: they would mask ordinary text.
MIN_SECRET = 4

#: The fewest of a secret's first characters masked where text was cut right after them
#: (fewer would mask ordinary words that happen to precede a cut).
MIN_CUT_START = 6

# The password of a URL's userinfo, wherever a URL appears in text; the scheme and user
# are kept so that the reader still sees where it pointed. Matched from each "://"
# forward (a literal the engine searches for), with possessive repeats, so it never
# backtracks: linear in the text however it is built (a scheme-like run of 80 KB before
# the "://" cost 14 s when the match started at the scheme).
_URL_PASSWORD = re.compile(r"(://[^\s/?#@:\"'\\<>]*+):([^\s/?#@\"'\\<>]++)@")
# Where text was cut short: :data:`~shim.base.cut.CUT_MARK` (raw, or as a JSON line
# escaped to ASCII writes it), and "..." (text cut by other hands: masking a secret's
# start before one is never wrong). A record field is cut before the recorder
# redacts the line, so a secret the cut went through leaves its start before a marker.
_CUT_MARKS = (CUT_MARK, json.dumps(CUT_MARK)[1:-1], "...")
# An Unleash token: ``project:environment.secret``.
_UNLEASH_TOKEN = re.compile(r"^[^:\s]+:[^.\s]+\.(.+)$")


def checked_secret(value: str | None, *, name: str, where: str = "environment") -> str | None:
    """``value`` as it may be sent in a header: surrounding whitespace stripped; None
    when nothing is left (or ``value`` is None).

    Anything else that is not printable ASCII (a line break or space inside, a control
    or non-ASCII character) raises :class:`~shim.base.errors.ConfigError` naming
    ``where`` and ``name`` (the setting, such as ``CF_LICENSE_KEY``) and the position,
    never the value or a part of it.
    """
    if value is None:
        return None
    stripped = value.strip()
    for position, char in enumerate(stripped, 1):
        if not "!" <= char <= "~":
            raise ConfigError(
                [
                    Problem(
                        where,
                        None,
                        name,
                        f"contains {_kind(char)} at character {position}; a key must be "
                        "printable ASCII with no space inside: copy it again (whitespace "
                        "around it is stripped)",
                    )
                ]
            )
    return stripped or None


def _kind(char: str) -> str:
    if char in "\r\n\u2028\u2029\x85":
        return "a line break"
    if char.isspace():
        return "a space"
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return "a control character"
    return "a non-ASCII character"


def without_credentials(url: str) -> str:
    """``url`` as it may be shown: a password in it replaced by ``[redacted]``, and a
    user without a password (often a token) too."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_PASSWORD.sub(rf"\1:{MASK}@", url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    return urlunsplit(parts._replace(netloc=shown))


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The credentials in ``url``'s userinfo, as written and percent-decoded: the
    password, ``user:password`` (what a Basic header encodes), or a lone user (a token)."""
    if not url:
        return ()
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return ()
    userinfo, at, _ = netloc.rpartition("@")
    if not at or not userinfo:
        return ()
    user, colon, password = userinfo.partition(":")
    found = [userinfo, password] if colon else [user]
    return tuple(dict.fromkeys(v for s in found if s for v in (s, unquote(s))))


def env_secrets(
    api_key: str | None = None, *, env: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """Every secret the environment configures: the coordinator's key (``api_key``, or
    ``CF_LICENSE_KEY``), the Unleash tokens, and credentials in ``CF_ORCH_URL`` and
    ``UNLEASH_URL``."""
    env = os.environ if env is None else env
    key = env.get("CF_LICENSE_KEY") if api_key is None else api_key
    found = [key, env.get("UNLEASH_API_TOKEN"), env.get("UNLEASH_ADMIN_TOKEN")]
    found += url_secrets(env.get("CF_ORCH_URL")) + url_secrets(env.get("UNLEASH_URL"))
    return tuple(dict.fromkeys(s for s in found if s))


def plain_http_to_remote(url: str) -> bool:
    """``url`` is plain ``http://`` to a host that is not this machine's loopback: what
    is sent there can be read on the way."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
    except ValueError:
        return False
    if parts.scheme.lower() != "http" or not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: it may resolve anywhere


# The (url, setting) pairs warned about in this process: a Shim builds a sync and an
# async client, an app may build many; the warning says the same each time.
_WARNED: set[tuple[str, str]] = set()
_WARNED_LOCK = threading.Lock()


def warn_if_plain_http(url: str, *, what: str, setting: str) -> bool:
    """Warn, on the ``shim`` logger, that ``what`` goes to ``url`` in clear text when
    :func:`plain_http_to_remote`: once per ``url`` and ``setting`` in a process; True
    when it warned. Call it where a client is built, not per request."""
    if not plain_http_to_remote(url):
        return False
    said = (without_credentials(url), setting)  # no secret kept for this
    with _WARNED_LOCK:
        if said in _WARNED:
            return False
        _WARNED.add(said)
    logging.getLogger("shim").warning(
        "%s goes to %s over plain http: anyone on the way can read it; use an https:// "
        "URL for %s (plain http is quiet only to a loopback address)",
        what,
        without_credentials(url),
        setting,
    )
    return True


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8, whatever it holds: a byte that was not UTF-8 in the
    environment (a surrogate escape) as that byte, any other lone surrogate as
    itself. Never a failure: the redaction is built for whatever is configured."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _forms(secret: str) -> set[str]:
    """The ways ``secret`` can appear in text that has been through JSON, a URL, a
    repr or a Basic header."""
    bases = {secret, secret.strip()}
    for base in list(bases):
        match = _UNLEASH_TOKEN.match(base.strip())
        if match:
            bases.add(match.group(1))  # the part that is the secret, alone
    forms = set(bases)
    for base in bases:
        once = json.dumps(base)[1:-1]
        forms |= {once, json.dumps(once)[1:-1], json.dumps(base, ensure_ascii=False)[1:-1]}
        forms.add(repr(base)[1:-1])
        raw = _utf8(base)
        for encoded in (quote(raw, safe=""), quote(raw), quote_plus(raw, safe="")):
            forms |= {encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)}
        if ":" in base:  # user:password, as a Basic header carries it
            forms |= {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return forms


class Redactor:
    """Takes known secrets, in every form :func:`_forms` knows, and URL passwords out
    of text, and the first characters of a form that text was cut short in. Build it
    once per owner (it does the expansion), call it on error paths and record lines
    (never per call on the caller's thread)."""

    __slots__ = ("_bytes", "_heads", "_longest", "_starts", "forms")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        kept: set[str] = set()
        for secret in secrets:
            if not secret or len(secret.strip()) < MIN_SECRET:
                continue
            mine = {f for f in _forms(secret) if len(f) >= MIN_SECRET}
            # A form of this secret that contains another of its forms goes: replacing
            # the shorter one takes the secret out of it (an Unleash token keeps its
            # project:environment prefix). Only within one secret: a short secret inside
            # a longer one's form would leave the rest of that one showing.
            kept |= {f for f in mine if not any(o != f and o in f for o in mine)}
        #: Every form searched for, longest first (a secret inside another's form is
        #: replaced after it).
        self.forms: tuple[str, ...] = tuple(sorted(kept, key=lambda f: (-len(f), f)))
        self._bytes = tuple((f.encode("utf-8", "surrogatepass"), MASK.encode()) for f in self.forms)
        # The first characters of every form: text without any of them has no secret,
        # whole or cut, and costs a search for each (a line of 1.5 KB, ~1 us in all).
        self._heads = tuple(sorted({form[:MIN_CUT_START] for form in kept}))
        # Every start of a form a cut may leave (the whole form is replaced already).
        self._starts = frozenset(
            form[:end] for form in kept for end in range(MIN_CUT_START, len(form))
        )
        self._longest = max((len(start) for start in self._starts), default=0)

    def __call__(self, text: str) -> str:
        """``text`` with every secret form, every start of one right before a cut's
        marker, and every URL password replaced by ``[redacted]``."""
        for head in self._heads:
            if head in text:
                text = self._secrets_out(text)
                break
        if "@" in text and "://" in text:
            text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
        return text

    def _secrets_out(self, text: str) -> str:
        """``text`` (which has the first characters of a form) with the forms, and the
        starts of them a cut left, masked."""
        for form in self.forms:
            if form in text:
                text = text.replace(form, MASK)
        marks = [mark for mark in _CUT_MARKS if mark in text]
        return self._cut_starts(text, marks) if marks and self._starts else text

    def _cut_starts(self, text: str, marks: list[str]) -> str:
        """``text`` with the longest start of a secret form that ends right before one
        of ``marks`` masked, at each. Only where one of the forms' first characters are
        is a start looked for: a text of cut markers costs a search, not a slice each."""
        heads = sorted({at for head in self._heads for at in _places(text, head)})
        ends = sorted({at for mark in marks for at in _places(text, mark)})
        pieces: list[str] = []
        done = 0
        for end in ends:
            first = bisect.bisect_left(heads, max(done, end - self._longest))
            last = bisect.bisect_right(heads, end - MIN_CUT_START)
            for start in heads[first:last]:  # the earliest first: the longest start
                if text[start:end] in self._starts:
                    pieces += (text[done:start], MASK)
                    done = end
                    break
        return "".join(pieces) + text[done:] if pieces else text

    def redact_bytes(self, data: bytes) -> bytes:
        """:meth:`__call__` for a body not yet decoded (whole, as a server sent it: no
        cut to look for)."""
        for form, mask in self._bytes:
            if form in data:
                data = data.replace(form, mask)
        if b"@" in data and b"://" in data:
            text = data.decode("utf-8", "surrogateescape")
            data = _URL_PASSWORD.sub(rf"\1:{MASK}@", text).encode("utf-8", "surrogateescape")
        return data

    def __repr__(self) -> str:
        return f"Redactor({len(self.forms)} forms)"  # never the forms themselves


#: The settings :func:`env_secrets` reads.
_SECRET_SETTINGS = (
    "CF_LICENSE_KEY",
    "UNLEASH_API_TOKEN",
    "UNLEASH_ADMIN_TOKEN",
    "CF_ORCH_URL",
    "UNLEASH_URL",
)
# The last env_redactor() built, and the settings it was built from.
_ENV_REDACTOR: tuple[tuple[str | None, ...], Redactor] | None = None


def env_redactor() -> Redactor:
    """A :class:`Redactor` for :func:`env_secrets`, built again only when those
    settings change: cheap enough to call on everything a command prints (the settings
    are read each time, a few microseconds)."""
    global _ENV_REDACTOR
    settings = tuple(os.environ.get(name) for name in _SECRET_SETTINGS)
    cached = _ENV_REDACTOR
    if cached is None or cached[0] != settings:
        cached = _ENV_REDACTOR = (settings, Redactor(env_secrets()))
    return cached[1]


def _places(text: str, part: str) -> Iterator[int]:
    """Where ``part`` starts in ``text``, overlaps included."""
    at = text.find(part)
    while at >= 0:
        yield at
        at = text.find(part, at + 1)
