"""The newest fix of each device, as the streaming job keeps it in Redis.

``rastro:latest`` (see :mod:`pipeline.stream.latest`) maps a uniqueId to the JSON of
that device's newest fix.  Readers ask only for the devices they may see (HMGET),
never for the whole hash.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterable
from typing import Any, cast

import redis.asyncio as aioredis

from pipeline.stream.latest import LATEST_KEY

__all__ = ["LATEST_KEY", "latest_fixes"]


async def latest_fixes(
    client: aioredis.Redis, unique_ids: Iterable[str]
) -> list[dict[str, Any]]:
    """The latest fix documents of the given devices, sorted by uniqueId.

    Devices that have not reported yet are left out.
    """
    wanted = sorted(set(unique_ids))
    if not wanted:
        return []

    # redis-py types its methods for both clients; the asyncio one awaits.
    pending = cast(Awaitable[list[Any]], client.hmget(LATEST_KEY, wanted))
    values = await pending
    return [json.loads(value) for value in values if value is not None]
