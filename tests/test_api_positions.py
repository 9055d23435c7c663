"""Latest positions (Redis), history (PostgreSQL), and a database that is down."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from pipeline.api.app import ApiContext, create_api
from pipeline.ports import free_port
from pipeline.services.postgres import SystemPostgres
from pipeline.store.latest import latest_keys
from pipeline.store.migrations import migrate
from tests.fixtures.api import Caller, make_caller, unique_id
from tests.fixtures.services import start_on_free_port

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


async def _register(client: httpx.AsyncClient, owner: Caller) -> dict:
    body = {"uniqueId": unique_id(), "name": "van"}
    response = await client.post("/api/v1/devices", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def _insert_fixes(pool: asyncpg.Pool, device: str, count: int) -> None:
    """One fix a minute from T0, with every optional column filled on the first."""
    rows = [
        (
            device,
            T0 + timedelta(minutes=minute),
            T0 + timedelta(minutes=minute, seconds=1),
            48.137 + minute / 1000,
            11.575,
            520.0 if minute == 0 else None,
            5.0 if minute == 0 else None,
            0x8928308280FFFFF if minute == 0 else None,
            36.5 if minute == 0 else None,
            90.0 if minute == 0 else None,
            7 if minute == 0 else None,
            True,
            "osmand",
            json.dumps({"battery": 87} if minute == 0 else {}),
        )
        for minute in range(count)
    ]
    await pool.executemany(
        "INSERT INTO fixes (device, fix_time, server_time, latitude, longitude,"
        " altitude, accuracy, h3, speed, course, satellites, valid, protocol,"
        " attributes) VALUES"
        " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb)",
        rows,
    )


def _window(start: datetime, end: datetime, **extra: object) -> dict[str, object]:
    return {"from": start.isoformat(), "to": end.isoformat(), **extra}


class TestLatestPositions:
    async def test_latest_returns_own_devices_only(
        self,
        api_client: httpx.AsyncClient,
        api_redis: aioredis.Redis,
        alice: Caller,
        bob: Caller,
    ) -> None:
        mine = await _register(api_client, alice)
        silent = await _register(api_client, alice)
        theirs = await _register(api_client, bob)
        document = {"uniqueId": mine["uniqueId"], "latitude": 48.1, "h3": "89283"}
        await api_redis.hset(
            latest_keys(mine["uniqueId"])[0], mine["uniqueId"], json.dumps(document)
        )
        other = {"uniqueId": theirs["uniqueId"], "latitude": 1.0}
        await api_redis.hset(
            latest_keys(theirs["uniqueId"])[0], theirs["uniqueId"], json.dumps(other)
        )

        response = await api_client.get(
            "/api/v1/positions/latest", headers=alice.headers
        )

        assert response.status_code == 200
        assert response.json() == [document]
        assert silent["uniqueId"] not in response.text

    async def test_latest_without_devices_is_empty(
        self, api_client: httpx.AsyncClient, bob: Caller
    ) -> None:
        response = await api_client.get("/api/v1/positions/latest", headers=bob.headers)

        assert response.json() == []


class TestHistory:
    async def test_history_in_fix_json_form(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        device = await _register(api_client, alice)
        await _insert_fixes(api_pool, device["uniqueId"], 3)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/positions",
            params=_window(T0, T0 + timedelta(hours=1)),
            headers=alice.headers,
        )

        fixes = response.json()
        assert response.status_code == 200
        assert [fix["time"] for fix in fixes] == [
            "2026-03-01T08:00:00Z",
            "2026-03-01T08:01:00Z",
            "2026-03-01T08:02:00Z",
        ]
        assert fixes[0] == {
            "uniqueId": device["uniqueId"],
            "time": "2026-03-01T08:00:00Z",
            "serverTime": "2026-03-01T08:00:01Z",
            "latitude": 48.137,
            "longitude": 11.575,
            "valid": True,
            "speed": 36.5,
            "course": 90.0,
            "altitude": 520.0,
            "accuracy": 5.0,
            "satellites": 7,
            "attributes": {"battery": 87},
            "h3": "8928308280fffff",
        }
        assert "speed" not in fixes[1]

    async def test_history_window_half_open_and_limited(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        """``from`` is inclusive, ``to`` exclusive, ``limit`` keeps the oldest."""
        device = await _register(api_client, alice)
        await _insert_fixes(api_pool, device["uniqueId"], 10)
        path = f"/api/v1/devices/{device['id']}/positions"
        start, end = T0 + timedelta(minutes=2), T0 + timedelta(minutes=6)

        window = await api_client.get(
            path, params=_window(start, end), headers=alice.headers
        )
        limited = await api_client.get(
            path, params=_window(start, end, limit=2), headers=alice.headers
        )

        assert len(window.json()) == 4
        assert [f["time"] for f in limited.json()] == [
            "2026-03-01T08:02:00Z",
            "2026-03-01T08:03:00Z",
        ]

    async def test_history_accepts_z_and_offsets(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        device = await _register(api_client, alice)
        await _insert_fixes(api_pool, device["uniqueId"], 3)
        path = f"/api/v1/devices/{device['id']}/positions"

        # 09:01+01:00 is 08:01Z; the "+" arrives unencoded as a space.
        query = "from=2026-03-01T09:01:00+01:00&to=2026-03-01T09:00:00Z"
        response = await api_client.get(f"{path}?{query}", headers=alice.headers)

        assert [f["time"] for f in response.json()] == [
            "2026-03-01T08:01:00Z",
            "2026-03-01T08:02:00Z",
        ]

    @pytest.mark.parametrize(
        ("params", "reason"),
        [
            ({"to": "2026-03-02T00:00:00Z"}, "'from' is required"),
            ({"from": "2026-03-01T00:00:00Z"}, "'to' is required"),
            (
                {"from": "yesterday", "to": "2026-03-02T00:00:00Z"},
                "'from' must be ISO-8601, got 'yesterday'",
            ),
            (
                {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"},
                "to must be later than from",
            ),
            (
                {"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"},
                "to must be later than from",
            ),
            (
                {"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"},
                "at most 31 days apart",
            ),
            (
                {
                    "from": "2026-03-01T00:00:00Z",
                    "to": "2026-03-02T00:00:00Z",
                    "limit": 0,
                },
                "limit must be a whole number from 1 to 50000, got '0'",
            ),
            (
                {
                    "from": "2026-03-01T00:00:00Z",
                    "to": "2026-03-02T00:00:00Z",
                    "limit": "x",
                },
                "limit must be a whole number",
            ),
        ],
    )
    async def test_history_bad_query_is_400(
        self,
        api_client: httpx.AsyncClient,
        alice: Caller,
        params: dict[str, object],
        reason: str,
    ) -> None:
        device = await _register(api_client, alice)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/positions",
            params=params,
            headers=alice.headers,
        )

        assert response.status_code == 400
        assert reason in response.json()["error"]

    async def test_history_of_other_users_device_is_404(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
    ) -> None:
        device = await _register(api_client, alice)
        await _insert_fixes(api_pool, device["uniqueId"], 2)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/positions",
            params=_window(T0, T0 + timedelta(hours=1)),
            headers=bob.headers,
        )

        assert response.status_code == 404
        assert device["uniqueId"] not in response.text


class TestReportPositions:
    async def test_report_without_ingest_is_503(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        response = await api_client.post(
            "/api/v1/positions", json={}, headers=alice.headers
        )

        assert response.status_code == 503
        assert "ingest is not running" in response.json()["error"]


@pytest.fixture
async def dead_database_client(
    api_redis: aioredis.Redis,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an API whose PostgreSQL nobody listens for."""
    dsn = f"postgresql://rastro@127.0.0.1:{free_port()}/rastro"
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
    app = create_api(ApiContext(pool=pool, redis=api_redis))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as client:
            yield client
    finally:
        await pool.close()


