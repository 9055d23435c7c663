"""What the streaming job does to one fix, with no Flink in sight.

A Kafka record becomes an :class:`Accepted` fix (valid, indexed, serialised again
with its H3 cell) or a rejection reason; per device, :func:`judge` says whether a
fix was already seen and whether it is the newest one.  The Flink functions in
:mod:`pipeline.stream.functions` are thin wrappers around these, so everything that
decides the content of the stores is tested here without a cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import (
    DecodeError,
)

from geo.fixes import Rejection, h3_cell, h3_hex, rejection
from pipeline.model import Fix, fix_to_json

__all__ = [
    "FIELD_NAMES",
    "MALFORMED",
    "Accepted",
    "Verdict",
    "accept",
    "judge",
    "position_signature",
]

#: Reason code of a Kafka record that is not a readable ``rastro.v1.Fix``.
MALFORMED = "malformed"

#: The columns of an accepted fix as it travels through the job, in order.
FIELD_NAMES = (
    "device",
    "fix_time_ms",
    "server_time_ms",
    "latitude",
    "longitude",
    "altitude",
    "accuracy",
    "h3",
    "speed",
    "course",
    "satellites",
    "valid",
    "protocol",
    "attributes",
    "latest_json",
    "payload",
)


@dataclass(frozen=True)
class Accepted:
    """A fix that passed the validity rules, with everything every sink needs.

    ``attributes`` is the JSON object the ``fixes.attributes`` column stores,
    ``latest_json`` the document Redis keeps, and ``payload`` the protobuf that
    goes on to the ``live`` topic, now carrying its H3 cell.
    """

    device: str
    fix_time_ms: int
    server_time_ms: int
    latitude: float
    longitude: float
    altitude: float | None
    accuracy: float | None
    h3: int
    speed: float | None
    course: float | None
    satellites: int | None
    valid: bool
    protocol: str
    attributes: str
    latest_json: str
    payload: bytes

    def as_tuple(self) -> tuple[Any, ...]:
        """The values in :data:`FIELD_NAMES` order, for a Flink row."""
        return tuple(getattr(self, name) for name in FIELD_NAMES)


def accept(payload: bytes, resolution: int) -> Accepted | str:
    """Decode, check and index one Kafka record; a string is the rejection reason.

    The reason is a :class:`geo.fixes.Rejection` value, or :data:`MALFORMED` when
    the bytes are not a ``rastro.v1.Fix``, the device is empty, or an attribute is
    not JSON-encoded (the stores could not keep it).
    """
    fix = Fix()
    try:
        fix.ParseFromString(payload)
    except DecodeError:
        return MALFORMED
    if not fix.device:
        return MALFORMED

    reason = _rejection(fix)
    if reason is not None:
        return reason.value

    try:
        document = fix_to_json(fix)
    except ValueError:
        return MALFORMED
    fix.h3 = h3_cell(fix.latitude, fix.longitude, resolution)
    document["h3"] = h3_hex(fix.h3)
    return _accepted(fix, document)


def _rejection(fix: Fix) -> Rejection | None:
    return rejection(
        valid=fix.valid,
        latitude=fix.latitude,
        longitude=fix.longitude,
        fix_time_ms=fix.fix_time_ms,
        server_time_ms=fix.server_time_ms,
    )


def _accepted(fix: Fix, document: dict[str, Any]) -> Accepted:
    return Accepted(
        device=fix.device,
        fix_time_ms=fix.fix_time_ms,
        server_time_ms=fix.server_time_ms,
        latitude=fix.latitude,
        longitude=fix.longitude,
        altitude=_optional(fix, "altitude"),
        accuracy=_optional(fix, "accuracy"),
        h3=fix.h3,
        speed=_optional(fix, "speed_kmh"),
        course=_optional(fix, "course"),
        satellites=fix.satellites if fix.HasField("satellites") else None,
        valid=fix.valid,
        protocol=fix.protocol,
        attributes=json.dumps(document["attributes"], separators=(",", ":")),
        latest_json=json.dumps(document, separators=(",", ":")),
        payload=fix.SerializeToString(),
    )


def _optional(fix: Fix, name: str) -> float | None:
    return float(getattr(fix, name)) if fix.HasField(name) else None


def position_signature(latitude: float, longitude: float) -> str:
    """A compact exact text of a position, to recognise a repeated fix.

    ``repr`` of a float round-trips exactly, so two signatures are equal only for
    bit-identical coordinates.
    """
    return f"{latitude!r},{longitude!r}"


@dataclass(frozen=True)
class Verdict:
    """What the per-device state says about one fix."""

    duplicate: bool
    """The same fix time and position was already accepted: drop it."""

    newest: bool
    """Its fix time is later than any accepted so far: it becomes the latest state."""


def judge(
    fix_time_ms: int,
    signature: str,
    *,
    seen_signature: str | None,
    latest_ms: int | None,
) -> Verdict:
    """Decide a fix's fate from the device's state.

    Parameters
    ----------
    fix_time_ms, signature
        The fix's time and :func:`position_signature`.
    seen_signature
        The signature already accepted for this device at this fix time, if any.
    latest_ms
        The newest fix time accepted for this device, if any.

    A different position at an already-seen fix time is not a duplicate: the
    history keeps one row per device and fix time, and the later report wins.
    """
    if seen_signature == signature:
        return Verdict(duplicate=True, newest=False)
    newest = latest_ms is None or fix_time_ms > latest_ms
    return Verdict(duplicate=False, newest=newest)
