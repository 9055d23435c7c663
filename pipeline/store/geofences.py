"""Geofences and which devices or groups they apply to.

Every query takes the caller's view (``owner_id=None``: an administrator, every
geofence; a number: only that user's).  A geofence outside the view reads as absent.
Assignments name devices and groups that must be in the same view.

Each change (create, update, delete) bumps ``version`` and ``updated_at`` and sends
``NOTIFY rastro_geofences`` with ``{"id", "version", "deleted"}`` at commit, so the
streaming job may either poll ``updated_at`` or listen.  A deletion leaves no row to
poll: a poller compares the ids it holds with ``SELECT id, version FROM geofences``.

``geometry`` holds a GeoJSON Feature whose ``geometry`` is the shape and whose
``properties`` hold only what the shape needs besides (``radius`` of a circle,
``width`` of a corridor, metres); name and speed limit have their own columns.
``geo.geofences.geofence_from_geojson(row["geometry"], fence_id=str(row["id"]),
name=row["name"], speed_limit_kmh=row["speed_limit_kmh"])`` reads a row back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from pipeline.store.motion import iso_time

__all__ = [
    "NOTIFY_CHANNEL",
    "GeofenceDraft",
    "StoredGeofence",
    "UnknownAssignmentError",
    "create_geofence",
    "delete_geofence",
    "get_geofence",
    "list_geofences",
    "update_geofence",
]

#: The channel every change is announced on.
NOTIFY_CHANNEL = "rastro_geofences"

_SELECT = """
SELECT g.id, g.owner_id, g.name, g.kind, g.geometry, g.speed_limit_kmh,
       g.attributes, g.version, g.created_at, g.updated_at,
       coalesce(array_agg(a.device_id ORDER BY a.device_id)
                FILTER (WHERE a.device_id IS NOT NULL), '{}') AS devices,
       coalesce(array_agg(a.group_id ORDER BY a.group_id)
                FILTER (WHERE a.group_id IS NOT NULL), '{}') AS groups
FROM geofences AS g
LEFT JOIN geofence_assignments AS a ON a.geofence_id = g.id
WHERE ($1::bigint IS NULL OR g.owner_id = $1) AND ($2::bigint IS NULL OR g.id = $2)
GROUP BY g.id
ORDER BY g.id
"""


class UnknownAssignmentError(ValueError):
    """An assignment names a device or group that is not in the caller's view."""


@dataclass(frozen=True)
class GeofenceDraft:
    """A checked geofence as a caller wants it stored.

    ``kind`` is ``polygon``, ``circle`` or ``corridor``; ``geometry`` the stored
    Feature (see the module's docstring).  ``devices`` and ``groups`` are ids;
    ``None`` keeps the current assignments on update (none on create).
    """

    name: str
    kind: str
    geometry: dict[str, Any]
    speed_limit_kmh: float | None
    attributes: dict[str, Any]
    devices: tuple[int, ...] | None = None
    groups: tuple[int, ...] | None = None


@dataclass(frozen=True)
class StoredGeofence:
    """A geofence as stored, with its assignments (ids, ascending)."""

    id: int
    owner_id: int
    name: str
    kind: str
    geometry: dict[str, Any]
    speed_limit_kmh: float | None
    attributes: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime
    devices: tuple[int, ...]
    groups: tuple[int, ...]

    def to_feature(self) -> dict[str, Any]:
        """The API form: a GeoJSON Feature the API also accepts back for PUT."""
        properties: dict[str, Any] = {
            **self.attributes,
            **self.geometry.get("properties", {}),
            "name": self.name,
            "kind": self.kind,
            "devices": list(self.devices),
            "groups": list(self.groups),
            "version": self.version,
            "createdAt": iso_time(self.created_at),
            "updatedAt": iso_time(self.updated_at),
        }
        if self.speed_limit_kmh is not None:
            properties["speedLimit"] = float(f"{self.speed_limit_kmh:.6g}")
        return {
            "type": "Feature",
            "id": self.id,
            "geometry": self.geometry["geometry"],
            "properties": properties,
        }


async def list_geofences(
    pool: asyncpg.Pool, owner_id: int | None
) -> list[StoredGeofence]:
    """The geofences in the caller's view, by id."""
    rows = await pool.fetch(_SELECT, owner_id, None)
    return [_stored(row) for row in rows]


async def get_geofence(
    pool: asyncpg.Pool, geofence_id: int, owner_id: int | None
) -> StoredGeofence | None:
    """The geofence with that id if it is in the caller's view."""
    row = await pool.fetchrow(_SELECT, owner_id, geofence_id)
    return None if row is None else _stored(row)


