"""The API against a real Kafka broker: HTTP ingest and the live feed's tail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from pipeline.api.app import ApiContext, create_api
from pipeline.ingest.directory import DeviceDirectory
from pipeline.ingest.service import IngestService
from pipeline.kafka import DurableProducer, tail_topic
from pipeline.model import Fix
from pipeline.ports import free_port
from tests.fixtures.api import Caller, running_api, unique_id
from tests.fixtures.kafka import read_topic

pytestmark = pytest.mark.integration


async def _register(client: httpx.AsyncClient, owner: Caller) -> str:
    device = unique_id()
    response = await client.post(
        "/api/v1/devices",
        json={"uniqueId": device, "name": "van"},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    return device


@pytest.fixture
async def ingest_client(
    api_pool: asyncpg.Pool,
    api_redis: aioredis.Redis,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client of an API whose ingest publishes to a fresh topic; and the topic."""
    topic = kafka_topic()
    async with DurableProducer(kafka_bootstrap) as producer:
        ingest = IngestService(
            producer, DeviceDirectory(api_pool, ttl_s=0), topic=topic
        )
        app = create_api(ApiContext(pool=api_pool, redis=api_redis, ingest=ingest))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as client:
            yield client, topic


class CountingPool:
    """The real pool, counting the queries made through it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.pool, name)
        if name not in {"fetch", "fetchrow", "fetchval", "execute"}:
            return attribute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.queries += 1
            return await attribute(*args, **kwargs)

        return counted


@pytest.fixture
async def cached_ingest(
    api_pool: asyncpg.Pool,
    api_redis: aioredis.Redis,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
) -> AsyncIterator[tuple[httpx.AsyncClient, CountingPool]]:
    """A client of an API whose device directory caches, as in production."""
    pool = CountingPool(api_pool)
    directory = DeviceDirectory(pool)  # type: ignore[arg-type]
    async with DurableProducer(kafka_bootstrap) as producer:
        ingest = IngestService(producer, directory, topic=kafka_topic())
        context = ApiContext(pool=pool, redis=api_redis, ingest=ingest)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=create_api(context))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as client:
            yield client, pool


class TestReportOwnership:
    async def test_batch_of_many_devices_costs_few_queries(
        self,
        cached_ingest: tuple[httpx.AsyncClient, CountingPool],
        alice: Caller,
    ) -> None:
        """A 50-device batch: the token and one ownership query, not one per device."""
        client, pool = cached_ingest
        mine = [await _register(client, alice) for _ in range(50)]
        fixes = [
            {"uniqueId": device, "latitude": 48.1, "longitude": 11.5} for device in mine
        ]
        before = pool.queries

        response = await client.post(
            "/api/v1/positions", json=fixes, headers=alice.headers
        )

        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": 50}
        assert pool.queries - before == 2

    async def test_device_registered_after_refusal_reports_at_once(
        self,
        cached_ingest: tuple[httpx.AsyncClient, CountingPool],
        alice: Caller,
    ) -> None:
        """Registering forgets the cached "unknown" answer of that uniqueId."""
        client, _ = cached_ingest
        device = unique_id()
        fix = {"uniqueId": device, "latitude": 48.1, "longitude": 11.5}
        refused = await client.post(
            "/api/v1/positions", json=fix, headers=alice.headers
        )

        created = await client.post(
            "/api/v1/devices",
            json={"uniqueId": device, "name": "new van"},
            headers=alice.headers,
        )
        accepted = await client.post(
            "/api/v1/positions", json=fix, headers=alice.headers
        )

        assert refused.status_code == 400
        assert created.status_code == 201
        assert accepted.status_code == 200, accepted.text


class TestReportPositions:
    async def test_report_accepts_only_own_devices(
        self,
        ingest_client: tuple[httpx.AsyncClient, str],
        kafka_bootstrap: str,
        alice: Caller,
        bob: Caller,
    ) -> None:
        """Bob's device and an unknown one are refused per record; Alice's is stored."""
        client, topic = ingest_client
        mine = await _register(client, alice)
        theirs = await _register(client, bob)
        fixes = [
            {"uniqueId": device, "latitude": 48.1, "longitude": 11.5}
            for device in (mine, theirs, "never-registered")
        ]

        response = await client.post(
            "/api/v1/positions", json=fixes, headers=alice.headers
        )

        assert response.status_code == 400
        body = response.json()
        assert body["accepted"] == 1
        assert [rejection["index"] for rejection in body["rejected"]] == [1, 2]
        records = await asyncio.to_thread(read_topic, kafka_bootstrap, topic, 1)
        stored = Fix.FromString(records[0][1])
        assert stored.device == mine
        assert len(records) == 1

    async def test_report_own_device_is_200(
        self, ingest_client: tuple[httpx.AsyncClient, str], alice: Caller
    ) -> None:
        client, _ = ingest_client
        mine = await _register(client, alice)

        response = await client.post(
            "/api/v1/positions",
            json={"uniqueId": mine, "latitude": 48.1, "longitude": 11.5},
            headers=alice.headers,
        )

        assert response.status_code == 200
        assert response.json() == {"accepted": 1}

    async def test_report_kafka_down_is_503(
        self, api_pool: asyncpg.Pool, api_redis: aioredis.Redis, alice: Caller
    ) -> None:
        dead = f"127.0.0.1:{free_port()}"
        async with DurableProducer(dead, delivery_timeout_s=1.0) as producer:
            ingest = IngestService(producer, DeviceDirectory(api_pool))
            app = create_api(ApiContext(pool=api_pool, redis=api_redis, ingest=ingest))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver"
            ) as client:
                mine = await _register(client, alice)
                response = await client.post(
                    "/api/v1/positions",
                    json={"uniqueId": mine, "latitude": 48.1, "longitude": 11.5},
                    headers=alice.headers,
                )

        assert response.status_code == 503
        assert "Kafka" in response.json()["error"]


class TestLiveFromKafka:
    async def test_live_pushes_fix_written_to_topic(
        self,
        api_pool: asyncpg.Pool,
        api_redis: aioredis.Redis,
        kafka_bootstrap: str,
        kafka_topic: Callable[..., str],
        alice: Caller,
        bob: Caller,
    ) -> None:
        """A fix on the live topic reaches its owner's WebSocket, not another's."""
        topic = kafka_topic()
        tailing = asyncio.Event()
        context = ApiContext(
            pool=api_pool,
            redis=api_redis,
            live_source=lambda: tail_topic(kafka_bootstrap, topic, ready=tailing),
        )
        app = create_api(context)

        async with running_api(app) as base:
            async with httpx.AsyncClient(base_url=base) as client:
                mine = await _register(client, alice)
                theirs = await _register(client, bob)
            url = base.replace("http://", "ws://") + "/api/v1/live"
            async with (
                connect(url, additional_headers=alice.headers) as alice_socket,
                connect(url, additional_headers=bob.headers) as bob_socket,
            ):
                await asyncio.wait_for(tailing.wait(), timeout=30)
                await _until_subscribed(app.state.hub, 2)
                async with DurableProducer(kafka_bootstrap) as producer:
                    await producer.send_many(
                        topic,
                        [
                            (mine.encode(), _fix(mine)),
                            (theirs.encode(), _fix(theirs)),
                        ],
                    )
                alice_message = json.loads(
                    await asyncio.wait_for(alice_socket.recv(), timeout=15)
                )
                bob_message = json.loads(
                    await asyncio.wait_for(bob_socket.recv(), timeout=15)
                )

        assert alice_message["position"]["uniqueId"] == mine
        assert bob_message["position"]["uniqueId"] == theirs


def _fix(device: str) -> bytes:
    fix = Fix(
        device=device,
        fix_time_ms=1_772_352_000_000,
        server_time_ms=1_772_352_000_000,
        latitude=48.137,
        longitude=11.575,
        valid=True,
    )
    return fix.SerializeToString()


async def _until_subscribed(hub: Any, count: int) -> None:
    async with asyncio.timeout(5):
        while hub.subscriptions < count:  # noqa: ASYNC110 (test-only poll)
            await asyncio.sleep(0.01)
