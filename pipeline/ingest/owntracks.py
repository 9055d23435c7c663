"""OwnTracks: the phone app's JSON messages, over HTTP and over MQTT.

The OwnTracks apps (iOS, Android) publish JSON objects whose ``_type`` says what
they are (owntracks.org booklet, "JSON" and "HTTP" pages):

- ``location`` becomes a fix: ``lat``, ``lon`` (degrees), ``tst`` (Unix seconds,
  the fix time), ``vel`` (km/h), ``cog`` (degrees), ``alt`` and ``acc`` (metres).
  Other elements become attributes: ``batt`` -> ``batteryLevel`` (%), ``bs`` ->
  ``batteryStatus`` (``unknown``, ``unplugged``, ``charging``, ``full``) and
  ``charge``, ``vac`` -> ``verticalAccuracy`` (m), ``conn`` -> ``connection``
  (``wifi``, ``offline``, ``mobile``), ``t`` -> ``trigger`` (``ping``,
  ``region``, ``beacon``, ``reportLocation``, ``manual``, ``timer``, ...),
  ``p`` -> ``pressure`` (kPa), ``m`` -> ``monitoringMode``, ``rad`` -> ``radius``
  (m), ``created_at`` -> ``createdAt`` (Unix s), ``SSID``/``BSSID`` ->
  ``ssid``/``bssid``; ``tid``, ``poi``, ``tag``, ``inregions``, ``inrids`` and
  ``motionactivities`` (lists of strings) keep their names.  The elements that
  Queclink trackers add through qtripp use the shared vocabulary: ``odometer`` km
  -> metres, ``hmc`` -> ``hours`` (s), ``ubatt`` -> ``battery`` (V), ``uext`` ->
  ``power`` (V), ``ign`` -> ``ignition``.  Any other scalar element is kept under
  its own name; ``image``, ``_id`` and objects are dropped.  Negative ``vel``,
  ``cog``, ``acc``, ``vac`` and ``batt`` mean "not known" and are left out.
- ``transition`` (a region entered or left) becomes an event ``geofenceEnter``
  or ``geofenceExit`` at ``tst``, at ``lat``/``lon`` when given, with the
  attributes ``name`` (``desc``, the region's name), ``regionId`` (``rid``),
  ``regionTime`` (``wtst``, Unix s, when the region was defined, which identifies
  it on older apps), ``accuracy`` (``acc``, m), ``trigger`` (``region``,
  ``beacon``, ``location``), ``tid`` and ``protocol`` = ``owntracks``.  The region
  is the phone's own, not a Rastro geofence, hence ``regionId`` and not
  ``geofence``.  No fix comes of it: the app sends a ``location`` with trigger
  ``c`` alongside.
- Every other type (``waypoint``, ``waypoints``, ``lwt``, ``card``, ``status``,
  ``steps``, ``cmd``, ``beacon``, ...) is acknowledged and ignored, and so is an
  empty body (the apps send one when a friend is deleted).  ``encrypted`` cannot
  be read without the user's key: it is acknowledged, ignored, and logged once
  per device, since its data is lost.

**Which device.**  A device's uniqueId is ``{user}/{device}``, the pair that the
apps' default topic ``owntracks/{user}/{device}`` names, so that one phone is the
same device whether it reports over MQTT or HTTP (register it as ``jane/phone``).
Over MQTT it is read from the topic's second and third levels (the first is the
base, ``owntracks`` by default; any further level, such as ``/event``, is
ignored).  Over HTTP it comes, first found first taken, from the headers
``X-Limit-U`` and ``X-Limit-D``, the query parameters ``u`` and ``d``, or the
body's ``topic`` element (iOS adds it); with none of them the request is refused.
The two-letter ``tid`` is never used: it is not unique.  As on the OsmAnd port
the device must be registered; HTTP Basic credentials are not checked.

**HTTP** (port 5144 by default, as Traccar's): ``POST`` any path.  200 with the
JSON array ``[]`` once Kafka acknowledged (the apps expect an array of messages
back; Rastro sends none), 400 with the reason for a malformed message, 403 for a
device that is not registered (logged once per device), 429 over its rate, 503
with ``Retry-After`` while Kafka is unavailable (the app keeps the message and
sends it again).

**MQTT**: :func:`owntracks_bridge` subscribes to ``owntracks/#`` (shared in MQTT 5
as ``$share/rastro-owntracks/owntracks/#``) through the same
:class:`~pipeline.ingest.mqtt.MqttBridge` as ``gps/+/+``, so a message is
acknowledged only once its fix or event is in Kafka.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pipeline.ingest.events import EventPublisher
from pipeline.ingest.mqtt import DecodedMessage, MqttBridge
from pipeline.ingest.payloads import MAX_UNIQUE_ID, PayloadError, Rejection
from pipeline.ingest.service import IngestService
from pipeline.ingest.sightings import FirstSightings
from pipeline.kafka import EVENTS, KafkaUnavailable
from pipeline.model import Event, Fix

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "DEFAULT_TOPIC",
    "PROTOCOL",
    "OwnTracksError",
    "OwnTracksMessage",
    "OwnTracksMqttDecoder",
    "create_owntracks_app",
    "decode_owntracks",
    "device_from_topic",
    "owntracks_bridge",
    "serve_owntracks",
]

log = structlog.get_logger("rastro.ingest.owntracks")

PROTOCOL = "owntracks"
DEFAULT_PORT = 5144
DEFAULT_TOPIC = "owntracks/#"
DEFAULT_GROUP = "rastro-owntracks"
MAX_BODY = 256 * 1024
RETRY_AFTER_S = 5
# The latest Unix time in seconds accepted: larger values are milliseconds sent by
# mistake, or garbage.
MAX_EPOCH_S = 2**32

_BATTERY_STATUS = {0: "unknown", 1: "unplugged", 2: "charging", 3: "full"}
_CONNECTION = {"w": "wifi", "o": "offline", "m": "mobile"}
_LOCATION_TRIGGER = {
    "p": "ping",
    "c": "region",
    "C": "followRegion",
    "b": "beacon",
    "r": "reportLocation",
    "u": "manual",
    "t": "timer",
    "v": "frequentLocations",
}
_TRANSITION_TRIGGER = {"c": "region", "b": "beacon", "l": "location"}
_MONITORING_MODE = {1: "significant", 2: "move"}
_TRANSITION_TYPE = {"enter": "geofenceEnter", "leave": "geofenceExit"}

# Elements read into the fix itself, or on purpose not kept.
_LOCATION_FIELDS = frozenset({"_type", "lat", "lon", "tst", "vel", "cog", "alt", "acc"})
_DROPPED = frozenset({"_id", "topic", "image", "imagename"})
_RENAMED_NUMBERS = {"p": "pressure", "rad": "radius", "created_at": "createdAt"}
_RENAMED_TEXTS = {"SSID": "ssid", "BSSID": "bssid"}
_LISTS = ("inregions", "inrids", "motionactivities")
# qtripp's Queclink elements, converted to the shared vocabulary: (name, factor).
_QUECLINK_NUMBERS = {
    "odometer": ("odometer", 1000.0),
    "hmc": ("hours", 1.0),
    "ubatt": ("battery", 1.0),
    "uext": ("power", 1.0),
}
_HANDLED = frozenset(
    {
        "batt",
        "bs",
        "vac",
        "conn",
        "t",
        "m",
        "ign",
        *_RENAMED_NUMBERS,
        *_RENAMED_TEXTS,
        *_QUECLINK_NUMBERS,
        *_LISTS,
    }
)


class OwnTracksError(PayloadError):
    """An OwnTracks message cannot be read; the message says why (HTTP 400)."""


@dataclass
class OwnTracksMessage:
    """What one OwnTracks message said.

    ``kind`` is its ``_type`` (``""`` for an empty body); ``device`` the uniqueId
    it was decoded for (``None`` for a type that is ignored).  A ``location``
    gives one fix, a ``transition`` one event, any other type neither.
    """

    kind: str
    device: str | None = None
    fixes: list[Fix] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def decode_owntracks(
    payload: bytes | str, *, server_time_ms: int, device: str | None = None
) -> OwnTracksMessage:
    """Decode one OwnTracks JSON message into fixes and events.

    Parameters
    ----------
    payload
        The message as published or POSTed: a JSON object, UTF-8.
    server_time_ms
        When it was received (Unix milliseconds), the fixes' ``server_time_ms``.
    device
        The uniqueId to report for, ``{user}/{device}``; when ``None``, the
        body's ``topic`` element names it.

    Raises
    ------
    OwnTracksError
        For anything that is not a readable OwnTracks message, naming the element.
    """
    document = _load(payload)
    if document is None:
        return OwnTracksMessage("")
    kind = document.get("_type")
    if not isinstance(kind, str) or not kind:
        message = f"_type must be a non-empty string, got {kind!r}"
        raise OwnTracksError(message)
    if kind not in {"location", "transition"}:
        return OwnTracksMessage(kind)

    unique_id = _device(device, document)
    if kind == "location":
        fix = _location_fix(document, unique_id, server_time_ms)
        return OwnTracksMessage(kind, unique_id, fixes=[fix])
    event = _transition_event(document, unique_id)
    return OwnTracksMessage(kind, unique_id, events=[event])


def device_from_topic(topic: str) -> str:
    """``owntracks/jane/phone[/event]`` -> ``jane/phone``, the device's uniqueId."""
    levels = topic.split("/")
    if len(levels) < 3 or not levels[1].strip() or not levels[2].strip():
        message = f"topic must be {{base}}/{{user}}/{{device}}, got {topic!r}"
        raise OwnTracksError(message)
    return _unique_id(levels[1], levels[2])


