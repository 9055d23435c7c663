"""The latest-fix store: write-if-newer, batched, and quiet while Redis is down."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from pipeline.ports import free_port
from pipeline.store.latest import latest_fixes
from pipeline.stream.latest import LATEST_SHARDS, LatestStore, latest_keys

pytestmark = pytest.mark.integration


@pytest.fixture
def reader(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _device() -> str:
    return f"latest-{uuid.uuid4().hex[:8]}"


class TestLatestStore:
    def test_flush_keeps_the_newest_fix(
        self, redis_url: str, reader: redis.Redis
    ) -> None:
        device = _device()
        store = LatestStore(redis_url, max_pending=100, max_delay_s=60)

        store.offer(device, 2_000, '{"n": 2}')
        store.offer(device, 1_000, '{"n": 1}')
        stored = store.flush()
        store.close()

        assert stored == 1
        assert reader.hget(latest_keys(device)[0], device) == b'{"n": 2}'
        assert reader.hget(latest_keys(device)[1], device) == b"2000"

    def test_older_fix_never_moves_redis_back(
        self, redis_url: str, reader: redis.Redis
    ) -> None:
        device = _device()
        first = LatestStore(redis_url, max_pending=100, max_delay_s=60)
        first.offer(device, 5_000, '{"n": 5}')
        first.flush()

        replay = LatestStore(redis_url, max_pending=100, max_delay_s=60)
        replay.offer(device, 4_000, '{"n": 4}')
        stored = replay.flush()
        first.close()
        replay.close()

        assert stored == 0
        assert reader.hget(latest_keys(device)[0], device) == b'{"n": 5}'

    def test_offers_wait_until_batch_is_full(
        self, redis_url: str, reader: redis.Redis
    ) -> None:
        devices = [_device() for _ in range(3)]
        store = LatestStore(redis_url, max_pending=3, max_delay_s=60)

        store.offer(devices[0], 1_000, "{}")
        store.offer(devices[1], 1_000, "{}")
        before = [reader.hget(latest_keys(d)[0], d) for d in devices[:2]]
        store.offer(devices[2], 1_000, "{}")
        after = [reader.hget(latest_keys(d)[0], d) for d in devices]
        store.close()

        assert before == [None, None]
        assert after == [b"{}", b"{}", b"{}"]
        assert store.pending == 0

    def test_redis_down_drops_batch_and_logs_once(self) -> None:
        store = LatestStore(
            f"redis://127.0.0.1:{free_port()}/0", max_pending=100, max_delay_s=60
        )

        with capture_logs() as logs:
            store.offer("dev-a", 1_000, "{}")
            first = store.flush()
            store.offer("dev-b", 1_000, "{}")
            second = store.flush()

        assert (first, second) == (0, 0)
        assert store.pending == 0
        warnings = [e for e in logs if e["event"] == "latest_store_unavailable"]
        assert len(warnings) == 1
        assert warnings[0]["dropped"] == 1


class TestShards:
    def test_fleet_spreads_over_shards_with_time_beside_document(self) -> None:
        devices = [f"35630704244{number:04d}" for number in range(2_000)]

        keys = [latest_keys(device) for device in devices]

        documents = {document for document, _ in keys}
        assert len(documents) == LATEST_SHARDS
        for document, time_key in keys:
            # One hash tag for both: Redis Cluster keeps the pair in one slot.
            tag = document[document.index("{") : document.index("}") + 1]
            assert time_key == f"{document}:time" and tag in time_key

    async def test_latest_fixes_reads_every_shard_in_order(
        self, redis_url: str
    ) -> None:
        devices = [_device() for _ in range(40)]
        store = LatestStore(redis_url, max_pending=1_000, max_delay_s=60)
        for number, device in enumerate(devices):
            store.offer(device, 1_000, json.dumps({"uniqueId": device, "n": number}))
        store.close()
        client = aioredis.Redis.from_url(redis_url)

        found = await latest_fixes(client, [*devices, "never-reported"])
        await client.aclose()

        assert len({latest_keys(device)[0] for device in devices}) > 1
        assert [document["uniqueId"] for document in found] == sorted(devices)
