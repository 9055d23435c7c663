# Panel's serve() carries no annotations.
# mypy: disallow-untyped-calls=False
"""Serve the fleet dashboard: ``python -m apps.server --port P --bind HOST --api URL``.

The supervisor spawns this module as its own process (see :func:`dashboard_command`).
Panel serves its own JavaScript and CSS and, under ``/basemap/``, the offline
outlines, so the page fetches nothing from outside the machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import structlog

log = structlog.get_logger("rastro.apps.server")

BASEMAP_ROUTE = "basemap"


def dashboard_command(
    *,
    port: int,
    bind: str,
    api_url: str,
    map_style: str | None = None,
) -> list[str]:
    """The argv that runs the dashboard server with this Python."""
    argv = [
        sys.executable, "-m", "apps.server",
        "--port", str(port), "--bind", bind, "--api", api_url,
    ]  # fmt: skip
    if map_style:
        argv += ["--map-style", map_style]
    return argv


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line; a port outside 1-65535 is refused by name."""
    parser = argparse.ArgumentParser(
        prog="python -m apps.server", description="Serve the Rastro fleet dashboard."
    )
    parser.add_argument("--port", type=int, default=5006, help="port to listen on")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--api",
        default=os.environ.get("RASTRO_API_URL", "http://127.0.0.1:8080"),
        help="Rastro REST API address (RASTRO_API_URL)",
    )
    parser.add_argument(
        "--map-style",
        default=os.environ.get("RASTRO_MAP_STYLE") or None,
        help="MapLibre style URL instead of the offline outlines (RASTRO_MAP_STYLE)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    return args


def serve(*, port: int, bind: str, api_url: str, map_style: str | None = None) -> None:
    """Serve the dashboard at ``/`` until the process is stopped (blocking)."""
    import panel as pn

    from apps.basemap import basemap_dir
    from apps.dashboard import FleetDashboard

    # Each session reads these at its start (FleetDashboard's defaults).
    os.environ["RASTRO_API_URL"] = api_url
    if map_style:
        os.environ["RASTRO_MAP_STYLE"] = map_style
    pn.extension("deckgl", "tabulator")

    def session() -> FleetDashboard:
        return FleetDashboard(basemap_url=BASEMAP_ROUTE)

    server = pn.serve(
        {"/": session},
        port=port,
        address=bind,
        websocket_origin=_origins(bind, port),
        static_dirs={BASEMAP_ROUTE: str(basemap_dir())},
        title="Rastro fleet",
        show=False,
        start=False,
    )
    server.start()
    log.info(
        "dashboard_serving",
        address=f"http://{bind}:{port}/",
        api=api_url,
        map_style=map_style,
    )
    server.io_loop.start()


def _origins(bind: str, port: int) -> list[str]:
    """Browser origins whose WebSocket the server accepts."""
    if bind in ("0.0.0.0", "::", ""):
        return [f"*:{port}"]
    return [f"{bind}:{port}", f"localhost:{port}"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m apps.server``."""
    from pipeline.logs import configure_logging

    configure_logging()
    # httpx logs every poll of the API at INFO: one line per session per second.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    serve(port=args.port, bind=args.bind, api_url=args.api, map_style=args.map_style)


if __name__ == "__main__":
    main()
