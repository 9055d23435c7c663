"""The fix and event records, and their JSON form shared by ingest, API and stores.

On the wire between tiers a fix is a Protocol Buffers ``rastro.v1.Fix``
(``rastro.proto``).  Its JSON form is the one the REST API speaks: ``uniqueId``,
``time`` (ISO-8601), ``latitude``, ``longitude``, ``speed`` (km/h), ``course``,
``altitude``, ``accuracy``, ``satellites``, ``valid``, ``attributes``.

Attribute values travel JSON-encoded inside the protobuf string map, so that a
number stays a number and a string stays a string through every tier.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pipeline.model.rastro_pb2 import Event, Fix, FixBatch

__all__ = [
    "Event",
    "Fix",
    "FixBatch",
    "FixError",
    "fix_from_json",
    "fix_to_json",
    "format_time_ms",
    "parse_time_ms",
]

_OPTIONAL_FLOATS = {
    "speed": "speed_kmh",
    "course": "course",
    "altitude": "altitude",
    "accuracy": "accuracy",
}
_KNOWN_FIELDS = {
    "uniqueId",
    "time",
    "latitude",
    "longitude",
    "satellites",
    "valid",
    "attributes",
    *_OPTIONAL_FLOATS,
}


class FixError(ValueError):
    """A reported position cannot become a fix; the message says why."""


def parse_time_ms(text: str) -> int:
    """Parse ISO-8601 (``Z`` or an offset; no zone means UTC) to epoch milliseconds."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError) as error:
        message = f"time must be ISO-8601, got {text!r}"
        raise FixError(message) from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def format_time_ms(epoch_ms: int) -> str:
    """Format epoch milliseconds as ISO-8601 UTC with a ``Z``, milliseconds if any."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    spec = "milliseconds" if epoch_ms % 1000 else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def fix_from_json(
    document: Mapping[str, Any], *, server_time_ms: int, protocol: str = "json"
) -> Fix:
    """Build a fix from its API JSON form; :class:`FixError` names a bad field."""
    if not isinstance(document, Mapping):
        message = f"a position must be a JSON object, got {type(document).__name__}"
        raise FixError(message)

    fix = Fix(server_time_ms=server_time_ms, protocol=protocol)
    fix.device = _unique_id(document.get("uniqueId"))
    fix.latitude = _coordinate(document, "latitude", 90.0)
    fix.longitude = _coordinate(document, "longitude", 180.0)
    raw_time = document.get("time")
    fix.fix_time_ms = server_time_ms if raw_time is None else parse_time_ms(raw_time)

    for name, proto_name in _OPTIONAL_FLOATS.items():
        value = document.get(name)
        if value is not None:
            setattr(fix, proto_name, _finite_number(name, value))
    if document.get("satellites") is not None:
        fix.satellites = int(_finite_number("satellites", document["satellites"]))
    fix.valid = bool(document.get("valid", True))
    _copy_attributes(fix, document.get("attributes") or {})
    return fix


def fix_to_json(fix: Fix) -> dict[str, Any]:
    """The API JSON form of a fix; absent optional values are left out."""
    document: dict[str, Any] = {
        "uniqueId": fix.device,
        "time": format_time_ms(fix.fix_time_ms),
        "serverTime": format_time_ms(fix.server_time_ms),
        "latitude": fix.latitude,
        "longitude": fix.longitude,
        "valid": fix.valid,
    }
    for name, proto_name in _OPTIONAL_FLOATS.items():
        if fix.HasField(proto_name):
            document[name] = round(getattr(fix, proto_name), 3)
    if fix.HasField("satellites"):
        document["satellites"] = fix.satellites
    document["attributes"] = {
        key: json.loads(value) for key, value in sorted(fix.attributes.items())
    }
    return document


def _unique_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        message = f"uniqueId must be a non-empty string, got {value!r}"
        raise FixError(message)
    if len(value) > 128:
        message = f"uniqueId must be at most 128 characters, got {len(value)}"
        raise FixError(message)
    return value.strip()


def _finite_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        message = f"{name} must be a number, got {value!r}"
        raise FixError(message)
    try:
        number = float(value)
    except ValueError as error:
        message = f"{name} must be a number, got {value!r}"
        raise FixError(message) from error
    if not math.isfinite(number):
        message = f"{name} must be finite, got {value!r}"
        raise FixError(message)
    return number


def _coordinate(document: Mapping[str, Any], name: str, limit: float) -> float:
    if document.get(name) is None:
        message = f"{name} is required"
        raise FixError(message)
    number = _finite_number(name, document[name])
    if not -limit <= number <= limit:
        message = f"{name} must be between {-limit:g} and {limit:g}, got {number!r}"
        raise FixError(message)
    return number


def _copy_attributes(fix: Fix, attributes: Any) -> None:
    if not isinstance(attributes, Mapping):
        message = f"attributes must be a JSON object, got {attributes!r}"
        raise FixError(message)
    for key, value in attributes.items():
        if not isinstance(key, str) or isinstance(value, dict | list):
            message = f"attribute {key!r} must be a string, number or boolean"
            raise FixError(message)
        fix.attributes[key] = json.dumps(value)


def unknown_fields(document: Mapping[str, Any]) -> set[str]:
    """Fields of a JSON position that Rastro does not read (kept out of the fix)."""
    return set(document) - _KNOWN_FIELDS
