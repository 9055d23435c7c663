"""The handlers behind every REST route (the route table is in :mod:`.app`).

Handlers of protected routes find the caller in ``request.state.user`` (put there
by the route wrapper after authentication) and raise :class:`ApiError` for every
refusal.  A device outside the caller's view answers 404, never 403.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipeline.api import auth
from pipeline.api.context import ApiContext
from pipeline.api.errors import ApiError
from pipeline.api.live import LiveHub
from pipeline.store import devices, history, latest, tokens, users
from pipeline.store.users import User

__all__ = [
    "create_device",
    "create_token",
    "create_user",
    "delete_device",
    "device_positions",
    "get_device",
    "health",
    "latest_positions",
    "list_devices",
    "list_users",
    "login",
    "logout",
    "report_positions",
    "update_device",
]

_MAX_TEXT = 128
MAX_JSON_BYTES = 64 * 1024


def context_of(request: Request) -> ApiContext:
    """The application's :class:`ApiContext`."""
    context: ApiContext = request.app.state.context
    return context


def caller(request: Request) -> User:
    """The authenticated user of a protected route."""
    user: User = request.state.user
    return user


def view_of(user: User) -> int | None:
    """The owner filter for the user: ``None`` (everything) for administrators."""
    return None if user.is_admin else user.id


# -- session and tokens ----------------------------------------------------------------


