"""Per-device rate limit: a token bucket in Redis, shared by every ingest instance.

Each device has a bucket of ``burst`` tokens (default: one second's worth) refilled
at ``rate`` tokens per second; a message takes one token.  The bucket lives in a
Redis hash updated by a single Lua script, so the read-refill-take step is atomic
however many ingest instances share the Redis, and the clock is Redis's own
(``TIME``), so instances with drifting clocks agree.

When Redis cannot be reached the limiter falls back to in-process buckets (each
instance then limits on its own), logs ``rate_limiter_fallback`` once, and tries
Redis again every ``retry_s`` seconds; ``rate_limiter_recovered`` says when it is
back.  A rate limiter outage never stops ingest.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping

import redis.asyncio
import redis.exceptions
import structlog

__all__ = ["DEFAULT_RATE", "DeviceRateLimiter", "LocalBuckets"]

log = structlog.get_logger("rastro.ingest.limiter")

DEFAULT_RATE = 100.0
KEY_PREFIX = "rastro:rate:"
RETRY_S = 5.0
LOCAL_MAX_DEVICES = 100_000

# KEYS[1] the bucket; ARGV rate (tokens/s), burst (tokens), wanted (tokens).
# Returns how many of the wanted tokens were granted (0..wanted).
_TAKE_TOKENS = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now_ms
if now_ms > at then
  tokens = math.min(burst, tokens + (now_ms - at) * rate / 1000)
end
local granted = math.min(wanted, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now_ms))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return granted
"""

_REDIS_DOWN = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


class LocalBuckets:
    """Token buckets in this process only: the fallback when Redis is away."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, device: str, wanted: int) -> int:
        """Take up to ``wanted`` tokens from the device's bucket; return how many."""
        now = time.monotonic()
        tokens, at = self._buckets.get(device, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)

        granted = min(wanted, int(tokens))
        self._buckets[device] = (tokens - granted, now)
        self._buckets.move_to_end(device)
        if len(self._buckets) > LOCAL_MAX_DEVICES:
            self._buckets.popitem(last=False)
        return granted


class DeviceRateLimiter:
    """Messages per second per device, enforced through Redis (see module doc).

    ``rate`` is messages per second per device, ``burst`` the bucket size (default
    ``rate``: at most ``rate`` messages in any instant).  Counters ``limited``
    (messages refused) and ``fallbacks`` (times Redis was given up on) are kept
    for metrics.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        rate: float = DEFAULT_RATE,
        burst: float | None = None,
        retry_s: float = RETRY_S,
        timeout_s: float = 0.5,
    ) -> None:
        if rate <= 0:
            message = f"rate must be positive messages per second, got {rate!r}"
            raise ValueError(message)
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        if self.burst < 1:
            message = f"burst must be at least 1 message, got {burst!r}"
            raise ValueError(message)
        self.retry_s = retry_s
        self._redis = redis.asyncio.Redis.from_url(
            redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._script = self._redis.register_script(_TAKE_TOKENS)
        self._local = LocalBuckets(self.rate, self.burst)
        self._redis_down_since: float | None = None
        self.limited = 0
        self.fallbacks = 0

    @property
    def using_fallback(self) -> bool:
        """True while Redis is given up on and in-process buckets decide."""
        return self._redis_down_since is not None

    async def allow(self, device: str) -> bool:
        """Take one token for ``device``; False when it is over its rate."""
        granted = await self.allow_many({device: 1})
        return granted[device] == 1

    async def allow_many(self, wanted: Mapping[str, int]) -> dict[str, int]:
        """Take ``wanted[device]`` tokens per device in one round trip.

        Returns how many messages of each device may pass (the first ones in
        order); the rest are over the rate and counted in ``limited``.
        """
        granted = await self._take(wanted)
        self.limited += sum(wanted.values()) - sum(granted.values())
        return granted

    async def close(self) -> None:
        """Close the connection pool to Redis."""
        await self._redis.aclose()

    async def _take(self, wanted: Mapping[str, int]) -> dict[str, int]:
        if self._redis_down_since is not None:
            if time.monotonic() - self._redis_down_since < self.retry_s:
                return self._take_locally(wanted)
        try:
            granted = await self._take_in_redis(wanted)
        except _REDIS_DOWN as error:
            self._fall_back(error)
            return self._take_locally(wanted)

        if self._redis_down_since is not None:
            self._redis_down_since = None
            log.info("rate_limiter_recovered")
        return granted

    async def _take_in_redis(self, wanted: Mapping[str, int]) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        for device, count in wanted.items():
            await self._script(
                keys=[KEY_PREFIX + device],
                args=[self.rate, self.burst, count],
                client=pipe,
            )
        results = await pipe.execute()
        return {
            device: int(result) for device, result in zip(wanted, results, strict=True)
        }

    def _take_locally(self, wanted: Mapping[str, int]) -> dict[str, int]:
        return {
            device: self._local.take(device, count) for device, count in wanted.items()
        }

    def _fall_back(self, error: BaseException) -> None:
        first = self._redis_down_since is None
        self._redis_down_since = time.monotonic()
        if first:
            self.fallbacks += 1
            log.warning(
                "rate_limiter_fallback",
                reason=type(error).__name__,
                detail=str(error),
                retry_s=self.retry_s,
            )
