"""Routes of what the streaming job derives: trips, stops, summaries, events, H3
aggregates, and the geofences it evaluates.

Every route works in the caller's view: a device, event or geofence of another user
answers 404 (never 403), an administrator sees everything.  Times are ISO-8601 (a
query's ``from`` is inclusive, ``to`` exclusive), distances metres, durations
seconds, speeds km/h.

``GET /h3`` answers fleet-wide aggregates (from the hourly table the refresh keeps)
to administrators only; an ordinary user gets the same numbers computed from the
fixes of their own devices, so no one learns where other users' vehicles go.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import h3
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from geo.events import EVENT_TYPES
from geo.geofences import (
    CircleFence,
    CorridorFence,
    Geofence,
    InvalidGeofence,
    geofence_from_geojson,
)
from pipeline.api.errors import ApiError
from pipeline.api.openapi import Endpoint, QueryParam
from pipeline.api.routes import (
    _query_time,
    _visible_device,
    caller,
    context_of,
    view_of,
)
from pipeline.store import aggregates, devices, events, geofences, motion

__all__ = [
    "ENDPOINTS",
    "H3_TIMEOUT_S",
    "MAX_BBOX_CELLS",
    "MAX_GEOFENCE_BYTES",
    "create_geofence",
    "delete_geofence",
    "device_idles",
    "device_stops",
    "device_summary",
    "device_trips",
    "device_visits",
    "get_geofence",
    "h3_cells",
    "list_events",
    "list_geofences",
    "update_geofence",
]

#: Largest span of a trips, stops, idles, visits, events or summary query, in days.
MAX_RECORD_DAYS: Final = 366
#: Records one query returns by default and at most.
DEFAULT_RECORDS: Final = 1_000
MAX_RECORDS: Final = 10_000
#: Cells ``GET /h3`` returns by default and at most (the busiest first).
DEFAULT_CELLS: Final = 10_000
MAX_CELLS: Final = 50_000
#: Seconds ``GET /h3`` may aggregate before it gives up with 503.
H3_TIMEOUT_S: Final = 30.0
#: A bbox may cover at most about this many cells of the asked resolution.
MAX_BBOX_CELLS: Final = 200_000
#: A geofence body may be this large (a detailed polygon has many vertices).
MAX_GEOFENCE_BYTES: Final = 1024 * 1024
#: Devices or groups one geofence may be assigned to.
MAX_ASSIGNED: Final = 10_000
_MAX_NAME: Final = 128
#: A store function reading one device's records in a window.
_Reader = Callable[
    [asyncpg.Pool, str, datetime, datetime, int], Awaitable[list[dict[str, Any]]]
]
#: Properties the API reads or writes itself; the rest are kept as attributes.
_OWN_PROPERTIES: Final = frozenset(
    {
        "name",
        "kind",
        "radius",
        "width",
        "speedLimit",
        "devices",
        "groups",
        "version",
        "createdAt",
        "updatedAt",
    }
)


# -- a device's motion -----------------------------------------------------------------


async def device_trips(request: Request) -> Response:
    """A device's trips overlapping ``[from, to)``, oldest first."""
    return await _device_records(request, motion.trips_between)


async def device_stops(request: Request) -> Response:
    """A device's stops overlapping ``[from, to)``, oldest first."""
    return await _device_records(request, motion.stops_between)


async def device_idles(request: Request) -> Response:
    """A device's idle periods (engine on, standing) overlapping ``[from, to)``."""
    return await _device_records(request, motion.idles_between)


async def device_visits(request: Request) -> Response:
    """A device's geofence visits overlapping ``[from, to)``, oldest first."""
    return await _device_records(request, motion.visits_between)


async def _device_records(request: Request, read: _Reader) -> Response:
    start, end = _window(request, MAX_RECORD_DAYS)
    limit = _query_int(request, "limit", DEFAULT_RECORDS, 1, MAX_RECORDS)

    device = await _visible_device(request)
    found = await read(context_of(request).pool, device.unique_id, start, end, limit)
    return JSONResponse(found)


