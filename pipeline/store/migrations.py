"""Apply the numbered SQL files in ``sql/`` once each, in order, safely in parallel.

``sql/NNN_name.sql`` files are applied by version number, each inside its own
transaction, and recorded in ``schema_migrations (version, name, checksum,
applied_at)``.  A file applied before is skipped; if its content changed since
(another SHA-256), :func:`migrate` refuses to go on, because the database no longer
matches what the file says.  Several Rastro instances may start at once: a session
advisory lock makes one runner apply while the others wait, then find nothing to do.

A file in ``sql/timescale/`` with the same version replaces the plain one when the
``timescaledb`` extension is available and preloaded: version 002 then makes
``fixes`` a hypertable instead of natively partitioned.  The choice is recorded (the
file's name), so a database keeps the variant it was created with.

Files run through the simple query protocol, several statements at once; a
statement that cannot run in a transaction (``CREATE INDEX CONCURRENTLY``) does not
belong here.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from pipeline.config import redact_url
from pipeline.store import connect

log = structlog.get_logger("rastro.store.migrations")

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
VARIANT_DIRS = ("timescale",)
LOCK_TIMEOUT_S = 300.0
# pg_advisory_lock key of the migration runner: any constant that no other code uses.
_MIGRATION_LOCK_KEY = 0x7261_7374_726F_0001
_PARTITIONS_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtext('rastro_ensure_fix_partitions'))"
)
_FILE_NAME = re.compile(r"(?P<version>\d{3})_(?P<slug>[a-z0-9_]+)\.sql")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The schema cannot be brought up to date; the message says which file and why."""


@dataclass(frozen=True)
class Migration:
    """One SQL file: its version, recorded name (``002_x`` or ``timescale/002_x``)."""

    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        """The file's text."""
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's bytes, hex."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> dict[str, dict[int, Migration]]:
    """Every migration file, by variant (``""`` = plain, ``"timescale"``) and version.

    Raises :class:`MigrationError` for a ``.sql`` file whose name does not follow
    ``NNN_lowercase_name.sql`` or for two files with one version.
    """
    variants: dict[str, dict[int, Migration]] = {}
    for variant in ("", *VARIANT_DIRS):
        folder = sql_dir / variant if variant else sql_dir
        variants[variant] = _discover_folder(folder, variant) if folder.is_dir() else {}
    if not variants[""]:
        message = f"no migration files (NNN_name.sql) in {sql_dir}"
        raise MigrationError(message)
    return variants


def _discover_folder(folder: Path, variant: str) -> dict[int, Migration]:
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            message = f"migration file {path} is not named NNN_lowercase_name.sql"
            raise MigrationError(message)
        version = int(match["version"])
        if version in found:
            message = f"two migration files with version {version}: "
            raise MigrationError(message + f"{found[version].path} and {path}")
        name = f"{variant}/{path.stem}" if variant else path.stem
        found[version] = Migration(version, name, path)
    return found


def plan(variants: dict[str, dict[int, Migration]], variant: str) -> list[Migration]:
    """The plain migrations with ``variant``'s files replacing same-numbered ones."""
    chosen = dict(variants[""])
    if variant:
        chosen.update(variants[variant])
    return [chosen[version] for version in sorted(chosen)]


async def migrate(dsn: str, *, sql_dir: Path = SQL_DIR) -> list[str]:
    """Bring the database at ``dsn`` up to date; return the names of files applied.

    Also creates the daily ``fixes`` partitions for yesterday .. today + 7 days.
    Raises :class:`~pipeline.store.DatabaseUnavailableError` when the database cannot
    be reached and :class:`MigrationError` when an applied file changed, a file fails,
    or another runner holds the lock for more than ``LOCK_TIMEOUT_S``.
    """
    variants = discover(sql_dir)
    connection = await connect(dsn)
    try:
        await _lock(connection, dsn)
        applied = await _migrate_locked(connection, variants)
        await ensure_partitions(connection)
    finally:
        await connection.close()  # also releases the advisory lock
    if applied:
        log.info("schema_migrated", database=redact_url(dsn), applied=applied)
    return applied


async def _lock(connection: asyncpg.Connection, dsn: str) -> None:
    try:
        await connection.execute(
            "SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY, timeout=LOCK_TIMEOUT_S
        )
    except TimeoutError as error:
        message = (
            f"another migration run on {redact_url(dsn)} held the lock for over "
            f"{LOCK_TIMEOUT_S} s; is an instance stuck?"
        )
        raise MigrationError(message) from error


async def _migrate_locked(
    connection: asyncpg.Connection, variants: dict[str, dict[int, Migration]]
) -> list[str]:
    await connection.execute(_CREATE_LEDGER)
    rows = await connection.fetch(
        "SELECT version, name, checksum FROM schema_migrations"
    )
    recorded = {row["version"]: (row["name"], row["checksum"]) for row in rows}
    _check_recorded(recorded, variants)

    variant = await _choose_variant(connection)
    applied: list[str] = []
    for migration in plan(variants, variant):
        if migration.version in recorded:
            continue
        await _apply(connection, migration)
        applied.append(migration.name)
    return applied


