"""The fix history of one device, read from the ``fixes`` table.

Rows come back in the API JSON form of :func:`pipeline.model.fix_to_json` (built
through a :class:`~pipeline.model.Fix`, so history and the live feed cannot drift
apart), plus ``h3`` as the cell's hexadecimal form when the fix was indexed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from pipeline.model import Fix, fix_to_json

__all__ = ["fix_document", "fixes_between"]


async def fixes_between(
    pool: asyncpg.Pool,
    unique_id: str,
    start: datetime,
    end: datetime,
    limit: int,
) -> list[dict[str, Any]]:
    """Fixes of ``unique_id`` with ``start <= fix_time < end``, oldest first."""
    rows = await pool.fetch(
        "SELECT device, fix_time, server_time, latitude, longitude, altitude,"
        " accuracy, h3, speed, course, satellites, valid, protocol, attributes"
        " FROM fixes WHERE device = $1 AND fix_time >= $2 AND fix_time < $3"
        " ORDER BY fix_time LIMIT $4",
        unique_id,
        start,
        end,
        limit,
    )
    return [_document(row) for row in rows]


def fix_document(fix: Fix) -> dict[str, Any]:
    """The API JSON form of a fix, with ``h3`` (hex) when it has a cell."""
    document = fix_to_json(fix)
    if fix.h3:
        document["h3"] = format(fix.h3, "x")
    return document


def _document(row: asyncpg.Record) -> dict[str, Any]:
    fix = Fix(
        device=row["device"],
        fix_time_ms=_epoch_ms(row["fix_time"]),
        server_time_ms=_epoch_ms(row["server_time"]),
        latitude=row["latitude"],
        longitude=row["longitude"],
        valid=row["valid"],
        protocol=row["protocol"] or "",
        h3=row["h3"] or 0,
    )
    for column, field in (
        ("speed", "speed_kmh"),
        ("course", "course"),
        ("altitude", "altitude"),
        ("accuracy", "accuracy"),
        ("satellites", "satellites"),
    ):
        if row[column] is not None:
            setattr(fix, field, row[column])
    attributes = row["attributes"]
    if isinstance(attributes, str):
        attributes = json.loads(attributes)
    for key, value in (attributes or {}).items():
        fix.attributes[key] = json.dumps(value)
    return fix_document(fix)


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)
