"""Notification rules in PostgreSQL (``sql/005_notifications.sql``).

Like :mod:`pipeline.store.devices`, every query takes the caller's view:
``owner_id=None`` is an administrator (every rule), a number only that user's
rules, and a rule outside the view is as good as missing.  A rule is written with
its targets and channels in one transaction, so a reader never sees half of one.

:func:`web_rules` is what the live WebSocket needs: a user's enabled rules with a
web channel, with their groups expanded to the devices in them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from pipeline.notify.rules import (
    Channel,
    EmailChannel,
    Rule,
    RuleSpec,
    WebChannel,
    WebhookChannel,
)

__all__ = [
    "WebRule",
    "channels_from_rows",
    "create_rule",
    "delete_rule",
    "foreign_targets",
    "get_rule",
    "list_rules",
    "owner_view",
    "update_rule",
    "web_rules",
]

_SELECT = """
SELECT r.id, r.owner_id, r.name, r.enabled, r.event_types, r.all_devices,
       r.created_at, r.updated_at,
       ARRAY(SELECT t.device_id FROM notification_rule_targets t
             WHERE t.rule_id = r.id AND t.device_id IS NOT NULL
             ORDER BY t.device_id) AS devices,
       ARRAY(SELECT t.group_id FROM notification_rule_targets t
             WHERE t.rule_id = r.id AND t.group_id IS NOT NULL
             ORDER BY t.group_id) AS groups,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                  'kind', c.kind, 'target', c.target, 'secret', c.secret)
                  ORDER BY c.id), '[]'::jsonb)
        FROM notification_channels c WHERE c.rule_id = r.id) AS channels
FROM notification_rules r
"""


@dataclass(frozen=True)
class WebRule:
    """A rule with a web channel, as the live feed matches events against it.

    ``devices`` holds the uniqueIds it covers (its devices and its groups'
    devices); ``None`` means every device the user sees.  ``event_types`` empty
    means every type.
    """

    id: int
    name: str
    event_types: frozenset[str]
    devices: frozenset[str] | None

    def matches(self, device: str, event_type: str) -> bool:
        """Whether an event of this device and type is one the rule announces."""
        if self.event_types and event_type not in self.event_types:
            return False
        return self.devices is None or device in self.devices


async def list_rules(pool: asyncpg.Pool, owner_id: int | None) -> list[Rule]:
    """The rules in the caller's view, by id."""
    rows = await pool.fetch(
        _SELECT + " WHERE $1::bigint IS NULL OR r.owner_id = $1 ORDER BY r.id",
        owner_id,
    )
    return [_rule(row) for row in rows]


async def get_rule(
    pool: asyncpg.Pool, rule_id: int, owner_id: int | None
) -> Rule | None:
    """The rule with that id if it is in the caller's view."""
    row = await pool.fetchrow(
        _SELECT + " WHERE r.id = $1 AND ($2::bigint IS NULL OR r.owner_id = $2)",
        rule_id,
        owner_id,
    )
    return None if row is None else _rule(row)


async def create_rule(pool: asyncpg.Pool, owner_id: int, spec: RuleSpec) -> Rule:
    """Store a new rule of ``owner_id`` with its targets and channels."""
    async with pool.acquire() as connection, connection.transaction():
        rule_id = await connection.fetchval(
            "INSERT INTO notification_rules"
            " (owner_id, name, enabled, event_types, all_devices)"
            " VALUES ($1, $2, $3, $4::text[], $5) RETURNING id",
            owner_id,
            spec.name,
            spec.enabled,
            sorted(spec.event_types),
            spec.all_devices,
        )
        await _write_parts(connection, rule_id, spec)
        row = await connection.fetchrow(_SELECT + " WHERE r.id = $1", rule_id)
    return _rule(row)


async def update_rule(
    pool: asyncpg.Pool, rule_id: int, owner_id: int | None, spec: RuleSpec
) -> Rule | None:
    """Replace a rule in the caller's view with ``spec``; ``None`` if not in it."""
    async with pool.acquire() as connection, connection.transaction():
        found = await connection.fetchval(
            "UPDATE notification_rules SET name = $3, enabled = $4,"
            " event_types = $5::text[], all_devices = $6, updated_at = now()"
            " WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2) RETURNING id",
            rule_id,
            owner_id,
            spec.name,
            spec.enabled,
            sorted(spec.event_types),
            spec.all_devices,
        )
        if found is None:
            return None
        await connection.execute(
            "DELETE FROM notification_rule_targets WHERE rule_id = $1", rule_id
        )
        await connection.execute(
            "DELETE FROM notification_channels WHERE rule_id = $1", rule_id
        )
        await _write_parts(connection, rule_id, spec)
        row = await connection.fetchrow(_SELECT + " WHERE r.id = $1", rule_id)
    return _rule(row)


