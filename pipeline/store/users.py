"""Users: who may log in, and whether they administer Rastro.

Passwords are stored only as argon2id hashes (argon2-cffi's defaults).  Hashing and
verifying take tens of milliseconds of CPU on purpose, so they run in a worker thread
and never stall the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "User",
    "UserExistsError",
    "count_users",
    "create_user",
    "find_user_by_name",
    "get_user",
    "hash_password",
    "list_users",
    "verify_password",
]

_HASHER = PasswordHasher()
# Verified against when the user name is unknown, so that a wrong name costs as much
# time as a wrong password and response times do not reveal which names exist.
_DUMMY_HASH = _HASHER.hash("rastro-no-such-user")


class UserExistsError(ValueError):
    """A user of that name exists already."""


@dataclass(frozen=True)
class User:
    """A user as the API sees it (never with the password hash)."""

    id: int
    name: str
    is_admin: bool
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The API JSON form."""
        return {
            "id": self.id,
            "name": self.name,
            "isAdmin": self.is_admin,
            "createdAt": self.created_at.isoformat(),
        }


async def hash_password(password: str) -> str:
    """The argon2id hash of ``password``, computed off the event loop."""
    return await asyncio.to_thread(_HASHER.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; an absent hash still costs one verification."""
    target = password_hash if password_hash is not None else _DUMMY_HASH
    try:
        matched = await asyncio.to_thread(_HASHER.verify, target, password)
    except (VerificationError, InvalidHashError):
        return False
    return bool(matched) and password_hash is not None


async def create_user(
    pool: asyncpg.Pool, name: str, password: str, *, is_admin: bool = False
) -> User:
    """Store a new user; :class:`UserExistsError` when the name is taken."""
    password_hash = await hash_password(password)
    try:
        row = await pool.fetchrow(
            "INSERT INTO users (name, password_hash, is_admin) VALUES ($1, $2, $3)"
            " RETURNING id, name, is_admin, created_at",
            name,
            password_hash,
            is_admin,
        )
    except asyncpg.UniqueViolationError as error:
        message = f"a user named {name!r} exists already"
        raise UserExistsError(message) from error
    return _user(row)


async def count_users(pool: asyncpg.Pool) -> int:
    """How many users exist."""
    return int(await pool.fetchval("SELECT count(*) FROM users"))


async def get_user(pool: asyncpg.Pool, user_id: int) -> User | None:
    """The user with that id, if any."""
    row = await pool.fetchrow(
        "SELECT id, name, is_admin, created_at FROM users WHERE id = $1", user_id
    )
    return None if row is None else _user(row)


async def find_user_by_name(pool: asyncpg.Pool, name: str) -> tuple[User, str] | None:
    """The user of that name with its password hash, for logging in."""
    row = await pool.fetchrow(
        "SELECT id, name, is_admin, created_at, password_hash FROM users"
        " WHERE name = $1",
        name,
    )
    return None if row is None else (_user(row), str(row["password_hash"]))


async def list_users(pool: asyncpg.Pool) -> list[User]:
    """Every user, oldest first."""
    rows = await pool.fetch(
        "SELECT id, name, is_admin, created_at FROM users ORDER BY id"
    )
    return [_user(row) for row in rows]


def _user(row: asyncpg.Record) -> User:
    return User(
        id=int(row["id"]),
        name=str(row["name"]),
        is_admin=bool(row["is_admin"]),
        created_at=row["created_at"],
    )
