"""The fleet dashboard rendered into a fresh Bokeh document, against a real HTTP API.

The API is the contract server of ``tests/fixtures/dashboard.py`` (Starlette on a
loopback port).  Assertions read the Bokeh models a browser would receive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pandas as pd
import pytest
from bokeh.document import Document
from bokeh.document.events import (
    ColumnDataChangedEvent,
    ColumnsPatchedEvent,
    ModelChangedEvent,
)
from panel.models.deckgl import DeckGLPlot
from panel.models.tabulator import DataTabulator

from apps.dashboard import (
    FleetDashboard,
    fit_view,
    map_spec,
    maplibre_style_url,
    point_frame,
)
from pipeline.ports import free_port
from tests.fixtures.dashboard import CONTRACT_PASSWORD, CONTRACT_USER, ContractApi


class Rendered:
    """A dashboard, its document, and the models under test."""

    def __init__(self, dashboard: FleetDashboard) -> None:
        self.dashboard = dashboard
        self.document = Document()
        self.root = dashboard.__panel__().get_root(self.document)
        self.document.add_root(self.root)
        self.events: list[Any] = []
        self.document.on_change(self.events.append)

    def model(self, kind: type[Any], name: str | None = None) -> Any:
        found = [
            model
            for model in self.root.references()
            if isinstance(model, kind) and (name is None or model.name == name)
        ]
        assert len(found) == 1, f"expected one {kind.__name__}, found {len(found)}"
        return found[0]

    @property
    def deck(self) -> Any:
        return self.model(DeckGLPlot)

    def device_layer_data(self) -> dict[str, list[Any]]:
        layer = self.deck.layers[-1]
        assert layer["id"] == "devices"
        source = self.deck.data_sources[layer["data"]]
        return {column: list(values) for column, values in source.data.items()}

    def device_rows(self) -> list[dict[str, Any]]:
        source = self.model(DataTabulator).source
        frame = pd.DataFrame(dict(source.data))
        return frame.drop(columns="index").to_dict("records")  # type: ignore[no-any-return]

    def alert_text(self, name: str) -> tuple[bool, str]:
        """Whether the named alert is visible, and what it says."""
        pane = self.dashboard._error if name == "login" else self.dashboard._status
        return pane.visible, pane.object


@pytest.fixture
async def rendered(contract_api: ContractApi) -> AsyncIterator[Rendered]:
    dashboard = FleetDashboard(api_url=contract_api.url, basemap_url="basemap")
    yield Rendered(dashboard)
    await dashboard.aclose()


class TestFleetDashboardLogin:
    async def test_login_wrong_password_shows_error(self, rendered: Rendered) -> None:
        """A 401 keeps the form up with a message saying the credentials are wrong."""
        ok = await rendered.dashboard.login(CONTRACT_USER, "not-the-password")

        assert not ok
        assert rendered.alert_text("login") == (True, "Wrong user name or password.")
        assert rendered.dashboard._login_form.visible
        assert not rendered.dashboard._fleet.visible

    async def test_login_unreachable_api_shows_error(self) -> None:
        """No server at the address: the message names the address."""
        url = f"http://127.0.0.1:{free_port()}"
        dashboard = FleetDashboard(api_url=url, request_timeout_s=2.0)
        view = Rendered(dashboard)

        ok = await dashboard.login(CONTRACT_USER, CONTRACT_PASSWORD)
        await dashboard.aclose()

        assert not ok
        assert view.alert_text("login") == (
            True,
            f"Cannot reach the Rastro API at {url}.",
        )

    async def test_login_empty_fields_asks_for_them(self, rendered: Rendered) -> None:
        ok = await rendered.dashboard.login("", "")

        assert not ok
        assert rendered.alert_text("login") == (
            True,
            "Enter a user name and a password.",
        )

    async def test_login_success_fills_map_and_list(
        self, rendered: Rendered, contract_api: ContractApi
    ) -> None:
        """After login the layer holds both devices and the list shows their rows."""
        ok = await rendered.dashboard.login(CONTRACT_USER, CONTRACT_PASSWORD)

        assert ok
        assert rendered.dashboard._fleet.visible
        assert not rendered.dashboard._login_form.visible
        data = rendered.device_layer_data()
        assert data["uniqueId"] == ["truck-7", "van-3"]
        assert data["name"] == ["Truck 7", "Van 3"]
        assert data["longitude"] == [11.575, 13.405]
        assert data["latitude"] == [48.137, 52.52]
        assert rendered.device_rows() == [
            {"name": "Truck 7", "uniqueId": "truck-7",
             "time": "2026-12-04T05:00:00Z", "speed": 42.5},
            {"name": "Van 3", "uniqueId": "van-3",
             "time": "2026-12-04T05:00:00Z", "speed": 0.0},
        ]  # fmt: skip
        assert contract_api.requests == ["session", "latest", "devices"]

    async def test_login_password_not_kept(self, rendered: Rendered) -> None:
        rendered.dashboard._password.value = CONTRACT_PASSWORD
        rendered.dashboard._user.value = CONTRACT_USER

        assert await rendered.dashboard.login()
        assert rendered.dashboard._password.value == ""


class TestFleetDashboardUpdates:
    async def test_refresh_moves_device_layer_data(
        self, rendered: Rendered, contract_api: ContractApi
    ) -> None:
        """A new position changes only the moved columns; layers are not re-sent."""
        await rendered.dashboard.login(CONTRACT_USER, CONTRACT_PASSWORD)
        rendered.events.clear()
        contract_api.move("truck-7", longitude=11.6, latitude=48.14)

        await rendered.dashboard.refresh()

        data = rendered.device_layer_data()
        assert data["longitude"] == [11.6, 13.405]
        assert data["latitude"] == [48.14, 52.52]
        deck_changes = [
            event
            for event in rendered.events
            if isinstance(event, ModelChangedEvent) and event.model is rendered.deck
        ]
        assert deck_changes == []
        column_changes = [
            sorted(event.cols or [])
            for event in rendered.events
            if isinstance(event, ColumnDataChangedEvent)
            and event.model in rendered.deck.data_sources
        ]
        assert column_changes == [["latitude", "longitude"]]

    async def test_refresh_patches_changed_list_cells(
        self, rendered: Rendered, contract_api: ContractApi
    ) -> None:
        """The device list is patched cell by cell, not re-sent."""
        await rendered.dashboard.login(CONTRACT_USER, CONTRACT_PASSWORD)
        rendered.events.clear()
        contract_api.move("van-3", speed=55.0, time="2026-12-04T05:00:05Z")

        await rendered.dashboard.refresh()

        source = rendered.model(DataTabulator).source
        patches = [
            event.patches
            for event in rendered.events
            if isinstance(event, ColumnsPatchedEvent) and event.model is source
        ]
        assert patches == [
            {"speed": [(1, 55.0)], "time": [(1, "2026-12-04T05:00:05Z")]}
        ]
        assert not [
            event
            for event in rendered.events
            if isinstance(event, ColumnDataChangedEvent) and event.model is source
        ]
        assert rendered.device_rows()[1]["speed"] == 55.0

    async def test_refresh_unchanged_sends_nothing(self, rendered: Rendered) -> None:
        await rendered.dashboard.login(CONTRACT_USER, CONTRACT_PASSWORD)
        rendered.events.clear()

        await rendered.dashboard.refresh()

        assert [
            event
            for event in rendered.events
            if getattr(event, "model", None) in rendered.deck.data_sources
            or getattr(event, "model", None) is rendered.deck
            or getattr(event, "model", None) is rendered.model(DataTabulator).source
        ] == []

    async def test_refresh_new_device_reads_names(
        self, rendered: Rendered, contract_api: ContractApi
    ) -> None:
        await rendered.dashboard.login(CONTRACT_USER, CONTRACT_PASSWORD)
        contract_api.devices.append(
            {"id": 3, "uniqueId": "bus-1", "name": "Bus 1", "attributes": {},
             "createdAt": "2026-12-01T00:00:00Z"}
        )  # fmt: skip
        contract_api.move(
            "bus-1", uniqueId="bus-1", time="2026-12-04T05:00:01Z",
            latitude=45.0, longitude=7.0, speed=10.0,
        )  # fmt: skip
        rendered.dashboard._devices_read_at -= 60

        await rendered.dashboard.refresh()

        assert rendered.device_layer_data()["name"] == ["Bus 1", "Truck 7", "Van 3"]
        assert [row["name"] for row in rendered.device_rows()] == [
            "Bus 1",
            "Truck 7",
            "Van 3",
        ]

    async def test_refresh_expired_token_returns_to_login(
        self, rendered: Rendered, contract_api: ContractApi
    ) -> None:
        await rendered.dashboard.login(CONTRACT_USER, CONTRACT_PASSWORD)
        contract_api.token = "rotated"

        await rendered.dashboard.refresh()

        assert not rendered.dashboard.logged_in
        assert rendered.dashboard._login_form.visible
        assert rendered.alert_text("login") == (
            True,
            "Your session has expired; log in again.",
        )

    async def test_view_fitted_once_to_devices(
        self, rendered: Rendered, contract_api: ContractApi
    ) -> None:
        """The first positions centre the map; later ones leave the user's view."""
        await rendered.dashboard.login(CONTRACT_USER, CONTRACT_PASSWORD)
        first = dict(rendered.deck.initialViewState)
        contract_api.move("van-3", longitude=2.35, latitude=48.85)

        await rendered.dashboard.refresh()

        assert first["longitude"] == pytest.approx((11.575 + 13.405) / 2)
        assert rendered.deck.initialViewState == first