async def device_summary(request: Request) -> Response:
    """A row per local day of a device: distance, driving and idle time, stops."""
    pool = context_of(request).pool
    zone = request.query_params.get("tz") or await motion.user_time_zone(
        pool, caller(request).id
    )
    local = _time_zone(zone)
    first, last = _local_days(request, local)

    device = await _visible_device(request)
    days = await motion.daily_summaries(pool, device.unique_id, zone, first, last)
    return JSONResponse(
        {
            "deviceId": device.id,
            "uniqueId": device.unique_id,
            "timeZone": zone,
            "days": days,
        }
    )


def _time_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        message = f"tz must be an IANA time zone such as Europe/Lisbon, got {name!r}"
        raise ApiError(400, message) from error


def _local_days(request: Request, zone: ZoneInfo) -> tuple[date, date]:
    """The local days whose span overlaps ``[from, to)``: first and last."""
    first = _local_bound(request, "from", zone)
    end = _local_bound(request, "to", zone)
    if end <= first:
        raise ApiError(400, "to must be later than from")

    last_day = (end - timedelta(microseconds=1)).date()
    if (last_day - first.date()).days >= MAX_RECORD_DAYS:
        message = f"from and to may be at most {MAX_RECORD_DAYS} days apart"
        raise ApiError(400, message)
    return first.date(), last_day


def _local_bound(request: Request, name: str, zone: ZoneInfo) -> datetime:
    # A plain date is local midnight; a time is converted into the zone.
    raw = request.query_params.get(name, "")
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        return _query_time(request, name).astimezone(zone).replace(tzinfo=None)
    return datetime(day.year, day.month, day.day)


# -- events ----------------------------------------------------------------------------


async def list_events(request: Request) -> Response:
    """Events of the caller's devices in ``[from, to)``, newest first."""
    context = context_of(request)
    start, end = _window(request, MAX_RECORD_DAYS)
    limit = _query_int(request, "limit", DEFAULT_RECORDS, 1, MAX_RECORDS)
    event_type = request.query_params.get("type")
    if event_type is not None and event_type not in EVENT_TYPES:
        message = f"type must be one of {sorted(EVENT_TYPES)}, got {event_type!r}"
        raise ApiError(400, message)
    view = view_of(caller(request))

    unique_id = None
    if "device" in request.query_params:
        device_id = _query_int(request, "device", 0, 1, 2**63 - 1)
        device = await devices.get_device(context.pool, device_id, view)
        if device is None:
            raise ApiError(404, f"no device with id {device_id}")
        unique_id = device.unique_id

    found = await events.events_between(
        context.pool,
        owner_id=view,
        unique_id=unique_id,
        event_type=event_type,
        start=start,
        end=end,
        limit=limit,
    )
    return JSONResponse(found)


# -- H3 aggregates ---------------------------------------------------------------------


async def h3_cells(request: Request) -> Response:
    """Aggregates per H3 cell over the whole hours of ``[from, to)``."""
    context = context_of(request)
    resolution = _query_int(request, "resolution", -1, 0, 15)
    start, end = _window(request, context.history_max_days)
    start = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = _ceil_hour(end)
    limit = _query_int(request, "limit", DEFAULT_CELLS, 1, MAX_CELLS)
    bbox = _bbox(request)

    stored = await aggregates.refreshed(context.pool)
    if stored is not None:
        _check_aggregated(resolution, stored)
    cells = None
    if bbox is not None:
        cells = await asyncio.to_thread(_cells_in_bbox, bbox, resolution)
    user = caller(request)
    scope = (
        None
        if user.is_admin
        else sorted(await devices.owned_unique_ids(context.pool, user.id))
    )

    try:
        page = await aggregates.cells_over_period(
            context.pool,
            resolution=resolution,
            start=start,
            end=end,
            cells=cells,
            devices=scope,
            limit=limit,
            settings=None if stored is None else stored.settings,
            timeout_s=H3_TIMEOUT_S,
        )
    except asyncpg.QueryCanceledError as error:
        message = (
            f"aggregating took longer than {H3_TIMEOUT_S:g} s; ask for fewer hours, "
            "a coarser resolution or a smaller bbox"
        )
        raise ApiError(503, message) from error
    return JSONResponse(
        {
            "resolution": resolution,
            "from": motion.iso_time(start),
            "to": motion.iso_time(end),
            "scope": "fleet" if scope is None else "own devices",
            "cells": [_cell_json(row) for row in page.cells],
            "truncated": page.truncated,
        }
    )