async def delete_rule(
    pool: asyncpg.Pool, rule_id: int, owner_id: int | None
) -> int | None:
    """Remove a rule in the caller's view; returns its owner's id if it was there."""
    owner = await pool.fetchval(
        "DELETE FROM notification_rules"
        " WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2) RETURNING owner_id",
        rule_id,
        owner_id,
    )
    return None if owner is None else int(owner)


async def owner_view(pool: asyncpg.Pool, user_id: int) -> int | None:
    """The view of a rule's owner: ``None`` for an administrator, else the id."""
    is_admin = await pool.fetchval("SELECT is_admin FROM users WHERE id = $1", user_id)
    return None if is_admin else user_id


async def foreign_targets(
    pool: asyncpg.Pool,
    view: int | None,
    devices: Sequence[int],
    groups: Sequence[int],
) -> tuple[list[int], list[int]]:
    """The device and group ids outside ``view`` (missing or someone else's)."""
    row = await pool.fetchrow(
        """
        SELECT
          ARRAY(SELECT id FROM unnest($2::bigint[]) AS wanted (id)
                WHERE NOT EXISTS (
                  SELECT 1 FROM devices d
                  WHERE d.id = wanted.id
                    AND ($1::bigint IS NULL OR d.owner_id = $1))
                ORDER BY id) AS devices,
          ARRAY(SELECT id FROM unnest($3::bigint[]) AS wanted (id)
                WHERE NOT EXISTS (
                  SELECT 1 FROM device_groups g
                  WHERE g.id = wanted.id
                    AND ($1::bigint IS NULL OR g.owner_id = $1))
                ORDER BY id) AS groups
        """,
        view,
        list(devices),
        list(groups),
    )
    return list(row["devices"]), list(row["groups"])


async def web_rules(pool: asyncpg.Pool, user_id: int) -> list[WebRule]:
    """The user's enabled rules with a web channel, groups expanded to devices.

    A device counts only while the user may see it (an administrator sees all).
    """
    rows = await pool.fetch(
        """
        SELECT r.id, r.name, r.event_types, r.all_devices,
          ARRAY(
            SELECT d.unique_id FROM notification_rule_targets t
              JOIN devices d ON d.id = t.device_id
              WHERE t.rule_id = r.id AND (u.is_admin OR d.owner_id = r.owner_id)
            UNION
            SELECT d.unique_id FROM notification_rule_targets t
              JOIN devices d ON d.group_id = t.group_id
              WHERE t.rule_id = r.id AND (u.is_admin OR d.owner_id = r.owner_id)
          ) AS devices
        FROM notification_rules r
        JOIN users u ON u.id = r.owner_id
        WHERE r.owner_id = $1 AND r.enabled
          AND EXISTS (SELECT 1 FROM notification_channels c
                      WHERE c.rule_id = r.id AND c.kind = 'web')
        ORDER BY r.id
        """,
        user_id,
    )
    return [
        WebRule(
            id=int(row["id"]),
            name=str(row["name"]),
            event_types=frozenset(row["event_types"]),
            devices=None if row["all_devices"] else frozenset(row["devices"]),
        )
        for row in rows
    ]


def channels_from_rows(raw: Any) -> tuple[Channel, ...]:
    """Channels from the ``jsonb_agg`` of ``notification_channels`` rows."""
    items = json.loads(raw) if isinstance(raw, str) else raw
    channels: list[Channel] = []
    for item in items:
        if item["kind"] == "web":
            channels.append(WebChannel())
        elif item["kind"] == "email":
            channels.append(EmailChannel(str(item["target"])))
        else:
            channels.append(WebhookChannel(str(item["target"]), str(item["secret"])))
    return tuple(channels)


async def _write_parts(
    connection: asyncpg.Connection, rule_id: int, spec: RuleSpec
) -> None:
    targets: list[tuple[int, int | None, int | None]]
    targets = [(rule_id, device, None) for device in spec.devices]
    targets += [(rule_id, None, group) for group in spec.groups]
    if targets:
        await connection.executemany(
            "INSERT INTO notification_rule_targets (rule_id, device_id, group_id)"
            " VALUES ($1, $2, $3)",
            targets,
        )
    await connection.executemany(
        "INSERT INTO notification_channels (rule_id, kind, target, secret)"
        " VALUES ($1, $2, $3, $4)",
        [(rule_id, *_channel_row(channel)) for channel in spec.channels],
    )


def _channel_row(channel: Channel) -> tuple[str, str | None, str | None]:
    if isinstance(channel, EmailChannel):
        return (channel.kind, channel.address, None)
    if isinstance(channel, WebhookChannel):
        return (channel.kind, channel.url, channel.secret)
    return (channel.kind, None, None)


def _rule(row: asyncpg.Record) -> Rule:
    return Rule(
        id=int(row["id"]),
        owner_id=int(row["owner_id"]),
        name=str(row["name"]),
        enabled=bool(row["enabled"]),
        event_types=frozenset(row["event_types"]),
        all_devices=bool(row["all_devices"]),
        devices=tuple(int(device) for device in row["devices"]),
        groups=tuple(int(group) for group in row["groups"]),
        channels=channels_from_rows(row["channels"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