# -- decoding -------------------------------------------------------------------------


def _load(payload: bytes | str) -> dict[str, Any] | None:
    if not payload.strip():
        return None  # the apps send an empty body when a friend is deleted
    try:
        document = json.loads(payload)
    except UnicodeDecodeError as error:
        message = f"message is not UTF-8 text: {error.reason} at byte {error.start}"
        raise OwnTracksError(message) from error
    except json.JSONDecodeError as error:
        message = (
            f"message is not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno})"
        )
        raise OwnTracksError(message) from error
    except (ValueError, RecursionError) as error:  # 4,300+ digits, deep nesting
        message = f"message is not readable JSON: {error}"
        raise OwnTracksError(message) from error
    if not isinstance(document, dict):
        message = f"message must be a JSON object, got {type(document).__name__}"
        raise OwnTracksError(message)
    return document


def _device(device: str | None, document: Mapping[str, Any]) -> str:
    if device is not None:
        return device
    topic = document.get("topic")
    if isinstance(topic, str) and topic.strip():
        return device_from_topic(topic.strip())
    message = (
        "the device is not named: send the X-Limit-U and X-Limit-D headers, "
        "the u and d query parameters, or a topic element"
    )
    raise OwnTracksError(message)


def _unique_id(user: str, device: str) -> str:
    unique_id = f"{user.strip()}/{device.strip()}"
    if len(unique_id) > MAX_UNIQUE_ID:
        message = (
            f"device {unique_id[:40]!r}... is {len(unique_id)} characters; "
            f"at most {MAX_UNIQUE_ID} are accepted"
        )
        raise OwnTracksError(message)
    return unique_id


