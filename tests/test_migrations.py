"""Schema migrations (sql/) and the partitioned fixes table, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from pipeline.ports import free_port
from pipeline.services.postgres import SystemPostgres
from pipeline.store import DatabaseUnavailableError, connect
from pipeline.store.migrations import (
    SQL_DIR,
    MigrationError,
    discover,
    ensure_partitions,
    maintain_partitions,
    migrate,
    plan,
)

pytestmark = pytest.mark.integration

ALL_FILES = [
    "001_core",
    "002_fixes_partitions",
    "003_motion_geofences_events",
    "004_h3_refresh",
    "005_notifications",
    "006_stream_results",
    "007_h3_stale_hours",
]
INSERT_FIX = """
INSERT INTO fixes (device, fix_time, server_time, latitude, longitude, valid)
VALUES ($1, $2, now(), $3, $4, true)
ON CONFLICT (device, fix_time) DO NOTHING
"""
UTC = dt.UTC


@pytest.fixture
def empty_dsn(postgres_server: SystemPostgres) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    dsn = postgres_server.create_database(name)
    try:
        yield dsn
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
async def db(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh, migrated database."""
    connection = await asyncpg.connect(postgres_dsn)
    try:
        yield connection
    finally:
        await connection.close()


class TestMigrate:
    async def test_migrate_twice_is_noop(self, empty_dsn: str) -> None:
        first = await migrate(empty_dsn)
        second = await migrate(empty_dsn)

        assert first == ALL_FILES
        assert second == []

    async def test_migrate_records_versions_and_checksums(self, empty_dsn: str) -> None:
        await migrate(empty_dsn)
        connection = await asyncpg.connect(empty_dsn)
        rows = await connection.fetch(
            "SELECT version, name, checksum, applied_at"
            " FROM schema_migrations ORDER BY version"
        )
        await connection.close()

        assert [(row["version"], row["name"]) for row in rows] == list(
            enumerate(ALL_FILES, start=1)
        )
        assert all(len(row["checksum"]) == 64 and row["applied_at"] for row in rows)

    async def test_migrate_changed_file_refused(
        self, empty_dsn: str, tmp_path: Path
    ) -> None:
        sql_dir = tmp_path / "sql"
        shutil.copytree(SQL_DIR, sql_dir)
        await migrate(empty_dsn, sql_dir=sql_dir)
        core = sql_dir / "001_core.sql"
        core.write_text(core.read_text() + "\n-- edited after the fact\n")

        with pytest.raises(
            MigrationError, match=r"001_core\.sql was changed after it was applied"
        ):
            await migrate(empty_dsn, sql_dir=sql_dir)

    async def test_migrate_new_file_applied_alone(
        self, empty_dsn: str, tmp_path: Path
    ) -> None:
        sql_dir = tmp_path / "sql"
        shutil.copytree(SQL_DIR, sql_dir)
        await migrate(empty_dsn, sql_dir=sql_dir)
        (sql_dir / "900_extra.sql").write_text("CREATE TABLE extra (id int);")

        applied = await migrate(empty_dsn, sql_dir=sql_dir)

        assert applied == ["900_extra"]

    async def test_migrate_concurrent_runs_apply_once(self, empty_dsn: str) -> None:
        results = await asyncio.gather(*(migrate(empty_dsn) for _ in range(4)))

        assert sorted(results) == [[], [], [], ALL_FILES]

    async def test_migrate_failing_file_leaves_nothing(
        self, empty_dsn: str, tmp_path: Path
    ) -> None:
        sql_dir = tmp_path / "sql"
        shutil.copytree(SQL_DIR, sql_dir)
        (sql_dir / "900_broken.sql").write_text(
            "CREATE TABLE half_done (id int); SELECT no_such_function();"
        )

        with pytest.raises(
            MigrationError, match=r"900_broken\.sql failed.*no_such_function"
        ):
            await migrate(empty_dsn, sql_dir=sql_dir)

        connection = await asyncpg.connect(empty_dsn)
        half_done = await connection.fetchval("SELECT to_regclass('half_done')")
        versions = await connection.fetchval(
            "SELECT array_agg(version ORDER BY version) FROM schema_migrations"
        )
        await connection.close()
        assert half_done is None
        assert versions == list(range(1, len(ALL_FILES) + 1))

    async def test_migrate_badly_named_file_refused(self, tmp_path: Path) -> None:
        (tmp_path / "1_core.sql").write_text("SELECT 1;")

        with pytest.raises(
            MigrationError, match=r"1_core\.sql is not named NNN_lowercase_name"
        ):
            await migrate("postgresql://nobody@127.0.0.1:1/none", sql_dir=tmp_path)

    async def test_migrate_database_down_names_dsn_not_password(self) -> None:
        port = free_port()
        dsn = f"postgresql://rastro:s3cret-pw@127.0.0.1:{port}/rastro"

        with pytest.raises(DatabaseUnavailableError) as caught:
            await migrate(dsn)

        message = str(caught.value)
        assert f"postgresql://rastro:***@127.0.0.1:{port}/rastro" in message
        assert "connection refused" in message
        assert "s3cret-pw" not in message

    async def test_connect_wrong_password_names_dsn(
        self, postgres_server: SystemPostgres
    ) -> None:
        dsn = f"postgresql://rastro:wrong-pw@127.0.0.1:{postgres_server.port}/rastro"

        with pytest.raises(
            DatabaseUnavailableError, match=r"rastro:\*\*\*@.*password"
        ) as caught:
            await connect(dsn)

        assert "wrong-pw" not in str(caught.value)