def _check_aggregated(resolution: int, stored: aggregates.Refreshed) -> None:
    coarsest, finest = stored.coarsest, stored.settings.resolution
    if not coarsest <= resolution <= finest:
        message = (
            f"resolution must be from {coarsest} to {finest} "
            f"(the resolutions aggregated), got {resolution}"
        )
        raise ApiError(400, message)


def _ceil_hour(moment: datetime) -> datetime:
    floor = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(hours=1)


def _bbox(request: Request) -> tuple[float, float, float, float] | None:
    raw = request.query_params.get("bbox")
    if raw is None:
        return None
    usage = "bbox must be minLon,minLat,maxLon,maxLat in degrees"
    try:
        west, south, east, north = (float(part) for part in raw.split(","))
    except ValueError as error:
        raise ApiError(400, f"{usage}, got {raw!r}") from error

    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise ApiError(400, f"{usage}, got {raw!r}")
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        message = (
            f"{usage} with minLon < maxLon within ±180 and minLat < maxLat within "
            f"±90 (split a box across the antimeridian in two), got {raw!r}"
        )
        raise ApiError(400, message)
    return west, south, east, north


def _cells_in_bbox(
    bbox: tuple[float, float, float, float], resolution: int
) -> list[int]:
    """Cells whose centre lies in the box; refused when there would be too many."""
    west, south, east, north = bbox
    middle = math.radians((south + north) / 2)
    width_m = math.radians(east - west) * 6_371_000 * max(math.cos(middle), 0.01)
    height_m = math.radians(north - south) * 6_371_000
    estimate = width_m * height_m / h3.average_hexagon_area(resolution, unit="m^2")
    if estimate > MAX_BBOX_CELLS:
        message = (
            f"bbox covers about {estimate:,.0f} cells of resolution {resolution}, "
            f"more than {MAX_BBOX_CELLS:,}: choose a coarser resolution or a "
            "smaller box"
        )
        raise ApiError(400, message)

    ring = [(south, west), (south, east), (north, east), (north, west)]
    found = h3.h3shape_to_cells(h3.LatLngPoly(ring), resolution)
    return [int(h3.str_to_int(cell)) for cell in found]