def _location_fix(document: Mapping[str, Any], device: str, server_time_ms: int) -> Fix:
    fix = Fix(device=device, server_time_ms=server_time_ms, protocol=PROTOCOL)
    fix.valid = True
    fix.latitude = _coordinate(document, "lat", 90.0)
    fix.longitude = _coordinate(document, "lon", 180.0)
    fix.fix_time_ms = _epoch_ms(document, "tst")

    speed = _known(document, "vel")
    if speed is not None:
        fix.speed_kmh = speed
    course = _known(document, "cog")
    if course is not None:
        fix.course = course
    altitude = _number(document, "alt")
    if altitude is not None:
        fix.altitude = altitude
    accuracy = _known(document, "acc")
    if accuracy is not None:
        fix.accuracy = accuracy

    for key, value in _location_attributes(document).items():
        fix.attributes[key] = json.dumps(value)
    return fix


def _location_attributes(document: Mapping[str, Any]) -> dict[str, Any]:
    attributes = _device_state(document)
    attributes.update(_context(document))
    for key, value in document.items():
        if key in _LOCATION_FIELDS or key in _DROPPED or key in _HANDLED:
            continue
        if _is_scalar(value):
            attributes[key] = value
    return attributes


def _device_state(document: Mapping[str, Any]) -> dict[str, Any]:
    """Battery, connectivity, accuracy and sensors: numbers with units."""
    state: dict[str, Any] = {}
    battery = _known(document, "batt")
    if battery is not None:
        state["batteryLevel"] = battery
    status = _integer(document, "bs")
    if status is not None:
        state["batteryStatus"] = _BATTERY_STATUS.get(status, status)
        if status in {1, 2, 3}:
            state["charge"] = status == 2
    vertical = _known(document, "vac")
    if vertical is not None:
        state["verticalAccuracy"] = vertical
    for name, renamed in _RENAMED_NUMBERS.items():
        number = _number(document, name)
        if number is not None:
            state[renamed] = number
    for name, (renamed, factor) in _QUECLINK_NUMBERS.items():
        number = _number(document, name)
        if number is not None:
            state[renamed] = number * factor
    if isinstance(document.get("ign"), bool):
        state["ignition"] = document["ign"]
    return state


