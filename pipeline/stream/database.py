"""Blocking PostgreSQL reads for the job's Python functions, which are not async.

Flink calls the job's functions from its own threads; asyncpg is the project's only
PostgreSQL driver, so :class:`BlockingDatabase` keeps one connection on a private
event loop and runs each query to completion.  The job only *reads* through it
(settings, geofences, history for a late-data recompute): everything it writes goes
through Flink's sinks, which flush with every checkpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import structlog

from pipeline.config import redact_url

__all__ = ["DATABASE_ERRORS", "BlockingDatabase"]

log = structlog.get_logger("rastro.stream")

_T = TypeVar("_T")

#: What a query raises while PostgreSQL is unreachable or restarting.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    TimeoutError,
)

CONNECT_TIMEOUT_S = 5.0
QUERY_TIMEOUT_S = 30.0


class BlockingDatabase:
    """One asyncpg connection, used from synchronous code; reconnects when lost."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._loop = asyncio.new_event_loop()
        self._connection: asyncpg.Connection | None = None

    def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of ``query``; a lost connection is opened again once and retried."""
        return self._run(lambda connection: connection.fetch(query, *args))

    def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """The first row of ``query``, or ``None``."""
        return self._run(lambda connection: connection.fetchrow(query, *args))

    def close(self) -> None:
        """Close the connection and the loop."""
        if self._connection is not None:
            try:
                self._loop.run_until_complete(self._connection.close(timeout=5))
            except DATABASE_ERRORS:
                pass
            self._connection = None
        self._loop.close()

    def _run(self, query: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        for attempt in (1, 2):
            connection = self._connect()
            try:
                return self._loop.run_until_complete(
                    asyncio.wait_for(query(connection), QUERY_TIMEOUT_S)
                )
            except (asyncpg.InterfaceError, ConnectionError) as error:
                self._drop()
                if attempt == 2:
                    raise
                log.info("stream_database_reconnecting", reason=type(error).__name__)
        raise AssertionError("unreachable")

    def _connect(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            try:
                self._connection = self._loop.run_until_complete(
                    asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_S)
                )
            except DATABASE_ERRORS:
                log.debug("stream_database_unreachable", dsn=redact_url(self._dsn))
                raise
        return self._connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.terminate()
