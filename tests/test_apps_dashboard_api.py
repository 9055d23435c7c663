"""The fleet dashboard against the real Rastro API (``pipeline.api``).

The API runs under Hypercorn on a loopback port with a fresh migrated PostgreSQL
database and the session's Redis; latest positions are written where the streaming
job writes them (the Redis hash the API reads).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from bokeh.document import Document
from panel.models.deckgl import DeckGLPlot
from starlette.applications import Starlette

from apps.dashboard import FleetDashboard
from pipeline.store.latest import latest_keys
from tests.fixtures.api import PASSWORD, Caller, running_api, unique_id

pytestmark = pytest.mark.integration


def device_layer(dashboard: FleetDashboard) -> dict[str, list[Any]]:
    """The devices layer's data as the browser receives it."""
    document = Document()
    root = dashboard.__panel__().get_root(document)
    deck = next(m for m in root.references() if isinstance(m, DeckGLPlot))
    source = deck.data_sources[deck.layers[-1]["data"]]
    return {column: list(values) for column, values in source.data.items()}


async def register(base: str, owner: Caller, name: str) -> str:
    device = {"uniqueId": unique_id("dash"), "name": name}
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.post(
            "/api/v1/devices", json=device, headers=owner.headers
        )
    assert response.status_code == 201, response.text
    return device["uniqueId"]


async def report_latest(
    redis: aioredis.Redis, device: str, latitude: float, longitude: float
) -> None:
    document = {
        "uniqueId": device,
        "time": "2026-12-04T05:00:00Z",
        "latitude": latitude,
        "longitude": longitude,
        "speed": 30.0,
        "h3": "891f8d7a49bffff",
    }
    await redis.hset(latest_keys(device)[0], device, json.dumps(document))


class TestDashboardOnRealApi:
    async def test_real_api_login_and_positions(
        self, api_app: Starlette, api_redis: aioredis.Redis, alice: Caller
    ) -> None:
        """Alice logs in with her password and sees her device where it reported."""
        async with running_api(api_app) as base:
            device = await register(base, alice, "Alice's van")
            await report_latest(api_redis, device, 48.137, 11.575)
            dashboard = FleetDashboard(api_url=base)
            try:
                assert await dashboard.login(alice.user.name, PASSWORD)
                first = device_layer(dashboard)
                await report_latest(api_redis, device, 48.2, 11.6)
                await dashboard.refresh()
                moved = device_layer(dashboard)
            finally:
                await dashboard.aclose()

        assert first["uniqueId"] == [device]
        assert first["name"] == ["Alice's van"]
        assert (first["latitude"], first["longitude"]) == ([48.137], [11.575])
        assert (moved["latitude"], moved["longitude"]) == ([48.2], [11.6])
        assert dashboard._table.value["name"].tolist() == ["Alice's van"]

    async def test_real_api_wrong_password_refused(
        self, api_app: Starlette, alice: Caller
    ) -> None:
        async with running_api(api_app) as base:
            dashboard = FleetDashboard(api_url=base)
            try:
                ok = await dashboard.login(alice.user.name, "not her password")
            finally:
                await dashboard.aclose()

        assert not ok
        assert dashboard.message == "Wrong user name or password."
