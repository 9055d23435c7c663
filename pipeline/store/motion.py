"""What the streaming job derives about one device's motion, read for the API.

Trips, stops, idle periods and geofence visits are the rows the job writes (see
``sql/003_motion_geofences_events.sql``); each reader takes the device's uniqueId
(the caller checks that the device is in the user's view) and a window, and returns
the records that overlap it, oldest first, in the API JSON form: times ISO-8601 UTC,
distances in metres, durations in seconds, speeds in km/h.

Daily summaries come from ``daily_summaries`` where the job stored a row for that
device, zone and day; any other day is computed here from the trips, stops and
idles overlapping it with :func:`geo.summaries.summarise`, the code the job uses,
so both agree (see that module for what each figure means).  ``trips`` keeps no
time of the top speed, so a computed day puts a trip's top speed on the day the
trip starts.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from geo.summaries import DaySummary, summarise
from geo.trips import Idle, Record, Stop
from pipeline.model import format_time_ms
from pipeline.stream.history import period_record, trip_record

__all__ = [
    "daily_summaries",
    "idles_between",
    "iso_time",
    "stops_between",
    "trips_between",
    "user_time_zone",
    "visits_between",
]

# Overlap of a record [start_time, end_time] with a window [$2, $3): a record of no
# duration counts when its instant lies in the window.
_OVERLAPS = (
    "device = $1 AND start_time < $3"
    " AND (end_time > $2 OR (end_time = start_time AND start_time >= $2))"
)


def iso_time(moment: datetime) -> str:
    """ISO-8601 UTC with a ``Z`` (milliseconds when there are any), as fixes show."""
    return format_time_ms(round(moment.timestamp() * 1000))


async def trips_between(
    pool: asyncpg.Pool, unique_id: str, start: datetime, end: datetime, limit: int
) -> list[dict[str, Any]]:
    """Trips of ``unique_id`` that overlap ``[start, end)``, oldest first."""
    rows = await pool.fetch(
        f"SELECT * FROM trips WHERE {_OVERLAPS} ORDER BY start_time LIMIT $4",
        unique_id,
        start,
        end,
        limit,
    )
    return [_trip(row) for row in rows]


async def stops_between(
    pool: asyncpg.Pool, unique_id: str, start: datetime, end: datetime, limit: int
) -> list[dict[str, Any]]:
    """Stops of ``unique_id`` that overlap ``[start, end)``, oldest first."""
    return await _periods("stops", pool, unique_id, start, end, limit)


async def idles_between(
    pool: asyncpg.Pool, unique_id: str, start: datetime, end: datetime, limit: int
) -> list[dict[str, Any]]:
    """Idle periods (engine on, standing) of ``unique_id`` overlapping the window."""
    return await _periods("idles", pool, unique_id, start, end, limit)


async def _periods(
    table: str,
    pool: asyncpg.Pool,
    unique_id: str,
    start: datetime,
    end: datetime,
    limit: int,
) -> list[dict[str, Any]]:
    # ``table`` is one of two literals above, never user input.
    rows = await pool.fetch(
        "SELECT device, start_time, end_time, latitude, longitude, duration_s"
        f" FROM {table} WHERE {_OVERLAPS} ORDER BY start_time LIMIT $4",
        unique_id,
        start,
        end,
        limit,
    )
    return [
        {
            "uniqueId": row["device"],
            "startTime": iso_time(row["start_time"]),
            "endTime": iso_time(row["end_time"]),
            "latitude": row["latitude"],
            "longitude": row["longitude"],
            "duration": row["duration_s"],
        }
        for row in rows
    ]


async def visits_between(
    pool: asyncpg.Pool, unique_id: str, start: datetime, end: datetime, limit: int
) -> list[dict[str, Any]]:
    """Geofence visits of ``unique_id`` overlapping ``[start, end)``, oldest first.

    A visit still going on has ``exitTime`` and ``duration`` ``None``.  The
    geofence's name is ``None`` once the geofence is deleted.
    """
    rows = await pool.fetch(
        "SELECT v.device, v.geofence_id, g.name, v.enter_time, v.exit_time,"
        " v.duration_s FROM geofence_visits AS v"
        " LEFT JOIN geofences AS g ON g.id = v.geofence_id"
        " WHERE v.device = $1 AND v.enter_time < $3"
        " AND (v.exit_time IS NULL OR v.exit_time > $2"
        "      OR (v.exit_time = v.enter_time AND v.enter_time >= $2))"
        " ORDER BY v.enter_time, v.geofence_id LIMIT $4",
        unique_id,
        start,
        end,
        limit,
    )
    return [
        {
            "uniqueId": row["device"],
            "geofenceId": row["geofence_id"],
            "geofenceName": row["name"],
            "enterTime": iso_time(row["enter_time"]),
            "exitTime": _maybe_time(row["exit_time"]),
            "duration": row["duration_s"],
        }
        for row in rows
    ]


async def user_time_zone(pool: asyncpg.Pool, user_id: int) -> str:
    """The IANA time zone a user's days are counted in (``users.time_zone``)."""
    zone = await pool.fetchval("SELECT time_zone FROM users WHERE id = $1", user_id)
    return "UTC" if zone is None else str(zone)


