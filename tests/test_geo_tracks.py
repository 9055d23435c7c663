"""Reading recorded tracks and summarising them by H3 cell."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geo.tracks import (
    h3_cells,
    h3_summary,
    haversine_m,
    read_nmea_track,
    read_wkt_track,
    with_motion,
)

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "tracks"
MUNICH = SAMPLE / "de-munich-car-barefoot-x0001-001.json"


class TestReadWktTrack:
    def test_sample_reads_every_fix_in_time_order(self) -> None:
        track = read_wkt_track(MUNICH, device="van-1")

        assert len(track) == 1194
        assert track["time"].is_monotonic_increasing
        assert str(track["time"].iloc[0]) == "2014-09-10 04:54:07+00:00"
        assert track["latitude"].iloc[0] == pytest.approx(48.16350662940509)
        assert set(track["device"]) == {"van-1"}

    def test_empty_file_is_refused(self, tmp_path: Path) -> None:
        empty = tmp_path / "empty.json"
        empty.write_text(json.dumps([]))

        with pytest.raises(ValueError, match="holds no JSON array"):
            read_wkt_track(empty)


def test_haversine_one_degree_of_latitude() -> None:
    metres = haversine_m(
        np.array([0.0]), np.array([0.0]), np.array([1.0]), np.array([0.0])
    )

    assert metres[0] == pytest.approx(111_195, rel=1e-3)


class TestWithMotion:
    def test_sample_shows_the_known_position_jump(self) -> None:
        """The recorded drive snaps 470 m in one second after a stop (README)."""
        track = with_motion(read_wkt_track(MUNICH))

        fastest = track.loc[track["speed_kmh"].idxmax()]

        assert fastest["step_m"] == pytest.approx(470, abs=15)
        assert fastest["speed_kmh"] > 1500
        assert np.isnan(track["speed_kmh"].iloc[0])

    def test_devices_do_not_mix(self) -> None:
        times = pd.to_datetime(["2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z"] * 2)
        track = pd.DataFrame(
            {
                "device": ["a", "a", "b", "b"],
                "time": times,
                "latitude": [0.0, 0.001, 50.0, 50.0],
                "longitude": [0.0, 0.0, 8.0, 8.0],
            }
        )

        moving = with_motion(track)

        assert moving["step_m"].tolist() == pytest.approx([0, 111.2, 0, 0], abs=0.1)


class TestH3:
    def test_cells_have_requested_resolution(self) -> None:
        track = read_wkt_track(MUNICH).head(10)

        import h3

        assert {h3.get_resolution(cell) for cell in h3_cells(track, 9)} == {9}

    def test_bad_resolution_is_refused(self) -> None:
        with pytest.raises(ValueError, match="resolution must be from 0 to 15"):
            h3_cells(read_wkt_track(MUNICH), 16)

    def test_summary_counts_every_fix_once(self) -> None:
        track = read_wkt_track(MUNICH)

        summary = h3_summary(track, 9)

        assert summary["fixes"].sum() == len(track)
        assert (summary["devices"] == 1).all()


def test_read_nmea_track_keeps_every_rmc_in_file_order() -> None:
    """The outliers log as documented: 1,867 RMC (20 void), 178 with HDOP over 10."""
    track = read_nmea_track(SAMPLE / "de-munich-car-outliers-20090401.nmea", "car-2")

    assert len(track) == 1867
    assert int(track["valid"].sum()) == 1847
    assert int(track["hdop"].gt(10).sum()) == 178
    assert not track["time"].is_monotonic_increasing  # the clock steps back
    assert track["latitude"].between(48.0, 48.3).all()