def _context(document: Mapping[str, Any]) -> dict[str, Any]:
    """Why and where the report was made: trigger, network, regions."""
    context: dict[str, Any] = {}
    connection = _text(document, "conn")
    if connection is not None:
        context["connection"] = _CONNECTION.get(connection, connection)
    trigger = _text(document, "t")
    if trigger is not None:
        context["trigger"] = _LOCATION_TRIGGER.get(trigger, trigger)
    mode = _integer(document, "m")
    if mode is not None:
        context["monitoringMode"] = _MONITORING_MODE.get(mode, mode)
    for name, renamed in _RENAMED_TEXTS.items():
        text = _text(document, name)
        if text is not None:
            context[renamed] = text
    for name in _LISTS:
        names = _names(document, name)
        if names is not None:
            context[name] = names
    return context


def _transition_event(document: Mapping[str, Any], device: str) -> Event:
    action = document.get("event")
    if not isinstance(action, str) or action not in _TRANSITION_TYPE:
        message = f"event must be 'enter' or 'leave', got {action!r}"
        raise OwnTracksError(message)

    event = Event(device=device, type=_TRANSITION_TYPE[action])
    event.event_time_ms = _epoch_ms(document, "tst")
    if document.get("lat") is not None or document.get("lon") is not None:
        event.latitude = _coordinate(document, "lat", 90.0)
        event.longitude = _coordinate(document, "lon", 180.0)

    attributes: dict[str, Any] = {"protocol": PROTOCOL}
    for name, renamed in (("desc", "name"), ("rid", "regionId"), ("tid", "tid")):
        text = _text(document, name)
        if text is not None:
            attributes[renamed] = text
    if document.get("wtst") is not None:
        attributes["regionTime"] = _epoch_ms(document, "wtst") // 1000
    accuracy = _known(document, "acc")
    if accuracy is not None:
        attributes["accuracy"] = accuracy
    trigger = _text(document, "t")
    if trigger is not None:
        attributes["trigger"] = _TRANSITION_TRIGGER.get(trigger, trigger)
    for key, value in attributes.items():
        event.attributes[key] = json.dumps(value)
    return event


def _number(document: Mapping[str, Any], name: str) -> float | None:
    """An optional number; numeric strings are read too (some apps send them)."""
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        message = f"{name} must be a number, got {value!r}"
        raise OwnTracksError(message)
    try:
        number = float(value)
    except (ValueError, OverflowError) as error:
        message = f"{name} must be a number, got {value!r}"
        raise OwnTracksError(message) from error
    if not math.isfinite(number):
        message = f"{name} must be finite, got {value!r}"
        raise OwnTracksError(message)
    return number