async def daily_summaries(
    pool: asyncpg.Pool, unique_id: str, time_zone: str, first: date, last: date
) -> list[dict[str, Any]]:
    """One row per local day ``first .. last`` (inclusive) in ``time_zone``.

    A day the job stored for this zone comes from ``daily_summaries`` (``source``
    ``"stored"``); any other day is computed from trips, stops and idles
    (``"computed"``): a zone other than the owner's, a day not summarised yet, or
    one without any motion (all zeros).  ``time_zone`` is an IANA name.
    """
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    async with pool.acquire() as connection, connection.transaction(readonly=True):
        rows = await connection.fetch(
            "SELECT day, distance_m, driving_s, idle_s, stops, max_speed_kmh"
            " FROM daily_summaries"
            " WHERE device = $1 AND time_zone = $2 AND day >= $3 AND day <= $4",
            unique_id,
            time_zone,
            first,
            last,
        )
        stored = {row["day"]: _stored_day(row) for row in rows}
        missing = [day for day in days if day not in stored]
        computed = {}
        if missing:
            computed = await _computed_days(
                connection, unique_id, time_zone, missing[0], missing[-1]
            )

    return [
        stored[day] if day in stored else computed.get(day, _empty_day(day))
        for day in days
    ]


async def _computed_days(
    connection: asyncpg.Connection,
    unique_id: str,
    time_zone: str,
    first: date,
    last: date,
) -> dict[date, dict[str, Any]]:
    zone = ZoneInfo(time_zone)
    start = datetime.combine(first, time(), tzinfo=zone)
    end = datetime.combine(last + timedelta(days=1), time(), tzinfo=zone)

    records = await _records(connection, unique_id, start, end)
    return {
        summary.day: _computed_day(summary)
        for summary in summarise(records, time_zone)
        if first <= summary.day <= last
    }


async def _records(
    connection: asyncpg.Connection, unique_id: str, start: datetime, end: datetime
) -> list[Record]:
    """Every trip, stop and idle of the device overlapping ``[start, end)``."""
    found: list[Record] = [
        trip_record(row)
        for row in await connection.fetch(
            f"SELECT * FROM trips WHERE {_OVERLAPS}", unique_id, start, end
        )
    ]
    for table, kind in (("stops", Stop), ("idles", Idle)):
        # ``table`` is one of the two literals above.
        rows = await connection.fetch(
            f"SELECT * FROM {table} WHERE {_OVERLAPS}", unique_id, start, end
        )
        found += [period_record(kind, row) for row in rows]
    return found


def _stored_day(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "date": row["day"].isoformat(),
        "distance": row["distance_m"],
        "drivingTime": row["driving_s"],
        "idleTime": row["idle_s"],
        "stops": row["stops"],
        "maxSpeed": _real(row["max_speed_kmh"]),
        "source": "stored",
    }


def _computed_day(summary: DaySummary) -> dict[str, Any]:
    return {
        "date": summary.day.isoformat(),
        "distance": summary.distance_m,
        "drivingTime": summary.driving_s,
        "idleTime": summary.idle_s,
        "stops": summary.stops,
        "maxSpeed": _real(summary.max_speed_kmh),
        "source": "computed",
    }


def _empty_day(day: date) -> dict[str, Any]:
    return _computed_day(DaySummary("", day))


def _trip(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "uniqueId": row["device"],
        "startTime": iso_time(row["start_time"]),
        "endTime": iso_time(row["end_time"]),
        "startLatitude": row["start_latitude"],
        "startLongitude": row["start_longitude"],
        "endLatitude": row["end_latitude"],
        "endLongitude": row["end_longitude"],
        "distance": row["distance_m"],
        "duration": row["duration_s"],
        "maxSpeed": _real(row["max_speed_kmh"]),
        "averageSpeed": _real(row["avg_speed_kmh"]),
        "idleTime": row["idle_s"],
        "startOdometer": row["start_odometer_m"],
        "endOdometer": row["end_odometer_m"],
    }


def _maybe_time(moment: datetime | None) -> str | None:
    return None if moment is None else iso_time(moment)


def _real(value: float | None) -> float | None:
    # ``real`` columns arrive as float32 values widened: 36.5 stays 36.5, 36.6
    # would show as 36.599998; six significant digits is what a real holds.
    return None if value is None else float(f"{value:.6g}")
