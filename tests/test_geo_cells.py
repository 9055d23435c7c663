"""Fixes by H3 cell and hour: partial aggregates, merges, rollups and dwell time."""

from __future__ import annotations

import dataclasses
import pickle
import random
from pathlib import Path

import h3
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.cells import (
    HOUR_MS,
    TOP_SPEED_KMH,
    CellHour,
    CellSettings,
    CellState,
    advance,
    aggregate,
    cell_hours,
    merged,
    rollup,
    table,
)
from geo.fixes import FixPoint, h3_cell
from geo.tracks import read_wkt_track, with_motion

MUNICH = (
    Path(__file__).resolve().parent.parent
    / "data"
    / "tracks"
    / "de-munich-car-barefoot-x0001-001.json"
)
HERE = (48.1, 11.5)  # one resolution-9 cell round this point
THERE = (48.2, 11.6)


def track(
    rows: list[tuple[str, float, tuple[float, float], float | None]],
) -> pd.DataFrame:
    """A track table from (device, seconds, (lat, lon), speed) rows."""
    return pd.DataFrame(
        {
            "device": [r[0] for r in rows],
            "time": pd.to_datetime([r[1] for r in rows], unit="s", utc=True),
            "latitude": [r[2][0] for r in rows],
            "longitude": [r[2][1] for r in rows],
            "speed_kmh": [np.nan if r[3] is None else r[3] for r in rows],
        }
    )


def munich() -> pd.DataFrame:
    return with_motion(read_wkt_track(MUNICH, device="car"))


TINY = [
    ("v", 0, HERE, 0.0),
    ("v", 30, HERE, 2.0),  # 0 -> 2 km/h: both stopped, 30 s to HERE
    ("v", 60, HERE, 10.0),
    ("v", 90, HERE, 0.0),
    ("v", 120, THERE, 0.0),  # stopped pair, 30 s to the earlier fix's cell: HERE
    ("v", 500, THERE, 0.0),  # 380 s apart: capped at 300 s, to THERE
    ("w", 10, HERE, 40.0),
    ("w", 20, HERE, None),
]


class TestTinyTrack:
    """Values worked out by hand from the rows."""

    def test_tiny_track_by_hand(self) -> None:
        result = cell_hours(track(TINY), CellSettings(max_dwell_gap_s=300.0))

        here = result[result["cell"] == h3_cell(*HERE, 9)].iloc[0]
        there = result[result["cell"] == h3_cell(*THERE, 9)].iloc[0]
        assert len(result) == 2
        assert (here["fixes"], here["vehicles"]) == (6, 2)
        assert here["mean_speed_kmh"] == pytest.approx((0 + 2 + 10 + 0 + 40) / 5)
        # numpy's linear p95 of [0, 0, 2, 10, 40]: rank 3.8, 10 + 0.8 * 30.
        assert here["p95_speed_kmh"] == pytest.approx(34.0)
        assert here["dwell_s"] == 60.0
        assert (there["fixes"], there["vehicles"], there["dwell_s"]) == (2, 1, 300.0)
        assert there["p95_speed_kmh"] == 0.0
        assert str(here["hour"]) == "1970-01-01 00:00:00+00:00"
        assert here["h3"] == h3.latlng_to_cell(*HERE, 9)

    def test_dwell_belongs_to_the_hour_of_the_earlier_fix(self) -> None:
        rows = [("v", 3_590, HERE, 0.0), ("v", 3_610, HERE, 0.0)]

        result = cell_hours(track(rows))

        assert result[["fixes", "dwell_s"]].values.tolist() == [[1, 20.0], [1, 0.0]]
        assert result["hour"].tolist() == [
            pd.Timestamp(0, tz="UTC"),
            pd.Timestamp(HOUR_MS, unit="ms", tz="UTC"),
        ]

    def test_stopped_threshold_is_strict(self) -> None:
        rows = [("v", 0, HERE, 3.0), ("v", 10, HERE, 0.0), ("v", 20, HERE, 2.9)]

        result = cell_hours(track(rows), CellSettings(stopped_below_kmh=3.0))

        assert result["dwell_s"].tolist() == [10.0]


