"""Which devices are registered, asked of PostgreSQL through a short-lived cache.

Every ingested fix asks whether its device is known.  A cache keeps the answer for
a few seconds (known and unknown alike), so a busy device costs one query per TTL
rather than one per fix, and a device registered a moment ago is accepted within
``ttl_s`` seconds.  The cache holds at most ``max_entries`` identifiers and forgets
the least recently used first.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from pipeline.store.expiring import ExpiringAnswers

__all__ = ["DeviceDirectory"]

DEFAULT_TTL_S = 5.0
DEFAULT_MAX_ENTRIES = 100_000


class DeviceDirectory:
    """Registered devices and their owners, by uniqueId, cached for ``ttl_s``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if ttl_s < 0:
            message = f"ttl_s must be zero or more seconds, got {ttl_s!r}"
            raise ValueError(message)
        if max_entries < 1:
            message = f"max_entries must be at least 1, got {max_entries!r}"
            raise ValueError(message)
        self.pool = pool
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._owners: ExpiringAnswers[int | None] = ExpiringAnswers(
            ttl_s, max_entries, missing=None
        )
        self.queries = 0

    async def is_known(self, unique_id: str) -> bool:
        """Whether a device with this uniqueId is registered (to anyone)."""
        return await self.owner_of(unique_id) is not None

    async def owner_of(self, unique_id: str) -> int | None:
        """The owner's user id of the device, or ``None`` if it is not registered."""
        return (await self.owners_of([unique_id]))[unique_id]

    async def owners_of(self, unique_ids: Iterable[str]) -> dict[str, int | None]:
        """The owner of each uniqueId (``None`` when unknown), in one query at most."""
        return await self._owners.lookup(unique_ids, self._query)

    def forget(self, unique_id: str | None = None) -> None:
        """Drop one cached answer (or all), e.g. right after registering a device."""
        self._owners.forget(unique_id)

    async def _query(self, unique_ids: list[str]) -> dict[str, int | None]:
        self.queries += 1
        rows = await self.pool.fetch(
            "SELECT unique_id, owner_id FROM devices WHERE unique_id = ANY($1::text[])",
            unique_ids,
        )
        return {str(row["unique_id"]): int(row["owner_id"]) for row in rows}