def _cell_json(row: dict[str, Any]) -> dict[str, Any]:
    text = format(row["cell"], "x")
    latitude, longitude = h3.cell_to_latlng(text)
    return {
        "cell": text,
        "latitude": round(latitude, 7),
        "longitude": round(longitude, 7),
        "fixes": row["fixes"],
        "vehicles": row["vehicles"],
        "hours": row["hours"],
        "meanSpeed": _rounded(row["mean_speed_kmh"]),
        "p95Speed": _rounded(row["p95_speed_kmh"]),
        "dwell": row["dwell_s"],
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# -- geofences -------------------------------------------------------------------------


async def list_geofences(request: Request) -> Response:
    """The caller's geofences as a GeoJSON FeatureCollection."""
    found = await geofences.list_geofences(
        context_of(request).pool, view_of(caller(request))
    )
    return JSONResponse(
        {"type": "FeatureCollection", "features": [g.to_feature() for g in found]}
    )


async def get_geofence(request: Request) -> Response:
    """One geofence in the caller's view, as a GeoJSON Feature."""
    found = await geofences.get_geofence(
        context_of(request).pool, _geofence_id(request), view_of(caller(request))
    )
    if found is None:
        raise _no_such_geofence(request)
    return JSONResponse(found.to_feature())


async def create_geofence(request: Request) -> Response:
    """Store a geofence owned by the caller from a GeoJSON Feature."""
    draft = await _draft(request, None)
    user = caller(request)

    try:
        stored = await geofences.create_geofence(
            context_of(request).pool, user.id, view_of(user), draft
        )
    except geofences.UnknownAssignmentError as error:
        raise ApiError(400, str(error)) from error
    return JSONResponse(stored.to_feature(), status_code=201)


async def update_geofence(request: Request) -> Response:
    """Replace a geofence; ``devices``/``groups`` absent keep the assignments."""
    draft = await _draft(request, _geofence_id(request))

    try:
        stored = await geofences.update_geofence(
            context_of(request).pool,
            _geofence_id(request),
            view_of(caller(request)),
            draft,
        )
    except geofences.UnknownAssignmentError as error:
        raise ApiError(400, str(error)) from error
    if stored is None:
        raise _no_such_geofence(request)
    return JSONResponse(stored.to_feature())


async def delete_geofence(request: Request) -> Response:
    """Remove a geofence (its past visits stay in history)."""
    removed = await geofences.delete_geofence(
        context_of(request).pool, _geofence_id(request), view_of(caller(request))
    )
    if not removed:
        raise _no_such_geofence(request)
    return Response(status_code=204)


def _geofence_id(request: Request) -> int:
    return int(request.path_params["geofence_id"])


def _no_such_geofence(request: Request) -> ApiError:
    return ApiError(404, f"no geofence with id {_geofence_id(request)}")


async def _draft(request: Request, geofence_id: int | None) -> geofences.GeofenceDraft:
    """The request's GeoJSON Feature checked and turned into what is stored."""
    feature = await _feature(request)
    if geofence_id is not None and feature.get("id", geofence_id) != geofence_id:
        message = f"the Feature's id {feature['id']!r} is not {geofence_id}"
        raise ApiError(400, message)
    properties = feature.get("properties")
    if not isinstance(properties, dict):
        message = "a geofence Feature needs properties with at least a name"
        raise ApiError(400, message)
    name = _name(properties.get("name"))
    assigned = {
        key: _ids(properties[key], key)
        for key in ("devices", "groups")
        if key in properties
    }

    try:
        fence = await asyncio.to_thread(
            geofence_from_geojson, feature, fence_id=name, name=name
        )
    except InvalidGeofence as error:
        raise ApiError(400, str(error)) from error
    attributes = {k: v for k, v in properties.items() if k not in _OWN_PROPERTIES}
    return geofences.GeofenceDraft(
        name=name,
        kind=_kind(fence),
        geometry={
            "type": "Feature",
            "geometry": fence.geometry(),
            "properties": fence.extra_properties(),
        },
        speed_limit_kmh=fence.speed_limit_kmh,
        attributes=attributes,
        devices=assigned.get("devices"),
        groups=assigned.get("groups"),
    )


async def _feature(request: Request) -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_GEOFENCE_BYTES:
            message = f"the request body must be at most {MAX_GEOFENCE_BYTES} bytes"
            raise ApiError(413, message)
        chunks.append(chunk)

    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "the request body must be JSON") from error
    if not isinstance(body, dict) or body.get("type") != "Feature":
        got = body.get("type") if isinstance(body, dict) else type(body).__name__
        message = f"the request body must be a GeoJSON Feature, got {got!r}"
        raise ApiError(400, message)
    return body


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        got = "nothing" if value is None else repr(value)
        raise ApiError(400, f"properties.name must be a non-empty string, got {got}")
    if len(value) > _MAX_NAME:
        raise ApiError(400, f"properties.name must be at most {_MAX_NAME} characters")
    return value.strip()


def _ids(value: Any, key: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_ASSIGNED
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**63
            for v in value
        )
    ):
        message = (
            f"properties.{key} must be a list of at most {MAX_ASSIGNED} ids "
            f"(positive whole numbers), got {_short(value)}"
        )
        raise ApiError(400, message)
    return tuple(value)


def _kind(fence: Geofence) -> str:
    if isinstance(fence, CircleFence):
        return "circle"
    if isinstance(fence, CorridorFence):
        return "corridor"
    return "polygon"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- query parameters ------------------------------------------------------------------


def _window(request: Request, max_days: int) -> tuple[datetime, datetime]:
    start = _query_time(request, "from")
    end = _query_time(request, "to")
    if end <= start:
        raise ApiError(400, "to must be later than from")
    if end - start > timedelta(days=max_days):
        raise ApiError(400, f"from and to may be at most {max_days} days apart")
    return start, end


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None and default >= low:
        return default
    try:
        value = int(raw or "")
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        got = "nothing" if raw is None else repr(raw)
        message = f"{name} must be a whole number from {low} to {high}, got {got}"
        raise ApiError(400, message)
    return value


# -- the route table -------------------------------------------------------------------

