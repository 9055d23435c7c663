"""The dashboard in a real browser: Debian's Chromium, driven by Playwright.

Logs in to the dashboard served by ``python -m apps.server`` against the contract
API, finds each device on the deck.gl map by picking at its projected pixel, reads
the device list, watches a device move, and saves a screenshot to
``tests/artifacts/dashboard.png``.  Rendering is software WebGL, so the test asserts
on state (deck.gl's layers, picking, the DOM) and prints what it measured.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from pipeline.model import format_time_ms
from pipeline.store.latest import latest_keys
from tests.fixtures.dashboard import (
    CONTRACT_PASSWORD,
    CONTRACT_USER,
    REAL_API_PASSWORD,
    REAL_API_USER,
    ContractApi,
    run_real_api,
)
from tests.fixtures.dashboard_server import DashboardUnderTest, start_dashboard

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader",
]  # fmt: skip
ARTIFACTS = Path(__file__).parent / "artifacts"

# deck.gl's state, read through Bokeh's view of the DeckGL pane: the layers it holds
# (and whether each has loaded its data), the devices layer's records, and what a
# pick at each device's projected pixel finds.
DECK_STATE_JS = """() => {
  const views = [];
  const walk = (view) => {
    views.push(view);
    for (const child of (view.child_views || [])) walk(child);
  };
  for (const root of Object.values(window.Bokeh?.index || {})) walk(root);
  const pane = views.find((view) => view.model.type.endsWith("DeckGLPlot"));
  if (!pane || !pane.deckGL || !pane.deckGL.layerManager) return null;
  const deck = pane.deckGL;
  const layers = deck.layerManager.getLayers();
  const devices = layers.find((layer) => layer.id === "devices");
  const records = devices && Array.isArray(devices.props.data)
    ? devices.props.data : [];
  const viewport = deck.getViewports()[0];
  return {
    layers: layers.map((layer) => ({id: layer.id, loaded: layer.isLoaded})),
    devices: records.map((record) => {
      const [x, y] = viewport.project([record.longitude, record.latitude]);
      const pick = deck.pickObject({x, y, radius: 3, layerIds: ["devices"]});
      return {
        uniqueId: record.uniqueId, name: record.name,
        longitude: record.longitude, latitude: record.latitude,
        x, y, picked: pick && pick.object ? pick.object.uniqueId : null,
      };
    }),
  };
}"""


@pytest.fixture(scope="module")
def dashboard(
    contract_api_server: ContractApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashboardUnderTest]:
    logs = tmp_path_factory.mktemp("dashboard-browser")
    with start_dashboard(contract_api_server.url, logs) as under_test:
        yield under_test


@pytest.fixture
def page(dashboard: DashboardUnderTest) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield browser.new_page(viewport={"width": 1024, "height": 640})
        finally:
            browser.close()


def deck_state(page: Any) -> dict[str, Any] | None:
    """What deck.gl holds right now (see DECK_STATE_JS)."""
    state: dict[str, Any] | None = page.evaluate(DECK_STATE_JS)
    return state


def wait_for_deck(page: Any, condition_js: str, timeout_s: float = 60.0) -> None:
    """Wait until ``condition_js`` (a JS expression over ``s``) holds for the state."""
    page.wait_for_function(
        f"() => {{ const s = ({DECK_STATE_JS})(); return !!s && ({condition_js}); }}",
        polling=100,
        timeout=timeout_s * 1000,
    )


def log_in(page: Any, user: str, password: str) -> None:
    page.get_by_placeholder("admin").fill(user)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name="Log in").click()


def websocket_frames(page: Any) -> list[int]:
    """Sizes of every frame the page receives on its Bokeh WebSocket, as they come."""
    sizes: list[int] = []

    def on_socket(socket: Any) -> None:
        socket.on("framereceived", lambda frame: sizes.append(len(frame)))

    page.on("websocket", on_socket)
    return sizes


def outline_and_point_pixels(path: Path, box: dict[str, float]) -> tuple[int, int]:
    """Pixels in the map's box drawn as border/coast lines and as live points."""
    with Image.open(path) as image:
        crop = image.convert("RGB").crop(
            (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"])
        )
        pixels = np.asarray(crop, dtype=np.int32)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    lines = int(((r < 190) & (abs(r - g) < 40) & (b >= r)).sum())
    points = int(((r > 180) & (g < 90) & (b < 90)).sum())
    return lines, points


@pytest.mark.browser
class TestDashboardInBrowser:
    def test_browser_login_shows_devices_on_map(
        self, page: Any, dashboard: DashboardUnderTest, contract_api: ContractApi
    ) -> None:
        """Log in, find both devices by picking on the map, follow one moving."""
        contract_api.reset(fix_time=format_time_ms(round(time.time() * 1000)))
        frames = websocket_frames(page)
        page.goto(dashboard.url)
        log_in(page, CONTRACT_USER, "wrong-password")
        error = page.get_by_text("Wrong user name or password.")
        error.wait_for(timeout=30_000)

        started = time.monotonic()
        log_in(page, CONTRACT_USER, CONTRACT_PASSWORD)
        wait_for_deck(
            page,
            "s.devices.length === 2 && s.layers.every((layer) => layer.loaded)"
            " && s.devices.every((d) => d.picked === d.uniqueId)",
        )
        first_map_s = time.monotonic() - started

        state = deck_state(page)
        assert state is not None
        layer_ids = {layer["id"] for layer in state["layers"]}
        assert {"countries", "coastline", "devices"} <= layer_ids
        assert {(d["uniqueId"], d["name"]) for d in state["devices"]} == {
            ("truck-7", "Truck 7"),
            ("van-3", "Van 3"),
        }
        table = page.locator(".tabulator-row")
        assert table.count() == 2
        assert "Truck 7" in table.nth(0).inner_text()
        assert "42.5" in table.nth(0).inner_text()

        before = len(frames)
        contract_api.move("truck-7", longitude=11.62, latitude=48.15, speed=50.0)
        moved_at = time.monotonic()
        wait_for_deck(
            page,
            "s.devices.some((d) => d.uniqueId === 'truck-7' && d.longitude === 11.62"
            " && d.picked === 'truck-7')",
            timeout_s=15,
        )
        update_s = time.monotonic() - moved_at
        page.get_by_text("50").first.wait_for(timeout=10_000)
        update_bytes = sum(frames[before:])

        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(screenshot))
        box = page.locator(".deckgl").first.bounding_box()
        lines, points = outline_and_point_pixels(screenshot, box)
        assert lines > 200, "no country or coast outlines drawn"
        assert points > 50, "no device points drawn"

        print(
            f"\nfirst map after login {first_map_s:.2f} s; position change to "
            f"moved point {update_s:.2f} s; {update_bytes} WebSocket bytes meanwhile "
            f"({len(frames) - before} frames); outline px {lines}, point px {points}"
        )


