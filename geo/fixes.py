"""Which reported positions are usable fixes, and which H3 cell each one lies in.

The streaming job applies these rules to every fix it reads; replay and the notebooks
apply the same ones, so a fix is judged identically everywhere.  Nothing here does
I/O or logs: a rejected fix comes back as a :class:`Rejection` reason code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import h3

__all__ = [
    "MAX_AHEAD_MS",
    "FixPoint",
    "Rejection",
    "h3_cell",
    "h3_hex",
    "rejection",
]

#: How far a fix time may lie ahead of the server's clock (one day, in milliseconds).
#: Trackers with a broken clock or a GPS week-rollover bug report times far ahead.
MAX_AHEAD_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class FixPoint:
    """One fix of one device, as every ``geo`` state machine reads it.

    The streaming job builds it from a protobuf ``Fix`` (attributes JSON-decoded);
    replay and notebooks build it from history rows.  Units: degrees, km/h, metres,
    epoch milliseconds UTC.  ``attributes`` uses the shared vocabulary of
    ``pipeline.ingest.protocols.base`` (``ignition``, ``motion``, ``alarm``,
    ``hdop``, ``odometer``, ``hours``, ``battery``, ``batteryLevel``, ``power``,
    ``cellLocation`` ...).
    """

    device: str
    time_ms: int
    latitude: float
    longitude: float
    speed_kmh: float | None = None
    course: float | None = None
    altitude: float | None = None
    accuracy: float | None = None
    satellites: int | None = None
    valid: bool = True
    server_time_ms: int = 0
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ignition(self) -> bool | None:
        """The device's ignition flag, ``None`` when it reports none."""
        value = self.attributes.get("ignition")
        return value if isinstance(value, bool) else None


class Rejection(StrEnum):
    """Why a fix is not kept; the value is the reason code logs and metrics show."""

    INVALID = "invalid"
    """The device itself flagged the fix as invalid (no GPS lock)."""

    ZERO = "zero"
    """Latitude and longitude both 0: "null island", a tracker's default position."""

    OUT_OF_RANGE = "out_of_range"
    """Latitude outside [-90, 90], longitude outside [-180, 180], or not a number."""

    FUTURE = "future"
    """The fix time is more than :data:`MAX_AHEAD_MS` ahead of the server time."""


def rejection(
    *,
    valid: bool,
    latitude: float,
    longitude: float,
    fix_time_ms: int,
    server_time_ms: int,
) -> Rejection | None:
    """Return why a fix must be dropped, or ``None`` when it is usable.

    Parameters
    ----------
    valid
        The device's own validity flag.
    latitude, longitude
        WGS 84 degrees.
    fix_time_ms, server_time_ms
        When the device took the fix and when ingest received it, epoch milliseconds.

    Examples
    --------
    >>> rejection(valid=True, latitude=38.7, longitude=-9.1,
    ...           fix_time_ms=1_000, server_time_ms=2_000) is None
    True
    >>> rejection(valid=True, latitude=0.0, longitude=0.0,
    ...           fix_time_ms=1_000, server_time_ms=2_000)
    <Rejection.ZERO: 'zero'>
    """
    if not valid:
        return Rejection.INVALID
    if not _in_range(latitude, 90.0) or not _in_range(longitude, 180.0):
        return Rejection.OUT_OF_RANGE
    if latitude == 0.0 and longitude == 0.0:
        return Rejection.ZERO
    if fix_time_ms - server_time_ms > MAX_AHEAD_MS:
        return Rejection.FUTURE
    return None


def h3_cell(latitude: float, longitude: float, resolution: int) -> int:
    """The H3 cell containing a point, as the 64-bit integer PostgreSQL stores.

    Parameters
    ----------
    latitude, longitude
        WGS 84 degrees.
    resolution
        H3 resolution, 0 (continents) to 15 (about a square metre); 9 is about 0.1 km².

    Examples
    --------
    >>> h3_hex(h3_cell(38.7223, -9.1393, 9))
    '893933676d3ffff'
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        message = f"resolution must be a whole number, got {resolution!r}"
        raise TypeError(message)
    if not 0 <= resolution <= 15:
        message = f"resolution must be from 0 to 15, got {resolution!r}"
        raise ValueError(message)
    if not _in_range(latitude, 90.0) or not _in_range(longitude, 180.0):
        message = (
            f"latitude and longitude must be within ±90 and ±180 degrees, "
            f"got {latitude!r}, {longitude!r}"
        )
        raise ValueError(message)

    return int(h3.str_to_int(h3.latlng_to_cell(latitude, longitude, resolution)))


def h3_hex(cell: int) -> str:
    """The hexadecimal form of an H3 cell, as the API and the dashboard show it.

    Examples
    --------
    >>> h3_hex(617700169958293503)
    '8928308280fffff'
    """
    if cell <= 0:
        message = f"an H3 cell must be a positive integer, got {cell!r}"
        raise ValueError(message)
    return format(cell, "x")


def _in_range(degrees: float, limit: float) -> bool:
    return math.isfinite(degrees) and -limit <= degrees <= limit