class TestFleetDashboardMap:
    def test_offline_map_outlines_from_url(self, rendered: Rendered) -> None:
        """The outlines are URLs the browser loads once; mapStyle stays null."""
        deck = rendered.deck

        assert "mapStyle" in deck.data
        assert deck.data["mapStyle"] is None
        assert [layer["id"] for layer in deck.layers] == [
            "countries",
            "coastline",
            "devices",
        ]
        assert deck.layers[0]["data"] == "basemap/countries.geojson"
        assert deck.layers[1]["data"] == "basemap/coastline.geojson"

    def test_notebook_map_inlines_outlines(self) -> None:
        view = Rendered(FleetDashboard(api_url="http://127.0.0.1:1"))

        countries = view.deck.layers[0]["data"]

        assert countries["type"] == "FeatureCollection"
        assert len(countries["features"]) == 177

    def test_map_style_replaces_outlines(self) -> None:
        style = "http://127.0.0.1:9/style.json"
        view = Rendered(FleetDashboard(api_url="http://127.0.0.1:1", map_style=style))

        assert view.deck.data["mapStyle"] == style + "#carto"
        assert [layer["id"] for layer in view.deck.layers] == ["devices"]

    def test_settings_read_from_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RASTRO_API_URL", "http://127.0.0.1:9999")
        monkeypatch.setenv("RASTRO_MAP_STYLE", "http://tiles.example/carto.json")

        dashboard = FleetDashboard()

        assert dashboard.api_url == "http://127.0.0.1:9999"
        assert dashboard.map_style == "http://tiles.example/carto.json"

    def test_dashboard_bad_api_url_rejected(self) -> None:
        with pytest.raises(ValueError, match="api_url must start with http"):
            FleetDashboard(api_url="127.0.0.1:8080")


