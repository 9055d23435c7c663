"""The API's errors: one exception carrying the status, one JSON shape.

Handlers raise :class:`ApiError`; the route wrapper turns it into
``{"error": "..."}`` with its status.  Failures of the database or of Redis are
translated here, in one place, into 503 responses naming which store is down, so a
stopped PostgreSQL makes the API say so instead of answering 500.
"""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg
import redis.exceptions
from starlette.responses import JSONResponse

__all__ = [
    "DATABASE_DOWN",
    "REDIS_DOWN",
    "ApiError",
    "error_response",
    "unavailable_error",
]

# What "the database cannot be used right now" looks like from asyncpg: no socket,
# a lost or refused connection, a server shutting down, or no answer in time.
# InternalClientError is what a pooled connection whose backend was terminated
# raises when the next query races the connection's teardown (seen in CI).
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


class ApiError(Exception):
    """A request that gets an error response: HTTP status and a message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(error: ApiError) -> JSONResponse:
    """The JSON response for an :class:`ApiError`."""
    return JSONResponse(
        {"error": error.message}, status_code=error.status, headers=error.headers
    )


def unavailable_error(error: BaseException) -> ApiError | None:
    """A 503 naming the store that failed, or ``None`` if ``error`` is no outage."""
    if isinstance(error, REDIS_DOWN):
        return ApiError(503, "the latest-position store (Redis) is unavailable")
    if isinstance(error, DATABASE_DOWN):
        return ApiError(503, "the database is unavailable; try again shortly")
    return None
