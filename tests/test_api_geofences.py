"""Geofences over the API: GeoJSON Features in and out, ownership, versions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
import pytest

from geo.geofences import (
    CircleFence,
    CorridorFence,
    PolygonFence,
    geofence_from_geojson,
)
from pipeline.api.motion import MAX_GEOFENCE_BYTES
from pipeline.store.geofences import NOTIFY_CHANNEL
from tests.fixtures.api import Caller, unique_id

pytestmark = pytest.mark.integration

SQUARE = [[[11.0, 48.0], [11.1, 48.0], [11.1, 48.1], [11.0, 48.1], [11.0, 48.0]]]


def _circle(**properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [11.5, 48.1]},
        "properties": {"name": "Depot", "radius": 250, **properties},
    }


def _polygon(**properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": SQUARE},
        "properties": {"name": "Yard", **properties},
    }


def _corridor(**properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": [[11.0, 48.0], [11.2, 48.1]]},
        "properties": {"name": "A9", "width": 60, **properties},
    }


async def _register(client: httpx.AsyncClient, owner: Caller) -> dict[str, Any]:
    body = {"uniqueId": unique_id(), "name": "van"}
    response = await client.post("/api/v1/devices", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def _create(
    client: httpx.AsyncClient, owner: Caller, feature: dict[str, Any]
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/geofences", json=feature, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return response.json()


class TestCreate:
    async def test_create_circle_returns_feature(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        van = await _register(api_client, alice)

        created = await _create(
            api_client, alice, _circle(speedLimit=30, devices=[van["id"]], color="red")
        )

        properties = created["properties"]
        assert created["type"] == "Feature"
        assert isinstance(created["id"], int)
        assert created["geometry"] == {"type": "Point", "coordinates": [11.5, 48.1]}
        assert {k: properties[k] for k in ("name", "kind", "radius", "speedLimit")} == {
            "name": "Depot",
            "kind": "circle",
            "radius": 250.0,
            "speedLimit": 30.0,
        }
        assert properties["devices"] == [van["id"]]
        assert properties["groups"] == []
        assert properties["color"] == "red"
        assert properties["version"] == 1
        assert properties["createdAt"] == properties["updatedAt"]

    @pytest.mark.parametrize(
        ("feature", "kind", "shape", "inside"),
        [
            (_circle(), "circle", CircleFence, (48.1, 11.5)),
            (_polygon(), "polygon", PolygonFence, (48.05, 11.05)),
            (_corridor(), "corridor", CorridorFence, (48.0, 11.0)),
        ],
        ids=["circle", "polygon", "corridor"],
    )
    async def test_stored_row_reads_back_as_the_job_reads_it(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        feature: dict[str, Any],
        kind: str,
        shape: type,
        inside: tuple[float, float],
    ) -> None:
        """The row holds what geo.geofences needs to rebuild the same fence."""
        created = await _create(api_client, alice, feature)

        row = await api_pool.fetchrow(
            "SELECT * FROM geofences WHERE id = $1", created["id"]
        )
        fence = geofence_from_geojson(
            json.loads(row["geometry"]),
            fence_id=str(row["id"]),
            name=row["name"],
            speed_limit_kmh=row["speed_limit_kmh"],
        )

        assert row["kind"] == kind
        assert row["owner_id"] == alice.user.id
        assert isinstance(fence, shape)
        assert fence.name == feature["properties"]["name"]
        assert fence.geometry() == created["geometry"]
        assert fence.contains(*inside)
        assert not fence.contains(inside[0] + 0.5, inside[1])

    async def test_create_multipolygon(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        feature = _polygon()
        feature["geometry"] = {
            "type": "MultiPolygon",
            "coordinates": [SQUARE, [[[12, 48], [12.1, 48], [12.1, 48.1], [12, 48]]]],
        }

        created = await _create(api_client, alice, feature)

        assert created["geometry"]["type"] == "MultiPolygon"
        assert created["properties"]["kind"] == "polygon"

    @pytest.mark.parametrize(
        ("feature", "reason"),
        [
            ({"type": "Point", "coordinates": [1, 2]}, "must be a GeoJSON Feature"),
            ([1, 2], "must be a GeoJSON Feature, got 'list'"),
            (
                {**_circle(), "properties": None},
                "needs properties with at least a name",
            ),
            (_circle(name=""), "properties.name must be a non-empty string"),
            (_circle(name=7), "properties.name must be a non-empty string, got 7"),
            (_circle(name="x" * 200), "at most 128 characters"),
            (_circle(radius=None), "needs a numeric 'radius' in metres"),
            (_circle(radius=-5), "radius of geofence 'Depot' must be a positive"),
            (_corridor(width="wide"), "needs a numeric 'width' in metres"),
            (_circle(speedLimit=0), "speed_limit_kmh must be a positive number"),
            (_circle(devices="all"), "properties.devices must be a list"),
            (_circle(devices=[1, True]), "properties.devices must be a list"),
            (_circle(groups=[-3]), "properties.groups must be a list"),
            (
                {
                    **_polygon(),
                    "geometry": {"type": "Polygon", "coordinates": [SQUARE[0][:4]]},
                },
                "is not closed",
            ),
            (
                {
                    **_polygon(),
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]],
                    },
                },
                "is invalid: Self-intersection",
            ),
            (
                {**_circle(), "geometry": {"type": "Point", "coordinates": [200, 0]}},
                "outside ±180° longitude",
            ),
            (
                {**_circle(), "geometry": {"type": "GeometryCollection"}},
                "geometry type must be Point (with radius), LineString",
            ),
        ],
    )
    async def test_create_bad_feature_400(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        feature: object,
        reason: str,
    ) -> None:
        response = await api_client.post(
            "/api/v1/geofences", json=feature, headers=alice.headers
        )

        assert response.status_code == 400
        assert reason in response.json()["error"]
        assert await api_pool.fetchval("SELECT count(*) FROM geofences") == 0

    async def test_create_not_json_400(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        response = await api_client.post(
            "/api/v1/geofences", content=b"{not json", headers=alice.headers
        )

        assert response.status_code == 400
        assert response.json() == {"error": "the request body must be JSON"}

    async def test_create_huge_body_413(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        body = b'{"type": "Feature", "pad": "' + b"x" * MAX_GEOFENCE_BYTES + b'"}'

        response = await api_client.post(
            "/api/v1/geofences", content=body, headers=alice.headers
        )

        assert response.status_code == 413
        assert f"at most {MAX_GEOFENCE_BYTES} bytes" in response.json()["error"]

    async def test_create_detailed_polygon_accepted(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        """A polygon larger than the other routes' 64 KiB body limit is fine."""
        ring = [[11 + i / 40_000, 48 + (i % 2) / 1000] for i in range(5000)]
        ring += [[11.15, 47.9], ring[0]]
        feature = _polygon()
        feature["geometry"] = {"type": "Polygon", "coordinates": [ring]}
        assert len(json.dumps(feature)) > 64 * 1024

        created = await _create(api_client, alice, feature)

        assert len(created["geometry"]["coordinates"][0]) == len(ring)

    async def test_create_assigning_others_device_400(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
    ) -> None:
        """Bob's device reads as unknown to Alice, and nothing is stored."""
        truck = await _register(api_client, bob)

        response = await api_client.post(
            "/api/v1/geofences",
            json=_circle(devices=[truck["id"], 999_999]),
            headers=alice.headers,
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": f"no devices with ids {truck['id']}, 999999"
        }
        assert await api_pool.fetchval("SELECT count(*) FROM geofences") == 0

    async def test_create_with_groups(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
    ) -> None:
        mine = await api_pool.fetchval(
            "INSERT INTO device_groups (owner_id, name) VALUES ($1, 'vans')"
            " RETURNING id",
            alice.user.id,
        )
        theirs = await api_pool.fetchval(
            "INSERT INTO device_groups (owner_id, name) VALUES ($1, 'x') RETURNING id",
            bob.user.id,
        )

        created = await _create(api_client, alice, _circle(groups=[mine]))
        refused = await api_client.post(
            "/api/v1/geofences", json=_circle(groups=[theirs]), headers=alice.headers
        )

        assert created["properties"]["groups"] == [mine]
        assert refused.status_code == 400
        assert refused.json() == {"error": f"no group with id {theirs}"}