@pytest.fixture
def real_api(postgres_dsn: str, redis_url: str) -> Iterator[str]:
    with run_real_api(postgres_dsn, redis_url) as url:
        yield url


@pytest.fixture
def real_dashboard(real_api: str, tmp_path: Path) -> Iterator[DashboardUnderTest]:
    with start_dashboard(real_api, tmp_path) as under_test:
        yield under_test


def seed_real_device(api_url: str, redis_url: str, latitude: float) -> str:
    """Register a device through the API and give it a latest position in Redis."""
    unique_id = f"browser-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=api_url + "/api/v1", timeout=10) as client:
        login = client.post(
            "/session", json={"user": REAL_API_USER, "password": REAL_API_PASSWORD}
        )
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        device = {"uniqueId": unique_id, "name": "Real van"}
        created = client.post("/devices", json=device, headers=headers)
        assert created.status_code == 201, created.text
    write_latest(redis_url, unique_id, latitude, 2.35)
    return unique_id


def write_latest(
    redis_url: str, unique_id: str, latitude: float, longitude: float
) -> None:
    """Put a latest position where the streaming job puts it."""
    document = {
        "uniqueId": unique_id,
        "time": format_time_ms(round(time.time() * 1000)),
        "latitude": latitude,
        "longitude": longitude,
        "speed": 12.0,
        "h3": "891fb466257ffff",
    }
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(latest_keys(unique_id)[0], unique_id, json.dumps(document))
    finally:
        client.close()


@pytest.mark.browser
@pytest.mark.integration
class TestDashboardInBrowserOnRealApi:
    def test_browser_real_api_device_on_map(
        self,
        page: Any,
        real_api: str,
        real_dashboard: DashboardUnderTest,
        redis_url: str,
    ) -> None:
        """The same journey against ``pipeline.api`` with PostgreSQL and Redis."""
        unique_id = seed_real_device(real_api, redis_url, 48.85)
        page.goto(real_dashboard.url)

        log_in(page, REAL_API_USER, REAL_API_PASSWORD)
        wait_for_deck(
            page,
            f"s.devices.length === 1 && s.devices[0].picked === {unique_id!r}",
        )
        assert deck_state(page)["devices"][0]["name"] == "Real van"  # type: ignore[index]
        write_latest(redis_url, unique_id, 48.852, 2.351)
        wait_for_deck(
            page,
            "s.devices.length === 1 && s.devices[0].latitude === 48.852"
            f" && s.devices[0].picked === {unique_id!r}",
            timeout_s=15,
        )

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-real-api.png"))
        assert "Real van" in page.locator(".tabulator-row").first.inner_text()
