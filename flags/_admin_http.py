"""The Unleash Admin API of one server, one project and one environment: requests whose
failures become one :class:`~shim.base.errors.ShimError` each, with what to check."""

from __future__ import annotations

import time
from typing import Any

import httpx

from shim.base.errors import ConfigError, Problem, ShimError
from shim.base.secrets import (
    Redactor,
    checked_secret,
    url_secrets,
    warn_if_plain_http,
    without_credentials,
)

__all__ = ["AdminApi", "failed_test"]

#: Seconds an idle admin connection is kept (under common servers' keep-alive timeouts).
_KEEPALIVE_S = 2.0
#: Methods sent again after a connection the server closed without answering.
#: Pauses before a refused connection is tried again, in seconds.
_RECONNECT = (0.2, 0.5, 1.0)
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})


def failed_test(reply: httpx.Response) -> bool:
    """A JSON Patch refused because its ``test`` did not hold (Unleash answers 500 with
    ``TEST_OPERATION_FAILED``), or aimed at something gone (404): a lost
    compare-and-set, not an error."""
    return reply.status_code == 404 or "TEST_OPERATION_FAILED" in reply.text


class AdminApi:
    """Requests to ``url``'s Admin API (``http://host:4242``; a trailing ``/api`` is
    accepted) with an admin token; ``features`` is the project's feature path.

    The token is checked here (whitespace around it stripped; one a header cannot
    carry, or none at all, is a ConfigError); ``description`` shows the server without
    credentials, and every error has the token and URL credentials taken out, however
    the server echoed them (``redact``)."""

    def __init__(
        self,
        url: str,
        admin_token: str,
        *,
        environment: str,
        project: str,
        http: httpx.Client | None = None,
    ) -> None:
        token = checked_secret(admin_token, name="UNLEASH_ADMIN_TOKEN", where="Unleash Admin API")
        if token is None:
            raise ConfigError(
                [
                    Problem(
                        "Unleash Admin API",
                        None,
                        "UNLEASH_ADMIN_TOKEN",
                        "empty; set it to an admin token (Unleash: Admin settings > API access)",
                    )
                ]
            )
        base = url.rstrip("/").removesuffix("/api")
        #: Takes the token and URL credentials out of what is shown.
        self.redact = Redactor((token, *url_secrets(base)))
        self.description = f"Unleash {without_credentials(base)} ({environment})"
        self.environment = environment
        self.features = f"/api/admin/projects/{project}/features"
        if http is None:
            warn_if_plain_http(base, what="the admin token", setting="UNLEASH_URL")
        self._http = http or httpx.Client(
            base_url=base,
            timeout=10.0,
            headers={"Authorization": token},
            # An idle connection is dropped before the server would drop it (Node's
            # default is 5 s): reusing one the server is closing loses the request.
            limits=httpx.Limits(keepalive_expiry=_KEEPALIVE_S),
        )

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request; a transport error or a refused token is a ShimError. A
        GET, PUT or DELETE whose connection the server closed or reset before answering
        (an idle keep-alive connection timed out as the request went out; Unleash 7.5
        resets one now and then after archiving a feature) is sent once more, on a new
        connection; other methods are not, as the server may have acted on them. A
        connection refused (nothing was sent: a server restarting, a listen queue full)
        is tried again after 0.2, 0.5 and 1 s, whatever the method."""
        try:
            try:
                reply = self._connected(method, path, **kw)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                if method.upper() not in _IDEMPOTENT:
                    raise
                reply = self._connected(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ShimError(
                self.redact(
                    f"{self.description}: {type(exc).__name__}: {exc}; is the "
                    "server up and UNLEASH_URL right?"
                )
            ) from None
        if reply.status_code in (401, 403):
            raise ShimError(
                f"{self.description} refused the admin token "
                f"({reply.status_code}); check UNLEASH_ADMIN_TOKEN"
            )
        return reply

    def _connected(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for pause in (*_RECONNECT, None):
            try:
                return self._http.request(method, path, **kw)
            except httpx.ConnectError:
                if pause is None:
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def ok(self, reply: httpx.Response, what: str) -> None:
        """A ShimError saying ``what`` could not be done, unless ``reply`` succeeded."""
        if reply.status_code >= 300:
            # Redacted whole, then cut: a cut could leave part of an echoed token.
            said = self.redact(reply.text)[:200]
            raise ShimError(f"{self.description}: cannot {what}: {reply.status_code} {said}")

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()
