"""The API application: its route table, the wrapper every route runs in, Hypercorn.

:func:`create_api` builds a Starlette app from an :class:`ApiContext`.  Every route
comes from :data:`ENDPOINTS` and runs inside one wrapper that authenticates the
caller (unless the endpoint is public), turns :class:`ApiError` into
``{"error": ...}`` and an unreachable database or Redis into 503.
:func:`serve_api` runs an app under Hypercorn, which speaks HTTP/1.1 and HTTP/2
over cleartext (h2c, by upgrade or prior knowledge).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from pipeline.api import motion, notifications, routes
from pipeline.api.auth import authenticate
from pipeline.api.context import ApiContext
from pipeline.api.errors import DATABASE_DOWN, ApiError, error_response
from pipeline.api.errors import unavailable_error as _unavailable
from pipeline.api.live import LiveHub, serve_connection
from pipeline.api.openapi import PREFIX, Endpoint, QueryParam, openapi_document
from pipeline.store import devices

__all__ = [
    "ENDPOINTS",
    "LIVE_PATH",
    "ApiContext",
    "Endpoint",
    "create_api",
    "serve_api",
]

log = structlog.get_logger()

LIVE_PATH = PREFIX + "/live"
_REFUSALS: tuple[type[BaseException], ...] = (ApiError, *DATABASE_DOWN)

_STRING = {"type": "string"}
_OBJECT = {"type": "object"}
_DEVICE_BODY = {
    "type": "object",
    "properties": {"uniqueId": _STRING, "name": _STRING, "attributes": _OBJECT},
    "required": ["uniqueId", "name"],
}


async def _openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document of this API."""
    return JSONResponse(openapi_document(ENDPOINTS, LIVE_PATH))


_CORE_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/health", routes.health, "Liveness check", public=True),
    Endpoint("GET", "/openapi.json", _openapi, "This document", public=True),
    Endpoint(
        "POST",
        "/session",
        routes.login,
        "Log in: sets the session cookie and returns the token",
        public=True,
        body={
            "type": "object",
            "properties": {"user": _STRING, "password": _STRING},
            "required": ["user", "password"],
        },
        errors=(400, 401, 429),
    ),
    Endpoint("DELETE", "/session", routes.logout, "Log out", status=204),
    Endpoint(
        "POST",
        "/tokens",
        routes.create_token,
        "Mint a long-lived API token for programs",
        status=201,
        body={"type": "object", "properties": {"days": {"type": "integer"}}},
    ),
    Endpoint("GET", "/users", routes.list_users, "List users (admin)", errors=(403,)),
    Endpoint(
        "POST",
        "/users",
        routes.create_user,
        "Create a user (admin)",
        status=201,
        body={
            "type": "object",
            "properties": {
                "name": _STRING,
                "password": _STRING,
                "isAdmin": {"type": "boolean"},
            },
            "required": ["name", "password"],
        },
        errors=(400, 403, 409),
    ),
    Endpoint("GET", "/devices", routes.list_devices, "The caller's devices"),
    Endpoint(
        "POST",
        "/devices",
        routes.create_device,
        "Register a device owned by the caller",
        status=201,
        body=_DEVICE_BODY,
        errors=(400, 409),
    ),
    Endpoint(
        "GET",
        "/devices/{device_id:int}",
        routes.get_device,
        "One device",
        errors=(404,),
    ),
    Endpoint(
        "PUT",
        "/devices/{device_id:int}",
        routes.update_device,
        "Change a device",
        body={**_DEVICE_BODY, "required": []},
        errors=(400, 404, 409),
    ),
    Endpoint(
        "DELETE",
        "/devices/{device_id:int}",
        routes.delete_device,
        "Remove a device",
        status=204,
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/devices/{device_id:int}/positions",
        routes.device_positions,
        "A device's fixes between two times",
        query=(
            QueryParam("from", "start, ISO-8601, inclusive", required=True),
            QueryParam("to", "end, ISO-8601, exclusive", required=True),
            QueryParam("limit", "at most this many fixes", schema={"type": "integer"}),
        ),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        "/positions/latest",
        routes.latest_positions,
        "The newest fix of each of the caller's devices",
    ),
    Endpoint(
        "POST",
        "/positions",
        routes.report_positions,
        "Report fixes (JSON object or array, or protobuf Fix/FixBatch)",
        body={"oneOf": [_OBJECT, {"type": "array", "items": _OBJECT}]},
        errors=(400,),
    ),
)

