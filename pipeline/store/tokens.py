"""Session and API tokens: random secrets of which only a SHA-256 hash is kept.

A token is 32 random bytes in URL-safe base64.  The database holds its SHA-256
digest, so a leaked ``user_tokens`` table cannot be replayed.  A plain digest (not a
slow password hash) is enough because the secret has 256 bits of entropy.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Literal

import asyncpg

from pipeline.store.users import User

__all__ = [
    "TokenKind",
    "delete_token",
    "issue_token",
    "token_digest",
    "user_for_token",
]

TokenKind = Literal["session", "api"]


def token_digest(token: str) -> bytes:
    """The SHA-256 digest under which a token is stored."""
    return hashlib.sha256(token.encode()).digest()


async def issue_token(
    pool: asyncpg.Pool, user_id: int, kind: TokenKind, lifetime: timedelta
) -> str:
    """Create a token for the user, valid for ``lifetime``; returns the secret."""
    token = secrets.token_urlsafe(32)
    await pool.execute(
        "INSERT INTO user_tokens (token_hash, user_id, kind, expires_at)"
        " VALUES ($1, $2, $3, now() + $4::interval)",
        token_digest(token),
        user_id,
        kind,
        lifetime,
    )
    return token


async def user_for_token(pool: asyncpg.Pool, token: str) -> User | None:
    """The user a token belongs to, if it exists and has not expired."""
    row = await pool.fetchrow(
        "SELECT u.id, u.name, u.is_admin, u.created_at FROM user_tokens t"
        " JOIN users u ON u.id = t.user_id"
        " WHERE t.token_hash = $1 AND t.expires_at > now()",
        token_digest(token),
    )
    if row is None:
        return None
    return User(
        id=int(row["id"]),
        name=str(row["name"]),
        is_admin=bool(row["is_admin"]),
        created_at=row["created_at"],
    )


async def delete_token(pool: asyncpg.Pool, token: str, kind: TokenKind) -> bool:
    """Forget a token of the given kind; returns whether one was deleted."""
    status = await pool.execute(
        "DELETE FROM user_tokens WHERE token_hash = $1 AND kind = $2",
        token_digest(token),
        kind,
    )
    return bool(status != "DELETE 0")