async def login(request: Request) -> Response:
    """Check a user name and password; set the session cookie and return the token."""
    context = context_of(request)
    body = await _json_object(request)
    name = _text(body, "user")
    password = _text(body, "password", limit=1024)
    address = request.client.host if request.client else "unknown"

    user = await auth.check_login(
        context.pool, context.login_limiter, name, password, address
    )
    token = await tokens.issue_token(
        context.pool, user.id, "session", auth.SESSION_LIFETIME
    )

    response = JSONResponse({"token": token, "user": user.to_json()})
    response.set_cookie(
        auth.SESSION_COOKIE,
        token,
        max_age=int(auth.SESSION_LIFETIME.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    """End the presented session; the cookie is cleared."""
    presented = auth.presented_token(request)
    if presented is not None:
        await tokens.delete_token(context_of(request).pool, presented[1], "session")

    response = Response(status_code=204)
    response.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True)
    return response


async def create_token(request: Request) -> Response:
    """Mint a long-lived API token for a program acting as the caller."""
    body = await _json_object(request, allow_empty=True)
    days = body.get("days", auth.API_TOKEN_LIFETIME.days)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        message = f"days must be a whole number from 1 to 3650, got {days!r}"
        raise ApiError(400, message)

    lifetime = timedelta(days=days)
    token = await tokens.issue_token(
        context_of(request).pool, caller(request).id, "api", lifetime
    )
    expires = datetime.now(UTC) + lifetime
    return JSONResponse(
        {"token": token, "expiresAt": expires.isoformat()}, status_code=201
    )


# -- users -----------------------------------------------------------------------------


async def list_users(request: Request) -> Response:
    """Every user (administrators only)."""
    _require_admin(request)
    found = await users.list_users(context_of(request).pool)
    return JSONResponse([user.to_json() for user in found])


async def create_user(request: Request) -> Response:
    """Create a user with a name and password (administrators only)."""
    _require_admin(request)
    body = await _json_object(request)
    name = _text(body, "name")
    password = _text(body, "password", limit=1024)
    if len(password) < 8:
        raise ApiError(400, "password must be at least 8 characters")
    is_admin = body.get("isAdmin", False)
    if not isinstance(is_admin, bool):
        raise ApiError(400, f"isAdmin must be true or false, got {is_admin!r}")

    try:
        user = await users.create_user(
            context_of(request).pool, name, password, is_admin=is_admin
        )
    except users.UserExistsError as error:
        raise ApiError(409, str(error)) from error
    return JSONResponse(user.to_json(), status_code=201)


def _require_admin(request: Request) -> None:
    if not caller(request).is_admin:
        raise ApiError(403, "only administrators may manage users")


# -- devices ---------------------------------------------------------------------------


async def list_devices(request: Request) -> Response:
    """The caller's devices (every device for administrators)."""
    found = await devices.list_devices(
        context_of(request).pool, view_of(caller(request))
    )
    return JSONResponse([device.to_json() for device in found])


async def create_device(request: Request) -> Response:
    """Register a device owned by the caller; 409 when the uniqueId is taken."""
    body = await _json_object(request)
    unique_id = _text(body, "uniqueId")
    name = _text(body, "name")
    attributes = _attributes(body.get("attributes", {}))
    user = caller(request)

    try:
        device = await devices.create_device(
            context_of(request).pool, user.id, unique_id, name, attributes
        )
    except devices.DeviceExistsError as error:
        raise ApiError(409, str(error)) from error
    _devices_changed(request, user.id, device.unique_id)
    return JSONResponse(device.to_json(), status_code=201)


async def get_device(request: Request) -> Response:
    """One device in the caller's view."""
    device = await _visible_device(request)
    return JSONResponse(device.to_json())


async def update_device(request: Request) -> Response:
    """Change a device's name, uniqueId or attributes (only what the body holds)."""
    body = await _json_object(request)
    unknown = sorted(set(body) - {"uniqueId", "name", "attributes"})
    if unknown:
        raise ApiError(400, f"unknown fields: {unknown}")
    changes: dict[str, Any] = {}
    if "uniqueId" in body:
        changes["unique_id"] = _text(body, "uniqueId")
    if "name" in body:
        changes["name"] = _text(body, "name")
    if "attributes" in body:
        changes["attributes"] = _attributes(body["attributes"])

    user = caller(request)
    try:
        device = await devices.update_device(
            context_of(request).pool, _device_id(request), view_of(user), changes
        )
    except devices.DeviceExistsError as error:
        raise ApiError(409, str(error)) from error
    if device is None:
        raise _no_such_device(request)
    # A changed uniqueId leaves the old one cached too: forget them all.
    _devices_changed(request, device.owner_id, None)
    return JSONResponse(device.to_json())


async def delete_device(request: Request) -> Response:
    """Remove a device from the caller's view (its history stays in ``fixes``)."""
    device = await devices.delete_device(
        context_of(request).pool, _device_id(request), view_of(caller(request))
    )
    if device is None:
        raise _no_such_device(request)
    _devices_changed(request, device.owner_id, device.unique_id)
    return Response(status_code=204)


async def _visible_device(request: Request) -> devices.Device:
    device = await devices.get_device(
        context_of(request).pool, _device_id(request), view_of(caller(request))
    )
    if device is None:
        raise _no_such_device(request)
    return device


def _device_id(request: Request) -> int:
    return int(request.path_params["device_id"])


def _no_such_device(request: Request) -> ApiError:
    return ApiError(404, f"no device with id {_device_id(request)}")


def _hub(request: Request) -> LiveHub:
    hub: LiveHub = request.app.state.hub
    return hub


def _devices_changed(request: Request, owner_id: int, unique_id: str | None) -> None:
    """Tell the live hub and this process's ingest cache that devices changed.

    ``unique_id`` ``None`` forgets every cached ownership answer.  Other ingest
    instances notice within their directory's TTL.
    """
    _hub(request).devices_changed(owner_id)
    ingest = context_of(request).ingest
    if ingest is not None and ingest.directory is not None:
        ingest.directory.forget(unique_id)


# -- positions -------------------------------------------------------------------------


async def latest_positions(request: Request) -> Response:
    """The newest fix of each of the caller's devices, from Redis."""
    context = context_of(request)
    unique_ids = await devices.owned_unique_ids(context.pool, view_of(caller(request)))
    found = await latest.latest_fixes(context.redis, unique_ids)
    return JSONResponse(found)


async def device_positions(request: Request) -> Response:
    """A device's fixes with ``from <= time < to``, oldest first."""
    context = context_of(request)
    start = _query_time(request, "from")
    end = _query_time(request, "to")
    if end <= start:
        raise ApiError(400, "to must be later than from")
    if end - start > timedelta(days=context.history_max_days):
        message = f"from and to may be at most {context.history_max_days} days apart"
        raise ApiError(400, message)
    limit = _query_limit(request, context.history_max_limit)

    device = await _visible_device(request)
    found = await history.fixes_between(
        context.pool, device.unique_id, start, end, limit
    )
    return JSONResponse(found)


async def report_positions(request: Request) -> Response:
    """Device ingest over HTTP, for devices the caller owns.

    Parsing, validation and publishing to Kafka belong to the ingest tier
    (``pipeline.ingest.http``), imported only when a device first reports.
    """
    context = context_of(request)
    if context.ingest is None:
        raise ApiError(503, "position ingest is not running in this process")
    # Imported late: the rest of the API runs without the ingest tier (and Kafka).
    from pipeline.ingest.http import ingest_positions

    user = caller(request)
    directory = context.ingest.directory
    owned: asyncio.Task[set[str]] | None = None

    async def may_report(unique_id: str) -> bool:
        # Called for every device of a batch at once: the directory answers them
        # all from one cached query; without one, the owned set is read once.
        nonlocal owned
        if directory is not None:
            return await directory.owner_of(unique_id) == user.id
        if owned is None:
            owned = asyncio.create_task(devices.owned_unique_ids(context.pool, user.id))
        return unique_id in await owned

    return await ingest_positions(request, context.ingest, may_report)


def _query_time(request: Request, name: str) -> datetime:
    raw = request.query_params.get(name)
    if not raw:
        raise ApiError(400, f"query parameter {name!r} is required (ISO-8601)")
    moment = _parse_iso(raw)
    if moment is None:
        raise ApiError(400, f"query parameter {name!r} must be ISO-8601, got {raw!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _parse_iso(raw: str) -> datetime | None:
    # An unencoded "+01:00" arrives as " 01:00": a query string's "+" means space.
    for candidate in (raw, raw.replace(" ", "+")):
        try:
            return datetime.fromisoformat(candidate)
        except ValueError:
            continue
    return None


def _query_limit(request: Request, maximum: int) -> int:
    raw = request.query_params.get("limit", "10000")
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        message = f"limit must be a whole number from 1 to {maximum}, got {raw!r}"
        raise ApiError(400, message)
    return limit


# -- health ----------------------------------------------------------------------------


async def health(request: Request) -> Response:
    """Liveness, and whether the whole pipeline runs yet (``ready``).

    Always 200 while the process answers; ``ready`` is false until the streaming
    job runs, so a probe or a script can wait for it.  Touches no store.
    """
    ready = context_of(request).ready
    return JSONResponse({"status": "ok", "ready": ready is None or ready.is_set()})


# -- request bodies --------------------------------------------------------------------


async def _json_object(
    request: Request, *, allow_empty: bool = False
) -> dict[str, Any]:
    raw = await _limited_body(request)
    if not raw.strip() and allow_empty:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "the request body must be JSON") from error
    if not isinstance(body, dict):
        kind = type(body).__name__
        raise ApiError(400, f"the request body must be a JSON object, got {kind}")
    return body


async def _limited_body(request: Request) -> bytes:
    # Bodies of these routes are small; a huge one is refused, not buffered.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            message = f"the request body must be at most {MAX_JSON_BYTES} bytes"
            raise ApiError(413, message)
        chunks.append(chunk)
    return b"".join(chunks)


def _text(body: dict[str, Any], name: str, *, limit: int = _MAX_TEXT) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        # The value is not echoed: it may be a password.
        got = "nothing" if value is None else type(value).__name__
        raise ApiError(400, f"{name} must be a non-empty string, got {got}")
    if len(value) > limit:
        raise ApiError(400, f"{name} must be at most {limit} characters")
    return value if name == "password" else value.strip()


def _attributes(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(400, f"attributes must be a JSON object, got {value!r}")
    return value
