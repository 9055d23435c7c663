"""Events the streaming job recorded: alarms, geofence crossings, overspeed, ...

Rows of ``events`` (written by the job, one per device, type and event time) read
in the caller's view: an ordinary user sees the events of the devices they own, an
administrator every event, including those of devices no longer registered.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from pipeline.store.motion import iso_time

__all__ = ["events_between"]


async def events_between(
    pool: asyncpg.Pool,
    *,
    owner_id: int | None,
    unique_id: str | None,
    event_type: str | None,
    start: datetime,
    end: datetime,
    limit: int,
) -> list[dict[str, Any]]:
    """Events with ``start <= time < end`` in the caller's view, newest first.

    Parameters
    ----------
    pool
        The database.
    owner_id
        The caller's view: ``None`` for an administrator, else the user's id.
    unique_id
        Only this device's events, or ``None`` for every device in the view.
    event_type
        Only events of this type (one of ``geo.events.EVENT_TYPES``), or ``None``.
    start, end
        The window of event time.
    limit
        At most this many, the most recent.
    """
    conditions = ["e.event_time >= $1", "e.event_time < $2"]
    arguments: list[Any] = [start, end, limit]
    # Only the filters asked for become conditions, so each query shape gets a plan
    # that uses its index; every value is still a parameter.
    for condition, value in (
        ("d.owner_id = ${}", owner_id),
        ("e.device = ${}", unique_id),
        ("e.type = ${}", event_type),
    ):
        if value is not None:
            arguments.append(value)
            conditions.append(condition.format(len(arguments)))

    rows = await pool.fetch(
        "SELECT e.id, d.id AS device_id, e.device, e.type, e.event_time,"
        " e.latitude, e.longitude, e.attributes"
        " FROM events AS e"
        f" {'JOIN' if owner_id is not None else 'LEFT JOIN'} devices AS d"
        " ON d.unique_id = e.device"
        f" WHERE {' AND '.join(conditions)}"
        " ORDER BY e.event_time DESC, e.id DESC LIMIT $3",
        *arguments,
    )
    return [_event(row) for row in rows]


def _event(row: asyncpg.Record) -> dict[str, Any]:
    attributes = row["attributes"]
    if isinstance(attributes, str):
        attributes = json.loads(attributes)
    return {
        "id": row["id"],
        "deviceId": row["device_id"],
        "uniqueId": row["device"],
        "type": row["type"],
        "time": iso_time(row["event_time"]),
        "latitude": row["latitude"],
        "longitude": row["longitude"],
        "attributes": attributes,
    }