class TestPointFrame:
    def test_point_frame_stale_device_grey(self) -> None:
        positions = [
            {"uniqueId": "a", "time": "2026-12-04T05:00:00Z",
             "latitude": 1.0, "longitude": 2.0, "speed": 3.0},
            {"uniqueId": "b", "time": "2026-12-04T04:00:00Z",
             "latitude": 1.0, "longitude": 2.0},
        ]  # fmt: skip
        now_ms = 1_796_360_430_000  # 2026-12-04T05:00:30Z

        frame = point_frame(positions, {"a": "A"}, now_ms=now_ms, stale_after_s=300)

        assert frame[["r", "g", "b"]].values.tolist() == [
            [214, 39, 40],
            [120, 120, 120],
        ]
        assert frame["name"].tolist() == ["A", "b"]
        assert frame["speed"].isna().tolist() == [False, True]

    def test_point_frame_skips_missing_coordinates(self) -> None:
        positions = [{"uniqueId": "a", "latitude": None, "longitude": 2.0}, {}]

        frame = point_frame(positions, {}, now_ms=0, stale_after_s=1)

        assert frame.empty

    def test_fit_view_spans_devices(self) -> None:
        frame = pd.DataFrame({"longitude": [0.0, 10.0], "latitude": [40.0, 50.0]})

        view = fit_view(frame)

        assert (view["longitude"], view["latitude"]) == (5.0, 45.0)
        assert 3.0 < view["zoom"] < 5.0

    def test_fit_view_single_device_capped(self) -> None:
        frame = pd.DataFrame({"longitude": [2.35], "latitude": [48.85]})

        assert fit_view(frame)["zoom"] == 13.0
        assert fit_view(frame, max_zoom=6.0)["zoom"] == 6.0

    def test_map_spec_keeps_null_style(self) -> None:
        empty = point_frame([], {}, now_ms=0, stale_after_s=1)

        spec = map_spec(empty, view={}, map_style=None, basemap_url="b")

        assert "mapStyle" in spec
        assert spec["mapStyle"] is None

    def test_maplibre_style_url_keeps_carto(self) -> None:
        assert maplibre_style_url("https://x.carto.com/s.json") == (
            "https://x.carto.com/s.json"
        )
        assert maplibre_style_url("https://x/s.json#a") == "https://x/s.json#a&carto"