_WINDOW = (
    QueryParam("from", "start, ISO-8601, inclusive", required=True),
    QueryParam("to", "end, ISO-8601, exclusive", required=True),
)
_LIMIT = QueryParam(
    "limit",
    f"at most this many records ({DEFAULT_RECORDS} by default, {MAX_RECORDS} at most)",
    schema={"type": "integer"},
)
_GEOFENCE_BODY: dict[str, Any] = {
    "type": "object",
    "description": (
        "A GeoJSON Feature. geometry: Polygon or MultiPolygon; Point with "
        "properties.radius (metres) for a circle; LineString with properties.width "
        "(metres) for a corridor. properties: name (required), speedLimit (km/h), "
        "devices and groups (ids it applies to), any other keys kept as they are."
    ),
    "properties": {
        "type": {"const": "Feature"},
        "geometry": {"type": "object"},
        "properties": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "radius": {"type": "number"},
                "width": {"type": "number"},
                "speedLimit": {"type": "number"},
                "devices": {"type": "array", "items": {"type": "integer"}},
                "groups": {"type": "array", "items": {"type": "integer"}},
            },
            "required": ["name"],
        },
    },
    "required": ["type", "geometry", "properties"],
}
_DEVICE_PATH = "/devices/{device_id:int}"
_GEOFENCE_PATH = "/geofences/{geofence_id:int}"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        _DEVICE_PATH + "/trips",
        device_trips,
        "A device's trips overlapping a window (metres, seconds, km/h)",
        query=(*_WINDOW, _LIMIT),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        _DEVICE_PATH + "/stops",
        device_stops,
        "A device's stops overlapping a window",
        query=(*_WINDOW, _LIMIT),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        _DEVICE_PATH + "/idles",
        device_idles,
        "A device's idle periods (engine on, not moving) overlapping a window",
        query=(*_WINDOW, _LIMIT),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        _DEVICE_PATH + "/visits",
        device_visits,
        "A device's geofence visits overlapping a window (exitTime null: inside)",
        query=(*_WINDOW, _LIMIT),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        _DEVICE_PATH + "/summary",
        device_summary,
        "A row per local day: distance, driving and idle time, stops, top speed",
        query=(
            QueryParam(
                "from", "first day: a date, or a time (its local day)", required=True
            ),
            QueryParam(
                "to", "end, exclusive: a date, or a time (ISO-8601)", required=True
            ),
            QueryParam("tz", "IANA time zone; the caller's own by default"),
        ),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        "/events",
        list_events,
        "Events of the caller's devices in a window, newest first",
        query=(
            *_WINDOW,
            QueryParam(
                "device",
                "only this device (its numeric id)",
                schema={"type": "integer"},
            ),
            QueryParam(
                "type",
                "only this event type",
                schema={"type": "string", "enum": sorted(EVENT_TYPES)},
            ),
            _LIMIT,
        ),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        "/h3",
        h3_cells,
        "Aggregates per H3 cell over whole hours: fleet-wide for administrators, "
        "the caller's own devices otherwise",
        query=(
            QueryParam(
                "resolution",
                "H3 resolution, within the aggregated ones",
                required=True,
                schema={"type": "integer", "minimum": 0, "maximum": 15},
            ),
            QueryParam("from", "start, ISO-8601, rounded down to the hour", True),
            QueryParam("to", "end, ISO-8601, exclusive, rounded up to the hour", True),
            QueryParam(
                "bbox",
                "minLon,minLat,maxLon,maxLat: only cells whose centre is inside",
            ),
            QueryParam(
                "limit",
                f"at most this many cells, the busiest ({DEFAULT_CELLS} by default, "
                f"{MAX_CELLS} at most)",
                schema={"type": "integer"},
            ),
        ),
        errors=(400,),
    ),
    Endpoint(
        "GET",
        "/geofences",
        list_geofences,
        "The caller's geofences (a GeoJSON FeatureCollection)",
    ),
    Endpoint(
        "POST",
        "/geofences",
        create_geofence,
        "Create a geofence from a GeoJSON Feature",
        status=201,
        body=_GEOFENCE_BODY,
        errors=(400, 413),
    ),
    Endpoint(
        "GET", _GEOFENCE_PATH, get_geofence, "One geofence (a Feature)", errors=(404,)
    ),
    Endpoint(
        "PUT",
        _GEOFENCE_PATH,
        update_geofence,
        "Replace a geofence; devices/groups left out keep their assignments",
        body=_GEOFENCE_BODY,
        errors=(400, 404, 413),
    ),
    Endpoint(
        "DELETE",
        _GEOFENCE_PATH,
        delete_geofence,
        "Remove a geofence",
        status=204,
        errors=(404,),
    ),
)
