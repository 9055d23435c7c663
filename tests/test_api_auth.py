"""Logging in, sessions, tokens, the first admin, and refusing strangers."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import httpx
import pytest

from pipeline.api.app import ENDPOINTS, LIVE_PATH, Endpoint, create_api
from pipeline.api.auth import SESSION_COOKIE, LoginLimiter, ensure_admin
from pipeline.api.context import ApiContext
from pipeline.store import users
from tests.fixtures.api import PASSWORD, Caller

pytestmark = pytest.mark.integration

PROTECTED = [endpoint for endpoint in ENDPOINTS if not endpoint.public]


def _concrete(endpoint: Endpoint) -> str:
    return re.sub(r"\{\w+:int\}", "1", endpoint.full_path)


class TestLogin:
    async def test_login_sets_cookie_and_returns_token(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        """The cookie is HttpOnly and SameSite=Lax, and carries the returned token."""
        response = await api_client.post(
            "/api/v1/session", json={"user": "alice", "password": PASSWORD}
        )

        assert response.status_code == 200
        token = response.json()["token"]
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}={token};")
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie
        assert response.json()["user"]["name"] == "alice"

    async def test_login_cookie_authenticates(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        await api_client.post(
            "/api/v1/session", json={"user": "alice", "password": PASSWORD}
        )

        response = await api_client.get("/api/v1/devices")

        assert response.status_code == 200

    async def test_login_token_works_as_bearer(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        login = await api_client.post(
            "/api/v1/session", json={"user": "alice", "password": PASSWORD}
        )
        api_client.cookies.clear()
        headers = {"Authorization": f"Bearer {login.json()['token']}"}

        response = await api_client.get("/api/v1/devices", headers=headers)

        assert response.status_code == 200

    @pytest.mark.parametrize(
        ("name", "password"),
        [("alice", "wrong password"), ("nobody", PASSWORD)],
        ids=["wrong-password", "unknown-user"],
    )
    async def test_login_wrong_credentials_same_answer(
        self, api_client: httpx.AsyncClient, alice: Caller, name: str, password: str
    ) -> None:
        """A wrong name and a wrong password get the same 401, with no hint."""
        response = await api_client.post(
            "/api/v1/session", json={"user": name, "password": password}
        )

        assert response.status_code == 401
        assert response.json() == {"error": "wrong user name or password"}
        assert "set-cookie" not in response.headers

    @pytest.mark.parametrize(
        "body",
        [b"not json", b"[1]", b'{"user": "alice"}', b'{"user": 3, "password": "x"}'],
    )
    async def test_login_bad_body_is_400(
        self, api_client: httpx.AsyncClient, body: bytes
    ) -> None:
        response = await api_client.post("/api/v1/session", content=body)

        assert response.status_code == 400
        assert response.json()["error"]

    async def test_login_throttled_after_failures(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        """After five failures even the right password gets 429 with Retry-After."""
        wrong = {"user": "alice", "password": "nope"}
        for _ in range(5):
            assert (
                await api_client.post("/api/v1/session", json=wrong)
            ).status_code == 401

        right = {"user": "alice", "password": PASSWORD}
        response = await api_client.post("/api/v1/session", json=right)

        assert response.status_code == 429
        assert int(response.headers["retry-after"]) > 0
        assert "too many failed logins" in response.json()["error"]


class TestLoginLimiter:
    def test_limiter_counts_per_user_and_address(self) -> None:
        limiter = LoginLimiter(attempts=2, window_s=60)

        limiter.failed("alice", "10.0.0.1")
        limiter.failed("alice", "10.0.0.1")

        assert limiter.retry_after("alice", "10.0.0.1") > 0
        assert limiter.retry_after("alice", "10.0.0.2") == 0
        assert limiter.retry_after("bob", "10.0.0.1") == 0

    def test_limiter_forgets_after_success(self) -> None:
        limiter = LoginLimiter(attempts=1, window_s=60)
        limiter.failed("alice", "a")

        limiter.succeeded("alice", "a")

        assert limiter.retry_after("alice", "a") == 0

    def test_limiter_bounded_under_made_up_names(self) -> None:
        """A flood of different names cannot grow the counter without bound."""
        limiter = LoginLimiter(attempts=5, window_s=60, max_entries=100)

        for number in range(1000):
            limiter.failed(f"user-{number}", "10.0.0.1")

        assert limiter.tracked == 100
        assert limiter.retry_after("user-999", "10.0.0.1") == 0

    def test_limiter_forgets_old_failures(self) -> None:
        limiter = LoginLimiter(attempts=1, window_s=0.0)
        limiter.failed("alice", "a")

        assert limiter.retry_after("alice", "a") == 0


class TestLogout:
    async def test_logout_ends_session(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        await api_client.post(
            "/api/v1/session", json={"user": "alice", "password": PASSWORD}
        )

        response = await api_client.delete("/api/v1/session")

        assert response.status_code == 204
        assert (await api_client.get("/api/v1/devices")).status_code == 401

    async def test_logout_token_stops_working(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        await api_client.delete("/api/v1/session", headers=alice.headers)

        response = await api_client.get("/api/v1/devices", headers=alice.headers)

        assert response.status_code == 401


class TestApiTokens:
    async def test_token_minted_for_programs(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        response = await api_client.post(
            "/api/v1/tokens", json={"days": 30}, headers=alice.headers
        )

        assert response.status_code == 201
        program = {"Authorization": f"Bearer {response.json()['token']}"}
        assert (
            await api_client.get("/api/v1/devices", headers=program)
        ).status_code == 200

    async def test_token_survives_logout(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        """Logging out ends the session, not the program tokens it minted."""
        minted = await api_client.post("/api/v1/tokens", headers=alice.headers)
        program = {"Authorization": f"Bearer {minted.json()['token']}"}

        await api_client.delete("/api/v1/session", headers=program)

        assert (
            await api_client.get("/api/v1/devices", headers=program)
        ).status_code == 200

    async def test_token_only_hash_stored(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        minted = await api_client.post("/api/v1/tokens", headers=alice.headers)
        token = minted.json()["token"]

        stored = await api_pool.fetch("SELECT token_hash FROM user_tokens")

        assert all(token.encode() not in bytes(row["token_hash"]) for row in stored)
        assert len(stored) == 2

    @pytest.mark.parametrize("days", [0, 4000, "ten", True])
    async def test_token_bad_days_is_400(
        self, api_client: httpx.AsyncClient, alice: Caller, days: object
    ) -> None:
        response = await api_client.post(
            "/api/v1/tokens", json={"days": days}, headers=alice.headers
        )

        assert response.status_code == 400
        assert "days must be" in response.json()["error"]


class TestRefusal:
    @pytest.mark.parametrize(
        "endpoint", PROTECTED, ids=[f"{e.method} {e.path}" for e in PROTECTED]
    )
    async def test_route_refuses_unauthenticated(
        self, api_client: httpx.AsyncClient, endpoint: Endpoint
    ) -> None:
        response = await api_client.request(endpoint.method, _concrete(endpoint))

        assert response.status_code == 401
        assert "authentication required" in response.json()["error"]

    @pytest.mark.parametrize(
        "endpoint", PROTECTED, ids=[f"{e.method} {e.path}" for e in PROTECTED]
    )
    async def test_route_refuses_bad_token(
        self, api_client: httpx.AsyncClient, endpoint: Endpoint
    ) -> None:
        headers = {"Authorization": "Bearer not-a-real-token"}

        response = await api_client.request(
            endpoint.method, _concrete(endpoint), headers=headers
        )

        assert response.status_code == 401

    def test_route_table_covers_app(self, api_app: object) -> None:
        """Every served path comes from the route table (or is the WebSocket)."""
        served = {route.path for route in api_app.routes}  # type: ignore[attr-defined]

        assert served == {e.full_path for e in ENDPOINTS} | {LIVE_PATH}

    async def test_expired_token_refused(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        await api_pool.execute(
            "UPDATE user_tokens SET expires_at = now() - '1s'::interval"
        )

        response = await api_client.get("/api/v1/devices", headers=alice.headers)

        assert response.status_code == 401
        assert "expired" in response.json()["error"]


class TestPublicRoutes:
    async def test_health_is_public(self, api_client: httpx.AsyncClient) -> None:
        response = await api_client.get("/api/v1/health")

        assert response.json() == {"status": "ok", "ready": True}

    async def test_health_says_not_ready_until_pipeline_runs(
        self, api_context: ApiContext
    ) -> None:
        api_context.ready = asyncio.Event()
        transport = httpx.ASGITransport(app=create_api(api_context))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as client:
            before = (await client.get("/api/v1/health")).json()
            api_context.ready.set()
            after = (await client.get("/api/v1/health")).json()

        assert before == {"status": "ok", "ready": False}
        assert after == {"status": "ok", "ready": True}

    async def test_openapi_lists_every_route(
        self, api_client: httpx.AsyncClient
    ) -> None:
        response = await api_client.get("/api/v1/openapi.json")

        document = response.json()
        assert document["openapi"].startswith("3.1")
        for endpoint in ENDPOINTS:
            assert endpoint.method.lower() in document["paths"][endpoint.openapi_path]
        assert LIVE_PATH in document["paths"]
        positions = document["paths"]["/api/v1/devices/{device_id}/positions"]["get"]
        assert {p["name"] for p in positions["parameters"]} == {
            "device_id",
            "from",
            "to",
            "limit",
        }

    async def test_unknown_path_is_json_404(
        self, api_client: httpx.AsyncClient
    ) -> None:
        response = await api_client.get("/api/v1/nothing-here")

        assert response.status_code == 404
        assert response.json() == {"error": "Not Found"}

    async def test_wrong_method_is_json_405(
        self, api_client: httpx.AsyncClient
    ) -> None:
        response = await api_client.patch("/api/v1/devices")

        assert response.status_code == 405
        assert response.json() == {"error": "Method Not Allowed"}

    async def test_huge_body_is_413(self, api_client: httpx.AsyncClient) -> None:
        response = await api_client.post("/api/v1/session", content=b"x" * (65 * 1024))

        assert response.status_code == 413
        assert "at most 65536 bytes" in response.json()["error"]


class TestEnsureAdmin:
    async def test_admin_created_with_given_password(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool
    ) -> None:
        generated = await ensure_admin(api_pool, "given-password")

        login = await api_client.post(
            "/api/v1/session", json={"user": "admin", "password": "given-password"}
        )
        assert generated is None
        assert login.json()["user"]["isAdmin"] is True

    async def test_admin_random_password_returned(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool
    ) -> None:
        generated = await ensure_admin(api_pool, None)

        assert generated is not None and len(generated) >= 12
        login = await api_client.post(
            "/api/v1/session", json={"user": "admin", "password": generated}
        )
        assert login.status_code == 200

    async def test_admin_not_created_when_users_exist(
        self, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        assert await ensure_admin(api_pool, None) is None
        assert [u.name for u in await users.list_users(api_pool)] == ["alice"]

    async def test_admin_password_stored_hashed(self, api_pool: asyncpg.Pool) -> None:
        await ensure_admin(api_pool, "given-password")

        stored = await api_pool.fetchval("SELECT password_hash FROM users")

        assert stored.startswith("$argon2id$")
        assert "given-password" not in stored
