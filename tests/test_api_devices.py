"""Devices and users: CRUD, ownership, and what other users cannot see or do."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.api import Caller, unique_id

pytestmark = pytest.mark.integration


async def _register(client: httpx.AsyncClient, owner: Caller, **fields: object) -> dict:
    body = {"uniqueId": unique_id(), "name": "van", **fields}
    response = await client.post("/api/v1/devices", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    return response.json()


class TestDeviceCrud:
    async def test_device_created_and_listed(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        created = await _register(api_client, alice, attributes={"plate": "M-RA 1"})

        listed = await api_client.get("/api/v1/devices", headers=alice.headers)

        assert listed.json() == [created]
        assert set(created) == {"id", "uniqueId", "name", "attributes", "createdAt"}
        assert created["attributes"] == {"plate": "M-RA 1"}

    async def test_device_read_by_id(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        created = await _register(api_client, alice)

        response = await api_client.get(
            f"/api/v1/devices/{created['id']}", headers=alice.headers
        )

        assert response.json() == created

    async def test_device_updated_partially(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        created = await _register(api_client, alice, attributes={"a": 1})

        response = await api_client.put(
            f"/api/v1/devices/{created['id']}",
            json={"name": "truck"},
            headers=alice.headers,
        )

        assert response.status_code == 200
        assert response.json() == {**created, "name": "truck"}

    async def test_device_deleted(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        created = await _register(api_client, alice)
        path = f"/api/v1/devices/{created['id']}"

        deleted = await api_client.delete(path, headers=alice.headers)

        assert deleted.status_code == 204
        assert (await api_client.get(path, headers=alice.headers)).status_code == 404

    async def test_device_duplicate_unique_id_is_409(
        self, api_client: httpx.AsyncClient, alice: Caller, bob: Caller
    ) -> None:
        created = await _register(api_client, alice)

        response = await api_client.post(
            "/api/v1/devices",
            json={"uniqueId": created["uniqueId"], "name": "copy"},
            headers=bob.headers,
        )

        assert response.status_code == 409
        assert "registered already" in response.json()["error"]

    async def test_device_rename_to_taken_unique_id_is_409(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        first = await _register(api_client, alice)
        second = await _register(api_client, alice)

        response = await api_client.put(
            f"/api/v1/devices/{second['id']}",
            json={"uniqueId": first["uniqueId"]},
            headers=alice.headers,
        )

        assert response.status_code == 409

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            ({"name": "van"}, "uniqueId must be a non-empty string"),
            ({"uniqueId": "  ", "name": "van"}, "uniqueId must be a non-empty string"),
            ({"uniqueId": "x" * 129, "name": "van"}, "at most 128"),
            ({"uniqueId": "a1", "name": "van", "attributes": [1]}, "attributes must"),
        ],
    )
    async def test_device_bad_body_is_400(
        self, api_client: httpx.AsyncClient, alice: Caller, body: dict, reason: str
    ) -> None:
        response = await api_client.post(
            "/api/v1/devices", json=body, headers=alice.headers
        )

        assert response.status_code == 400
        assert reason in response.json()["error"]

    async def test_device_update_unknown_field_is_400(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        created = await _register(api_client, alice)

        response = await api_client.put(
            f"/api/v1/devices/{created['id']}",
            json={"owner": 1},
            headers=alice.headers,
        )

        assert response.status_code == 400
        assert "unknown fields: ['owner']" in response.json()["error"]

    async def test_device_non_numeric_id_is_404(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        response = await api_client.get("/api/v1/devices/abc", headers=alice.headers)

        assert response.status_code == 404


class TestDeviceIsolation:
    """User B cannot see, change or delete user A's devices; the answer is 404."""

    async def test_other_user_list_excludes_device(
        self, api_client: httpx.AsyncClient, alice: Caller, bob: Caller
    ) -> None:
        await _register(api_client, alice)

        response = await api_client.get("/api/v1/devices", headers=bob.headers)

        assert response.json() == []

    @pytest.mark.parametrize(
        ("method", "body"), [("GET", None), ("PUT", {"name": "mine"}), ("DELETE", None)]
    )
    async def test_other_user_device_is_404(
        self,
        api_client: httpx.AsyncClient,
        alice: Caller,
        bob: Caller,
        method: str,
        body: dict | None,
    ) -> None:
        created = await _register(api_client, alice)
        path = f"/api/v1/devices/{created['id']}"

        response = await api_client.request(
            method, path, json=body, headers=bob.headers
        )

        assert response.status_code == 404
        assert response.json() == {"error": f"no device with id {created['id']}"}
        unchanged = await api_client.get(path, headers=alice.headers)
        assert unchanged.json() == created

    async def test_other_user_404_same_as_missing(
        self, api_client: httpx.AsyncClient, alice: Caller, bob: Caller
    ) -> None:
        """Someone else's id and an id never used answer alike: ids do not leak."""
        created = await _register(api_client, alice)

        theirs = await api_client.get(
            f"/api/v1/devices/{created['id']}", headers=bob.headers
        )
        missing = await api_client.get(
            f"/api/v1/devices/{created['id'] + 1000}", headers=bob.headers
        )

        assert theirs.status_code == missing.status_code == 404

    async def test_admin_sees_every_device(
        self, api_client: httpx.AsyncClient, alice: Caller, bob: Caller, admin: Caller
    ) -> None:
        first = await _register(api_client, alice)
        second = await _register(api_client, bob)

        response = await api_client.get("/api/v1/devices", headers=admin.headers)

        assert response.json() == [first, second]


class TestUsers:
    async def test_admin_creates_user_who_logs_in(
        self, api_client: httpx.AsyncClient, admin: Caller
    ) -> None:
        created = await api_client.post(
            "/api/v1/users",
            json={"name": "carol", "password": "carol-secret"},
            headers=admin.headers,
        )

        assert created.status_code == 201
        assert created.json()["isAdmin"] is False
        assert "password" not in str(created.json())
        login = await api_client.post(
            "/api/v1/session", json={"user": "carol", "password": "carol-secret"}
        )
        assert login.status_code == 200

    async def test_admin_lists_users(
        self, api_client: httpx.AsyncClient, admin: Caller, alice: Caller
    ) -> None:
        response = await api_client.get("/api/v1/users", headers=admin.headers)

        assert [user["name"] for user in response.json()] == ["root", "alice"]

    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_non_admin_users_route_is_403(
        self, api_client: httpx.AsyncClient, alice: Caller, method: str
    ) -> None:
        response = await api_client.request(
            method,
            "/api/v1/users",
            json={"name": "mallory", "password": "12345678"},
            headers=alice.headers,
        )

        assert response.status_code == 403
        assert response.json() == {"error": "only administrators may manage users"}

    async def test_duplicate_user_is_409(
        self, api_client: httpx.AsyncClient, admin: Caller, alice: Caller
    ) -> None:
        response = await api_client.post(
            "/api/v1/users",
            json={"name": "alice", "password": "another-secret"},
            headers=admin.headers,
        )

        assert response.status_code == 409
        assert "exists already" in response.json()["error"]

    async def test_short_password_is_400(
        self, api_client: httpx.AsyncClient, admin: Caller
    ) -> None:
        response = await api_client.post(
            "/api/v1/users",
            json={"name": "dave", "password": "short"},
            headers=admin.headers,
        )

        assert response.status_code == 400
        assert "at least 8 characters" in response.json()["error"]
