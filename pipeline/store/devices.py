"""Devices: what reports positions, and who owns it.

Every query takes the caller's view of the table: ``owner_id=None`` means an
administrator (every device), a number means only that user's devices.  A device
outside the caller's view is indistinguishable from one that does not exist, so
numeric ids never reveal what other users have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

__all__ = [
    "Device",
    "DeviceExistsError",
    "create_device",
    "delete_device",
    "get_device",
    "list_devices",
    "owned_unique_ids",
    "update_device",
]

_COLUMNS = "id, unique_id, name, owner_id, attributes, created_at"


class DeviceExistsError(ValueError):
    """A device with that uniqueId is registered already (by anyone)."""


@dataclass(frozen=True)
class Device:
    """A registered device."""

    id: int
    unique_id: str
    name: str
    owner_id: int
    attributes: dict[str, Any]
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The API JSON form (the owner is not shown)."""
        return {
            "id": self.id,
            "uniqueId": self.unique_id,
            "name": self.name,
            "attributes": self.attributes,
            "createdAt": self.created_at.isoformat(),
        }


async def list_devices(pool: asyncpg.Pool, owner_id: int | None) -> list[Device]:
    """The devices in the caller's view, by id."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM devices"
        " WHERE $1::bigint IS NULL OR owner_id = $1 ORDER BY id",
        owner_id,
    )
    return [_device(row) for row in rows]


async def owned_unique_ids(pool: asyncpg.Pool, owner_id: int | None) -> set[str]:
    """The uniqueIds in the caller's view (what it may see and report for)."""
    rows = await pool.fetch(
        "SELECT unique_id FROM devices WHERE $1::bigint IS NULL OR owner_id = $1",
        owner_id,
    )
    return {str(row["unique_id"]) for row in rows}


async def get_device(
    pool: asyncpg.Pool, device_id: int, owner_id: int | None
) -> Device | None:
    """The device with that id if it is in the caller's view."""
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM devices"
        " WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)",
        device_id,
        owner_id,
    )
    return None if row is None else _device(row)


async def create_device(
    pool: asyncpg.Pool,
    owner_id: int,
    unique_id: str,
    name: str,
    attributes: dict[str, Any],
) -> Device:
    """Register a device; :class:`DeviceExistsError` when the uniqueId is taken."""
    try:
        row = await pool.fetchrow(
            "INSERT INTO devices (unique_id, name, owner_id, attributes)"
            f" VALUES ($1, $2, $3, $4::jsonb) RETURNING {_COLUMNS}",
            unique_id,
            name,
            owner_id,
            json.dumps(attributes),
        )
    except asyncpg.UniqueViolationError as error:
        raise _exists(unique_id) from error
    return _device(row)


async def update_device(
    pool: asyncpg.Pool,
    device_id: int,
    owner_id: int | None,
    changes: dict[str, Any],
) -> Device | None:
    """Change name, uniqueId and/or attributes of a device in the caller's view.

    ``changes`` may hold ``unique_id``, ``name`` and ``attributes``; what it lacks
    stays as it is.  Returns ``None`` when the device is not in the view.
    """
    attributes = changes.get("attributes")
    try:
        row = await pool.fetchrow(
            "UPDATE devices SET"
            " unique_id = coalesce($3, unique_id),"
            " name = coalesce($4, name),"
            " attributes = coalesce($5::jsonb, attributes),"
            " updated_at = now()"
            " WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)"
            f" RETURNING {_COLUMNS}",
            device_id,
            owner_id,
            changes.get("unique_id"),
            changes.get("name"),
            None if attributes is None else json.dumps(attributes),
        )
    except asyncpg.UniqueViolationError as error:
        raise _exists(str(changes.get("unique_id"))) from error
    return None if row is None else _device(row)


async def delete_device(
    pool: asyncpg.Pool, device_id: int, owner_id: int | None
) -> Device | None:
    """Remove a device in the caller's view; returns what was removed, if any."""
    row = await pool.fetchrow(
        "DELETE FROM devices"
        " WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)"
        f" RETURNING {_COLUMNS}",
        device_id,
        owner_id,
    )
    return None if row is None else _device(row)


def _exists(unique_id: str) -> DeviceExistsError:
    message = f"a device with uniqueId {unique_id!r} is registered already"
    return DeviceExistsError(message)


def _device(row: asyncpg.Record) -> Device:
    attributes = row["attributes"]
    if isinstance(attributes, str):
        attributes = json.loads(attributes)
    return Device(
        id=int(row["id"]),
        unique_id=str(row["unique_id"]),
        name=str(row["name"]),
        owner_id=int(row["owner_id"]),
        attributes=dict(attributes),
        created_at=row["created_at"],
    )
