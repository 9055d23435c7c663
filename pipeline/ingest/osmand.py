"""The OsmAnd protocol, as the OsmAnd app and Traccar Client send it over HTTP.

Two forms reach the same port (5055 by default):

- **Parameters**, by GET (query string) or POST (query string or form body):
  ``id`` or ``deviceid``; ``lat``/``lon`` or ``location=lat,lon``; ``timestamp``
  (Unix seconds when numeric and below 2**31, else milliseconds; ISO-8601 when it
  contains ``T``; else ``yyyy-MM-dd HH:mm:ss``, read as UTC); ``speed`` in
  **knots** (Traccar's OsmAnd default), converted to km/h; ``bearing`` or
  ``heading``; ``altitude``; ``accuracy``; ``hdop``; ``batt`` (battery percent);
  ``valid``; every other parameter becomes an attribute.
- **JSON** (``Content-Type: application/json``), the newer Traccar Client body
  (the Transistor background-geolocation layout): ``device_id``,
  ``location.timestamp`` (ISO-8601), ``location.coords`` with ``latitude``,
  ``longitude``, ``speed`` in **m/s**, ``heading``, ``accuracy``, ``altitude``;
  ``location.battery.level`` (0..1), ``is_moving``, ``event``, ``odometer``,
  ``activity.type``, ``extras``.  A negative speed, heading or battery level
  means unknown and is left out.

Replies follow Traccar: 200 with an empty body once Kafka acknowledged the fix, 400
with the reason for a malformed request, 429 when the device exceeds its rate, 503
while Kafka is unavailable.  An unknown device gets 400 for the parameter form and
404 for the JSON form; each unknown identifier is logged once, not per request.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import structlog
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pipeline.ingest.payloads import MAX_BODY_BYTES, media_type
from pipeline.ingest.service import IngestService
from pipeline.kafka import KafkaUnavailable
from pipeline.model import Fix, FixError, parse_time_ms

__all__ = [
    "DEFAULT_PORT",
    "KNOTS_TO_KMH",
    "OsmandError",
    "create_osmand_app",
    "fix_from_osmand_params",
    "fixes_from_osmand_json",
    "serve_osmand",
]

log = structlog.get_logger("rastro.ingest.osmand")

DEFAULT_PORT = 5055
KNOTS_TO_KMH = 1.852
MPS_TO_KMH = 3.6
MAX_BODY = 64 * 1024
UNKNOWN_IDS_REMEMBERED = 10_000
RETRY_AFTER_S = 5

# Parameters read into the fix itself; every other one becomes an attribute.
_DEVICE_KEYS = ("id", "deviceid")
_COURSE_KEYS = ("bearing", "heading")
_READ_KEYS = frozenset(
    {
        *_DEVICE_KEYS,
        *_COURSE_KEYS,
        "lat",
        "lon",
        "location",
        "timestamp",
        "speed",
        "altitude",
        "accuracy",
        "valid",
        "batt",
    }
)


class OsmandError(ValueError):
    """An OsmAnd request cannot become a fix; the message says why."""


def fix_from_osmand_params(params: Mapping[str, str], *, server_time_ms: int) -> Fix:
    """Decode the parameter form (query string or form body) into one fix."""
    fix = Fix(server_time_ms=server_time_ms, protocol="osmand", valid=True)
    fix.device = _device(params)
    fix.latitude, fix.longitude = _position(params)
    timestamp = params.get("timestamp")
    fix.fix_time_ms = server_time_ms if not timestamp else osmand_time_ms(timestamp)

    if params.get("speed"):
        fix.speed_kmh = _number("speed", params["speed"]) * KNOTS_TO_KMH
    course = next((params[key] for key in _COURSE_KEYS if params.get(key)), None)
    if course is not None:
        fix.course = _number("bearing", course)
    if params.get("altitude"):
        fix.altitude = _number("altitude", params["altitude"])
    if params.get("accuracy"):
        fix.accuracy = _number("accuracy", params["accuracy"])
    if "valid" in params:
        fix.valid = params["valid"].strip().lower() in {"true", "1"}

    if params.get("batt"):
        _attribute(fix, "batteryLevel", _number("batt", params["batt"]))
    for key, value in params.items():
        if key not in _READ_KEYS:
            _attribute(fix, key, _attribute_value(value))
    return fix


def fixes_from_osmand_json(document: Any, *, server_time_ms: int) -> list[Fix]:
    """Decode the JSON form; ``location`` may be one object or a list of them."""
    if not isinstance(document, Mapping):
        message = f"body must be a JSON object, got {type(document).__name__}"
        raise OsmandError(message)
    device = document.get("device_id")
    if not isinstance(device, str | int) or not str(device).strip():
        message = f"device_id must be a non-empty string, got {device!r}"
        raise OsmandError(message)
    locations = document.get("location")
    if isinstance(locations, Mapping):
        locations = [locations]
    if not isinstance(locations, list) or not locations:
        message = "location must be an object or a non-empty list of objects"
        raise OsmandError(message)

    return [
        _fix_from_location(str(device).strip(), location, server_time_ms)
        for location in locations
    ]


def osmand_time_ms(text: str) -> int:
    """An OsmAnd ``timestamp``: Unix seconds or milliseconds, or a date-time text."""
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number) or number < 0:
            message = f"timestamp must be a time after 1970, got {text!r}"
            raise OsmandError(message)
        return round(number * 1000) if number < 2**31 else round(number)
    if "T" in value:
        return _parse_time(value)
    try:
        moment = datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError as error:
        message = (
            f"timestamp must be Unix seconds, milliseconds or a date, got {text!r}"
        )
        raise OsmandError(message) from error
    return round(moment.timestamp() * 1000)


def _parse_time(value: str) -> int:
    try:
        return parse_time_ms(value)
    except FixError as error:
        raise OsmandError(str(error)) from error


def _device(params: Mapping[str, str]) -> str:
    device = next((params[key] for key in _DEVICE_KEYS if params.get(key)), "")
    device = device.strip()
    if not device:
        message = "id (or deviceid) is required"
        raise OsmandError(message)
    if len(device) > 128:
        message = f"id must be at most 128 characters, got {len(device)}"
        raise OsmandError(message)
    return device


def _position(params: Mapping[str, str]) -> tuple[float, float]:
    if params.get("location") and not params.get("lat"):
        parts = params["location"].split(",")
        if len(parts) != 2:
            message = f"location must be 'lat,lon', got {params['location']!r}"
            raise OsmandError(message)
        latitude, longitude = parts
    else:
        latitude, longitude = params.get("lat", ""), params.get("lon", "")
    if not latitude or not longitude:
        message = "lat and lon (or location) are required"
        raise OsmandError(message)
    return _coordinate("lat", latitude, 90.0), _coordinate("lon", longitude, 180.0)


def _coordinate(name: str, value: Any, limit: float) -> float:
    number = _number(name, value)
    if not -limit <= number <= limit:
        message = f"{name} must be between {-limit:g} and {limit:g}, got {value!r}"
        raise OsmandError(message)
    return number


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        message = f"{name} must be a number, got {value!r}"
        raise OsmandError(message)
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        message = f"{name} must be a number, got {value!r}"
        raise OsmandError(message) from error
    if not math.isfinite(number):
        message = f"{name} must be finite, got {value!r}"
        raise OsmandError(message)
    return number


def _attribute_value(text: str) -> Any:
    """A parameter's text as a number or boolean when it reads as one."""
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return int(number) if number.is_integer() and "." not in text else number


