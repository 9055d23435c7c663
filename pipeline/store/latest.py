"""The newest fix of each device, as the streaming job keeps it in Redis.

The job writes each device's newest fix as JSON into its shard's hash (see
:func:`pipeline.stream.latest.latest_keys`).  Readers ask only for the devices they
may see (one HMGET per shard, pipelined), never for a whole hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from pipeline.stream.latest import latest_keys

__all__ = ["latest_fixes", "latest_keys"]


async def latest_fixes(
    client: aioredis.Redis, unique_ids: Iterable[str]
) -> list[dict[str, Any]]:
    """The latest fix documents of the given devices, sorted by uniqueId.

    Devices that have not reported yet are left out.
    """
    wanted = sorted(set(unique_ids))
    if not wanted:
        return []

    by_shard: dict[str, list[str]] = {}
    for device in wanted:
        by_shard.setdefault(latest_keys(device)[0], []).append(device)
    async with client.pipeline(transaction=False) as pipe:
        for key, devices in by_shard.items():
            pipe.hmget(key, devices)
        answers: list[list[Any]] = await pipe.execute()

    found: dict[str, Any] = {}
    for devices, values in zip(by_shard.values(), answers, strict=True):
        found.update(zip(devices, values, strict=True))
    return [json.loads(found[device]) for device in wanted if found[device] is not None]