def _known(document: Mapping[str, Any], name: str) -> float | None:
    """A number the apps send as negative when they do not know it."""
    number = _number(document, name)
    return None if number is None or number < 0 else number


def _integer(document: Mapping[str, Any], name: str) -> int | None:
    number = _number(document, name)
    if number is None:
        return None
    if not number.is_integer():
        message = f"{name} must be a whole number, got {document[name]!r}"
        raise OwnTracksError(message)
    return int(number)


def _coordinate(document: Mapping[str, Any], name: str, limit: float) -> float:
    number = _number(document, name)
    if number is None:
        message = f"{name} is required"
        raise OwnTracksError(message)
    if not -limit <= number <= limit:
        message = f"{name} must be between {-limit:g} and {limit:g}, got {number!r}"
        raise OwnTracksError(message)
    return number


def _epoch_ms(document: Mapping[str, Any], name: str) -> int:
    """A required Unix time in seconds, as milliseconds."""
    seconds = _number(document, name)
    if seconds is None:
        message = f"{name} (Unix seconds) is required"
        raise OwnTracksError(message)
    if not 0 < seconds < MAX_EPOCH_S:
        message = f"{name} must be Unix seconds after 1970, got {document[name]!r}"
        raise OwnTracksError(message)
    return round(seconds * 1000)