def _attribute(fix: Fix, key: str, value: Any) -> None:
    fix.attributes[key] = json.dumps(value)


def _fix_from_location(device: str, location: Any, server_time_ms: int) -> Fix:
    if not isinstance(location, Mapping):
        message = f"location must be an object, got {type(location).__name__}"
        raise OsmandError(message)
    coords = location.get("coords")
    if not isinstance(coords, Mapping):
        message = "location.coords must be an object"
        raise OsmandError(message)

    fix = Fix(device=device, server_time_ms=server_time_ms, protocol="osmand")
    fix.valid = True
    fix.latitude = _coordinate("latitude", coords.get("latitude"), 90.0)
    fix.longitude = _coordinate("longitude", coords.get("longitude"), 180.0)
    timestamp = location.get("timestamp")
    fix.fix_time_ms = server_time_ms if not timestamp else _parse_time(str(timestamp))

    _copy_motion(fix, coords)
    _copy_location_attributes(fix, location)
    return fix


def _copy_motion(fix: Fix, coords: Mapping[str, Any]) -> None:
    speed = _known(coords, "speed")
    if speed is not None:
        fix.speed_kmh = speed * MPS_TO_KMH
    heading = _known(coords, "heading")
    if heading is not None:
        fix.course = heading
    accuracy = _known(coords, "accuracy")
    if accuracy is not None:
        fix.accuracy = accuracy
    if coords.get("altitude") is not None:
        fix.altitude = _number("altitude", coords["altitude"])


def _known(values: Mapping[str, Any], name: str) -> float | None:
    """A number that the client sends as negative when it does not know it."""
    if values.get(name) is None:
        return None
    number = _number(name, values[name])
    return None if number < 0 else number


