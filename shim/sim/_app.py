"""The simulator's ASGI app: the coordinator, node and stream routes behind an optional
Bearer key, plus ``/health`` and the simulator's own ``/_sim`` routes.

With ``require_key``, every route answers 401 without ``Authorization: Bearer KEY``
(nodes and ``/_sim`` included) except ``/health`` and the stream URL, which its one-time
token guards (a browser's EventSource cannot send a header).

``GET /_sim/stats``
    counters (``requests.*``, ``fault.*``, ``allocations.expired``, ``streams.*``),
    ``allocations_active``, ``active`` (their ids) and ``streams_active``.
``PUT /_sim/profile``
    a new :class:`Profile` as JSON, from the next request on.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from pydantic import ValidationError

from shim.base.orch import OrchConfig

from ._coordinator import coordinator_routes
from ._nodes import node_routes
from ._profile import Profile
from ._state import SimState, error
from ._streams import stream_routes, stream_token_routes

__all__ = ["SimState", "create_app"]


class _Unauthorized(Exception):
    pass


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

    ``require_key`` guards the routes with a Bearer key; ``product_key`` is the key
    ``/proxy/authorize`` accepts (None: any non-empty key).
    """
    state = SimState(config, profile or Profile())
    app = FastAPI(title="cf-orch simulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = state

    async def check_key(authorization: Annotated[str | None, Header()] = None) -> None:
        if require_key is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(given.encode(), require_key.encode()):
            state.count("unauthorized")
            raise _Unauthorized

    guarded = [Depends(check_key)]
    app.include_router(coordinator_routes(state), dependencies=guarded)
    app.include_router(node_routes(state), dependencies=guarded)
    app.include_router(stream_token_routes(state, product_key), dependencies=guarded)
    app.include_router(_sim_routes(state), dependencies=guarded)
    app.include_router(stream_routes(state))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request: Request, exc: _Unauthorized) -> Response:
        return error(
            401, "unauthorized", "missing or wrong Bearer token", **{"WWW-Authenticate": "Bearer"}
        )

    return app
