"""The PostgreSQL servers Rastro starts: embedded (pgserver's binaries) and Debian's."""

from __future__ import annotations

import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from pipeline.config import SettingError
from pipeline.ports import free_port
from pipeline.services.postgres import (
    EmbeddedPostgres,
    PostgresServiceError,
    SystemPostgres,
    scram_verifier,
)

pytestmark = pytest.mark.integration

SERVER_KINDS = [
    pytest.param(EmbeddedPostgres, "PostgreSQL 16", id="embedded"),
    pytest.param(SystemPostgres, "PostgreSQL 15", id="system"),
]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


async def _fetchval(dsn: str, query: str) -> object:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


@pytest.mark.parametrize(("kind", "version"), SERVER_KINDS)
class TestPostgresServer:
    async def test_postgres_serves_asyncpg_over_tcp(
        self, kind: type[EmbeddedPostgres], version: str, service_data_dir: Path
    ) -> None:
        """The DSN logs in as rastro over TCP to the rastro database."""
        with kind(service_data_dir / "pg", port=free_port(), durable=False) as server:
            assert server.dsn.startswith("postgresql://rastro:")
            assert server.dsn.endswith(f"@127.0.0.1:{server.port}/rastro")
            text = await _fetchval(server.dsn, "SELECT version()")
            who = await _fetchval(
                server.dsn, "SELECT current_user || '@' || current_database()"
            )

        assert str(text).startswith(version)
        assert who == "rastro@rastro"

    async def test_postgres_restart_keeps_data(
        self, kind: type[EmbeddedPostgres], version: str, service_data_dir: Path
    ) -> None:
        """Rows written before stop() are there after the next start()."""
        server = kind(service_data_dir / "pg", port=free_port(), durable=False)
        with server:
            connection = await asyncpg.connect(server.dsn)
            await connection.execute(
                "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)"
            )
            await connection.close()
        assert not server.running

        with server:
            kept = await _fetchval(server.dsn, "SELECT n FROM kept")

        assert kept == 42

    def test_postgres_taken_port_names_setting(
        self,
        kind: type[EmbeddedPostgres],
        version: str,
        service_data_dir: Path,
        taken_port: int,
    ) -> None:
        server = kind(service_data_dir / "pg", port=taken_port, setting_name="pg_port")

        with pytest.raises(SettingError, match=rf"port {taken_port} .* --pg-port"):
            server.start()

    async def test_postgres_password_private_and_unlogged(
        self,
        kind: type[EmbeddedPostgres],
        version: str,
        service_data_dir: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The password file is mode 0600 and the password is in no output or log."""
        with kind(service_data_dir / "pg", port=free_port(), durable=False) as server:
            password = server.password_file.read_text().strip()
            await _fetchval(server.dsn, "SELECT 1")
            server_log = (server.pgdata / "server.log").read_text()

        mode = stat.S_IMODE(server.password_file.stat().st_mode)
        captured = capsys.readouterr()
        assert mode == 0o600
        assert len(password) >= 24
        assert password not in captured.out + captured.err + server_log

    async def test_postgres_wrong_password_refused(
        self, kind: type[EmbeddedPostgres], version: str, service_data_dir: Path
    ) -> None:
        with kind(service_data_dir / "pg", port=free_port(), durable=False) as server:
            wrong = f"postgresql://rastro:wrong@127.0.0.1:{server.port}/rastro"

            with pytest.raises(asyncpg.InvalidPasswordError, match="rastro"):
                await asyncpg.connect(wrong)


class TestPostgresLifecycle:
    def test_postgres_dsn_before_start_explains(self, service_data_dir: Path) -> None:
        server = SystemPostgres(service_data_dir / "pg", port=free_port())

        with pytest.raises(PostgresServiceError, match="call start"):
            _ = server.dsn

    def test_postgres_missing_binaries_named(self, service_data_dir: Path) -> None:
        server = SystemPostgres(
            service_data_dir / "pg", port=free_port(), bin_dir=Path("/nonexistent/bin")
        )

        with pytest.raises(PostgresServiceError, match="/nonexistent/bin/postgres"):
            server.start()

    async def test_postgres_leftover_server_replaced(
        self, service_data_dir: Path
    ) -> None:
        """A server left running on the data folder is stopped and started anew."""
        first = SystemPostgres(service_data_dir / "pg", port=free_port())
        first.start()
        second = SystemPostgres(service_data_dir / "pg", port=free_port())
        try:
            second.start()
            answer = await _fetchval(second.dsn, "SELECT 1")
        finally:
            second.stop()
            first.stop()

        assert answer == 1

    def test_postgres_server_of_live_owner_kept(self, service_data_dir: Path) -> None:
        """A server that another running program started is not taken over."""
        first = SystemPostgres(service_data_dir / "pg", port=free_port(), durable=False)
        first.start()
        other_program = subprocess.Popen(["sleep", "60"])
        first.owner_file.write_text(f"{other_program.pid}\n")
        second = SystemPostgres(service_data_dir / "pg", port=free_port())
        try:
            with pytest.raises(PostgresServiceError, match=r"started by process \d+"):
                second.start()
            still_running = first.running
        finally:
            other_program.kill()
            other_program.wait()
            first.stop()

        assert still_running

    def test_postgres_create_and_drop_database(self, service_data_dir: Path) -> None:
        with SystemPostgres(service_data_dir / "pg", port=free_port()) as server:
            dsn = server.create_database("extra db")
            server.drop_database("extra db")

        assert dsn.endswith("/extra%20db")


class TestScramVerifier:
    def test_scram_verifier_shape(self) -> None:
        verifier = scram_verifier("secret")

        assert verifier.startswith("SCRAM-SHA-256$4096:")
        assert "secret" not in verifier
        assert verifier != scram_verifier("secret")  # a fresh salt every time