def _copy_location_attributes(fix: Fix, location: Mapping[str, Any]) -> None:
    battery = location.get("battery")
    if isinstance(battery, Mapping):
        level = _known(battery, "level")
        if level is not None:
            _attribute(fix, "batteryLevel", round(level * 100, 1))
        if isinstance(battery.get("is_charging"), bool):
            _attribute(fix, "charge", battery["is_charging"])
    if isinstance(location.get("is_moving"), bool):
        _attribute(fix, "motion", location["is_moving"])
    for key in ("event", "odometer"):
        if isinstance(location.get(key), str | int | float):
            _attribute(fix, key, location[key])
    activity = location.get("activity")
    if isinstance(activity, Mapping) and isinstance(activity.get("type"), str):
        _attribute(fix, "activity", activity["type"])
    extras = location.get("extras")
    if isinstance(extras, Mapping):
        for key, value in extras.items():
            if isinstance(value, str | int | float | bool):
                _attribute(fix, str(key), value)


# -- the ASGI application -----------------------------------------------------------


class _UnknownDevices:
    """Remembers which unknown identifiers were logged, so each is logged once."""

    def __init__(self, capacity: int = UNKNOWN_IDS_REMEMBERED) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, device: str) -> bool:
        if device in self._seen:
            self._seen.move_to_end(device)
            return False
        self._seen[device] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True


def create_osmand_app(
    ingest: IngestService,
    may_report: Callable[[str], Awaitable[bool]] | None = None,
) -> Starlette:
    """The OsmAnd port's application: any path, GET or POST.

    ``may_report`` decides whether a device may report (default: the ingest
    service's device directory, i.e. the device is registered).
    """
    allowed = may_report or ingest.known_device
    unknown = _UnknownDevices()

    async def receive(request: Request) -> Response:
        server_time_ms = time.time_ns() // 1_000_000
        is_json = media_type(request.headers.get("content-type")) == "application/json"
        try:
            fixes = await _decode_request(request, is_json, server_time_ms)
        except (OsmandError, FixError) as error:
            log.warning("osmand_request_malformed", reason=str(error))
            return PlainTextResponse(str(error), status_code=400)
        return await _publish(ingest, allowed, unknown, fixes, is_json)

    route = Route("/{path:path}", receive, methods=["GET", "POST"])
    return Starlette(routes=[route])


async def serve_osmand(
    app: Starlette, host: str, port: int, shutdown_event: asyncio.Event
) -> None:
    """Serve the OsmAnd application on ``host:port`` until ``shutdown_event`` is set."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 3.0
    log.info("osmand_listening", host=host, port=port)
    await serve(app, config, shutdown_trigger=shutdown_event.wait)  # type: ignore[arg-type]


async def _decode_request(
    request: Request, is_json: bool, server_time_ms: int
) -> list[Fix]:
    body = await _read_body(request)
    if is_json:
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            message = f"body is not valid JSON: {error}"
            raise OsmandError(message) from error
        return fixes_from_osmand_json(document, server_time_ms=server_time_ms)

    params = dict(request.query_params)
    if body and request.method == "POST":
        params.update(_form_fields(body))
    return [fix_from_osmand_params(params, server_time_ms=server_time_ms)]


def _form_fields(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (what OsmAnd clients POST)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"form body is not UTF-8 text: {error.reason}"
        raise OsmandError(message) from error
    return dict(parse_qsl(text.strip(), keep_blank_values=True))


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > min(MAX_BODY, MAX_BODY_BYTES):
        message = f"body is {length} bytes; at most {MAX_BODY} are accepted"
        raise OsmandError(message)
    body = await request.body()
    if len(body) > MAX_BODY:
        message = f"body is {len(body)} bytes; at most {MAX_BODY} are accepted"
        raise OsmandError(message)
    return body


async def _publish(
    ingest: IngestService,
    allowed: Callable[[str], Awaitable[bool]],
    unknown: _UnknownDevices,
    fixes: list[Fix],
    is_json: bool,
) -> Response:
    try:
        result = await ingest.accept(list(enumerate(fixes)), allowed)
    except KafkaUnavailable as error:
        log.warning("osmand_kafka_unavailable", error=str(error))
        return PlainTextResponse(
            "positions store (Kafka) unavailable; retry later",
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if not result.rejected:
        return Response(status_code=200)

    first = result.rejected[0]
    if first.kind in {"unknown_device", "not_allowed"}:
        device = fixes[first.index].device
        if unknown.first_time(device):
            log.warning("osmand_unknown_device", device=device)
        return PlainTextResponse(first.reason, status_code=404 if is_json else 400)
    if first.kind == "rate_limited":
        return PlainTextResponse(
            first.reason, status_code=429, headers={"Retry-After": "1"}
        )
    return PlainTextResponse(first.reason, status_code=400)