class TestPartials:
    def test_speeds_binned_clipped_and_missing(self) -> None:
        cell = h3_cell(*HERE, 9)
        fixes = [
            FixPoint("v", 0, *HERE, speed_kmh=speed)
            for speed in (-4.0, 12.4999, 12.5, 1_690.0, None, float("nan"))
        ]

        (partial,) = merged(CellHour.of_fix(cell, f) for f in fixes).values()

        assert partial.fixes == 6 and partial.speed_fixes == 4
        assert partial.speed_bins == ((0, 1), (12, 1), (13, 1), (TOP_SPEED_KMH, 1))
        assert partial.speed_sum_mkmh == 0 + 12_500 + 12_500 + 1_690_000
        assert partial.speed_quantile_kmh(1.0) == TOP_SPEED_KMH

    def test_no_speed_no_statistics(self) -> None:
        partial = CellHour.of_fix(h3_cell(*HERE, 9), FixPoint("v", 0, *HERE))

        assert partial.mean_speed_kmh is None
        assert partial.speed_quantile_kmh(0.95) is None

    def test_merge_refuses_another_cell_hour(self) -> None:
        cell = h3_cell(*HERE, 9)
        a = CellHour.of_fix(cell, FixPoint("v", 0, *HERE))
        b = CellHour.of_fix(cell, FixPoint("v", HOUR_MS, *HERE))

        with pytest.raises(ValueError, match="cannot merge cell-hour"):
            a.merge(b)

    def test_parent_must_be_coarser(self) -> None:
        partial = CellHour.of_fix(h3_cell(*HERE, 7), FixPoint("v", 0, *HERE))

        with pytest.raises(ValueError, match="resolution must be from 0 to 7"):
            partial.to_parent(9)

    def test_quantile_must_be_a_fraction(self) -> None:
        partial = CellHour.of_fix(h3_cell(*HERE, 9), FixPoint("v", 0, *HERE, 5.0))

        with pytest.raises(ValueError, match="q must be from 0 to 1, got 95"):
            partial.speed_quantile_kmh(95)

    @pytest.mark.parametrize(
        ("changes", "match"),
        [
            ({"resolution": 16}, "resolution must be from 0 to 15"),
            ({"resolution": True}, "resolution must be from 0 to 15"),
            ({"stopped_below_kmh": 0.0}, "stopped_below_kmh must be a positive"),
            ({"max_dwell_gap_s": float("inf")}, "max_dwell_gap_s must be positive"),
        ],
    )
    def test_settings_are_checked(self, changes: dict[str, object], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            CellSettings(**changes)  # type: ignore[arg-type]

    def test_table_needs_the_track_columns(self) -> None:
        with pytest.raises(ValueError, match="needs the columns"):
            cell_hours(pd.DataFrame({"device": ["v"], "time": [pd.Timestamp(0)]}))


class TestMunich:
    def test_every_fix_counted_once_at_every_resolution(self) -> None:
        result = cell_hours(munich(), rollups=(8, 7, 5))

        per_level = result.groupby("resolution").agg(
            fixes=("fixes", "sum"),
            dwell_s=("dwell_s", "sum"),
            vehicles=("vehicles", "max"),
        )

        assert per_level["fixes"].tolist() == [1194] * 4
        assert per_level["vehicles"].tolist() == [1] * 4
        assert per_level["dwell_s"].nunique() == 1
        assert per_level["dwell_s"].iloc[0] == pytest.approx(
            _reference_dwell_s(munich())
        )
        assert per_level["dwell_s"].iloc[0] > 120  # the drive has 6 stops of 20-120 s

    @pytest.mark.parametrize("coarse", [8, 7, 5])
    def test_rollup_equals_direct_aggregation(self, coarse: int) -> None:
        """Rolled-up partials = grouping the fixes by the parent cell directly."""
        frame = munich()
        stored = list(aggregate(_fixes(frame), CellSettings()).values())

        rolled = table(rollup(stored, coarse)).set_index(["cell", "hour"])
        direct = _reference(frame, coarse)

        assert sorted(rolled.index) == sorted(direct.index)
        joined = rolled.join(direct, rsuffix="_ref")
        assert (joined["fixes"] == joined["fixes_ref"]).all()
        assert (joined["vehicles"] == joined["vehicles_ref"]).all()
        assert np.allclose(joined["mean_speed_kmh"], joined["mean_ref"], atol=1e-3)
        assert np.allclose(joined["dwell_s"], joined["dwell_ref"])

    def test_p95_within_half_a_kmh_of_numpy(self) -> None:
        frame = munich()
        result = cell_hours(frame).set_index(["cell", "hour"])
        exact = _reference(frame, 9)["p95_ref"]

        comparable = exact[exact < TOP_SPEED_KMH - 0.5].index
        error = (result.loc[comparable, "p95_speed_kmh"] - exact[comparable]).abs()

        assert len(comparable) >= len(result) - 2
        assert error.max() <= 0.5
        assert (exact >= TOP_SPEED_KMH - 0.5).sum() >= 1  # the 470 m jump's cell

    def test_rollups_compose(self) -> None:
        stored = list(aggregate(_fixes(munich()), CellSettings()).values())

        direct = sorted(rollup(stored, 5), key=lambda p: p.key)
        stepwise = sorted(rollup(rollup(stored, 7), 5), key=lambda p: p.key)

        assert direct == stepwise


def _fixes(frame: pd.DataFrame) -> list[FixPoint]:
    return [
        FixPoint(
            r.device, r.time.value // 1_000_000, r.latitude, r.longitude, r.speed_kmh
        )
        for r in frame.itertuples()
    ]


def _reference(frame: pd.DataFrame, resolution: int) -> pd.DataFrame:
    """Fixes grouped by the parent of their resolution-9 cell, with plain pandas."""
    ordered = frame.sort_values(["device", "time"], ignore_index=True)
    cells = [
        h3.str_to_int(h3.cell_to_parent(h3.latlng_to_cell(lat, lon, 9), resolution))
        for lat, lon in zip(ordered["latitude"], ordered["longitude"], strict=True)
    ]
    ordered = ordered.assign(cell=cells, hour=ordered["time"].dt.floor("h"))
    ordered["dwell"] = _pair_dwell_s(ordered)
    grouped = ordered.groupby(["cell", "hour"])
    return pd.DataFrame(
        {
            "fixes_ref": grouped.size(),
            "vehicles_ref": grouped["device"].nunique(),
            "mean_ref": grouped["speed_kmh"].mean(),
            "p95_ref": grouped["speed_kmh"].quantile(0.95),
            "dwell_ref": grouped["dwell"].sum(),
        }
    )


def _pair_dwell_s(ordered: pd.DataFrame, cap_s: float = 300.0) -> pd.Series:
    """Dwell each fix starts: to the next fix of its device if both are below 3 km/h."""
    following = ordered.groupby("device")[["time", "speed_kmh"]].shift(-1)
    gap_s = (following["time"] - ordered["time"]).dt.total_seconds()
    stopped = (ordered["speed_kmh"] < 3.0) & (following["speed_kmh"] < 3.0)
    return gap_s.clip(upper=cap_s).where(stopped, 0.0).fillna(0.0)


def _reference_dwell_s(frame: pd.DataFrame) -> float:
    ordered = frame.sort_values(["device", "time"], ignore_index=True)
    return float(_pair_dwell_s(ordered).sum())


@st.composite
def fleets(draw: st.DrawFn) -> list[FixPoint]:
    """Fixes of three devices over two hours round a few cells, speeds often low."""
    fixes = []
    for device in ("a", "b", "c"):
        time_ms = draw(st.integers(0, HOUR_MS))
        for _ in range(draw(st.integers(0, 15))):
            time_ms += draw(st.integers(1, 400_000))
            lat = 48.1 + draw(st.integers(0, 3)) * 0.004
            speed = draw(st.one_of(st.none(), st.floats(0, 5), st.floats(0, 300)))
            fixes.append(FixPoint(device, time_ms, lat, 11.5, speed_kmh=speed))
    return fixes


@settings(max_examples=80, deadline=None)
@given(fixes=fleets(), seed=st.integers(0, 2**32 - 1), cut=st.integers(0, 50))
def test_partials_merge_in_any_order_and_resume(
    fixes: list[FixPoint], seed: int, cut: int
) -> None:
    """Stepping (with a pickle restart), shuffled merges and the batch all agree."""
    batch = aggregate(fixes, CellSettings())

    states: dict[str, CellState] = {}
    partials: list[CellHour] = []
    for i, fix in enumerate(sorted(fixes, key=lambda f: (f.device, f.time_ms))):
        if i == cut:
            states = pickle.loads(pickle.dumps(states))
        states[fix.device], found = advance(
            states.get(fix.device, CellState()), fix, CellSettings()
        )
        partials += found
    random.Random(seed).shuffle(partials)

    assert merged(partials) == batch
    assert sum(p.fixes for p in batch.values()) == len(fixes)


@settings(max_examples=60, deadline=None)
@given(fixes=fleets(), seed=st.integers(0, 2**32 - 1))
def test_late_fixes_land_in_their_cell_hour(fixes: list[FixPoint], seed: int) -> None:
    """Out of order, every fix still counts in its own cell-hour (dwell aside)."""
    arrival = list(fixes)
    random.Random(seed).shuffle(arrival)
    in_order = aggregate(fixes, CellSettings())

    states: dict[str, CellState] = {}
    partials: list[CellHour] = []
    for fix in arrival:
        state = states.get(fix.device, CellState())
        states[fix.device], found = advance(state, fix, CellSettings())
        partials += found

    assert _without_dwell(merged(partials)) == _without_dwell(in_order)


def _without_dwell(
    partials: dict[tuple[int, int], CellHour],
) -> dict[tuple[int, int], CellHour]:
    return {
        key: dataclasses.replace(partial, dwell_ms=0)
        for key, partial in partials.items()
        if partial.fixes
    }
