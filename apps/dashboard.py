# Panel's widget and pane constructors carry no annotations.
# mypy: disallow-untyped-calls=False
"""The fleet manager's dashboard: log in, then watch every device on a live map.

:class:`FleetDashboard` is one Panel component.  It asks the REST API for a token
(``POST /api/v1/session``), then polls ``GET /api/v1/positions/latest`` with a
periodic callback and shows the answer twice: as points on a deck.gl map and as rows
of a device list.  An update only replaces the points layer's data; Panel sends the
changed columns, never the pane or the basemap again.

The basemap works offline: country and coastline outlines from Natural Earth (see
:mod:`apps.basemap`), loaded by the browser from a static route of the dashboard's
own server, or inlined once when no route serves them (a notebook).  ``map_style``
(``RASTRO_MAP_STYLE``) points the map at a MapLibre style instead.

The module also runs in a notebook; it marks itself servable only under
``panel serve``.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import pandas as pd
import panel as pn
import param
import structlog

from apps.basemap import COASTLINE_FILE, COUNTRIES_FILE, load_layer_data
from apps.client import (
    ApiClient,
    ApiError,
    ApiUnreachableError,
    LoginRejectedError,
    SessionExpiredError,
    check_api_url,
)
from pipeline.model import FixError, parse_time_ms

log = structlog.get_logger("rastro.apps.dashboard")

DEFAULT_API_URL = "http://127.0.0.1:8080"

POINT_COLUMNS = [
    "uniqueId", "name", "longitude", "latitude", "speed", "time", "r", "g", "b",
]  # fmt: skip
TABLE_COLUMNS = {"name": "Name", "uniqueId": "Unique id", "time": "Last fix",
                 "speed": "Speed (km/h)"}  # fmt: skip

TOOLTIP = {
    "html": "<b>{name}</b><br/>{uniqueId}<br/>{speed} km/h<br/>{time}",
    "style": {"fontSize": "12px"},
}

_LIVE_COLOUR = (214, 39, 40)
_STALE_COLOUR = (120, 120, 120)
_WORLD_VIEW = {
    "longitude": 0.0,
    "latitude": 20.0,
    "zoom": 1.0,
    "pitch": 0,
    "bearing": 0,
}
# One device (or a few close together) still needs a sensible zoom: a street block
# on a street map.  On the offline outlines a city shows no outline at all, but a
# fleet in one city must still be told apart, so the cap is only a little lower.
_MAX_FIT_ZOOM = 13.0
_MAX_FIT_ZOOM_OFFLINE = 11.0
_DEVICES_RECHECK_S = 5.0


def point_frame(
    positions: Iterable[Mapping[str, Any]],
    names: Mapping[str, str],
    *,
    now_ms: int,
    stale_after_s: float,
) -> pd.DataFrame:
    """One row per device with a position, in the columns the map layer reads.

    Parameters
    ----------
    positions
        API positions (``uniqueId``, ``time``, ``latitude``, ``longitude``, ``speed``
        in km/h, ...); entries without coordinates are skipped.
    names
        Device name by ``uniqueId``; a device without a name shows its ``uniqueId``.
    now_ms
        The current time, epoch milliseconds, to tell live devices from stale ones.
    stale_after_s
        Seconds after which a device's last fix is drawn grey.
    """
    rows = [
        _point_row(position, names, now_ms=now_ms, stale_after_s=stale_after_s)
        for position in positions
        if _has_coordinates(position)
    ]
    frame = pd.DataFrame(rows, columns=POINT_COLUMNS)
    return frame.sort_values("uniqueId", ignore_index=True)


def table_frame(points: pd.DataFrame) -> pd.DataFrame:
    """The device list: name, unique id, time of the last fix, speed."""
    return points[list(TABLE_COLUMNS)].reset_index(drop=True)


def changed_cells(
    old: pd.DataFrame, new: pd.DataFrame
) -> dict[str, list[tuple[int, Any]]]:
    """The cells of ``new`` that differ from ``old`` (same rows), as a patch."""
    patch: dict[str, list[tuple[int, Any]]] = {}
    for column in new.columns:
        differs = ~(
            (old[column] == new[column]) | (old[column].isna() & new[column].isna())
        )
        rows = [int(row) for row in differs.to_numpy().nonzero()[0]]
        if rows:
            patch[column] = [(row, new[column].iat[row]) for row in rows]
    return patch


def fit_view(
    points: pd.DataFrame, *, max_zoom: float = _MAX_FIT_ZOOM
) -> dict[str, float]:
    """A view state showing every point (Web Mercator zoom from the wider extent)."""
    if points.empty:
        return dict(_WORLD_VIEW)

    west, east = points["longitude"].min(), points["longitude"].max()
    south, north = points["latitude"].min(), points["latitude"].max()
    span = max(east - west, (north - south) * 1.5, 1e-6)
    zoom = min(max_zoom, max(0.0, math.log2(360.0 / span) - 1.0))
    return {
        "longitude": float((west + east) / 2),
        "latitude": float((south + north) / 2),
        "zoom": round(zoom, 2),
        "pitch": 0,
        "bearing": 0,
    }


def map_spec(
    points: pd.DataFrame,
    *,
    view: Mapping[str, float],
    map_style: str | None,
    basemap_url: str | None,
) -> dict[str, Any]:
    """The deck.gl JSON spec: the basemap layers, then the devices on top.

    ``mapStyle`` stays in the spec as an explicit ``None`` when no style is used:
    Panel's DeckGL view reads the key and draws nothing when it is missing.
    """
    layers = [] if map_style else _outline_layers(basemap_url)
    layers.append(_devices_layer(points))
    return {
        "initialViewState": dict(view),
        "views": [{"@@type": "MapView", "controller": True}],
        "mapStyle": maplibre_style_url(map_style) if map_style else None,
        "layers": layers,
    }


def maplibre_style_url(url: str) -> str:
    """A style URL Panel's DeckGL view hands to MapLibre.

    The view builds a MapLibre basemap only when the URL contains "carto" (otherwise
    it wants Mapbox and a key: panel/models/deckgl.ts, ``createDeck``).  A fragment
    satisfies that test and is never sent to the style's server.
    """
    if "carto" in url:
        return url
    return url + ("&" if "#" in url else "#") + "carto"


class FleetDashboard(pn.viewable.Viewer):
    """Log in to the Rastro API, then follow every device on a map and in a list."""

    api_url = param.String(
        default=DEFAULT_API_URL,
        doc="Address of the Rastro REST API; read from RASTRO_API_URL at start.",
    )
    map_style = param.String(
        default=None,
        allow_None=True,
        doc="A MapLibre style URL for the basemap; None draws the offline outlines.",
    )
    basemap_url = param.String(
        default=None,
        allow_None=True,
        doc="URL of the folder serving the outline GeoJSON files; None inlines them.",
    )
    poll_period_s = param.Number(
        default=1.0,
        bounds=(0.2, 60.0),
        doc="Seconds between two reads of the latest positions.",
    )
    stale_after_s = param.Number(
        default=300.0,
        bounds=(1.0, None),
        doc="Seconds after which a device's last fix counts as stale (grey).",
    )
    request_timeout_s = param.Number(
        default=5.0,
        bounds=(0.1, 120.0),
        doc="Seconds each API request may take before the API counts as unreachable.",
    )
    logged_in = param.Boolean(default=False, doc="Whether the session holds a token.")
    message = param.String(default="", doc="What went wrong last, for the user.")

    def __init__(self, **params: Any) -> None:
        params.setdefault("api_url", os.environ.get("RASTRO_API_URL", DEFAULT_API_URL))
        params.setdefault("map_style", os.environ.get("RASTRO_MAP_STYLE") or None)
        super().__init__(**params)
        check_api_url(self.api_url)
        self._client: ApiClient | None = None
        self._names: dict[str, str] = {}
        self._devices_read_at = 0.0
        self._refreshing = False
        self._view_fitted = False
        self._poller: Any = None
        self._closing: asyncio.Future[None] | None = None
        self._build_widgets()

    # -- public API -------------------------------------------------------------

    async def login(self, user: str | None = None, password: str | None = None) -> bool:
        """Log in with the given (or typed) credentials; True when a token came back.

        On failure :attr:`message` says why: wrong credentials, or no API at
        :attr:`api_url`.  On success the device list and map are filled at once.
        """
        user = self._user.value if user is None else user
        password = self._password.value if password is None else password
        if not user or not password:
            self.message = "Enter a user name and a password."
            return False

        client = self._client or ApiClient(
            self.api_url, timeout_s=self.request_timeout_s
        )
        self._client = client
        try:
            await client.login(user, password)
        except LoginRejectedError:
            self.message = "Wrong user name or password."
            return False
        except ApiUnreachableError:
            self.message = f"Cannot reach the Rastro API at {self.api_url}."
            return False
        except ApiError as error:
            self.message = f"Login failed: {error}."
            return False

        self._password.value = ""
        self.message = ""
        self.logged_in = True
        await self.refresh()
        self._start_polling()
        return True

    async def refresh(self) -> None:
        """Read the latest positions once and update the map and the device list."""
        if self._client is None or not self.logged_in or self._refreshing:
            return

        self._refreshing = True
        try:
            positions = await self._client.latest_positions()
            await self._read_names_if_needed(positions)
        except SessionExpiredError:
            self.logout("Your session has expired; log in again.")
            return
        except ApiError as error:
            self.message = f"Live updates paused: {error}."
            return
        finally:
            self._refreshing = False

        self.message = ""
        self.show_positions(positions)

    def show_positions(self, positions: Sequence[Mapping[str, Any]]) -> None:
        """Draw ``positions`` (API form): the layer's data and the list's rows only."""
        points = point_frame(
            positions,
            self._names,
            now_ms=round(time.time() * 1000),
            stale_after_s=self.stale_after_s,
        )
        spec = self._map.object
        spec["layers"][-1] = _devices_layer(points)
        if not self._view_fitted and not points.empty:
            max_zoom = _MAX_FIT_ZOOM if self.map_style else _MAX_FIT_ZOOM_OFFLINE
            spec["initialViewState"] = fit_view(points, max_zoom=max_zoom)
            self._view_fitted = True
        self._map.param.trigger("object")
        self._update_table(table_frame(points))

    def _update_table(self, rows: pd.DataFrame) -> None:
        """Patch the changed cells when the same devices are listed, else replace."""
        current = self._table.value
        if current is None or not rows["uniqueId"].equals(current["uniqueId"]):
            self._table.value = rows
            return

        patch = changed_cells(current, rows)
        if patch:
            self._table.patch(patch, as_index=False)

    def logout(self, reason: str = "") -> None:
        """Forget the token, stop the updates and show the login form again."""
        self._stop_polling()
        if self._client is not None:
            self._client.logout()
        self.logged_in = False
        self.message = reason

    async def aclose(self) -> None:
        """Stop polling and close the API connections (session end, tests)."""
        self._stop_polling()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def __panel__(self) -> pn.viewable.Viewable:
        """The login form, or the map and the device list once logged in."""
        return self._layout

    # -- widgets ----------------------------------------------------------------

    def _build_widgets(self) -> None:
        self._user = pn.widgets.TextInput(label="User", placeholder="admin", width=260)
        self._password = pn.widgets.PasswordInput(label="Password", width=260)
        self._login_button = pn.widgets.Button(
            label="Log in", color="primary", width=260
        )
        self._login_button.on_click(self._on_login_click)
        self._error = pn.pane.Alert(
            "", alert_type="danger", visible=False, width=260, name="login_error"
        )
        self._login_form = pn.Column(
            pn.pane.Markdown("## Rastro fleet\nLog in to see your devices."),
            self._user,
            self._password,
            self._login_button,
            self._error,
            name="login_form",
        )
        self._map = pn.pane.DeckGL(
            map_spec(
                point_frame([], {}, now_ms=0, stale_after_s=self.stale_after_s),
                view=_WORLD_VIEW,
                map_style=self.map_style,
                basemap_url=self.basemap_url,
            ),
            tooltips=TOOLTIP,
            throttle={"view": 250, "hover": 250},
            sizing_mode="stretch_both",
            min_height=480,
            styles={"background": "#aecbe0"},
            name="fleet_map",
        )
        self._table = pn.widgets.Tabulator(
            table_frame(point_frame([], {}, now_ms=0, stale_after_s=1.0)),
            titles=TABLE_COLUMNS,
            disabled=True,
            show_index=False,
            width=520,
            height=480,
        )
        self._logout_button = pn.widgets.Button(label="Log out", width=100)
        self._logout_button.on_click(lambda _event: self.logout())
        self._status = pn.pane.Alert(
            "", alert_type="warning", visible=False, name="status"
        )
        self._fleet = pn.Column(
            pn.Row(pn.pane.Markdown("## Rastro fleet"), self._logout_button),
            self._status,
            pn.Row(self._map, self._table, sizing_mode="stretch_width"),
            visible=False,
            sizing_mode="stretch_width",
            name="fleet",
        )
        self._layout = pn.Column(
            self._login_form, self._fleet, sizing_mode="stretch_width"
        )

    @param.depends("logged_in", "message", watch=True)
    def _show_state(self) -> None:
        self._login_form.visible = not self.logged_in
        self._fleet.visible = self.logged_in
        alert = self._status if self.logged_in else self._error
        alert.object = self.message
        alert.visible = bool(self.message)
        if not self.logged_in:
            self._status.visible = False

    async def _on_login_click(self, _event: Any) -> None:
        self._login_button.disabled = True
        try:
            await self.login()
        finally:
            self._login_button.disabled = False

    # -- polling ----------------------------------------------------------------

    def _start_polling(self) -> None:
        """Poll only in a served session; a notebook or a test calls refresh()."""
        if self._poller is not None or not _in_served_session():
            return
        # Panel awaits a coroutine function; its annotation only names plain ones.
        callback = cast(Callable[[], None], self.refresh)
        self._poller = pn.state.add_periodic_callback(
            callback, period=round(self.poll_period_s * 1000)
        )
        pn.state.on_session_destroyed(self._on_session_destroyed)

    def _stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None

    def _on_session_destroyed(self, _context: Any) -> None:
        self._stop_polling()
        if self._client is not None:
            # Bokeh calls this synchronously; keep the task so it is not collected.
            self._closing = asyncio.ensure_future(self._client.aclose())

    async def _read_names_if_needed(
        self, positions: Sequence[Mapping[str, Any]]
    ) -> None:
        """Read the device list at login and when an unknown device shows up."""
        assert self._client is not None
        unknown = any(p.get("uniqueId") not in self._names for p in positions)
        due = time.monotonic() - self._devices_read_at > _DEVICES_RECHECK_S
        if self._devices_read_at and not (unknown and due):
            return

        devices = await self._client.devices()
        self._devices_read_at = time.monotonic()
        self._names = {
            str(device["uniqueId"]): str(device.get("name") or device["uniqueId"])
            for device in devices
            if device.get("uniqueId")
        }


def _in_served_session() -> bool:
    document = pn.state.curdoc
    return document is not None and document.session_context is not None


def _has_coordinates(position: Mapping[str, Any]) -> bool:
    return (
        isinstance(position.get("latitude"), int | float)
        and isinstance(position.get("longitude"), int | float)
        and bool(position.get("uniqueId"))
    )


def _point_row(
    position: Mapping[str, Any],
    names: Mapping[str, str],
    *,
    now_ms: int,
    stale_after_s: float,
) -> list[Any]:
    unique_id = str(position["uniqueId"])
    fix_time = str(position.get("time") or "")
    speed = position.get("speed")
    colour = _colour(fix_time, now_ms=now_ms, stale_after_s=stale_after_s)
    return [
        unique_id,
        names.get(unique_id, unique_id),
        float(position["longitude"]),
        float(position["latitude"]),
        round(float(speed), 1) if isinstance(speed, int | float) else None,
        fix_time,
        *colour,
    ]


def _colour(fix_time: str, *, now_ms: int, stale_after_s: float) -> tuple[int, ...]:
    try:
        age_s = (now_ms - parse_time_ms(fix_time)) / 1000
    except FixError:
        return _STALE_COLOUR
    return _STALE_COLOUR if age_s > stale_after_s else _LIVE_COLOUR


def _devices_layer(points: pd.DataFrame) -> dict[str, Any]:
    return {
        "@@type": "ScatterplotLayer",
        "id": "devices",
        "data": points,
        "getPosition": "@@=[longitude, latitude]",
        "getFillColor": "@@=[r, g, b]",
        "getLineColor": [255, 255, 255],
        "getRadius": 40,
        "radiusMinPixels": 6,
        "radiusMaxPixels": 14,
        "stroked": True,
        "lineWidthMinPixels": 1.5,
        "pickable": True,
    }


def _outline_layers(basemap_url: str | None) -> list[dict[str, Any]]:
    """Land with country borders, then a stronger coastline; both static."""

    def source(name: str) -> str | dict[str, Any]:
        if basemap_url is None:
            return load_layer_data(name)
        return basemap_url.rstrip("/") + "/" + name

    countries = {
        "@@type": "GeoJsonLayer",
        "id": "countries",
        "data": source(COUNTRIES_FILE),
        "filled": True,
        "stroked": True,
        "getFillColor": [244, 241, 232],
        "getLineColor": [160, 160, 160],
        "lineWidthMinPixels": 0.6,
        "pickable": False,
    }
    coastline = {
        "@@type": "GeoJsonLayer",
        "id": "coastline",
        "data": source(COASTLINE_FILE),
        "filled": False,
        "stroked": True,
        "getLineColor": [60, 100, 140],
        "lineWidthMinPixels": 1.2,
        "pickable": False,
    }
    return [countries, coastline]


def _servable_if_served() -> None:
    """Under ``panel serve apps/dashboard.py``, show one dashboard per session."""
    if pn.state.served:
        pn.extension("deckgl", "tabulator")
        FleetDashboard().servable(title="Rastro fleet")


_servable_if_served()
