"""The newest fix of each device in Redis, written only when it really is newer.

``rastro:latest`` maps a device's uniqueId to the JSON of its newest fix;
``rastro:latest:time`` maps it to that fix's time in epoch milliseconds.  One Lua
script compares and writes both atomically, so a replay after a crash, an
out-of-order fix or two writers racing can never move a device back in time.
"""

from __future__ import annotations

import redis

__all__ = ["LATEST_KEY", "LATEST_TIME_KEY", "LatestStore"]

LATEST_KEY = "rastro:latest"
LATEST_TIME_KEY = "rastro:latest:time"

# KEYS: latest hash, time hash.  ARGV: device, fix time (ms), JSON document.
_ADVANCE = """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current and tonumber(current) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


class LatestStore:
    """Write-if-newer access to the latest-fix hashes of one Redis server."""

    def __init__(self, url: str) -> None:
        self._client: redis.Redis = redis.Redis.from_url(url)
        self._advance = self._client.register_script(_ADVANCE)

    def advance(self, device: str, fix_time_ms: int, document: str) -> bool:
        """Store ``document`` as the device's latest fix unless a newer one is there.

        Returns whether it was stored.
        """
        keys = [LATEST_KEY, LATEST_TIME_KEY]
        stored = self._advance(keys=keys, args=[device, fix_time_ms, document])
        return bool(stored)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
