"""Recorded tracks as tables: reading the sample formats, speeds and H3 aggregates.

Everything here takes and returns pandas objects and does no I/O beyond reading the
file it is handed, so notebooks, replay and tests share one definition of a track.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h3
import numpy as np
import numpy.typing as npt
import pandas as pd

EARTH_RADIUS_M = 6_371_008.8


def read_wkt_track(path: Path, device: str | None = None) -> pd.DataFrame:
    """Read a JSON array of ``{"point": "POINT(lon lat)", "time": ...}`` records.

    Returns one row per fix, sorted by time, with columns ``device``, ``time`` (UTC),
    ``latitude`` and ``longitude``.  ``device`` defaults to the file's own ``id``.
    """
    records = json.loads(path.read_text())
    if not isinstance(records, list) or not records:
        message = f"{str(path)!r} holds no JSON array of track points"
        raise ValueError(message)

    longitudes, latitudes = zip(*(_wkt_point(r["point"]) for r in records), strict=True)
    frame = pd.DataFrame(
        {
            "device": device or str(records[0].get("id", path.stem)),
            "time": pd.to_datetime([r["time"] for r in records], utc=True),
            "latitude": latitudes,
            "longitude": longitudes,
        }
    )
    return frame.sort_values("time", ignore_index=True)


def read_nmea_track(path: Path, device: str) -> pd.DataFrame:
    """Read the ``$GPRMC`` sentences of an NMEA log, with HDOP from ``$GPGGA``.

    Returns one row per RMC sentence in file order (a logger's clock may step back:
    nothing is sorted or dropped), with columns ``device``, ``time`` (UTC),
    ``latitude``, ``longitude``, ``speed_kmh`` (from knots), ``valid`` (status
    ``A``) and ``hdop`` (NaN where no GGA of the same second gave one).
    """
    hdops: dict[str, float] = {}
    rmcs: list[list[str]] = []
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        fields = line.strip("\x00 ").split("*")[0].split(",")
        if fields[0] == "$GPGGA" and len(fields) > 8 and _is_number(fields[8]):
            hdops[fields[1]] = float(fields[8])
        elif fields[0] == "$GPRMC" and len(fields) > 9 and fields[1] and fields[9]:
            rmcs.append(fields)

    # A cycle may give its GGA after its RMC: match them once all are read.
    rows = [_rmc_row(fields, hdops.get(fields[1], math.nan)) for fields in rmcs]
    frame = pd.DataFrame(
        rows, columns=["time", "latitude", "longitude", "speed_kmh", "valid", "hdop"]
    )
    frame["time"] = pd.to_datetime(frame["time"], format="%d%m%y%H%M%S", utc=True)
    frame.insert(0, "device", device)
    return frame


def _rmc_row(
    fields: list[str], hdop: float
) -> tuple[str, float, float, float, bool, float]:
    clock = fields[1].split(".")[0]
    knots = float(fields[7]) if _is_number(fields[7]) else math.nan
    return (
        fields[9] + clock,
        _nmea_degrees(fields[3], fields[4]),
        _nmea_degrees(fields[5], fields[6]),
        knots * 1.852,
        fields[2] == "A",
        hdop,
    )


def _nmea_degrees(value: str, hemisphere: str) -> float:
    """``ddmm.mmmm`` (or ``dddmm.mmmm``) and a hemisphere letter as signed degrees."""
    if not _is_number(value):
        return math.nan
    degrees = int(float(value) / 100)
    decimal = degrees + (float(value) - degrees * 100) / 60
    return -decimal if hemisphere in ("S", "W") else decimal


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _wkt_point(text: str) -> tuple[float, float]:
    inside = text.strip().removeprefix("POINT(").removesuffix(")")
    lon, lat = inside.split()
    return float(lon), float(lat)


Degrees = npt.NDArray[np.float64]


def haversine_m(lat1: Degrees, lon1: Degrees, lat2: Degrees, lon2: Degrees) -> Degrees:
    """Great-circle distance in metres between arrays of points (degrees)."""
    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    dphi = phi2 - phi1
    dlmb = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2) ** 2
    metres: Degrees = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return metres


def with_motion(track: pd.DataFrame) -> pd.DataFrame:
    """Add ``step_m``, ``step_s`` and ``speed_kmh`` implied by consecutive fixes.

    The first fix of each device has no predecessor: its step is 0 and its speed NaN.
    """
    ordered = track.sort_values(["device", "time"], ignore_index=True)
    previous = ordered.groupby("device")[["latitude", "longitude", "time"]].shift()
    step_m = haversine_m(
        previous["latitude"].to_numpy(dtype=float),
        previous["longitude"].to_numpy(dtype=float),
        ordered["latitude"].to_numpy(dtype=float),
        ordered["longitude"].to_numpy(dtype=float),
    )
    step_s = (ordered["time"] - previous["time"]).dt.total_seconds().to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        speed = np.where(step_s > 0, step_m / step_s * 3.6, math.nan)
    return ordered.assign(
        step_m=np.nan_to_num(step_m), step_s=np.nan_to_num(step_s), speed_kmh=speed
    )


def h3_cells(track: pd.DataFrame, resolution: int) -> pd.Series:
    """The H3 cell (hex string) of every fix at ``resolution`` (0 to 15)."""
    if not 0 <= resolution <= 15:
        message = f"resolution must be from 0 to 15, got {resolution!r}"
        raise ValueError(message)
    cells = [
        h3.latlng_to_cell(lat, lon, resolution)
        for lat, lon in zip(track["latitude"], track["longitude"], strict=True)
    ]
    return pd.Series(cells, index=track.index, name="h3")


def h3_summary(track: pd.DataFrame, resolution: int) -> pd.DataFrame:
    """Per H3 cell: fixes, distinct devices, and mean and 95th-percentile speed."""
    moving = with_motion(track)
    moving["h3"] = h3_cells(moving, resolution)
    grouped = moving.groupby("h3")
    summary = pd.DataFrame(
        {
            "fixes": grouped.size(),
            "devices": grouped["device"].nunique(),
            "mean_speed_kmh": grouped["speed_kmh"].mean(),
            "p95_speed_kmh": grouped["speed_kmh"].quantile(0.95),
        }
    )
    return summary.reset_index().sort_values(
        "fixes", ascending=False, ignore_index=True
    )