class TestMigrationPlan:
    def test_plan_timescale_replaces_version_2(self) -> None:
        variants = discover()

        plain = [m.name for m in plan(variants, "")]
        timescale = [m.name for m in plan(variants, "timescale")]

        assert plain == ALL_FILES
        assert timescale == [
            "001_core",
            "timescale/002_fixes_hypertable",
            "003_motion_geofences_events",
            "timescale/004_h3_refresh",
            "005_notifications",
            "006_stream_results",
            "007_h3_stale_hours",
        ]

    def test_discover_duplicate_version_refused(self, tmp_path: Path) -> None:
        (tmp_path / "001_a.sql").write_text("SELECT 1;")
        (tmp_path / "001_b.sql").write_text("SELECT 1;")

        with pytest.raises(MigrationError, match="two migration files with version 1"):
            discover(tmp_path)


class TestFixesPartitions:
    async def test_fixes_old_fix_lands_in_default(self, db: asyncpg.Connection) -> None:
        when = dt.datetime(2010, 6, 1, 12, tzinfo=UTC)
        await db.execute(INSERT_FIX, "d-2010", when, 40.4, -3.7)

        partition = await db.fetchval(
            "SELECT tableoid::regclass::text FROM fixes WHERE device = 'd-2010'"
        )

        assert partition == "fixes_default"

    async def test_fixes_today_lands_in_daily_partition(
        self, db: asyncpg.Connection
    ) -> None:
        now = dt.datetime.now(UTC)
        await db.execute(INSERT_FIX, "d-now", now, 40.4, -3.7)

        partition = await db.fetchval(
            "SELECT tableoid::regclass::text FROM fixes WHERE device = 'd-now'"
        )

        assert partition == f"fixes_{now:%Y%m%d}"

    async def test_fixes_duplicate_written_once(self, db: asyncpg.Connection) -> None:
        when = dt.datetime.now(UTC).replace(microsecond=0)
        first = await db.execute(INSERT_FIX, "d-dup", when, 1.0, 2.0)
        second = await db.execute(INSERT_FIX, "d-dup", when, 9.0, 9.0)

        rows = await db.fetch("SELECT latitude FROM fixes WHERE device = 'd-dup'")

        assert (first, second) == ("INSERT 0 1", "INSERT 0 0")
        assert [row["latitude"] for row in rows] == [1.0]

    async def test_fixes_upsert_updates_in_place(self, db: asyncpg.Connection) -> None:
        """The JDBC sink's upsert (it may set the key columns too) works here."""
        upsert = """
            INSERT INTO fixes
                (device, fix_time, server_time, latitude, longitude, valid)
            VALUES ($1, $2, now(), $3, 0, true)
            ON CONFLICT (device, fix_time) DO UPDATE SET
                device = EXCLUDED.device,
                fix_time = EXCLUDED.fix_time,
                latitude = EXCLUDED.latitude
        """
        for when in (dt.datetime(2010, 1, 1, tzinfo=UTC), dt.datetime.now(UTC)):
            await db.execute(upsert, "d-up", when, 1.0)
            await db.execute(upsert, "d-up", when, 2.0)

        latitudes = await db.fetch("SELECT latitude FROM fixes WHERE device = 'd-up'")

        assert [row["latitude"] for row in latitudes] == [2.0, 2.0]

    async def test_partitions_cover_yesterday_to_week_ahead(
        self, db: asyncpg.Connection
    ) -> None:
        today = dt.datetime.now(UTC).date()
        names = await db.fetch(
            "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
            " WHERE inhparent = 'fixes'::regclass"
        )

        wanted = {f"fixes_{today + dt.timedelta(days=n):%Y%m%d}" for n in range(-1, 8)}
        assert wanted <= {row["name"] for row in names}

    async def test_ensure_partitions_again_creates_nothing(
        self, db: asyncpg.Connection
    ) -> None:
        assert await ensure_partitions(db) == []

    async def test_ensure_partitions_moves_default_rows(
        self, db: asyncpg.Connection, postgres_dsn: str
    ) -> None:
        """A fix in DEFAULT moves into its day's partition once that is made."""
        far = dt.datetime.now(UTC) + dt.timedelta(days=20)
        await db.execute(INSERT_FIX, "d-far", far, 1.0, 2.0)

        created = await ensure_partitions(postgres_dsn, days_ahead=21)

        partition = await db.fetchval(
            "SELECT tableoid::regclass::text FROM fixes WHERE device = 'd-far'"
        )
        assert f"fixes_{far:%Y%m%d}" in created
        assert partition == f"fixes_{far:%Y%m%d}"

    async def test_ensure_partitions_concurrent_calls_agree(
        self, postgres_dsn: str
    ) -> None:
        results = await asyncio.gather(
            *(ensure_partitions(postgres_dsn, days_ahead=12) for _ in range(3))
        )

        created = sorted(name for names in results for name in names)
        assert len(created) == 5
        assert len(set(created)) == 5

    async def test_ensure_partitions_bad_days_refused(
        self, db: asyncpg.Connection
    ) -> None:
        with pytest.raises(
            ValueError, match="days_ahead must be an integer from 0 to 3650, got -1"
        ):
            await ensure_partitions(db, days_ahead=-1)

    async def test_ensure_partitions_before_migrate_explains(
        self, empty_dsn: str
    ) -> None:
        with pytest.raises(MigrationError, match=r"run migrate\(\) first"):
            await ensure_partitions(empty_dsn)

    async def test_core_tables_present(self, db: asyncpg.Connection) -> None:
        tables = await db.fetch(
            "SELECT relname FROM pg_class"
            " WHERE relname = ANY($1::text[]) AND relkind IN ('r', 'p')",
            ["users", "user_tokens", "devices", "fixes"],
        )

        assert sorted(row["relname"] for row in tables) == [
            "devices",
            "fixes",
            "user_tokens",
            "users",
        ]

    async def test_derived_tables_present(self, db: asyncpg.Connection) -> None:
        derived = [
            "daily_summaries",
            "device_groups",
            "events",
            "geofence_assignments",
            "geofence_visits",
            "geofences",
            "h3_hourly",
            "idles",
            "stops",
            "trips",
        ]

        tables = await db.fetch(
            "SELECT relname FROM pg_class WHERE relname = ANY($1::text[])"
            " AND relkind IN ('r', 'p')",
            derived,
        )

        assert sorted(row["relname"] for row in tables) == derived

    async def test_filtered_fix_keeps_its_reason_in_a_partition(
        self, db: asyncpg.Connection
    ) -> None:
        await db.execute(
            "INSERT INTO fixes (device, fix_time, server_time, latitude, longitude,"
            " valid, filter) VALUES ('jumpy', now(), now(), 1, 2, true, 'jump')"
        )

        row = await db.fetchrow(
            "SELECT tableoid::regclass::text AS part, filter FROM fixes"
            " WHERE device = 'jumpy'"
        )

        assert row["filter"] == "jump"
        assert row["part"].startswith("fixes_2")


class TestMaintainPartitions:
    async def test_maintain_partitions_creates_then_keeps_going(
        self, empty_dsn: str
    ) -> None:
        """The loop outlives a failing round (no schema yet), then makes partitions."""
        task = asyncio.create_task(maintain_partitions(empty_dsn, every_s=0.2))
        await asyncio.sleep(0.3)
        await migrate(empty_dsn)
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        connection = await asyncpg.connect(empty_dsn)
        count = await connection.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'fixes'::regclass"
        )
        await connection.close()
        assert count == 10  # DEFAULT + yesterday .. today + 7