class TestReadUpdateDelete:
    async def test_list_and_get_own_only(
        self,
        api_client: httpx.AsyncClient,
        alice: Caller,
        bob: Caller,
        admin: Caller,
    ) -> None:
        depot = await _create(api_client, alice, _circle())
        yard = await _create(api_client, bob, _polygon())

        mine = await api_client.get("/api/v1/geofences", headers=alice.headers)
        every = await api_client.get("/api/v1/geofences", headers=admin.headers)
        one = await api_client.get(
            f"/api/v1/geofences/{depot['id']}", headers=alice.headers
        )

        assert mine.json() == {"type": "FeatureCollection", "features": [depot]}
        assert [f["id"] for f in every.json()["features"]] == [depot["id"], yard["id"]]
        assert one.json() == depot

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
    async def test_other_users_geofence_404(
        self,
        api_client: httpx.AsyncClient,
        api_pool: asyncpg.Pool,
        alice: Caller,
        bob: Caller,
        method: str,
    ) -> None:
        yard = await _create(api_client, bob, _polygon())

        response = await api_client.request(
            method,
            f"/api/v1/geofences/{yard['id']}",
            json=_circle() if method == "PUT" else None,
            headers=alice.headers,
        )

        assert response.status_code == 404
        assert response.json() == {"error": f"no geofence with id {yard['id']}"}
        stored = await api_pool.fetchrow(
            "SELECT name, version FROM geofences WHERE id = $1", yard["id"]
        )
        assert (stored["name"], stored["version"]) == ("Yard", 1)

    async def test_update_bumps_version_and_time(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        van = await _register(api_client, alice)
        depot = await _create(api_client, alice, _circle(devices=[van["id"]]))
        path = f"/api/v1/geofences/{depot['id']}"
        changed = _circle(radius=400, name="Depot North")

        first = await api_client.put(path, json=changed, headers=alice.headers)
        second = await api_client.put(path, json=_corridor(), headers=alice.headers)

        assert first.status_code == 200
        assert first.json()["properties"]["version"] == 2
        assert first.json()["properties"]["radius"] == 400.0
        assert first.json()["properties"]["name"] == "Depot North"
        assert (
            first.json()["properties"]["updatedAt"] > depot["properties"]["updatedAt"]
        )
        assert (
            first.json()["properties"]["createdAt"] == depot["properties"]["createdAt"]
        )
        # Assignments left out of the body stay as they were.
        assert first.json()["properties"]["devices"] == [van["id"]]
        assert second.json()["properties"]["kind"] == "corridor"
        assert "radius" not in second.json()["properties"]
        assert second.json()["properties"]["version"] == 3

    async def test_update_round_trip_of_get(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        """A Feature from GET goes back with PUT unchanged but for version and time."""
        van = await _register(api_client, alice)
        depot = await _create(api_client, alice, _circle(devices=[van["id"]], note="x"))

        response = await api_client.put(
            f"/api/v1/geofences/{depot['id']}", json=depot, headers=alice.headers
        )

        again = response.json()
        volatile = {"version", "updatedAt"}
        assert again["geometry"] == depot["geometry"]
        assert {k: v for k, v in again["properties"].items() if k not in volatile} == {
            k: v for k, v in depot["properties"].items() if k not in volatile
        }

    async def test_update_replaces_assignments(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        van = await _register(api_client, alice)
        car = await _register(api_client, alice)
        depot = await _create(api_client, alice, _circle(devices=[van["id"]]))

        response = await api_client.put(
            f"/api/v1/geofences/{depot['id']}",
            json=_circle(devices=[car["id"], car["id"]]),
            headers=alice.headers,
        )

        assert response.json()["properties"]["devices"] == [car["id"]]

    async def test_update_bad_assignment_changes_nothing(
        self, api_client: httpx.AsyncClient, alice: Caller, bob: Caller
    ) -> None:
        truck = await _register(api_client, bob)
        depot = await _create(api_client, alice, _circle())
        path = f"/api/v1/geofences/{depot['id']}"

        response = await api_client.put(
            path, json=_circle(radius=999, devices=[truck["id"]]), headers=alice.headers
        )

        after = (await api_client.get(path, headers=alice.headers)).json()
        assert response.status_code == 400
        assert response.json() == {"error": f"no device with id {truck['id']}"}
        assert after == depot

    async def test_update_id_mismatch_400(
        self, api_client: httpx.AsyncClient, alice: Caller
    ) -> None:
        depot = await _create(api_client, alice, _circle())

        response = await api_client.put(
            f"/api/v1/geofences/{depot['id']}",
            json={**_circle(), "id": depot["id"] + 1},
            headers=alice.headers,
        )

        assert response.status_code == 400
        assert f"is not {depot['id']}" in response.json()["error"]

    async def test_delete_then_gone(
        self, api_client: httpx.AsyncClient, api_pool: asyncpg.Pool, alice: Caller
    ) -> None:
        van = await _register(api_client, alice)
        depot = await _create(api_client, alice, _circle(devices=[van["id"]]))
        path = f"/api/v1/geofences/{depot['id']}"

        deleted = await api_client.delete(path, headers=alice.headers)
        again = await api_client.delete(path, headers=alice.headers)

        assert deleted.status_code == 204
        assert again.status_code == 404
        assert (await api_client.get(path, headers=alice.headers)).status_code == 404
        assert await api_pool.fetchval("SELECT count(*) FROM geofence_assignments") == 0

    async def test_admin_changes_any_geofence(
        self, api_client: httpx.AsyncClient, alice: Caller, admin: Caller
    ) -> None:
        depot = await _create(api_client, alice, _circle())

        response = await api_client.put(
            f"/api/v1/geofences/{depot['id']}",
            json=_circle(name="Checked"),
            headers=admin.headers,
        )

        mine = await api_client.get(
            f"/api/v1/geofences/{depot['id']}", headers=alice.headers
        )
        assert response.status_code == 200
        assert mine.json()["properties"]["name"] == "Checked"


class TestNotify:
    async def test_every_change_is_announced(
        self, api_client: httpx.AsyncClient, postgres_dsn: str, alice: Caller
    ) -> None:
        """The job can listen instead of polling: id, version and deletion."""
        heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        listener = await asyncpg.connect(postgres_dsn)
        await listener.add_listener(
            NOTIFY_CHANNEL, lambda *args: heard.put_nowait(json.loads(args[3]))
        )
        try:
            depot = await _create(api_client, alice, _circle())
            path = f"/api/v1/geofences/{depot['id']}"
            await api_client.put(path, json=_circle(radius=300), headers=alice.headers)
            await api_client.delete(path, headers=alice.headers)

            async with asyncio.timeout(5):
                messages = [await heard.get() for _ in range(3)]
        finally:
            await listener.close()

        assert messages == [
            {"id": depot["id"], "version": 1, "deleted": False},
            {"id": depot["id"], "version": 2, "deleted": False},
            {"id": depot["id"], "version": 3, "deleted": True},
        ]

    async def test_refused_change_is_not_announced(
        self, api_client: httpx.AsyncClient, postgres_dsn: str, alice: Caller
    ) -> None:
        heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        listener = await asyncpg.connect(postgres_dsn)
        await listener.add_listener(
            NOTIFY_CHANNEL, lambda *args: heard.put_nowait(json.loads(args[3]))
        )
        try:
            response = await api_client.post(
                "/api/v1/geofences",
                json=_circle(devices=[123_456]),
                headers=alice.headers,
            )
            yard = await _create(api_client, alice, _polygon())
            async with asyncio.timeout(5):
                first = await heard.get()
        finally:
            await listener.close()

        assert response.status_code == 400
        assert first["id"] == yard["id"]  # nothing was announced before it
        assert heard.empty()
