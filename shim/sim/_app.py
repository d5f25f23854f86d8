"""The simulator's ASGI app: the coordinator, node and stream routes behind an optional
Bearer key, plus ``/health`` and the simulator's own ``/_sim`` routes.

With ``require_key``, every request answers 401 without ``Authorization: Bearer KEY``
(nodes and ``/_sim`` included) except ``/health`` and the stream URL, which its one-time
token guards (a browser's EventSource cannot send a header). The key is checked in front
of the routing, by path, so a route added later is guarded unless named as public. The
node routes take the coordinator's key because the simulator serves them from its own
origin: the task client sends its key to a node only on the coordinator's origin (on
real cf-orch, nodes are other hosts and get no key).

``GET /_sim/stats``
    counters (``requests.*``, ``fault.*``, ``allocations.expired``, ``streams.*``),
    ``allocations_active``, ``active`` (their ids) and ``streams_active``.
``PUT /_sim/profile``
    a new :class:`Profile` as JSON, from the next request on.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from shim.base.errors import ConfigError, Problem
from shim.base.orch import OrchConfig
from shim.base.secrets import checked_secret

from ._coordinator import coordinator_routes
from ._nodes import node_routes
from ._profile import Profile
from ._state import SimState, error
from ._streams import stream_routes, stream_token_routes

__all__ = ["SimState", "create_app"]


#: Paths that answer without the key: the health check, and the stream URL (its
#: one-time token is its credential).
PUBLIC_PATHS = frozenset({"/health", "/proxy/stream"})


class _RequireKey:
    """ASGI middleware: every request but :data:`PUBLIC_PATHS` carries
    ``Authorization: Bearer KEY``, or answers 401 before any route sees it. The scheme
    is matched in any case (``bearer``: HTTP auth schemes are case-insensitive), the
    key exactly."""

    def __init__(self, app: ASGIApp, *, key: str, state: SimState) -> None:
        self.app = app
        self.expected = key.encode()
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = given.partition(b" ")
        # Compared whatever the scheme, so the time taken says nothing of the key.
        matches = hmac.compare_digest(token.lstrip(b" "), self.expected)
        if matches and scheme.lower() == b"bearer":
            await self.app(scope, receive, send)
            return
        self.state.count("unauthorized")
        refused = error(
            401, "unauthorized", "missing or wrong Bearer token", **{"WWW-Authenticate": "Bearer"}
        )
        await refused(scope, receive, send)


def _sim_routes(state: SimState) -> APIRouter:
    router = APIRouter()

    @router.get("/_sim/stats")
    async def stats() -> dict[str, Any]:
        return state.snapshot()

    @router.put("/_sim/profile")
    async def put_profile(request: Request) -> Response:
        try:
            state.set_profile(Profile.model_validate(await request.json()))
        except (ValidationError, ValueError) as exc:
            return error(422, "invalid_profile", str(exc)[:2000])
        return Response(status_code=204)

    return router


def create_app(
    config: OrchConfig,
    profile: Profile | None = None,
    *,
    require_key: str | None = None,
    product_key: str | None = None,
) -> FastAPI:
    """The simulator as an ASGI app; ``app.state.sim`` is its :class:`SimState`.

    ``require_key`` guards every route but :data:`PUBLIC_PATHS` with a Bearer key
    (whitespace around it stripped, as clients strip theirs; an empty one is a
    ConfigError, since it would let an empty ``Bearer`` in); ``product_key`` is the
    key ``/proxy/authorize`` accepts (None: any non-empty key).
    """
    key = _checked_key(require_key)
    state = SimState(config, profile or Profile())
    app = FastAPI(title="cf-orch simulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = state
    app.include_router(coordinator_routes(state))
    app.include_router(node_routes(state))
    app.include_router(stream_token_routes(state, product_key))
    app.include_router(_sim_routes(state))
    app.include_router(stream_routes(state))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    if key is not None:
        app.add_middleware(_RequireKey, key=key, state=state)
    return app


def _checked_key(require_key: str | None) -> str | None:
    if require_key is None:
        return None
    key = checked_secret(require_key, name="require_key", where="simulator")
    if key is None:
        raise ConfigError(
            [Problem("simulator", None, "require_key", "empty; give a key, or leave it out")]
        )
    return key
