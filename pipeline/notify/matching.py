"""Which rules an event of a device reaches, asked of PostgreSQL through a cache.

A rule reaches a device's events when it is enabled, has an e-mail or webhook
channel, and

- its owner may see the device: owns it, or is an administrator;
- it covers every device (``all_devices``), or names the device, or names the
  device's group.

The event type is checked afterwards (:meth:`MatchedRule.accepts`), so one answer
per device serves all its events.  :class:`RuleMatcher` keeps that answer for
``ttl_s`` seconds (a device without rules too, the common case), for at most
``max_devices`` devices, forgetting the least recently used first: a busy fleet
costs one query per device and TTL, and a rule changed in the API reaches the
notifier within ``ttl_s``.  Devices missing from the cache are asked for in one
query per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from pipeline.notify.rules import EmailChannel, WebhookChannel
from pipeline.notify.store import channels_from_rows
from pipeline.store.expiring import ExpiringAnswers

__all__ = ["DeviceAudience", "MatchedRule", "RuleMatcher"]

DEFAULT_TTL_S = 10.0
DEFAULT_MAX_DEVICES = 100_000

_MATCHING_RULES = """
SELECT d.unique_id, d.name AS device_name, r.id, r.name, r.owner_id, r.event_types,
       (SELECT jsonb_agg(jsonb_build_object(
                 'kind', c.kind, 'target', c.target, 'secret', c.secret)
                 ORDER BY c.id)
        FROM notification_channels c
        WHERE c.rule_id = r.id AND c.kind <> 'web') AS channels
FROM devices d
JOIN notification_rules r
  ON r.enabled
 AND (r.owner_id = d.owner_id
      OR r.owner_id IN (SELECT id FROM users WHERE is_admin))
WHERE d.unique_id = ANY($1::text[])
  AND (r.all_devices OR EXISTS (
        SELECT 1 FROM notification_rule_targets t
        WHERE t.rule_id = r.id
          AND (t.device_id = d.id OR t.group_id = d.group_id)))
  AND EXISTS (SELECT 1 FROM notification_channels c
              WHERE c.rule_id = r.id AND c.kind <> 'web')
ORDER BY d.unique_id, r.id
"""


@dataclass(frozen=True)
class MatchedRule:
    """A rule that reaches a device, with only the channels the notifier serves."""

    id: int
    name: str
    owner_id: int
    event_types: frozenset[str]
    channels: tuple[EmailChannel | WebhookChannel, ...]

    def accepts(self, event_type: str) -> bool:
        """Whether the rule listens to events of this type."""
        return not self.event_types or event_type in self.event_types


@dataclass(frozen=True)
class DeviceAudience:
    """A device's name and the rules its events reach (none for most devices)."""

    device_name: str
    rules: tuple[MatchedRule, ...]


_NOBODY = DeviceAudience("", ())


class RuleMatcher:
    """The rules each device's events reach, cached for ``ttl_s`` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_devices: int = DEFAULT_MAX_DEVICES,
    ) -> None:
        if ttl_s < 0:
            message = f"ttl_s must be zero or more seconds, got {ttl_s!r}"
            raise ValueError(message)
        if max_devices < 1:
            message = f"max_devices must be at least 1, got {max_devices!r}"
            raise ValueError(message)
        self.pool = pool
        self.ttl_s = ttl_s
        self.max_devices = max_devices
        self._audiences: ExpiringAnswers[DeviceAudience] = ExpiringAnswers(
            ttl_s, max_devices, missing=_NOBODY
        )
        self.queries = 0

    @property
    def cached(self) -> int:
        """How many devices' answers are held."""
        return len(self._audiences)

    async def audiences(self, devices: Iterable[str]) -> dict[str, DeviceAudience]:
        """The audience of each device, asking the database once for those unknown.

        Raises what asyncpg raises when the database cannot answer; nothing is
        cached then.
        """
        return await self._audiences.lookup(devices, self._query)

    def forget(self) -> None:
        """Drop every cached answer (the next events ask the database again)."""
        self._audiences.forget()

    async def _query(self, devices: list[str]) -> dict[str, DeviceAudience]:
        self.queries += 1
        rows = await self.pool.fetch(_MATCHING_RULES, devices)
        names: dict[str, str] = {}
        rules: dict[str, list[MatchedRule]] = {}
        for row in rows:
            device = str(row["unique_id"])
            names[device] = str(row["device_name"])
            channels = tuple(
                channel
                for channel in channels_from_rows(row["channels"])
                if isinstance(channel, EmailChannel | WebhookChannel)
            )
            rules.setdefault(device, []).append(
                MatchedRule(
                    id=int(row["id"]),
                    name=str(row["name"]),
                    owner_id=int(row["owner_id"]),
                    event_types=frozenset(row["event_types"]),
                    channels=channels,
                )
            )
        return {
            device: DeviceAudience(names[device], tuple(found))
            for device, found in rules.items()
        }
