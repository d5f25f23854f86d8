"""What the sync and async task clients share: options, the license key, errors,
timeouts, a reply body read piece by piece, and stepping the sans-I/O exchanges."""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from shim.base.secrets import Redactor, checked_secret, url_secrets, warn_if_plain_http
from shim.client.protocol import Call, Exchange, ReleaseHook, Reply
from shim.client.wire import TooLarge, Wire

__all__ = [
    "MAX_REPLY_BYTES",
    "USER_AGENT",
    "Body",
    "ClientBase",
    "Done",
    "advance",
    "json_bytes",
    "proxied",
]

T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)

#: Replies larger than this are refused rather than buffered.
MAX_REPLY_BYTES = 32 * 1024 * 1024
USER_AGENT = "task-shim/0.1"


# -- what the sync and async clients share --------------------------------------------


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """The steps are done: what they returned."""

    value: T


def advance(steps: Generator[Call, Reply, T], reply: Any) -> Call | Done[T]:
    """Hand the steps what came of their last call (a reply, or an error to throw;
    None to start them): the call they need next, or what they returned."""
    try:
        return steps.throw(reply) if isinstance(reply, BaseException) else steps.send(reply)
    except StopIteration as stop:
        return Done(stop.value)


class Body:
    """A reply body read chunk by chunk: refused past ``MAX_REPLY_BYTES`` or the
    deadline; with ``arrivals``, when each chunk came."""

    __slots__ = ("arrivals", "content", "deadline")

    def __init__(self, deadline: float, arrivals: list[tuple[int, float]] | None) -> None:
        self.content = bytearray()
        self.deadline = deadline
        self.arrivals = arrivals

    def add(self, chunk: bytes) -> None:
        self.content += chunk
        now = time.perf_counter()
        if self.arrivals is not None and chunk:
            self.arrivals.append((len(self.content), now))
        if len(self.content) > MAX_REPLY_BYTES:
            raise TooLarge(f"reply larger than {MAX_REPLY_BYTES} bytes")
        if now > self.deadline:
            raise httpx.ReadTimeout("total deadline passed while reading the reply")


class ClientBase(Generic[H]):
    """What the sync and async clients share: options, the key, errors, timeouts."""

    _wire: Wire | None = None  # the sync client's own HTTP/1.1, when it speaks it
    _http: H | None  # the httpx client sent with, when there is one

    def __init__(
        self,
        orch_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: H | None = None,
        tls: ssl.SSLContext | None = None,
        on_release_failed: ReleaseHook | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.orch_url = orch_url.rstrip("/")
        self.timeout = timeout
        self.on_release_failed = on_release_failed
        key = _license_key(api_key, type(self).__name__)
        # The key goes to the coordinator only, never to the node URLs it hands out.
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.secret = key  # never repeated in an error message, even if echoed
        # Built once here: error paths only, never per call on the caller's thread.
        self._redact = Redactor((key, *url_secrets(orch_url)))
        if key:
            warn_if_plain_http(self.orch_url, what="the license key", setting="CF_ORCH_URL")
        self._owned = http is None
        self._http = self._connect(http, tls)

    def _connect(self, http: H | None, tls: ssl.SSLContext | None) -> H | None:
        """The httpx client to send with: ``http``, or one of our own (verifying with
        ``tls``, else the process's one default context: an httpx client's own costs
        ~20 ms to build); None when the client speaks HTTP/1.1 itself."""
        raise NotImplementedError

    def _exchange(
        self, product: str, task: str, hint: str | None = None, stream: bool = False
    ) -> Exchange:
        return Exchange(
            self.orch_url,
            product,
            task,
            self._auth,
            self.on_release_failed,
            hint,
            redact=self._redact,
            stream=stream,
        )

    def _scrubbed(
        self,
        status: int,
        content: bytes | bytearray,
        arrivals: list[tuple[int, float]] | None = None,
    ) -> Reply:
        """A reply; an error body with the key (in any form: JSON-escaped,
        percent-encoded, ...) and URL passwords taken out, if the server echoed them."""
        if status >= 300:
            return Reply(status, self._redact.redact_bytes(bytes(content)))
        return Reply(status, bytes(content), tuple(arrivals) if arrivals else ())

    def _limits(self, call: Call, deadline: float) -> tuple[float, float]:
        """The seconds the call has left, and the deadline its reply must be read by:
        the exchange's, or a release's own."""
        remaining = min(5.0, self.timeout) if call.release else deadline - time.perf_counter()
        if remaining <= 0:
            raise httpx.ReadTimeout("deadline passed before the call")
        if call.release:
            deadline = time.perf_counter() + remaining
        return remaining, deadline

    @staticmethod
    def _timeout(remaining: float) -> httpx.Timeout:
        """The httpx timeouts of a call with ``remaining`` seconds (connecting: at most 5)."""
        return httpx.Timeout(remaining, connect=min(remaining, 5.0))

    def _failed(self, exc: BaseException, ex: Exchange) -> BaseException:
        """The error the steps see: transport errors become TaskFailed, the rest as is."""
        if isinstance(exc, httpx.TimeoutException):
            message = f"no answer within {self.timeout:g} s ({type(exc).__name__})"
        elif isinstance(exc, httpx.HTTPError):  # TooLarge included
            message = f"{type(exc).__name__}: {exc}"
        else:
            return exc
        redacted = self._redact(message)
        error = ex.fail(redacted, None)
        if redacted == message:
            error.__cause__ = exc
        else:  # the cause's own message quotes the secret: a traceback would print it
            error.__suppress_context__ = True
        return error


def _license_key(api_key: str | None, client: str) -> str | None:
    """The key to send: ``api_key``, else ``CF_LICENSE_KEY``; checked, and named in an
    error by the setting it came from."""
    env = os.environ.get("CF_LICENSE_KEY")
    if api_key is None or api_key == env:
        return checked_secret(env if api_key is None else api_key, name="CF_LICENSE_KEY")
    return checked_secret(api_key, name="api_key", where=client)


# One encoder: json.dumps with options builds one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def json_bytes(body: Any) -> bytes:
    """A request body as httpx's ``json=`` encodes it."""
    return _ENCODER.encode(body).encode()


def proxied() -> bool:
    """The environment names an HTTP(S) proxy, which only httpx knows how to use."""
    proxies = urllib.request.getproxies_environment()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))
