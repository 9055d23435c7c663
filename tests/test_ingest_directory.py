"""The device directory: registered devices from PostgreSQL, behind a short cache."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pipeline.ingest.directory import DeviceDirectory
from tests.fixtures.ingest import register_device

pytestmark = pytest.mark.integration


class TestDeviceDirectory:
    async def test_directory_knows_registered_devices(
        self, device_pool: asyncpg.Pool
    ) -> None:
        directory = DeviceDirectory(device_pool)
        owner = await device_pool.fetchval(
            "SELECT id FROM users WHERE name = 'ingest-owner'"
        )

        assert await directory.is_known("dev-1")
        assert not await directory.is_known("stranger")
        assert await directory.owner_of("dev-2") == owner
        assert await directory.owner_of("stranger") is None

    async def test_directory_caches_answers_within_ttl(
        self, device_pool: asyncpg.Pool
    ) -> None:
        directory = DeviceDirectory(device_pool, ttl_s=60)

        for _ in range(5):
            await directory.is_known("dev-1")
            await directory.is_known("stranger")

        assert directory.queries == 2

    async def test_directory_accepts_new_device_after_ttl(
        self, device_pool: asyncpg.Pool
    ) -> None:
        directory = DeviceDirectory(device_pool, ttl_s=0.3)
        assert not await directory.is_known("newcomer")

        await register_device(device_pool, "newcomer")
        still_cached = await directory.is_known("newcomer")
        await asyncio.sleep(0.35)

        assert not still_cached
        assert await directory.is_known("newcomer")

    async def test_directory_owners_of_uses_one_query(
        self, device_pool: asyncpg.Pool
    ) -> None:
        directory = DeviceDirectory(device_pool)

        owners = await directory.owners_of(["dev-1", "dev-2", "stranger", "dev-1"])

        assert directory.queries == 1
        assert owners["stranger"] is None
        assert owners["dev-1"] is not None and owners["dev-2"] is not None

    async def test_directory_cache_is_bounded(self, device_pool: asyncpg.Pool) -> None:
        directory = DeviceDirectory(device_pool, ttl_s=60, max_entries=2)

        for unique_id in ("dev-1", "dev-2", "123456", "dev-1"):
            await directory.is_known(unique_id)

        assert directory.queries == 4  # dev-1 was forgotten to make room

    def test_directory_refuses_bad_settings(self, device_pool: asyncpg.Pool) -> None:
        with pytest.raises(ValueError, match="max_entries must be at least 1"):
            DeviceDirectory(device_pool, max_entries=0)