def _text(document: Mapping[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        message = f"{name} must be a string, got {value!r}"
        raise OwnTracksError(message)
    return value


def _names(document: Mapping[str, Any], name: str) -> list[str] | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        message = f"{name} must be a list of strings, got {value!r}"
        raise OwnTracksError(message)
    return list(value)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | bool)


# -- MQTT -----------------------------------------------------------------------------


class OwnTracksMqttDecoder:
    """The :class:`~pipeline.ingest.mqtt.MqttBridge` decoder of OwnTracks topics.

    Logs an ``encrypted`` message once per topic: its data cannot be read.
    """

    def __init__(self) -> None:
        self._encrypted = FirstSightings()

    def __call__(
        self, topic: str, payload: bytes, server_time_ms: int
    ) -> DecodedMessage:
        """Decode one message published to ``{base}/{user}/{device}[/...]``."""
        device = device_from_topic(topic)
        message = decode_owntracks(
            payload, server_time_ms=server_time_ms, device=device
        )
        if message.kind == "encrypted" and self._encrypted.first_time(topic):
            log.warning("owntracks_encrypted_ignored", topic=topic)
        return DecodedMessage(message.fixes, message.events)


def owntracks_bridge(
    url: str,
    ingest: IngestService,
    *,
    shared: bool,
    group: str = DEFAULT_GROUP,
    topic: str = DEFAULT_TOPIC,
    client_id: str | None = None,
    may_report: Callable[[str], Awaitable[bool]] | None = None,
    events_topic: str = EVENTS,
) -> MqttBridge:
    """An :class:`~pipeline.ingest.mqtt.MqttBridge` for OwnTracks' topics.

    Its own ``group`` (and so its own default client id) keeps its broker session
    apart from the ``gps/+/+`` bridge's in the same process.
    """
    return MqttBridge(
        url,
        ingest,
        shared=shared,
        group=group,
        topic=topic,
        client_id=client_id,
        may_report=may_report,
        decoder=OwnTracksMqttDecoder(),
        events_topic=events_topic,
    )


# -- HTTP -----------------------------------------------------------------------------


def create_owntracks_app(
    ingest: IngestService,
    may_report: Callable[[str], Awaitable[bool]] | None = None,
    *,
    events_topic: str = EVENTS,
) -> Starlette:
    """The OwnTracks HTTP port's application: ``POST`` to any path.

    ``may_report`` decides whether a device may report (default: it is registered
    in the ingest service's directory).  Events go to ``events_topic``.
    """
    port = _OwnTracksPort(ingest, may_report or ingest.known_device, events_topic)
    route = Route("/{path:path}", port.receive, methods=["POST"])
    return Starlette(routes=[route])


async def serve_owntracks(
    app: Starlette, host: str, port: int, shutdown_event: asyncio.Event
) -> None:
    """Serve the OwnTracks application on ``host:port`` until ``shutdown_event``."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 3.0
    log.info("owntracks_listening", host=host, port=port)
    await serve(app, config, shutdown_trigger=shutdown_event.wait)  # type: ignore[arg-type]


class _OwnTracksPort:
    """Decodes a POSTed message, checks its device, publishes, answers."""

    def __init__(
        self,
        ingest: IngestService,
        may_report: Callable[[str], Awaitable[bool]],
        events_topic: str,
    ) -> None:
        self.ingest = ingest
        self.may_report = may_report
        self.events = EventPublisher(ingest.producer, events_topic)
        self.unknown = FirstSightings()
        self.encrypted = FirstSightings()

    async def receive(self, request: Request) -> Response:
        server_time_ms = time.time_ns() // 1_000_000
        try:
            body = await _read_body(request)
            device = _identity(request.headers, request.query_params)
            message = decode_owntracks(
                body, server_time_ms=server_time_ms, device=device
            )
        except OwnTracksError as error:
            log.warning("owntracks_request_malformed", reason=str(error))
            return PlainTextResponse(str(error), status_code=error.status)

        if not message.fixes and not message.events:
            self._log_ignored(message, device)
            return _accepted()
        try:
            refused = await self._publish(message)
        except KafkaUnavailable as error:
            log.warning("owntracks_kafka_unavailable", error=str(error))
            return PlainTextResponse(
                "positions store (Kafka) unavailable; retry later",
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return _accepted() if refused is None else self._refusal(refused, message)

    async def _publish(self, message: OwnTracksMessage) -> Rejection | None:
        """Publish the message's fix or event; the first refusal if not allowed."""
        fixes = await self.ingest.screen(
            list(enumerate(message.fixes)), self.may_report
        )
        events = await self.events.screen(
            list(enumerate(message.events)), self.may_report
        )
        refused = [*fixes.rejected, *events.rejected]
        if refused:
            return refused[0]

        await self.ingest.publish(fixes.admitted)
        await self.events.publish([event for _, event in events.admitted])
        return None

    def _refusal(self, rejection: Rejection, message: OwnTracksMessage) -> Response:
        if rejection.kind == "rate_limited":
            return PlainTextResponse(
                rejection.reason, status_code=429, headers={"Retry-After": "1"}
            )
        device = message.device or ""
        if rejection.kind == "unknown_device" and self.unknown.first_time(device):
            log.warning("owntracks_unknown_device", device=device)
        return PlainTextResponse(rejection.reason, status_code=rejection.status)

    def _log_ignored(self, message: OwnTracksMessage, device: str | None) -> None:
        who = device or "unnamed"
        if message.kind == "encrypted" and self.encrypted.first_time(who):
            log.warning("owntracks_encrypted_ignored", device=who)
        else:
            log.debug("owntracks_message_ignored", kind=message.kind, device=who)


def _identity(headers: Headers, query: QueryParams) -> str | None:
    """``{user}/{device}`` from the X-Limit headers, else the u/d parameters."""
    for user, device in (
        (headers.get("x-limit-u"), headers.get("x-limit-d")),
        (query.get("u"), query.get("d")),
    ):
        if user and user.strip() and device and device.strip():
            return _unique_id(user, device)
    return None


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        message = f"body is {declared} bytes; at most {MAX_BODY} are accepted"
        raise OwnTracksError(message, 413)

    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                message = f"body is over {MAX_BODY} bytes, the most accepted"
                raise OwnTracksError(message, 413)
            chunks.append(chunk)
    except ClientDisconnect as error:
        message = "the client disconnected before sending the whole body"
        raise OwnTracksError(message) from error
    return b"".join(chunks)


def _accepted() -> Response:
    return Response(b"[]", status_code=200, media_type="application/json")