def _check_recorded(
    recorded: dict[int, tuple[str, str]], variants: dict[str, dict[int, Migration]]
) -> None:
    """Refuse to go on when a file applied earlier is missing or has changed."""
    by_name = {m.name: m for files in variants.values() for m in files.values()}
    for version, (name, checksum) in sorted(recorded.items()):
        migration = by_name.get(name)
        if migration is None:
            log.warning("migration_unknown_applied", version=version, name=name)
            continue
        if migration.checksum != checksum:
            message = (
                f"migration {migration.path} was changed after it was applied "
                f"(recorded checksum {checksum[:12]}…, file now "
                f"{migration.checksum[:12]}…); add a new numbered file instead of "
                "editing an applied one"
            )
            raise MigrationError(message)


async def _choose_variant(connection: asyncpg.Connection) -> str:
    """``"timescale"`` when TimescaleDB can be used here, else ``""`` (plain SQL).

    Being listed in ``pg_available_extensions`` is not enough: the library must be
    preloaded and the role allowed to create it, which an ordinary role cannot read
    from the settings.  So a ``CREATE EXTENSION`` is tried and rolled back.
    """
    row = await connection.fetchrow(
        """
        SELECT
            EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
                AS available,
            EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
                AS installed
        """
    )
    if row["installed"]:
        return "timescale"
    if not row["available"]:
        return ""
    try:
        async with connection.transaction():
            await connection.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            raise _ProbeDone
    except _ProbeDone:
        return "timescale"
    except asyncpg.PostgresError as error:
        log.warning("timescaledb_unusable", reason=str(error))
        return ""


class _ProbeDone(Exception):
    """Raised to roll back a successful trial ``CREATE EXTENSION``."""


async def _apply(connection: asyncpg.Connection, migration: Migration) -> None:
    log.info("migration_applying", version=migration.version, name=migration.name)
    try:
        async with connection.transaction():
            # Partition maintenance (another instance's, or this one's loop) locks
            # fixes and its partitions in the other order: a migration that indexes
            # fixes would deadlock with it.  Both take this lock first.
            await connection.execute(_PARTITIONS_LOCK)
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name, checksum)"
                " VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
    except asyncpg.PostgresError as error:
        message = f"migration {migration.path} failed, nothing of it was applied: "
        raise MigrationError(message + f"{type(error).__name__}: {error}") from error


async def ensure_partitions(dsn_or_connection: Any, days_ahead: int = 7) -> list[str]:
    """Create missing daily ``fixes`` partitions, yesterday .. today + ``days_ahead``.

    Days are UTC days.  ``dsn_or_connection`` is a DSN string or an open asyncpg
    connection (a pool's connection works too).  Returns the partitions created;
    under TimescaleDB none are (chunks are created on insert).  Safe to run
    concurrently and as often as wanted, e.g. daily from a scheduler.
    """
    if not isinstance(days_ahead, int) or not 0 <= days_ahead <= 3650:
        message = f"days_ahead must be an integer from 0 to 3650, got {days_ahead!r}"
        raise ValueError(message)
    if isinstance(dsn_or_connection, str):
        connection = await connect(dsn_or_connection)
        try:
            return await _ensure_partitions(connection, days_ahead)
        finally:
            await connection.close()
    return await _ensure_partitions(dsn_or_connection, days_ahead)


async def _ensure_partitions(connection: Any, days_ahead: int) -> list[str]:
    try:
        rows = await connection.fetch(
            "SELECT rastro_ensure_fix_partitions("
            "(now() AT TIME ZONE 'UTC')::date - 1, $1) AS created",
            days_ahead + 2,
        )
    except asyncpg.UndefinedFunctionError as error:
        message = "rastro_ensure_fix_partitions() is missing: run migrate() first"
        raise MigrationError(message) from error
    created = [row["created"] for row in rows]
    if created:
        log.info("fix_partitions_created", partitions=created)
    return created


async def maintain_partitions(
    dsn: str, *, every_s: float = 3600.0, days_ahead: int = 7
) -> None:
    """Run :func:`ensure_partitions` every ``every_s`` seconds until cancelled.

    Meant as one task of a long-running process (the supervisor's task group), so
    partitions keep being created ahead after the first week of uptime.  A failure
    is logged and retried at the next round; it never ends the loop.
    """
    while True:
        try:
            await ensure_partitions(dsn, days_ahead)
        except (OSError, asyncpg.PostgresError, MigrationError) as error:
            log.error(
                "fix_partitions_failed",
                database=redact_url(dsn),
                error=type(error).__name__,
                reason=str(error),
            )
        await asyncio.sleep(every_s)
