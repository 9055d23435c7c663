"""The route table's shape, and the OpenAPI 3.1 document built from it.

Each :class:`Endpoint` describes one method on one path: its handler, whether it
is public, and enough about its parameters and body for the OpenAPI document.  The
application and the document are built from the same table, so a route cannot be
served without being documented (and the tests refuse a protected route that
answers without authentication).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["PREFIX", "Endpoint", "QueryParam", "openapi_document"]

PREFIX = "/api/v1"

Handler = Callable[[Request], Awaitable[Response]]

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_PATH_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


@dataclass(frozen=True)
class QueryParam:
    """A query parameter of an endpoint."""

    name: str
    description: str
    required: bool = False
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Endpoint:
    """One method on one path of the API (``path`` without the ``/api/v1`` prefix)."""

    method: str
    path: str
    handler: Handler
    summary: str
    public: bool = False
    status: int = 200
    body: dict[str, Any] | None = None
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = (400,)

    @property
    def full_path(self) -> str:
        """The Starlette path, with the prefix."""
        return PREFIX + self.path

    @property
    def openapi_path(self) -> str:
        """The OpenAPI path: ``{device_id:int}`` becomes ``{device_id}``."""
        return _PATH_PARAM.sub(r"{\1}", self.full_path)


def openapi_document(
    endpoints: Sequence[Endpoint], websocket_path: str
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the given endpoints and the live WebSocket."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operations = paths.setdefault(endpoint.openapi_path, {})
        operations[endpoint.method.lower()] = _operation(endpoint)
    paths[websocket_path] = {"get": _websocket_operation()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Rastro API",
            "version": "1",
            "description": (
                "Real-time GPS fleet tracking. Authenticate with the session cookie "
                "set by POST /session or with Authorization: Bearer <token>."
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "rastro_session"},
            },
            "schemas": {"Error": _ERROR},
        },
        "security": [{"bearer": []}, {"cookie": []}],
    }


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": endpoint.handler.__name__,
        "responses": _responses(endpoint),
    }
    parameters = _path_parameters(endpoint) + [
        _query_parameter(param) for param in endpoint.query
    ]
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": endpoint.body}},
        }
    if endpoint.public:
        operation["security"] = []
    return operation


def _responses(endpoint: Endpoint) -> dict[str, Any]:
    error = {
        "description": "error",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
        },
    }
    responses: dict[str, Any] = {str(endpoint.status): {"description": "success"}}
    codes = set(endpoint.errors) | ({401, 503} - ({401} if endpoint.public else set()))
    for code in sorted(codes):
        responses[str(code)] = error
    return responses


def _path_parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}
        for name in _PATH_PARAM.findall(endpoint.full_path)
    ]


def _query_parameter(param: QueryParam) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": "query",
        "required": param.required,
        "description": param.description,
        "schema": param.schema,
    }


def _websocket_operation() -> dict[str, Any]:
    return {
        "summary": (
            "Live feed (WebSocket upgrade): pushes "
            '{"type": "position", "position": {...}} for each new fix of a device '
            "the caller may see. Refused with HTTP 403 when unauthenticated."
        ),
        "operationId": "live",
        "responses": {
            "101": {"description": "switching to the WebSocket protocol"},
            "403": {"description": "not authenticated"},
        },
    }