async def create_geofence(
    pool: asyncpg.Pool, owner_id: int, view: int | None, draft: GeofenceDraft
) -> StoredGeofence:
    """Store a new geofence owned by ``owner_id``, with its assignments.

    ``view`` is the caller's view, which the assigned devices and groups must be
    in; :class:`UnknownAssignmentError` otherwise, and nothing is stored.
    """
    async with pool.acquire() as connection, connection.transaction():
        await _check_assignments(connection, view, draft)
        geofence_id = await connection.fetchval(
            "INSERT INTO geofences"
            " (owner_id, name, kind, geometry, speed_limit_kmh, attributes)"
            " VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb) RETURNING id",
            owner_id,
            draft.name,
            draft.kind,
            json.dumps(draft.geometry),
            draft.speed_limit_kmh,
            json.dumps(draft.attributes),
        )
        await _assign(connection, geofence_id, draft)
        stored = _stored(await connection.fetchrow(_SELECT, None, geofence_id))
        await _announce(connection, stored.id, stored.version, deleted=False)
    return stored


async def update_geofence(
    pool: asyncpg.Pool, geofence_id: int, view: int | None, draft: GeofenceDraft
) -> StoredGeofence | None:
    """Replace a geofence in the caller's view; ``None`` when it is not there.

    Shape, name, speed limit and attributes are replaced; assignments only where
    the draft has them.  ``version`` grows by one and ``updated_at`` is now.
    """
    async with pool.acquire() as connection, connection.transaction():
        changed = await connection.fetchval(
            "UPDATE geofences SET name = $3, kind = $4, geometry = $5::jsonb,"
            " speed_limit_kmh = $6, attributes = $7::jsonb,"
            " version = version + 1, updated_at = now()"
            " WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)"
            " RETURNING id",
            geofence_id,
            view,
            draft.name,
            draft.kind,
            json.dumps(draft.geometry),
            draft.speed_limit_kmh,
            json.dumps(draft.attributes),
        )
        if changed is None:
            return None
        await _check_assignments(connection, view, draft)
        await _assign(connection, geofence_id, draft)
        stored = _stored(await connection.fetchrow(_SELECT, None, geofence_id))
        await _announce(connection, stored.id, stored.version, deleted=False)
    return stored


async def delete_geofence(
    pool: asyncpg.Pool, geofence_id: int, view: int | None
) -> bool:
    """Remove a geofence in the caller's view (its assignments go with it).

    Its visits stay in history.  Returns whether there was one to remove.
    """
    async with pool.acquire() as connection, connection.transaction():
        version = await connection.fetchval(
            "DELETE FROM geofences"
            " WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)"
            " RETURNING version",
            geofence_id,
            view,
        )
        if version is None:
            return False
        await _announce(connection, geofence_id, version + 1, deleted=True)
    return True


async def _check_assignments(
    connection: asyncpg.Connection, view: int | None, draft: GeofenceDraft
) -> None:
    for table, what, wanted in (
        ("devices", "device", draft.devices),
        ("device_groups", "group", draft.groups),
    ):
        if not wanted:
            continue
        # ``table`` is one of the two literals above.
        rows = await connection.fetch(
            f"SELECT id FROM {table}"
            " WHERE id = ANY ($1::bigint[]) AND ($2::bigint IS NULL OR owner_id = $2)",
            list(wanted),
            view,
        )
        missing = sorted(set(wanted) - {int(row["id"]) for row in rows})
        if missing:
            plural = "s" if len(missing) > 1 else ""
            message = f"no {what}{plural} with id{plural} {_listed(missing)}"
            raise UnknownAssignmentError(message)


async def _assign(
    connection: asyncpg.Connection, geofence_id: int, draft: GeofenceDraft
) -> None:
    for column, wanted in (("device_id", draft.devices), ("group_id", draft.groups)):
        if wanted is None:
            continue
        # ``column`` is one of the two literals above.
        await connection.execute(
            "DELETE FROM geofence_assignments"
            f" WHERE geofence_id = $1 AND {column} IS NOT NULL",
            geofence_id,
        )
        await connection.execute(
            f"INSERT INTO geofence_assignments (geofence_id, {column})"
            " SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING",
            geofence_id,
            sorted(set(wanted)),
        )


async def _announce(
    connection: asyncpg.Connection, geofence_id: int, version: int, *, deleted: bool
) -> None:
    payload = {"id": geofence_id, "version": version, "deleted": deleted}
    await connection.execute(
        "SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, json.dumps(payload)
    )


def _listed(ids: Sequence[int]) -> str:
    return ", ".join(str(number) for number in ids)


def _stored(row: asyncpg.Record) -> StoredGeofence:
    return StoredGeofence(
        id=int(row["id"]),
        owner_id=int(row["owner_id"]),
        name=str(row["name"]),
        kind=str(row["kind"]),
        geometry=_json(row["geometry"]),
        speed_limit_kmh=row["speed_limit_kmh"],
        attributes=_json(row["attributes"]),
        version=int(row["version"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        devices=tuple(int(i) for i in row["devices"]),
        groups=tuple(int(i) for i in row["groups"]),
    )


def _json(value: Any) -> dict[str, Any]:
    loaded = json.loads(value) if isinstance(value, str) else value
    return dict(loaded)
