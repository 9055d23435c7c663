"""The dashboard server process: its command line and what it serves over HTTP."""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apps.server import dashboard_command, parse_args
from tests.fixtures.dashboard import ContractApi
from tests.fixtures.dashboard_server import DashboardUnderTest, start_dashboard


class TestDashboardCommand:
    def test_dashboard_command_runs_module(self) -> None:
        argv = dashboard_command(port=5006, bind="127.0.0.1", api_url="http://a:1")

        assert argv == [
            sys.executable, "-m", "apps.server",
            "--port", "5006", "--bind", "127.0.0.1", "--api", "http://a:1",
        ]  # fmt: skip

    def test_dashboard_command_map_style(self) -> None:
        argv = dashboard_command(
            port=1, bind="0.0.0.0", api_url="http://a:1", map_style="http://s/x.json"
        )

        assert argv[-2:] == ["--map-style", "http://s/x.json"]

    def test_parse_args_bad_port_refused(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit):
            parse_args(["--port", "70000"])

        assert (
            "--port must be between 1 and 65535, got 70000" in capsys.readouterr().err
        )


@pytest.fixture(scope="module")
def served(
    contract_api_server: ContractApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashboardUnderTest]:
    logs = tmp_path_factory.mktemp("dashboard-logs")
    with start_dashboard(contract_api_server.url, logs) as dashboard:
        yield dashboard


@pytest.mark.integration
class TestDashboardServer:
    def test_server_logs_serving_address(self, served: DashboardUnderTest) -> None:
        events = [
            json.loads(line)
            for line in served.log_text().splitlines()
            if line.startswith("{")
        ]

        serving = [event for event in events if event["event"] == "dashboard_serving"]
        assert serving
        assert serving[0]["address"] == served.url

    def test_server_page_uses_own_resources(self, served: DashboardUnderTest) -> None:
        """The page loads Bokeh and Panel from the server itself, never a CDN."""
        page = httpx.get(served.url, timeout=10).text

        links = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert any("static/js/bokeh.min.js" in link for link in links), links
        foreign = [link for link in links if "//" in link and served.url not in link]
        assert foreign == []

    def test_server_serves_basemap_outlines(self, served: DashboardUnderTest) -> None:
        response = httpx.get(served.url + "basemap/countries.geojson", timeout=10)

        assert response.status_code == 200
        countries = response.json()
        assert len(countries["features"]) == 177
        names = {feature["properties"]["name"] for feature in countries["features"]}
        assert {"Germany", "Brazil", "Australia"} <= names

    def test_server_shipped_basemap_matches_source(self) -> None:
        """The shipped files are what ``python -m apps.basemap`` builds."""
        shipped = Path(__file__).resolve().parents[1] / "data" / "basemap"

        coast = json.loads((shipped / "coastline.geojson").read_text())

        lines = coast["features"][0]["geometry"]["coordinates"]
        assert len(lines) > 100
        on_antimeridian = [
            line
            for line in lines
            for start, end in itertools.pairwise(line)
            if abs(start[0]) >= 180 and abs(end[0]) >= 180
        ]
        assert on_antimeridian == []
