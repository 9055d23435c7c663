"""Trips, stops, idles, visits, daily summaries and H3 aggregates over the API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import h3
import httpx
import pytest
import redis.asyncio as aioredis

from geo.cells import CellSettings
from geo.summaries import summarise
from pipeline.api import motion
from pipeline.api.app import ApiContext, create_api
from pipeline.api.openapi import Endpoint
from pipeline.ports import free_port
from pipeline.store import motion as motion_store
from pipeline.store.aggregates import refresh_h3_until_caught_up
from tests.fixtures.api import Caller, unique_id

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)


async def _register(client: httpx.AsyncClient, owner: Caller) -> dict[str, Any]:
    body = {"uniqueId": unique_id(), "name": "van"}
    response = await client.post("/api/v1/devices", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def _trip(
    pool: asyncpg.Pool,
    device: str,
    start: datetime,
    minutes: float,
    distance_m: float,
    max_speed: float = 50.0,
) -> None:
    """A trip row as the streaming job writes it."""
    end = start + timedelta(minutes=minutes)
    await pool.execute(
        "INSERT INTO trips (device, start_time, end_time, start_latitude,"
        " start_longitude, end_latitude, end_longitude, distance_m, duration_s,"
        " max_speed_kmh, avg_speed_kmh, idle_s, start_odometer_m, end_odometer_m)"
        " VALUES ($1, $2, $3, 48.1, 11.5, 48.2, 11.6, $4::float8, $5, $6, $7, 30,"
        " 1000, 1000 + $4::float8)",
        device,
        start,
        end,
        distance_m,
        minutes * 60,
        max_speed,
        distance_m / (minutes * 60) * 3.6,
    )


async def _period(
    pool: asyncpg.Pool, table: str, device: str, start: datetime, minutes: float
) -> None:
    """A stop or idle row as the streaming job writes it."""
    await pool.execute(
        f"INSERT INTO {table} (device, start_time, end_time, latitude, longitude,"
        " duration_s) VALUES ($1, $2, $3, 48.15, 11.55, $4)",
        device,
        start,
        start + timedelta(minutes=minutes),
        minutes * 60,
    )


def _window(start: datetime, end: datetime, **extra: object) -> dict[str, object]:
    return {"from": start.isoformat(), "to": end.isoformat(), **extra}


class TestTrips:
    async def test_trips_overlapping_window_oldest_first(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        """A trip counts when it overlaps [from, to): one ending at from does not."""
        device = await _register(api_client, alice)
        uid = device["uniqueId"]
        await _trip(api_pool, uid, T0 - timedelta(hours=2), 60, 10_000)  # ends before
        await _trip(api_pool, uid, T0 - timedelta(minutes=30), 45, 20_000)  # straddles
        await _trip(api_pool, uid, T0 + timedelta(hours=1), 30, 15_000)
        await _trip(api_pool, uid, T0 + timedelta(hours=3), 30, 5_000)  # at `to`

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/trips",
            params=_window(T0 - timedelta(hours=1), T0 + timedelta(hours=3)),
            headers=alice.headers,
        )

        trips = response.json()
        assert response.status_code == 200
        assert [t["startTime"] for t in trips] == [
            "2026-03-01T07:30:00Z",
            "2026-03-01T09:00:00Z",
        ]
        assert trips[0] == {
            "uniqueId": uid,
            "startTime": "2026-03-01T07:30:00Z",
            "endTime": "2026-03-01T08:15:00Z",
            "startLatitude": 48.1,
            "startLongitude": 11.5,
            "endLatitude": 48.2,
            "endLongitude": 11.6,
            "distance": 20_000.0,
            "duration": 2_700.0,
            "maxSpeed": 50.0,
            "averageSpeed": pytest.approx(20_000 / 2_700 * 3.6, rel=1e-5),  # a real
            "idleTime": 30.0,
            "startOdometer": 1_000.0,
            "endOdometer": 21_000.0,
        }

    async def test_trips_limit_keeps_oldest(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        device = await _register(api_client, alice)
        for hour in range(5):
            await _trip(
                api_pool, device["uniqueId"], T0 + timedelta(hours=hour), 20, 1_000
            )

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/trips",
            params=_window(T0, T0 + DAY, limit=2),
            headers=alice.headers,
        )

        assert [t["startTime"] for t in response.json()] == [
            "2026-03-01T08:00:00Z",
            "2026-03-01T09:00:00Z",
        ]

    async def test_trips_of_other_users_device_404(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
    ) -> None:
        device = await _register(api_client, alice)
        await _trip(api_pool, device["uniqueId"], T0, 10, 1_000)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/trips",
            params=_window(T0, T0 + DAY),
            headers=bob.headers,
        )

        assert response.status_code == 404
        assert response.json() == {"error": f"no device with id {device['id']}"}

    async def test_trips_admin_sees_any_device(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        admin: Caller,
    ) -> None:
        device = await _register(api_client, alice)
        await _trip(api_pool, device["uniqueId"], T0, 10, 1_000)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/trips",
            params=_window(T0, T0 + DAY),
            headers=admin.headers,
        )

        assert len(response.json()) == 1

    @pytest.mark.parametrize(
        ("params", "reason"),
        [
            ({"to": "2026-03-02T00:00:00Z"}, "'from' is required"),
            (
                {"from": "soon", "to": "2026-03-02T00:00:00Z"},
                "'from' must be ISO-8601, got 'soon'",
            ),
            (
                {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"},
                "to must be later than from",
            ),
            (
                {"from": "2025-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"},
                "at most 366 days apart",
            ),
            (
                {"from": "2026-03-01", "to": "2026-03-02", "limit": "0"},
                "limit must be a whole number from 1 to 10000, got '0'",
            ),
            (
                {"from": "2026-03-01", "to": "2026-03-02", "limit": "many"},
                "limit must be a whole number from 1 to 10000, got 'many'",
            ),
        ],
    )
    @pytest.mark.parametrize("kind", ["trips", "stops", "idles", "visits"])
    async def test_records_bad_query_400(
        self,
        api_client: httpx.AsyncClient,
        alice: Caller,
        kind: str,
        params: dict[str, str],
        reason: str,
    ) -> None:
        device = await _register(api_client, alice)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/{kind}",
            params=params,
            headers=alice.headers,
        )

        assert response.status_code == 400
        assert reason in response.json()["error"]


class TestStopsAndIdles:
    @pytest.mark.parametrize("kind", ["stops", "idles"])
    async def test_periods_in_window(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        kind: str,
    ) -> None:
        device = await _register(api_client, alice)
        await _period(api_pool, kind, device["uniqueId"], T0, 12)
        await _period(api_pool, kind, device["uniqueId"], T0 + DAY, 5)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/{kind}",
            params=_window(T0 - timedelta(hours=1), T0 + timedelta(hours=1)),
            headers=alice.headers,
        )

        assert response.json() == [
            {
                "uniqueId": device["uniqueId"],
                "startTime": "2026-03-01T08:00:00Z",
                "endTime": "2026-03-01T08:12:00Z",
                "latitude": 48.15,
                "longitude": 11.55,
                "duration": 720.0,
            }
        ]

    async def test_stops_of_other_users_device_404(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
    ) -> None:
        device = await _register(api_client, alice)
        await _period(api_pool, "stops", device["uniqueId"], T0, 12)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/stops",
            params=_window(T0, T0 + DAY),
            headers=bob.headers,
        )

        assert response.status_code == 404


class TestVisits:
    async def test_visits_open_and_closed(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        """A visit still going on has no exit; a deleted geofence has no name."""
        device = await _register(api_client, alice)
        depot = await api_pool.fetchval(
            "INSERT INTO geofences (owner_id, name, kind, geometry)"
            " VALUES ($1, 'Depot', 'circle', '{}') RETURNING id",
            alice.user.id,
        )
        rows = [
            (depot, T0, T0 + timedelta(minutes=20), 1_200.0),
            (depot, T0 + timedelta(hours=2), None, None),
            (424242, T0 + timedelta(hours=1), T0 + timedelta(hours=1, minutes=1), 60.0),
        ]
        await api_pool.executemany(
            "INSERT INTO geofence_visits (device, geofence_id, enter_time, exit_time,"
            " duration_s) VALUES ($1, $2, $3, $4, $5)",
            [(device["uniqueId"], *row) for row in rows],
        )

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/visits",
            params=_window(T0, T0 + DAY),
            headers=alice.headers,
        )

        assert response.json() == [
            {
                "uniqueId": device["uniqueId"],
                "geofenceId": depot,
                "geofenceName": "Depot",
                "enterTime": "2026-03-01T08:00:00Z",
                "exitTime": "2026-03-01T08:20:00Z",
                "duration": 1_200.0,
            },
            {
                "uniqueId": device["uniqueId"],
                "geofenceId": 424242,
                "geofenceName": None,
                "enterTime": "2026-03-01T09:00:00Z",
                "exitTime": "2026-03-01T09:01:00Z",
                "duration": 60.0,
            },
            {
                "uniqueId": device["uniqueId"],
                "geofenceId": depot,
                "geofenceName": "Depot",
                "enterTime": "2026-03-01T10:00:00Z",
                "exitTime": None,
                "duration": None,
            },
        ]


class TestSummary:
    async def test_summary_computed_in_asked_zone(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        """New York days: a trip across local midnight is shared by its minutes."""
        device = await _register(api_client, alice)
        uid = device["uniqueId"]
        # 2026-03-02 04:30Z is 23:30 on 03-01 in New York (EST, UTC-5).
        await _trip(api_pool, uid, datetime(2026, 3, 2, 4, 30, tzinfo=UTC), 60, 6_000)
        await _trip(
            api_pool, uid, datetime(2026, 3, 2, 14, 0, tzinfo=UTC), 10, 2_000, 90.0
        )
        await _period(
            api_pool, "stops", uid, datetime(2026, 3, 2, 14, 10, tzinfo=UTC), 5
        )
        await _period(
            api_pool, "idles", uid, datetime(2026, 3, 2, 4, 50, tzinfo=UTC), 20
        )

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/summary",
            params={"from": "2026-03-01", "to": "2026-03-04", "tz": "America/New_York"},
            headers=alice.headers,
        )

        body = response.json()
        assert response.status_code == 200
        assert body["timeZone"] == "America/New_York"
        assert body["uniqueId"] == uid
        assert body["days"] == [
            {
                "date": "2026-03-01",
                "distance": pytest.approx(3_000.0),
                "drivingTime": 1_800.0,
                "idleTime": 600.0,
                "stops": 0,
                "maxSpeed": 50.0,
                "source": "computed",
            },
            {
                "date": "2026-03-02",
                "distance": pytest.approx(5_000.0),
                "drivingTime": 2_400.0,
                "idleTime": 600.0,
                "stops": 1,
                "maxSpeed": 90.0,
                "source": "computed",
            },
            {
                "date": "2026-03-03",
                "distance": 0.0,
                "drivingTime": 0.0,
                "idleTime": 0.0,
                "stops": 0,
                "maxSpeed": 0.0,
                "source": "computed",
            },
        ]

    async def test_summary_days_follow_daylight_saving(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        """Lisbon moves to UTC+1 on 2026-03-29: 23:30Z is then the next day."""
        device = await _register(api_client, alice)
        for start in ("2026-03-28T23:30:00Z", "2026-03-29T23:30:00Z"):
            await _trip(
                api_pool, device["uniqueId"], datetime.fromisoformat(start), 10, 1_000
            )

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/summary",
            params={"from": "2026-03-28", "to": "2026-03-31", "tz": "Europe/Lisbon"},
            headers=alice.headers,
        )

        distances = {d["date"]: d["distance"] for d in response.json()["days"]}
        assert distances == {"2026-03-28": 1_000, "2026-03-29": 0, "2026-03-30": 1_000}

    async def test_summary_stored_rows_in_users_zone(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        """The job's rows for the user's zone are used; other days are computed."""
        await api_pool.execute(
            "UPDATE users SET time_zone = 'Europe/Lisbon' WHERE id = $1", alice.user.id
        )
        device = await _register(api_client, alice)
        uid = device["uniqueId"]
        await api_pool.execute(
            "INSERT INTO daily_summaries (device, time_zone, day, distance_m,"
            " driving_s, idle_s, stops, max_speed_kmh)"
            " VALUES ($1, 'Europe/Lisbon', '2026-03-01', 12345, 1800, 120, 4, 88)",
            uid,
        )
        await _trip(api_pool, uid, datetime(2026, 3, 2, 10, 0, tzinfo=UTC), 30, 7_000)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/summary",
            params={"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z"},
            headers=alice.headers,
        )

        body = response.json()
        assert body["timeZone"] == "Europe/Lisbon"
        assert [(d["date"], d["source"], d["distance"]) for d in body["days"]] == [
            ("2026-03-01", "stored", 12_345.0),
            ("2026-03-02", "computed", 7_000.0),
        ]
        assert body["days"][0]["stops"] == 4
        assert body["days"][0]["maxSpeed"] == 88.0

    async def test_summary_stored_equals_computed(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        """Rows written as the job writes them read the same as computed ones.

        Madeira keeps Lisbon's clock, so its days are computed from the same records
        the stored Lisbon rows were summarised from.
        """
        await api_pool.execute(
            "UPDATE users SET time_zone = 'Europe/Lisbon' WHERE id = $1", alice.user.id
        )
        device = await _register(api_client, alice)
        uid = device["uniqueId"]
        night = datetime(2026, 3, 28, 23, 40, tzinfo=UTC)
        await _trip(api_pool, uid, night, 30, 9_000, 70.0)
        await _period(api_pool, "stops", uid, night + timedelta(minutes=30), 200)
        await _period(api_pool, "idles", uid, night + timedelta(minutes=5), 4)
        records = await motion_store._records(
            api_pool, uid, night - DAY, night + 2 * DAY
        )
        for day in summarise(records, "Europe/Lisbon"):
            await api_pool.execute(
                "INSERT INTO daily_summaries (device, time_zone, day, distance_m,"
                " driving_s, idle_s, stops, max_speed_kmh)"
                " VALUES ($1, 'Europe/Lisbon', $2, $3, $4, $5, $6, $7)",
                uid,
                day.day,
                day.distance_m,
                day.driving_s,
                day.idle_s,
                day.stops,
                day.max_speed_kmh,
            )
        path = f"/api/v1/devices/{device['id']}/summary"
        window = {"from": "2026-03-28", "to": "2026-03-31"}

        stored = await api_client.get(path, params=window, headers=alice.headers)
        computed = await api_client.get(
            path, params={**window, "tz": "Atlantic/Madeira"}, headers=alice.headers
        )

        def figures(response: httpx.Response) -> list[dict[str, Any]]:
            return [
                {k: v for k, v in day.items() if k != "source"}
                for day in response.json()["days"]
            ]

        assert [d["source"] for d in stored.json()["days"]] == [
            "stored",
            "stored",
            "computed",
        ]
        assert {d["source"] for d in computed.json()["days"]} == {"computed"}
        assert figures(stored) == figures(computed)
        assert figures(stored)[0]["distance"] == pytest.approx(6_000)  # 20 of 30 min

    async def test_summary_other_zone_ignores_stored_rows(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        device = await _register(api_client, alice)
        await api_pool.execute(
            "INSERT INTO daily_summaries (device, time_zone, day, distance_m)"
            " VALUES ($1, 'UTC', '2026-03-01', 999)",
            device["uniqueId"],
        )

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/summary",
            params={"from": "2026-03-01", "to": "2026-03-02", "tz": "Asia/Tokyo"},
            headers=alice.headers,
        )

        assert response.json()["days"][0]["distance"] == 0
        assert response.json()["days"][0]["source"] == "computed"

    @pytest.mark.parametrize(
        ("params", "reason"),
        [
            (
                {"from": "2026-03-01", "to": "2026-03-02", "tz": "Mars/Olympus"},
                "tz must",
            ),
            ({"from": "2026-03-01", "to": "2026-03-02", "tz": "../etc"}, "tz must"),
            ({"from": "2026-03-02", "to": "2026-03-01"}, "to must be later than from"),
            ({"from": "2025-01-01", "to": "2026-03-01"}, "at most 366 days apart"),
            ({"to": "2026-03-01"}, "'from' is required"),
            ({"from": "2026-03-01", "to": "someday"}, "'to' must be ISO-8601"),
        ],
    )
    async def test_summary_bad_query_400(
        self,
        api_client: httpx.AsyncClient,
        alice: Caller,
        params: dict[str, str],
        reason: str,
    ) -> None:
        device = await _register(api_client, alice)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/summary",
            params=params,
            headers=alice.headers,
        )

        assert response.status_code == 400
        assert reason in response.json()["error"]

    async def test_summary_of_other_users_device_404(
        self, api_client: httpx.AsyncClient, alice: Caller, bob: Caller
    ) -> None:
        device = await _register(api_client, alice)

        response = await api_client.get(
            f"/api/v1/devices/{device['id']}/summary",
            params={"from": "2026-03-01", "to": "2026-03-02"},
            headers=bob.headers,
        )

        assert response.status_code == 404


async def _fixes(
    pool: asyncpg.Pool,
    device: str,
    place: tuple[float, float],
    speeds: list[float],
    from_minute: int = 0,
) -> int:
    """One fix a minute from T0 + ``from_minute`` at one place; its cell (res 9)."""
    latitude, longitude = place
    cell = int(h3.str_to_int(h3.latlng_to_cell(latitude, longitude, 9)))
    await pool.executemany(
        "INSERT INTO fixes (device, fix_time, server_time, latitude, longitude, h3,"
        " speed, valid) VALUES ($1, $2, $2, $3, $4, $5, $6, true)",
        [
            (
                device,
                T0 + timedelta(minutes=from_minute + m),
                latitude,
                longitude,
                cell,
                speed,
            )
            for m, speed in enumerate(speeds)
        ],
    )
    return cell


class TestH3:
    @pytest.fixture
    async def fleet(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
    ) -> dict[str, int]:
        """Alice's van in Munich and at a depot shared with Bob's truck."""
        van = (await _register(api_client, alice))["uniqueId"]
        truck = (await _register(api_client, bob))["uniqueId"]
        depot = (48.2, 11.7)
        cells = {
            "munich": await _fixes(api_pool, van, (48.137, 11.575), [30.0, 40.0]),
            "depot": await _fixes(api_pool, van, depot, [0.0] * 3, from_minute=10),
            "lisbon": await _fixes(api_pool, truck, (38.72, -9.14), [80.0], 30),
        }
        await _fixes(api_pool, truck, depot, [2.0, 6.0])
        await refresh_h3_until_caught_up(
            api_pool, CellSettings(resolution=9), coarsest=5, settle_s=0
        )
        return cells

    async def test_h3_admin_sees_fleet(
        self, api_client: httpx.AsyncClient, admin: Caller, fleet: dict[str, int]
    ) -> None:
        response = await api_client.get(
            "/api/v1/h3",
            params=_window(T0, T0 + timedelta(hours=1), resolution=9),
            headers=admin.headers,
        )

        body = response.json()
        by_cell = {c["cell"]: c for c in body["cells"]}
        depot = by_cell[format(fleet["depot"], "x")]
        assert response.status_code == 200
        assert body["scope"] == "fleet"
        assert body["truncated"] is False
        assert body["from"] == "2026-03-01T08:00:00Z"
        assert body["to"] == "2026-03-01T09:00:00Z"
        assert set(by_cell) == {format(c, "x") for c in fleet.values()}
        assert depot["fixes"] == 5
        assert depot["vehicles"] == 2
        assert depot["hours"] == 1
        assert depot["meanSpeed"] == pytest.approx(1.6)
        # Van stopped at 08:10, :11 and :12: two pairs of 60 s.  The truck's
        # 2 and 6 km/h are not both below 3 km/h.
        assert depot["dwell"] == 120.0
        assert (depot["latitude"], depot["longitude"]) == pytest.approx(
            h3.cell_to_latlng(depot["cell"]), abs=1e-6
        )

    async def test_h3_user_sees_own_devices_only(
        self,
        api_client: httpx.AsyncClient,
        alice: Caller,
        admin: Caller,
        fleet: dict[str, int],
    ) -> None:
        params = _window(T0, T0 + timedelta(hours=1), resolution=9)

        mine = await api_client.get("/api/v1/h3", params=params, headers=alice.headers)
        everyone = await api_client.get(
            "/api/v1/h3", params=params, headers=admin.headers
        )

        own = {c["cell"]: c for c in mine.json()["cells"]}
        fleet_wide = {c["cell"]: c for c in everyone.json()["cells"]}
        munich = format(fleet["munich"], "x")
        assert mine.json()["scope"] == "own devices"
        assert set(own) == {munich, format(fleet["depot"], "x")}
        assert own[munich] == fleet_wide[munich]
        assert own[format(fleet["depot"], "x")]["fixes"] == 3

    async def test_h3_rolled_up_and_bbox(
        self, api_client: httpx.AsyncClient, admin: Caller, fleet: dict[str, int]
    ) -> None:
        """A coarser resolution, and only the cells whose centre is in the box."""
        response = await api_client.get(
            "/api/v1/h3",
            params=_window(
                T0 + timedelta(minutes=5),
                T0 + timedelta(minutes=50),
                resolution=6,
                bbox="-10,38,-8,40",
            ),
            headers=admin.headers,
        )

        lisbon = h3.cell_to_parent(format(fleet["lisbon"], "x"), 6)
        assert [c["cell"] for c in response.json()["cells"]] == [lisbon]
        assert response.json()["cells"][0]["p95Speed"] == 80.0

    async def test_h3_limit_truncates_to_busiest(
        self, api_client: httpx.AsyncClient, admin: Caller, fleet: dict[str, int]
    ) -> None:
        response = await api_client.get(
            "/api/v1/h3",
            params=_window(T0, T0 + timedelta(hours=1), resolution=9, limit=1),
            headers=admin.headers,
        )

        assert response.json()["truncated"] is True
        assert [c["cell"] for c in response.json()["cells"]] == [
            format(fleet["depot"], "x")
        ]

    @pytest.mark.parametrize(
        ("params", "reason"),
        [
            ({}, "resolution must be a whole number from 0 to 15, got nothing"),
            ({"resolution": "16"}, "resolution must be a whole number from 0 to 15"),
            ({"resolution": "4"}, "resolution must be from 5 to 9"),
            ({"resolution": "9", "bbox": "1,2,3"}, "bbox must be minLon,minLat"),
            ({"resolution": "9", "bbox": "a,b,c,d"}, "bbox must be minLon,minLat"),
            ({"resolution": "9", "bbox": "10,40,9,41"}, "minLon < maxLon"),
            ({"resolution": "9", "bbox": "0,0,0,nan"}, "bbox must be"),
            ({"resolution": "9", "bbox": "-10,35,5,44"}, "choose a coarser resolution"),
            ({"resolution": "9", "limit": "60000"}, "limit must be a whole number"),
        ],
    )
    async def test_h3_bad_query_400(
        self,
        api_client: httpx.AsyncClient,
        admin: Caller,
        fleet: dict[str, int],
        params: dict[str, str],
        reason: str,
    ) -> None:
        response = await api_client.get(
            "/api/v1/h3",
            params=_window(T0, T0 + timedelta(hours=1), **params),
            headers=admin.headers,
        )

        assert response.status_code == 400
        assert reason in response.json()["error"]

    async def test_h3_window_bounded(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        response = await api_client.get(
            "/api/v1/h3",
            params=_window(T0, T0 + timedelta(days=40), resolution=9),
            headers=alice.headers,
        )

        assert response.status_code == 400
        assert "at most 31 days apart" in response.json()["error"]

    async def test_h3_too_slow_is_503(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        fleet: dict[str, int],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """An aggregation past the time limit is cancelled and said so.

        A migration holding ``fixes`` makes the on-the-fly aggregation wait, which
        is slow for certain (a tiny limit on a fast query would race it).
        """
        monkeypatch.setattr(motion, "H3_TIMEOUT_S", 0.3)

        async with api_pool.acquire() as blocker, blocker.transaction():
            await blocker.execute("LOCK TABLE fixes IN ACCESS EXCLUSIVE MODE")
            response = await api_client.get(
                "/api/v1/h3",
                params=_window(T0, T0 + timedelta(days=30), resolution=9),
                headers=alice.headers,
            )

        assert response.status_code == 503
        assert "took longer than 0.3 s" in response.json()["error"]

    async def test_h3_user_without_devices_empty(
        self, api_client: httpx.AsyncClient, bob: Caller
    ) -> None:
        response = await api_client.get(
            "/api/v1/h3",
            params=_window(T0, T0 + timedelta(hours=2), resolution=9),
            headers=bob.headers,
        )

        assert response.status_code == 200
        assert response.json()["cells"] == []


class TestOpenApi:
    async def test_openapi_documents_query_parameters(
        self, api_client: httpx.AsyncClient
    ) -> None:
        document = (await api_client.get("/api/v1/openapi.json")).json()

        def names(path: str, method: str = "get") -> set[str]:
            return {p["name"] for p in document["paths"][path][method]["parameters"]}

        assert names("/api/v1/devices/{device_id}/trips") == {
            "device_id",
            "from",
            "to",
            "limit",
        }
        assert names("/api/v1/devices/{device_id}/summary") == {
            "device_id",
            "from",
            "to",
            "tz",
        }
        assert names("/api/v1/events") == {"from", "to", "device", "type", "limit"}
        assert names("/api/v1/h3") == {"resolution", "from", "to", "bbox", "limit"}
        assert names("/api/v1/geofences/{geofence_id}", "put") == {"geofence_id"}
        post = document["paths"]["/api/v1/geofences"]["post"]
        assert "requestBody" in post


class _AuthThenDown:
    """The authentication query from a live pool; every other query from a pool
    whose server is gone, as when PostgreSQL stops in the middle of a request."""

    def __init__(self, live: asyncpg.Pool, dead: asyncpg.Pool) -> None:
        self._live = live
        self._dead = dead

    async def fetchrow(self, query: str, *args: object) -> object:
        pool = self._live if "FROM user_tokens" in query else self._dead
        return await pool.fetchrow(query, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._dead, name)


@pytest.fixture
async def down_after_auth(
    api_pool: asyncpg.Pool, api_redis: aioredis.Redis
) -> AsyncIterator[httpx.AsyncClient]:
    dead = await asyncpg.create_pool(
        f"postgresql://rastro@127.0.0.1:{free_port()}/rastro", min_size=0, max_size=1
    )
    pool = _AuthThenDown(api_pool, dead)
    app = create_api(ApiContext(pool=pool, redis=api_redis))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as client:
            yield client
    finally:
        await dead.close()


_VALID_QUERY = {
    "from": "2026-03-01T00:00:00Z",
    "to": "2026-03-02T00:00:00Z",
    "resolution": "9",
    "tz": "UTC",
}
_VALID_BODY = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [11.5, 48.1]},
    "properties": {"name": "Depot", "radius": 100},
}


@pytest.mark.parametrize(
    "endpoint",
    motion.ENDPOINTS,
    ids=[f"{e.method} {e.path}" for e in motion.ENDPOINTS],
)
async def test_database_down_is_503(
    down_after_auth: httpx.AsyncClient, alice: Caller, endpoint: Endpoint
) -> None:
    """Every route answers 503 when the database goes away after authentication."""
    path = endpoint.full_path.replace("{device_id:int}", "1").replace(
        "{geofence_id:int}", "1"
    )
    body = json.dumps(_VALID_BODY) if endpoint.body is not None else None

    response = await down_after_auth.request(
        endpoint.method,
        path,
        params=_VALID_QUERY,
        content=body,
        headers=alice.headers,
    )

    assert response.status_code == 503
    assert response.json() == {
        "error": "the database is unavailable; try again shortly"
    }