#: Every route: the core ones here, then each area's own table.
ENDPOINTS: tuple[Endpoint, ...] = (
    _CORE_ENDPOINTS + motion.ENDPOINTS + notifications.ENDPOINTS
)


def create_api(context: ApiContext) -> Starlette:
    """The Starlette application of the API, bound to ``context``."""
    hub = LiveHub(
        context.live_source,
        events_source=context.events_source,
        queue_size=context.live_queue_size,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with hub.running():
            yield

    table: list[BaseRoute] = [
        Route(endpoint.full_path, _guarded(endpoint), methods=[endpoint.method])
        for endpoint in ENDPOINTS
    ]
    table.append(WebSocketRoute(LIVE_PATH, _live))
    app = Starlette(
        routes=table,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},  # type: ignore[dict-item]
    )
    app.state.context = context
    app.state.hub = hub
    return app


def _guarded(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint's handler inside authentication and error translation."""

    async def run(request: Request) -> Response:
        try:
            if not endpoint.public:
                pool = request.app.state.context.pool
                request.state.user = await authenticate(pool, request)
            return await endpoint.handler(request)
        except ApiError as error:
            return error_response(error)
        except Exception as error:
            outage = _unavailable(error)
            if outage is None:
                raise
            log.warning(
                "api_store_unavailable",
                path=endpoint.path,
                error=type(error).__name__,
            )
            return error_response(outage)

    run.__name__ = endpoint.handler.__name__
    run.__doc__ = endpoint.handler.__doc__
    return run


async def _http_error(request: Request, error: HTTPException) -> Response:
    # The router's own 404 and 405 answers, in the API's JSON shape.
    return JSONResponse(
        {"error": error.detail}, status_code=error.status_code, headers=error.headers
    )


async def _live(websocket: WebSocket) -> None:
    context: ApiContext = websocket.app.state.context
    hub: LiveHub = websocket.app.state.hub
    try:
        user = await authenticate(context.pool, websocket)
        view = None if user.is_admin else user.id
        visible = (
            None if view is None else await devices.owned_unique_ids(context.pool, view)
        )
    except _REFUSALS as error:
        log.info("live_refused", reason=type(error).__name__)
        # Closing before accepting makes the server answer the handshake with 403.
        await websocket.close(code=4401)
        return

    await websocket.accept()
    subscription = hub.subscribe(
        user.id, None if visible is None else frozenset(visible)
    )
    log.info("live_connected", user=user.name, connections=hub.subscriptions)

    async def load_devices() -> set[str]:
        return await devices.owned_unique_ids(context.pool, view)

    await serve_connection(
        websocket, hub, subscription, load_devices, context.live_refresh_s
    )
    log.info("live_disconnected", user=user.name, connections=hub.subscriptions)


async def serve_api(
    app: ASGIApp, host: str, port: int, shutdown_event: asyncio.Event
) -> None:
    """Serve ``app`` with Hypercorn on ``host:port`` until ``shutdown_event`` is set.

    Hypercorn speaks HTTP/1.1 and HTTP/2 over cleartext (h2c) on the same port.
    """
    config = Config()
    config.bind = [f"{host}:{port}"]
    # No access log: the structured logs say what matters, and URLs stay out of them.
    config.accesslog = None
    config.errorlog = logging.getLogger("rastro.api.hypercorn")
    config.graceful_timeout = 3.0
    log.info("api_listening", host=host, port=port)
    await serve(app, config, shutdown_trigger=shutdown_event.wait)  # type: ignore[arg-type]
