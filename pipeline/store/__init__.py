"""PostgreSQL storage: connecting with clear errors, and the schema's migrations.

:func:`connect` opens an asyncpg connection and turns every way of not getting one
(refused, unknown host, timeout, bad password, missing database) into a
:class:`DatabaseUnavailableError` whose message names the DSN without its password.
The schema lives in ``sql/`` and is applied by :mod:`pipeline.store.migrations`.
"""

from __future__ import annotations

import asyncpg

from pipeline.config import redact_url

CONNECT_TIMEOUT_S = 10.0

_REFUSALS = (
    asyncpg.InvalidAuthorizationSpecificationError,  # unknown role, bad password
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.TooManyConnectionsError,
)


class DatabaseUnavailableError(ConnectionError):
    """PostgreSQL could not be reached or refused the login; names the redacted DSN."""


async def connect(
    dsn: str, *, timeout_s: float = CONNECT_TIMEOUT_S
) -> asyncpg.Connection:
    """Open a connection to ``dsn`` or raise :class:`DatabaseUnavailableError`."""
    try:
        return await asyncpg.connect(dsn, timeout=timeout_s)
    except ConnectionRefusedError as error:
        reason = "connection refused (is the server running and listening there?)"
        raise unavailable(dsn, reason) from error
    except TimeoutError as error:
        raise unavailable(dsn, f"no answer within {timeout_s} s") from error
    except (OSError, *_REFUSALS) as error:
        raise unavailable(dsn, str(error) or type(error).__name__) from error
    except ValueError as error:
        message = f"invalid PostgreSQL DSN {redact_url(dsn)}: {scrub(str(error), dsn)}"
        raise ValueError(message) from error


def unavailable(dsn: str, reason: str) -> DatabaseUnavailableError:
    """The error for a database Rastro cannot use, without the DSN's password."""
    message = f"cannot connect to PostgreSQL at {redact_url(dsn)}: {scrub(reason, dsn)}"
    return DatabaseUnavailableError(message)


def scrub(text: str, dsn: str) -> str:
    """``text`` with the DSN's password (if any) replaced by ``***``."""
    _, _, rest = dsn.partition("://")
    credentials, at, _ = rest.rpartition("@")
    _, colon, password = credentials.partition(":")
    if not (at and colon and password):
        return text
    return text.replace(password, "***")
