"""The offline basemap: country and coastline outlines from Natural Earth.

The dashboard must draw a map with no network but loopback, so it ships its own
outlines in ``data/basemap/``: ``countries.geojson`` (one polygon feature per
country, for land fill and borders) and ``coastline.geojson`` (the outer edge of all
land, for a stronger coastline).  Both derive from Natural Earth's 1:110m countries
(public domain) as carried inside pyogrio's wheel, so they can be rebuilt offline with
``python -m apps.basemap``.  When the shipped files are missing (an installed wheel
without ``data/``), :func:`basemap_dir` rebuilds them into a cache folder.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("rastro.apps.basemap")

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "basemap"
COUNTRIES_FILE = "countries.geojson"
COASTLINE_FILE = "coastline.geojson"

# 4 decimals of a degree is about 11 m: far finer than 1:110m data needs.
_DECIMALS = 4
# Natural Earth closes polygons along the antimeridian and the south pole; those
# edges are not coast and would draw as straight lines across the map.
_ANTIMERIDIAN = 179.999
_SOUTH_EDGE = -89.999


def natural_earth_source() -> Path:
    """Where pyogrio's wheel keeps Natural Earth 1:110m countries.

    Raises
    ------
    FileNotFoundError
        When this pyogrio build does not carry the file.
    """
    import pyogrio

    folder = Path(pyogrio.__file__).parent / "tests" / "fixtures"
    path = folder / "naturalearth_lowres" / "naturalearth_lowres.shp"
    if not path.exists():
        message = f"pyogrio does not ship Natural Earth here: {str(path)!r}"
        raise FileNotFoundError(message)
    return path


def build_basemap(target: Path, source: Path | None = None) -> Path:
    """Write ``countries.geojson`` and ``coastline.geojson`` into ``target``.

    Parameters
    ----------
    target
        Folder to write into; created when missing.
    source
        A Natural Earth countries file; by default the one pyogrio ships.

    Returns
    -------
    Path
        ``target``, for chaining.
    """
    import geopandas as gpd
    import shapely

    countries = gpd.read_file(source or natural_earth_source())[["name", "geometry"]]
    countries["geometry"] = shapely.set_precision(countries.geometry, 10**-_DECIMALS)
    coast = shapely.union_all(countries.geometry.to_numpy()).boundary

    target.mkdir(parents=True, exist_ok=True)
    countries_json = json.loads(countries.to_json(drop_id=True))
    _write_json(target / COUNTRIES_FILE, countries_json)
    _write_json(target / COASTLINE_FILE, _coastline_collection(coast))
    log.info("basemap_built", target=str(target), countries=len(countries))
    return target


def basemap_dir() -> Path:
    """The folder holding the basemap files: shipped, or rebuilt into a cache."""
    if (SHIPPED_DIR / COUNTRIES_FILE).exists():
        return SHIPPED_DIR

    cache = Path(tempfile.gettempdir()) / "rastro-basemap"
    if not (cache / COUNTRIES_FILE).exists():
        build_basemap(cache)
    return cache


def load_layer_data(name: str) -> dict[str, Any]:
    """One basemap file as a GeoJSON dict (for a notebook, where no route serves it)."""
    with (basemap_dir() / name).open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def _coastline_collection(boundary: Any) -> dict[str, Any]:
    import shapely

    lines = shapely.get_parts(boundary)
    parts = [
        [[round(x, _DECIMALS), round(y, _DECIMALS)] for x, y in piece]
        for line in lines
        for piece in _coast_pieces(shapely.get_coordinates(line).tolist())
    ]
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "MultiLineString", "coordinates": parts},
            }
        ],
    }


def _coast_pieces(
    points: Sequence[Sequence[float]],
) -> Iterator[list[Sequence[float]]]:
    """Split a ring wherever it runs along the antimeridian or the south edge."""
    piece: list[Sequence[float]] = []
    for start, end in itertools.pairwise(points):
        if _is_artificial(start, end):
            if len(piece) >= 2:
                yield piece
            piece = []
            continue
        if not piece:
            piece.append(start)
        piece.append(end)
    if len(piece) >= 2:
        yield piece


def _is_artificial(start: Sequence[float], end: Sequence[float]) -> bool:
    on_antimeridian = abs(start[0]) >= _ANTIMERIDIAN and abs(end[0]) >= _ANTIMERIDIAN
    on_south_edge = start[1] <= _SOUTH_EDGE and end[1] <= _SOUTH_EDGE
    return on_antimeridian or on_south_edge


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, separators=(",", ":")), encoding="utf-8")


def main() -> None:
    """Rebuild the shipped files: ``python -m apps.basemap``."""
    from pipeline.logs import configure_logging

    configure_logging()
    build_basemap(SHIPPED_DIR)


if __name__ == "__main__":
    main()
