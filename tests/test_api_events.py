"""Events over the API: the caller's devices only, filters, newest first."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from geo.events import EVENT_TYPES
from tests.fixtures.api import Caller, unique_id

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
WINDOW = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}


async def _register(client: httpx.AsyncClient, owner: Caller) -> dict[str, Any]:
    body = {"uniqueId": unique_id(), "name": "van"}
    response = await client.post("/api/v1/devices", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def _event(
    pool: asyncpg.Pool,
    device: str,
    kind: str,
    minutes: float,
    attributes: dict[str, Any] | None = None,
) -> None:
    """An event row as the streaming job writes it."""
    await pool.execute(
        "INSERT INTO events (device, type, event_time, latitude, longitude,"
        " attributes) VALUES ($1, $2, $3, 48.1, 11.5, $4::jsonb)",
        device,
        kind,
        T0 + timedelta(minutes=minutes),
        json.dumps(attributes or {}),
    )


async def _events(
    client: httpx.AsyncClient, caller: Caller, **params: object
) -> httpx.Response:
    return await client.get(
        "/api/v1/events", params={**WINDOW, **params}, headers=caller.headers
    )


class TestEvents:
    async def test_events_own_devices_newest_first(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
    ) -> None:
        van = await _register(api_client, alice)
        truck = await _register(api_client, bob)
        await _event(api_pool, van["uniqueId"], "overspeed", 0, {"max_speed_kmh": 97})
        await _event(api_pool, van["uniqueId"], "geofenceEnter", 30)
        await _event(api_pool, truck["uniqueId"], "alarm", 10, {"alarm": "sos"})

        response = await _events(api_client, alice)

        events = response.json()
        assert response.status_code == 200
        assert [e["type"] for e in events] == ["geofenceEnter", "overspeed"]
        assert events[1] == {
            "id": events[1]["id"],
            "deviceId": van["id"],
            "uniqueId": van["uniqueId"],
            "type": "overspeed",
            "time": "2026-03-01T08:00:00Z",
            "latitude": 48.1,
            "longitude": 11.5,
            "attributes": {"max_speed_kmh": 97},
        }
        assert truck["uniqueId"] not in response.text

    async def test_events_filtered_by_device_and_type(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        van = await _register(api_client, alice)
        car = await _register(api_client, alice)
        for device in (van, car):
            await _event(api_pool, device["uniqueId"], "ignitionOn", 1)
            await _event(api_pool, device["uniqueId"], "ignitionOff", 2)

        by_device = await _events(api_client, alice, device=van["id"])
        by_type = await _events(api_client, alice, type="ignitionOn")
        both = await _events(api_client, alice, device=car["id"], type="ignitionOff")

        assert {e["uniqueId"] for e in by_device.json()} == {van["uniqueId"]}
        assert len(by_device.json()) == 2
        assert {e["type"] for e in by_type.json()} == {"ignitionOn"}
        assert len(by_type.json()) == 2
        assert [(e["uniqueId"], e["type"]) for e in both.json()] == [
            (car["uniqueId"], "ignitionOff")
        ]

    async def test_events_window_half_open_and_limited(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        van = await _register(api_client, alice)
        for minute in range(5):
            await _event(api_pool, van["uniqueId"], "idle", minute)
        window = {"from": "2026-03-01T08:01:00Z", "to": "2026-03-01T08:04:00Z"}

        inside = await api_client.get(
            "/api/v1/events", params=window, headers=alice.headers
        )
        newest = await api_client.get(
            "/api/v1/events", params={**window, "limit": 2}, headers=alice.headers
        )

        assert [e["time"] for e in inside.json()] == [
            "2026-03-01T08:03:00Z",
            "2026-03-01T08:02:00Z",
            "2026-03-01T08:01:00Z",
        ]
        assert [e["time"] for e in newest.json()] == [
            "2026-03-01T08:03:00Z",
            "2026-03-01T08:02:00Z",
        ]

    async def test_events_admin_sees_all_even_unregistered(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        admin: Caller,
    ) -> None:
        """An event of a device since removed stays visible to administrators."""
        van = await _register(api_client, alice)
        await _event(api_pool, van["uniqueId"], "deviceOffline", 0)
        await _event(api_pool, "gone-123", "deviceOnline", 1)

        response = await _events(api_client, admin)

        assert [(e["uniqueId"], e["deviceId"]) for e in response.json()] == [
            ("gone-123", None),
            (van["uniqueId"], van["id"]),
        ]
        assert "gone-123" not in (await _events(api_client, alice)).text

    async def test_events_of_other_users_device_404(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
    ) -> None:
        truck = await _register(api_client, bob)
        await _event(api_pool, truck["uniqueId"], "alarm", 0)

        response = await _events(api_client, alice, device=truck["id"])

        assert response.status_code == 404
        assert response.json() == {"error": f"no device with id {truck['id']}"}

    @pytest.mark.parametrize(
        ("params", "reason"),
        [
            ({"type": "teleported"}, "type must be one of ["),
            ({"device": "van-1"}, "device must be a whole number from 1 to"),
            ({"device": "0"}, "device must be a whole number from 1 to"),
            ({"limit": "0"}, "limit must be a whole number from 1 to 10000"),
            ({"from": "now"}, "'from' must be ISO-8601, got 'now'"),
            ({"to": "2026-02-01T00:00:00Z"}, "to must be later than from"),
            ({"from": "2024-01-01T00:00:00Z"}, "at most 366 days apart"),
        ],
    )
    async def test_events_bad_query_400(
        self,
        api_client: httpx.AsyncClient,
        alice: Caller,
        params: dict[str, str],
        reason: str,
    ) -> None:
        response = await _events(api_client, alice, **params)

        assert response.status_code == 400
        assert reason in response.json()["error"]

    async def test_events_window_required(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        response = await api_client.get("/api/v1/events", headers=alice.headers)

        assert response.status_code == 400
        assert "'from' is required" in response.json()["error"]

    async def test_events_types_listed_in_openapi(
        self, api_client: httpx.AsyncClient
    ) -> None:
        document = (await api_client.get("/api/v1/openapi.json")).json()

        parameters = document["paths"]["/api/v1/events"]["get"]["parameters"]
        kind = next(p for p in parameters if p["name"] == "type")
        assert kind["schema"]["enum"] == sorted(EVENT_TYPES)
