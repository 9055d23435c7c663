"""The per-device rate limit: a Redis token bucket shared by instances; its fallback."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import structlog

from pipeline.ingest.limiter import DeviceRateLimiter, LocalBuckets
from pipeline.ports import free_port
from pipeline.services.redis import SystemRedis
from tests.fixtures.services import start_on_free_port


def _device() -> str:
    return f"limiter-{uuid.uuid4().hex[:8]}"


class TestLocalBuckets:
    def test_local_bucket_grants_burst_then_refuses(self) -> None:
        buckets = LocalBuckets(rate=5, burst=5)

        assert buckets.take("d", 7) == 5
        assert buckets.take("d", 1) == 0
        assert buckets.take("other", 1) == 1


@pytest.mark.integration
class TestRedisLimiter:
    async def test_redis_bucket_is_shared_by_instances(self, redis_url: str) -> None:
        first = DeviceRateLimiter(redis_url, rate=10)
        second = DeviceRateLimiter(redis_url, rate=10)
        device = _device()

        try:
            answers = await asyncio.gather(
                *(limiter.allow(device) for limiter in [first, second] * 15)
            )
        finally:
            await first.close()
            await second.close()

        assert answers.count(True) == 10
        assert first.limited + second.limited == 20
        assert not first.using_fallback

    async def test_redis_bucket_refills_at_rate(self, redis_url: str) -> None:
        limiter = DeviceRateLimiter(redis_url, rate=20)
        device = _device()

        try:
            drained = await limiter.allow_many({device: 25})
            await asyncio.sleep(0.25)
            refilled = await limiter.allow_many({device: 25})
        finally:
            await limiter.close()

        assert drained == {device: 20}
        assert 4 <= refilled[device] <= 6

    async def test_redis_limit_counts_many_devices_in_one_call(
        self, redis_url: str
    ) -> None:
        limiter = DeviceRateLimiter(redis_url, rate=3)
        a, b = _device(), _device()

        try:
            granted = await limiter.allow_many({a: 5, b: 2})
        finally:
            await limiter.close()

        assert granted == {a: 3, b: 2}
        assert limiter.limited == 2


@pytest.mark.integration
class TestFallback:
    async def test_fallback_when_redis_stops_and_recovers(
        self, service_data_dir: Path
    ) -> None:
        server = start_on_free_port(lambda port: SystemRedis(service_data_dir, port))
        limiter = DeviceRateLimiter(server.url, rate=5, retry_s=0.2, timeout_s=0.3)
        device = _device()

        try:
            assert await limiter.allow(device)
            await asyncio.to_thread(server.stop)
            with structlog.testing.capture_logs() as logs:
                answers = [await limiter.allow(device) for _ in range(8)]
                await asyncio.sleep(0.3)
                answers.append(await limiter.allow(device))
            fell_back = limiter.using_fallback
            await asyncio.to_thread(server.start)
            await asyncio.sleep(0.3)
            with structlog.testing.capture_logs() as later:
                assert await limiter.allow(_device())
        finally:
            await limiter.close()
            server.stop()

        assert answers[:5] == [True] * 5 and answers[5:8] == [False] * 3
        assert fell_back
        events = [entry["event"] for entry in logs]
        assert events.count("rate_limiter_fallback") == 1
        assert [entry["event"] for entry in later] == ["rate_limiter_recovered"]
        assert not limiter.using_fallback

    async def test_fallback_when_redis_never_answered(self) -> None:
        limiter = DeviceRateLimiter(
            f"redis://127.0.0.1:{free_port()}/0", rate=2, timeout_s=0.3
        )
        device = _device()

        try:
            with structlog.testing.capture_logs() as logs:
                answers = [await limiter.allow(device) for _ in range(3)]
        finally:
            await limiter.close()

        assert answers == [True, True, False]
        fallback = [
            entry for entry in logs if entry["event"] == "rate_limiter_fallback"
        ]
        assert len(fallback) == 1 and fallback[0]["reason"] == "ConnectionError"
