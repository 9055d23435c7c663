"""What the ``geo`` state machines report: events a fleet manager is alerted to.

Every stepper in ``geo`` (geofences, alerts, trips) returns :class:`GeoEvent` values;
the streaming job turns them into protobuf ``Event`` records on the ``events`` topic
and rows in PostgreSQL, replay collects them to show what would have fired.  Type
names are the ones the API filters on (``GET /events?type=``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["EVENT_TYPES", "GeoEvent"]

#: Every event type, as the API and the notifications name them.
EVENT_TYPES: Final = frozenset(
    {
        "alarm",  # the device reported an alarm (attributes: alarm)
        "geofenceEnter",  # attributes: geofence (id), name
        "geofenceExit",  # attributes: geofence, name, duration_s
        "overspeed",  # one per episode: max_speed_kmh, limit_kmh, duration_s
        "deviceOffline",  # no data for the configured minutes: last_seen
        "deviceOnline",  # data again after being offline: offline_s
        "ignitionOn",
        "ignitionOff",
        "idle",  # engine on and not moving longer than the limit: duration_s
        "batteryLow",  # battery below the configured threshold: battery / level
    }
)


@dataclass(frozen=True, slots=True)
class GeoEvent:
    """Something that happened to one device at one time and place.

    ``time_ms`` is event time (the fix time that triggered it, or the timer's due
    time for offline events), epoch milliseconds UTC.  ``attributes`` holds the
    type's details (see :data:`EVENT_TYPES`), JSON-serialisable values only.
    """

    device: str
    type: str
    time_ms: int
    latitude: float | None = None
    longitude: float | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            message = f"type must be one of {sorted(EVENT_TYPES)}, got {self.type!r}"
            raise ValueError(message)
