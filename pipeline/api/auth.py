"""Who is calling: logins, session cookies, bearer tokens, and the first admin.

A caller proves who it is with a token, sent either as the ``rastro_session``
cookie (browsers, set by ``POST /session``) or as ``Authorization: Bearer``
(programs).  Both are the same kind of secret, looked up by its SHA-256 digest in
``user_tokens`` (:mod:`pipeline.store.tokens`).

The cookie is HttpOnly (scripts cannot read it) and SameSite=Lax: browsers do not
send it with cross-site POSTs, PUTs, DELETEs or WebSocket handshakes, which is what
protects the cookie-authenticated routes from cross-site request forgery.  It is
marked Secure when the request came over HTTPS.

Failed logins are counted per user name and client address in memory
(:class:`LoginLimiter`): enough for one API process; with several processes behind a
balancer the counter should move to Redis.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
import structlog
from starlette.requests import HTTPConnection

from pipeline.api.errors import ApiError
from pipeline.store import tokens, users
from pipeline.store.users import User

__all__ = [
    "API_TOKEN_LIFETIME",
    "SESSION_COOKIE",
    "SESSION_LIFETIME",
    "LoginLimiter",
    "authenticate",
    "check_login",
    "ensure_admin",
    "issue_token_for_admin",
    "presented_token",
]

log = structlog.get_logger()

SESSION_COOKIE = "rastro_session"
SESSION_LIFETIME = timedelta(days=7)
API_TOKEN_LIFETIME = timedelta(days=365)
ADMIN_NAME = "admin"


@dataclass
class LoginLimiter:
    """At most ``attempts`` failed logins per user and address within ``window_s``.

    Kept in this process's memory; a restart forgets it.  At most ``max_entries``
    user/address pairs are tracked, so a flood of made-up names cannot grow it
    without bound: past that, expired pairs are purged, then the oldest go.
    """

    attempts: int = 5
    window_s: float = 300.0
    max_entries: int = 10_000
    _failures: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def retry_after(self, name: str, address: str) -> int:
        """Seconds until the next attempt is allowed; 0 when it is allowed now."""
        recent = self._recent(name, address)
        if len(recent) < self.attempts:
            return 0
        return max(1, round(recent[0] + self.window_s - time.monotonic()))

    def failed(self, name: str, address: str) -> None:
        """Count one failed attempt."""
        recent = self._recent(name, address)
        recent.append(time.monotonic())
        self._failures[(name, address)] = recent
        if len(self._failures) > self.max_entries:
            self._shrink()

    @property
    def tracked(self) -> int:
        """How many user/address pairs have recent failures."""
        return len(self._failures)

    def succeeded(self, name: str, address: str) -> None:
        """Forget the failures of a user that has now logged in."""
        self._failures.pop((name, address), None)

    def _recent(self, name: str, address: str) -> deque[float]:
        recent = self._failures.get((name, address), deque())
        cutoff = time.monotonic() - self.window_s
        while recent and recent[0] < cutoff:
            recent.popleft()
        if not recent:
            self._failures.pop((name, address), None)
        return recent

    def _shrink(self) -> None:
        for key in list(self._failures):
            self._recent(*key)
        while len(self._failures) > self.max_entries:
            del self._failures[next(iter(self._failures))]


async def check_login(
    pool: asyncpg.Pool,
    limiter: LoginLimiter,
    name: str,
    password: str,
    address: str,
) -> User:
    """The user if the name and password match; a 401 or 429 :class:`ApiError` if not.

    The 401 does not say whether the name or the password was wrong.
    """
    wait_s = limiter.retry_after(name, address)
    if wait_s:
        log.warning("login_throttled", user=name, address=address)
        message = f"too many failed logins; try again in {wait_s} s"
        raise ApiError(429, message, headers={"Retry-After": str(wait_s)})

    found = await users.find_user_by_name(pool, name)
    stored_hash = None if found is None else found[1]
    if found is None or not await users.verify_password(stored_hash, password):
        limiter.failed(name, address)
        log.info("login_failed", user=name, address=address)
        raise ApiError(401, "wrong user name or password")

    limiter.succeeded(name, address)
    log.info("login_succeeded", user=name, address=address)
    return found[0]


def presented_token(connection: HTTPConnection) -> tuple[str, str] | None:
    """The token a request carries and where: ``("bearer"|"cookie", secret)``.

    A bearer header wins over the cookie, so a program's token is never mixed up
    with a browser session.
    """
    header = connection.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return ("bearer", credentials.strip())
    cookie = connection.cookies.get(SESSION_COOKIE)
    if cookie:
        return ("cookie", cookie)
    return None


async def authenticate(pool: asyncpg.Pool, connection: HTTPConnection) -> User:
    """The calling user, or a 401 :class:`ApiError`."""
    presented = presented_token(connection)
    if presented is None:
        raise ApiError(401, "authentication required: log in or send a bearer token")

    user = await tokens.user_for_token(pool, presented[1])
    if user is None:
        raise ApiError(401, "the session or token is invalid or has expired")
    return user


async def ensure_admin(pool: asyncpg.Pool, password: str | None) -> str | None:
    """Create the user ``admin`` when there are no users at all.

    Uses ``password`` (from ``RASTRO_ADMIN_PASSWORD``) or a random one.  Returns the
    password only when it was generated here, so the caller can show it once; it is
    never logged.  Returns ``None`` when users exist already.
    """
    if await users.count_users(pool):
        return None

    generated = None if password else secrets.token_urlsafe(12)
    try:
        await users.create_user(
            pool, ADMIN_NAME, password or str(generated), is_admin=True
        )
    except users.UserExistsError:
        # Another process created it between the count and the insert.
        return None
    log.info("admin_created", user=ADMIN_NAME, generated_password=bool(generated))
    return generated


async def issue_token_for_admin(
    pool: asyncpg.Pool, lifetime: timedelta = API_TOKEN_LIFETIME
) -> str:
    """An API token for ``admin``, for programs Rastro starts itself (the demo)."""
    found = await users.find_user_by_name(pool, ADMIN_NAME)
    if found is None:
        message = "there is no user 'admin'; call ensure_admin first"
        raise LookupError(message)
    return await tokens.issue_token(pool, found[0].id, "api", lifetime)