class TestDatabaseDown:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/api/v1/devices"),
            ("GET", "/api/v1/positions/latest"),
            ("POST", "/api/v1/session"),
        ],
    )
    async def test_database_down_is_503(
        self, dead_database_client: httpx.AsyncClient, method: str, path: str
    ) -> None:
        body = {"user": "alice", "password": "whatever"}
        headers = {"Authorization": "Bearer some-token"}

        response = await dead_database_client.request(
            method, path, json=body, headers=headers
        )

        assert response.status_code == 503
        assert response.json() == {
            "error": "the database is unavailable; try again shortly"
        }

    async def test_connections_killed_never_500(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        postgres_dsn: str,
        alice: Caller,
    ) -> None:
        """The server drops the pool's connections: at worst a 503, then it serves."""
        killer = await asyncpg.connect(postgres_dsn)
        try:
            await killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await killer.close()

        statuses = [
            (await api_client.get("/api/v1/devices", headers=alice.headers)).status_code
            for _ in range(2)
        ]

        assert statuses[-1] == 200
        assert set(statuses) <= {200, 503}

    async def test_database_stopped_is_503_then_recovers(
        self, api_redis: aioredis.Redis, tmp_path: Path
    ) -> None:
        """A PostgreSQL stopped under a running API: 503, and 200 once it is back."""
        server = start_on_free_port(
            lambda port: SystemPostgres(tmp_path / "pg", port=port, durable=False)
        )
        try:
            await migrate(server.dsn)
            pool = await asyncpg.create_pool(server.dsn, min_size=1, max_size=2)
            caller = await make_caller(pool, "alice")
            app = create_api(ApiContext(pool=pool, redis=api_redis))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://testserver",
                headers=caller.headers,
            ) as client:
                before = await client.get("/api/v1/devices")
                await asyncio.to_thread(server.stop)
                during = await client.get("/api/v1/devices")
                await asyncio.to_thread(server.start)
                after = await client.get("/api/v1/devices")
            await pool.close()
        finally:
            server.stop()

        assert before.status_code == 200
        assert during.status_code == 503
        assert during.json() == {
            "error": "the database is unavailable; try again shortly"
        }
        assert after.status_code == 200

    async def test_database_down_health_still_ok(
        self, dead_database_client: httpx.AsyncClient
    ) -> None:
        response = await dead_database_client.get("/api/v1/health")

        assert response.status_code == 200

    async def test_redis_down_is_503(
        self, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        dead_redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}")
        app = create_api(ApiContext(pool=api_pool, redis=dead_redis))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as client:
            await client.post(
                "/api/v1/devices",
                json={"uniqueId": unique_id(), "name": "van"},
                headers=alice.headers,
            )

            response = await client.get(
                "/api/v1/positions/latest", headers=alice.headers
            )
        await dead_redis.aclose()

        assert response.status_code == 503
        assert "Redis" in response.json()["error"]
