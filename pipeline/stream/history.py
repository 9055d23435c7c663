"""Stored history read back by the job: records for summaries, fixes for late data.

:class:`HistoryReader` implements :class:`pipeline.stream.motion.History` over
PostgreSQL: trips, stops and idles as :mod:`geo.trips` records, fixes as the rows
the job carries (:data:`pipeline.stream.motion.FixRow`) with their ``filter``.
Any database failure becomes :class:`~pipeline.stream.motion.HistoryUnavailable`,
which the job answers by retrying later rather than failing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from geo.trips import Idle, Record, Stop, Trip
from pipeline.stream.database import DATABASE_ERRORS, BlockingDatabase
from pipeline.stream.motion import FixRow, HistoryUnavailable

__all__ = ["HistoryReader", "epoch_ms", "period_record", "trip_record", "utc"]

_OVERLAPPING = (
    "device = $1 AND end_time >= $2 AND ($3::timestamptz IS NULL OR start_time < $3)"
)

_TRIPS = f"""
SELECT device, start_time, end_time, start_latitude, start_longitude, end_latitude,
       end_longitude, distance_m, duration_s, max_speed_kmh, max_speed_time,
       avg_speed_kmh, idle_s, start_odometer_m, end_odometer_m
FROM trips WHERE {_OVERLAPPING}
"""

_PERIODS = (
    """
SELECT device, start_time, end_time, latitude, longitude, duration_s
FROM {table} WHERE """
    + _OVERLAPPING
)

_LAST_STOP = "SELECT max(start_time) FROM stops WHERE device = $1 AND start_time <= $2"

_FIX_COLUMNS = """
device, fix_time, server_time, latitude, longitude, altitude, accuracy, h3, speed,
course, satellites, valid, protocol, attributes::text AS attributes, filter
"""

_FIXES = f"""
SELECT {_FIX_COLUMNS} FROM fixes
WHERE device = $1 AND fix_time >= $2 AND fix_time <= $3
ORDER BY fix_time
"""

_LAST_ACCEPTED = f"""
SELECT {_FIX_COLUMNS} FROM fixes
WHERE device = $1 AND fix_time < $2 AND filter IS NULL
ORDER BY fix_time DESC LIMIT 1
"""


def utc(epoch_ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime (what asyncpg binds)."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def epoch_ms(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds."""
    return round(moment.timestamp() * 1000)


class HistoryReader:
    """Reads one database's stored records and fixes for the job."""

    def __init__(self, database: BlockingDatabase) -> None:
        self._database = database

    def records(self, device: str, start_ms: int, end_ms: int | None) -> list[Record]:
        """Trips, stops and idles that may overlap ``[start_ms, end_ms)``, by start."""
        end = None if end_ms is None else utc(end_ms)
        arguments = (device, utc(start_ms), end)
        trips = self._fetch(_TRIPS, *arguments)
        found: list[Record] = [trip_record(row) for row in trips]
        for table, kind in (("stops", Stop), ("idles", Idle)):
            rows = self._fetch(_PERIODS.format(table=table), *arguments)
            found += [period_record(kind, row) for row in rows]
        return sorted(found, key=lambda r: (r.start_ms, r.end_ms))

    def last_stop_start(self, device: str, at_or_before_ms: int) -> int | None:
        """Start of the latest stored stop that began at or before a time."""
        rows = self._fetch(_LAST_STOP, device, utc(at_or_before_ms))
        if not rows or rows[0][0] is None:
            return None
        return epoch_ms(rows[0][0])

    def fixes(
        self, device: str, start_ms: int, end_ms: int
    ) -> list[tuple[FixRow, str | None]]:
        """Stored fixes with ``start_ms <= fix time <= end_ms``, and their filter."""
        rows = self._fetch(_FIXES, device, utc(start_ms), utc(end_ms))
        return [(_fix_row(row), row["filter"]) for row in rows]

    def last_accepted(self, device: str, before_ms: int) -> FixRow | None:
        """The newest stored fix before ``before_ms`` whose ``filter`` is empty."""
        rows = self._fetch(_LAST_ACCEPTED, device, utc(before_ms))
        return _fix_row(rows[0]) if rows else None

    def _fetch(self, query: str, *arguments: Any) -> list[asyncpg.Record]:
        try:
            return self._database.fetch(query, *arguments)
        except DATABASE_ERRORS as error:
            message = f"history unreadable: {type(error).__name__}: {error}"
            raise HistoryUnavailable(message) from error


def trip_record(row: asyncpg.Record) -> Trip:
    """A ``trips`` row as a :class:`geo.trips.Trip`; the job and the API read alike."""
    start_ms = epoch_ms(row["start_time"])
    top = row["max_speed_time"]
    return Trip(
        device=row["device"],
        start_ms=start_ms,
        end_ms=epoch_ms(row["end_time"]),
        start_latitude=row["start_latitude"],
        start_longitude=row["start_longitude"],
        end_latitude=row["end_latitude"],
        end_longitude=row["end_longitude"],
        distance_m=row["distance_m"],
        duration_s=row["duration_s"],
        max_speed_kmh=_number(row["max_speed_kmh"]),
        max_speed_ms=start_ms if top is None else epoch_ms(top),
        average_speed_kmh=_number(row["avg_speed_kmh"]),
        idle_s=row["idle_s"],
        start_odometer_m=_number(row["start_odometer_m"]),
        end_odometer_m=_number(row["end_odometer_m"]),
    )


def period_record(kind: type[Stop] | type[Idle], row: asyncpg.Record) -> Stop | Idle:
    """A ``stops`` or ``idles`` row as its :mod:`geo.trips` record."""
    return kind(
        row["device"],
        row["latitude"],
        row["longitude"],
        epoch_ms(row["start_time"]),
        epoch_ms(row["end_time"]),
        row["duration_s"],
    )


def _fix_row(row: asyncpg.Record) -> FixRow:
    return (
        row["device"],
        epoch_ms(row["fix_time"]),
        epoch_ms(row["server_time"]),
        row["latitude"],
        row["longitude"],
        row["altitude"],
        row["accuracy"],
        row["h3"],
        row["speed"],
        row["course"],
        row["satellites"],
        row["valid"],
        row["protocol"],
        row["attributes"],
    )


def _number(value: Any) -> float:
    return 0.0 if value is None else float(value)
