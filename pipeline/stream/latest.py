"""The newest fix of each device in Redis, written only when it really is newer.

``rastro:latest:{N}`` maps a device's uniqueId to the JSON of its newest fix;
``rastro:latest:{N}:time`` maps it to that fix's time in epoch milliseconds.  One
Lua script compares and writes both atomically, so a replay after a crash, an
out-of-order fix or two writers racing can never move a device back in time.

``N`` is the device's shard (:func:`latest_keys`): the fleet is spread over
:data:`LATEST_SHARDS` pairs of hashes, so that no one key holds every device, and
in Redis Cluster the pairs spread over the nodes while each pair (one hash tag)
stays in one slot, as the script needs.

Writes are batched: :meth:`LatestStore.offer` keeps the newest pending fix per
device and :meth:`LatestStore.flush` sends them in one pipelined round trip, when
``max_pending`` devices wait or the oldest has waited ``max_delay_s``.  One round
trip per fix capped the job at about a thousand fixes per second.
"""

from __future__ import annotations

import time
import zlib

import redis
import structlog

__all__ = ["LATEST_SHARDS", "LatestStore", "latest_keys"]

log = structlog.get_logger("rastro.stream")

#: How many pairs of hashes the latest fixes are spread over: 500,000 devices
#: make about 2,000 per hash.
LATEST_SHARDS = 256


def latest_keys(device: str) -> tuple[str, str]:
    """The hashes of a device's newest fix document and of that fix's time.

    Both carry the shard as the same hash tag, so Redis Cluster keeps them in one
    slot.  The shard is CRC-32 of the uniqueId: stable across processes and
    versions, unlike Python's ``hash``.

    >>> latest_keys("356307042441013")
    ('rastro:latest:{238}', 'rastro:latest:{238}:time')
    """
    shard = zlib.crc32(device.encode()) % LATEST_SHARDS
    key = f"rastro:latest:{{{shard}}}"
    return key, f"{key}:time"


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

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


class LatestStore:
    """Batched write-if-newer access to the latest-fix hashes of one Redis server.

    ``max_pending`` devices or ``max_delay_s`` seconds of waiting trigger a flush
    from :meth:`offer`; the caller also flushes on a timer when traffic stops.
    While Redis is unreachable a flush drops its batch and logs once: the latest
    positions go stale, history and the live feed go on, and the next fix of each
    device writes it again.
    """

    def __init__(
        self, url: str, *, max_pending: int = 500, max_delay_s: float = 0.2
    ) -> None:
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=5.0, socket_connect_timeout=5.0
        )
        self._advance = self._client.register_script(_ADVANCE)
        self.max_pending = max_pending
        self.max_delay_s = max_delay_s
        self._pending: dict[str, tuple[int, str]] = {}
        self._oldest_at = 0.0
        self._down = False

    @property
    def pending(self) -> int:
        """How many devices wait to be written."""
        return len(self._pending)

    def offer(self, device: str, fix_time_ms: int, document: str) -> None:
        """Queue ``document`` as the device's latest fix; flush when due."""
        queued = self._pending.get(device)
        if queued is None or queued[0] < fix_time_ms:
            if not self._pending:
                self._oldest_at = time.monotonic()
            self._pending[device] = (fix_time_ms, document)

        waited = time.monotonic() - self._oldest_at
        if len(self._pending) >= self.max_pending or waited >= self.max_delay_s:
            self.flush()

    def flush(self) -> int:
        """Write every pending fix that is newer than Redis's; return how many were."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}

        pipe = self._client.pipeline(transaction=False)
        for device, (fix_time_ms, document) in batch.items():
            self._advance(
                keys=list(latest_keys(device)),
                args=[device, fix_time_ms, document],
                client=pipe,
            )
        try:
            stored = pipe.execute()
        except _REDIS_DOWN as error:
            self._note_down(error, len(batch))
            return 0

        if self._down:
            self._down = False
            log.info("latest_store_recovered")
        return sum(int(result) for result in stored)

    def close(self) -> None:
        """Flush what is pending, then close the connection pool."""
        self.flush()
        self._client.close()

    def _note_down(self, error: BaseException, dropped: int) -> None:
        if not self._down:
            log.warning(
                "latest_store_unavailable",
                reason=type(error).__name__,
                dropped=dropped,
                effect="latest positions stale until Redis is back",
            )
        self._down = True
