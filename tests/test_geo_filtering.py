"""Fix filters in geo.filtering: each check, its settings, and real noisy tracks."""

from __future__ import annotations

import itertools
import math
import pickle
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.filtering import (
    FilterReason,
    FilterSettings,
    FilterState,
    advance,
    distance_m,
    filter_fixes,
    fix_points,
    state_after,
)
from geo.fixes import MAX_AHEAD_MS, FixPoint, Rejection
from geo.tracks import read_wkt_track

DATA_TRACKS = Path(__file__).parents[1] / "data" / "tracks"
OUTLIERS = DATA_TRACKS / "de-munich-car-outliers-20090401.nmea"
MUNICH = Path(__file__).parents[1] / "data" / "tracks"
BAREFOOT = MUNICH / "de-munich-car-barefoot-x0001-001.json"

T0 = 1_700_000_000_000
LATITUDE, LONGITUDE = 48.137, 11.575
METRES_PER_DEGREE = 111_195.0
NO_THINNING = FilterSettings(min_distance_m=0.0)


def _fix(
    seconds: float = 0.0, north_m: float = 0.0, east_m: float = 0.0, **changes: object
) -> FixPoint:
    """A fix ``seconds`` after T0, displaced by metres from the reference point."""
    time_ms = T0 + round(seconds * 1000)
    fields: dict[str, object] = {
        "device": "van-1",
        "time_ms": time_ms,
        "latitude": LATITUDE + north_m / METRES_PER_DEGREE,
        "longitude": LONGITUDE
        + east_m / (METRES_PER_DEGREE * math.cos(math.radians(LATITUDE))),
        "server_time_ms": time_ms + 2_000,
    }
    fields.update(changes)
    return FixPoint(**fields)  # type: ignore[arg-type]


def _after_first(fix: FixPoint, settings: FilterSettings = NO_THINNING) -> object:
    """The reason ``fix`` gets once the reference fix at T0 was accepted."""
    state = state_after(_fix())
    return advance(state, fix, settings)[1]


class TestFilterSettings:
    @pytest.mark.parametrize(
        ("changes", "match"),
        [
            ({"max_ahead_s": 0.0}, "max_ahead_s must be a positive number, got 0.0"),
            ({"max_ahead_s": 90_000.0}, "max_ahead_s must be at most 86400 s"),
            ({"max_behind_s": -5.0}, "max_behind_s must be a positive number or None"),
            ({"max_hdop": math.nan}, "max_hdop must be a positive number or None"),
            ({"max_speed_kmh": math.inf}, "max_speed_kmh must be a positive number"),
            (
                {"keep_every_s": None},
                "keep_every_s must be a positive number, got None",
            ),
            ({"min_distance_m": -1.0}, "min_distance_m must be a number of at least 0"),
            (
                {"jump_tolerance_m": "5"},
                "jump_tolerance_m must be a number of at least",
            ),
            ({"duplicate_rule": "position"}, "duplicate_rule must be 'time' or"),
        ],
    )
    def test_settings_bad_value_is_refused(
        self, changes: dict[str, object], match: str
    ) -> None:
        with pytest.raises(ValueError, match=match):
            FilterSettings(**changes)  # type: ignore[arg-type]

    def test_settings_none_switches_a_check_off(self) -> None:
        off = FilterSettings(
            max_behind_s=None, max_accuracy_m=None, max_hdop=None, max_speed_kmh=None
        )

        assert off.max_hdop is None
        assert _after_first(_fix(1, north_m=5_000), off) is None


class TestValidity:
    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"valid": False}, FilterReason.INVALID),
            ({"latitude": 0.0, "longitude": 0.0}, FilterReason.ZERO),
            ({"latitude": 91.0}, FilterReason.OUT_OF_RANGE),
            ({"longitude": math.nan}, FilterReason.OUT_OF_RANGE),
        ],
    )
    def test_validity_rules_of_geo_fixes(
        self, changes: dict[str, object], reason: FilterReason
    ) -> None:
        assert advance(FilterState(), _fix(**changes), FilterSettings())[1] is reason

    def test_validity_reasons_share_rejection_codes(self) -> None:
        assert {r.value for r in Rejection} <= {r.value for r in FilterReason}

    def test_future_beyond_the_setting_is_filtered(self) -> None:
        ahead = _fix(server_time_ms=T0 - 61_000)
        settings = FilterSettings(max_ahead_s=60.0)

        assert advance(FilterState(), ahead, settings)[1] is FilterReason.FUTURE

    def test_future_within_the_setting_is_kept(self) -> None:
        ahead = _fix(server_time_ms=T0 - 59_000)
        settings = FilterSettings(max_ahead_s=60.0)

        assert advance(FilterState(), ahead, settings)[1] is None

    def test_future_beyond_a_day_is_the_validity_rule(self) -> None:
        ahead = _fix(server_time_ms=T0 - MAX_AHEAD_MS - 1)
        settings = FilterSettings(max_ahead_s=86_400.0)

        assert advance(FilterState(), ahead, settings)[1] is FilterReason.FUTURE

    def test_past_beyond_the_setting_is_filtered(self) -> None:
        week_ms = 7 * 86_400_000
        old = _fix(server_time_ms=T0 + week_ms + 1)
        recent = _fix(server_time_ms=T0 + week_ms)

        assert advance(FilterState(), old, FilterSettings())[1] is FilterReason.PAST
        assert advance(FilterState(), recent, FilterSettings())[1] is None

    def test_past_check_off_keeps_old_fixes(self) -> None:
        old = _fix(server_time_ms=T0 + 400 * 86_400_000)
        settings = FilterSettings(max_behind_s=None)

        assert advance(FilterState(), old, settings)[1] is None

    def test_no_server_time_skips_clock_checks(self) -> None:
        """Replay from rows without a receive time has no clock to compare with."""
        assert (
            advance(FilterState(), _fix(server_time_ms=0), FilterSettings())[1] is None
        )


class TestOrder:
    def test_same_time_is_a_duplicate(self) -> None:
        assert _after_first(_fix(0, north_m=30)) is FilterReason.DUPLICATE

    def test_older_is_out_of_order(self) -> None:
        assert _after_first(_fix(-1, north_m=5)) is FilterReason.OUT_OF_ORDER

    def test_position_rule_needs_the_same_place(self) -> None:
        settings = FilterSettings(duplicate_rule="time_and_position", min_distance_m=0)

        assert _after_first(_fix(0), settings) is FilterReason.DUPLICATE
        assert _after_first(_fix(0, north_m=3), settings) is None
        assert _after_first(_fix(0, north_m=30), settings) is FilterReason.JUMP


class TestQuality:
    def test_cell_location_flag_is_filtered(self) -> None:
        cell = _fix(1, attributes={"cellLocation": True})

        assert _after_first(cell) is FilterReason.CELL_LOCATION

    def test_cell_sized_accuracy_is_filtered(self) -> None:
        assert _after_first(_fix(1, accuracy=500.0)) is FilterReason.CELL_LOCATION
        assert _after_first(_fix(1, accuracy=499.0)) is FilterReason.INACCURATE

    def test_cell_locations_kept_when_allowed(self) -> None:
        settings = FilterSettings(drop_cell_location=False, min_distance_m=0.0)
        cell = _fix(1, accuracy=60.0, attributes={"cellLocation": True})

        assert _after_first(cell, settings) is None

    def test_accuracy_limit(self) -> None:
        assert _after_first(_fix(1, accuracy=100.0)) is None
        assert _after_first(_fix(1, accuracy=100.5)) is FilterReason.INACCURATE

    def test_hdop_limit(self) -> None:
        assert _after_first(_fix(1, attributes={"hdop": 10})) is None
        poor = _fix(1, attributes={"hdop": 10.1})
        assert _after_first(poor) is FilterReason.INACCURATE

    def test_hdop_that_is_not_a_number_is_ignored(self) -> None:
        odd = _fix(1, attributes={"hdop": "high"})

        assert _after_first(odd) is None


class TestJump:
    def test_impossible_speed_is_a_jump(self) -> None:
        """1 km in 10 s is 360 km/h, beyond the 250 km/h default."""
        assert _after_first(_fix(10, north_m=1_000)) is FilterReason.JUMP

    def test_possible_speed_is_kept(self) -> None:
        """The same kilometre in 60 s is 60 km/h."""
        assert _after_first(_fix(60, north_m=1_000)) is None

    def test_group_limit_applies(self) -> None:
        """125 km/h: a car, not a city bus limited to 100 km/h."""
        bus = FilterSettings(max_speed_kmh=100.0, min_distance_m=0.0)
        fix = _fix(10, north_m=(125 / 3.6) * 10 + 5)

        assert _after_first(fix) is None
        assert _after_first(fix, bus) is FilterReason.JUMP

    def test_tolerance_absorbs_noise_between_close_fixes(self) -> None:
        """4 m in 0.05 s would be 288 km/h; it is noise within the 5 m tolerance."""
        assert _after_first(_fix(0.05, north_m=4)) is None

    def test_jump_heals_once_the_distance_is_possible(self) -> None:
        """A real relocation: fixes are dropped until 1.2 km over the elapsed
        time fits 250 km/h, i.e. from 17.2 s on, without the state moving."""
        state = state_after(_fix())
        heal_s = (1_200 - 5) / (250 / 3.6)
        reasons = {}
        for second in range(1, 21):
            state, reasons[second] = advance(
                state, _fix(second, north_m=1_200), NO_THINNING
            )

        dropped = [s for s, reason in reasons.items() if reason is FilterReason.JUMP]
        assert dropped == list(range(1, math.ceil(heal_s)))
        assert reasons[math.ceil(heal_s)] is None


class TestMinDistance:
    def test_parked_jitter_is_thinned_to_one_fix_per_period(self) -> None:
        """Two hours parked, a fix every 10 s within 20 m: one kept per 5 min."""
        fixes = [
            _fix(second, north_m=20 * math.sin(second), east_m=15 * math.cos(second))
            for second in range(0, 7_200, 10)
        ]

        reasons, _ = filter_fixes(fixes, FilterSettings())

        kept = [f.time_ms for f, r in zip(fixes, reasons, strict=True) if r is None]
        assert len(kept) == 7_200 // 300
        assert all(b - a == 300_000 for a, b in itertools.pairwise(kept))
        assert set(reasons) == {None, FilterReason.STATIONARY}

    def test_moving_far_enough_is_kept(self) -> None:
        assert _after_first(_fix(10, north_m=51), FilterSettings()) is None
        close = _fix(10, north_m=49)
        assert _after_first(close, FilterSettings()) is FilterReason.STATIONARY

    def test_ignition_change_is_kept(self) -> None:
        state = state_after(_fix(attributes={"ignition": False}))
        on = _fix(30, north_m=2, attributes={"ignition": True})
        same = _fix(30, north_m=2, attributes={"ignition": False})

        assert advance(state, on, FilterSettings())[1] is None
        assert advance(state, same, FilterSettings())[1] is FilterReason.STATIONARY

    def test_motion_flag_change_is_kept(self) -> None:
        state = state_after(_fix(attributes={"motion": False}))
        moving = _fix(30, north_m=2, attributes={"motion": True})

        assert advance(state, moving, FilterSettings())[1] is None

    def test_first_standing_fix_after_driving_is_kept(self) -> None:
        """Where a trip may end; the next standing fix is thinned again."""
        state = state_after(_fix(speed_kmh=40.0))
        stopped = _fix(10, north_m=3, speed_kmh=0.0)

        state, reason = advance(state, stopped, FilterSettings())
        again = advance(state, _fix(20, north_m=4, speed_kmh=0.0), FilterSettings())

        assert reason is None
        assert again[1] is FilterReason.STATIONARY

    def test_driving_speed_is_not_thinned(self) -> None:
        """Crawling at 8 km/h in a queue moves 22 m in 10 s: kept."""
        crawl = _fix(10, north_m=22, speed_kmh=8.0)

        assert _after_first(crawl, FilterSettings()) is None
        everything = FilterSettings(thin_below_kmh=None)
        assert _after_first(crawl, everything) is FilterReason.STATIONARY


class TestState:
    def test_filtered_fix_returns_the_same_state(self) -> None:
        state = state_after(_fix())

        after, reason = advance(state, _fix(1, north_m=2_000), FilterSettings())

        assert reason is FilterReason.JUMP
        assert after is state

    def test_ignition_is_carried_over_fixes_without_it(self) -> None:
        state = state_after(_fix(attributes={"ignition": True}))

        after, _ = advance(state, _fix(60, north_m=100), FilterSettings())

        assert after.ignition is True
        assert after.time_ms == T0 + 60_000

    def test_distance_matches_a_degree(self) -> None:
        assert distance_m(LATITUDE, LONGITUDE, LATITUDE + 1, LONGITUDE) == (
            pytest.approx(METRES_PER_DEGREE, rel=1e-4)
        )


class TestFixPoints:
    def test_track_table_becomes_fix_points(self) -> None:
        frame = pd.DataFrame(
            {
                "device": ["van-1", "van-1"],
                "time": pd.to_datetime(
                    ["2026-03-01T10:00:10Z", "2026-03-01T10:00:00Z"]
                ),
                "latitude": [48.1, 48.2],
                "longitude": [11.5, 11.6],
                "speed_kmh": [12.0, math.nan],
                "ignition": [True, None],
                "hdop": [1.5, math.nan],
            }
        )

        points = fix_points(frame)

        start = int(datetime(2026, 3, 1, 10, tzinfo=UTC).timestamp() * 1000)
        assert [p.time_ms for p in points] == [start, start + 10_000]
        assert points[0].speed_kmh is None
        assert points[0].attributes == {}
        assert points[1].attributes == {"ignition": True, "hdop": 1.5}
        assert points[1].ignition is True

    def test_missing_columns_are_named(self) -> None:
        frame = pd.DataFrame({"latitude": [48.1], "longitude": [11.5]})

        with pytest.raises(ValueError, match=r"needs the columns \['device', 'time'\]"):
            fix_points(frame)

    def test_filter_fixes_reads_a_table(self) -> None:
        track = read_wkt_track(BAREFOOT, device="car")

        reasons, state = filter_fixes(track, NO_THINNING)

        assert len(reasons) == len(track)
        assert state.time_ms == int(track["time"].iloc[-1].value // 1_000_000)


@dataclass(frozen=True)
class NmeaFix:
    fix: FixPoint
    clock: str


def _nmea_fixes(path: Path) -> list[NmeaFix]:
    """$GPRMC sentences as fixes (speed from knots), with HDOP from $GPGGA."""
    hdops: dict[str, float] = {}
    rmcs: list[list[str]] = []
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        fields = line.strip("\x00 ").split("*")[0].split(",")
        if fields[0] == "$GPGGA" and fields[8] and "NaN" not in fields[8]:
            hdops[fields[1]] = float(fields[8])
        elif fields[0] == "$GPRMC" and fields[1] and fields[9]:
            rmcs.append(fields)

    return [_nmea_fix(fields, hdops.get(fields[1])) for fields in rmcs]


def _nmea_fix(fields: list[str], hdop: float | None) -> NmeaFix:
    clock = fields[1].split(".")[0]
    when = datetime.strptime(fields[9] + clock, "%d%m%y%H%M%S").replace(tzinfo=UTC)
    time_ms = int(when.timestamp() * 1000)
    fix = FixPoint(
        device="outliers",
        time_ms=time_ms,
        latitude=_nmea_degrees(fields[3], fields[4]),
        longitude=_nmea_degrees(fields[5], fields[6]),
        speed_kmh=float(fields[7]) * 1.852 if fields[7] else None,
        valid=fields[2] == "A",
        server_time_ms=time_ms + 1_000,
        attributes={} if hdop is None else {"hdop": hdop},
    )
    return NmeaFix(fix, clock)


def _nmea_degrees(value: str, hemisphere: str) -> float:
    if not value:
        return 0.0
    degrees = int(float(value) / 100)
    decimal = degrees + (float(value) - degrees * 100) / 60
    return -decimal if hemisphere in "SW" else decimal


class TestRecordedTracks:
    def test_barefoot_snap_of_470_m_is_a_jump(self) -> None:
        """The sample snaps 470 m in one second after a stop (data/tracks README);
        the filter drops it, then heals once 250 km/h covers the distance."""
        fixes = fix_points(read_wkt_track(BAREFOOT, device="car"))

        reasons, _ = filter_fixes(fixes, NO_THINNING)

        jumps = [i for i, r in enumerate(reasons) if r is FilterReason.JUMP]
        snap = jumps[0]
        step = distance_m(
            fixes[snap - 1].latitude,
            fixes[snap - 1].longitude,
            fixes[snap].latitude,
            fixes[snap].longitude,
        )
        assert step == pytest.approx(470, abs=15)
        assert jumps == list(range(snap, snap + len(jumps)))
        assert len(jumps) <= math.ceil(step / (250 / 3.6)) + 2
        assert set(reasons) == {None, FilterReason.JUMP}

    def test_outlier_track_reasons(self) -> None:
        """The GENIVI Munich log made for filter tests (shared/tracks README):
        20 void RMC, 178 fixes with HDOP above 10, a clock stepping back at
        12:43:41-12:43:42, and four jumps of 204-382 km/h."""
        nmea = _nmea_fixes(OUTLIERS)

        reasons, _ = filter_fixes([n.fix for n in nmea], NO_THINNING)

        counts = Counter(reasons)
        assert counts[FilterReason.INVALID] == 20
        assert counts[FilterReason.INACCURATE] == 178
        by_clock = [(n.clock, r) for n, r in zip(nmea, reasons, strict=True)]
        assert ("124341", FilterReason.OUT_OF_ORDER) in by_clock
        assert ("124342", FilterReason.DUPLICATE) in by_clock
        jumps = sorted(clock for clock, r in by_clock if r is FilterReason.JUMP)
        assert jumps == ["124038", "130116"]

    def test_outlier_jumps_below_the_limit_pass(self) -> None:
        """12:40:40 (204 km/h) is measured from 12:40:39, which was kept: 198 km/h
        over two seconds from the last good fix, possible for a car.  12:59:15
        (281 km/h) follows an HDOP-12 fix, so it is measured over two seconds
        too.  A city-fleet limit of 120 km/h catches both."""
        nmea = _nmea_fixes(OUTLIERS)
        city = FilterSettings(max_speed_kmh=120.0, min_distance_m=0.0)

        reasons, _ = filter_fixes([n.fix for n in nmea], city)

        jumps = {n.clock for n, r in zip(nmea, reasons, strict=True) if r == "jump"}
        assert {"124038", "124040", "125915", "130116"} <= jumps


def _track() -> st.SearchStrategy[list[FixPoint]]:
    """Random fixes of one device: steps of 0-30 s, 0-400 m, sometimes bad."""
    step = st.tuples(
        st.integers(min_value=-2, max_value=30),
        st.floats(min_value=0, max_value=400),
        st.floats(min_value=0, max_value=2 * math.pi),
        st.sampled_from([None, 5.0, 80.0, 900.0]),
        st.sampled_from([None, True, False]),
        st.booleans(),
    )
    return st.lists(step, min_size=1, max_size=60).map(_walk)


Step = tuple[int, float, float, float | None, bool | None, bool]


def _walk(steps: list[Step]) -> list[FixPoint]:
    fixes = []
    seconds, north, east = 0.0, 0.0, 0.0
    for dt, metres, heading, accuracy, ignition, valid in steps:
        seconds += dt
        north += metres * math.cos(heading)
        east += metres * math.sin(heading)
        attributes = {} if ignition is None else {"ignition": ignition}
        fixes.append(
            _fix(
                seconds,
                north,
                east,
                accuracy=accuracy,
                valid=valid,
                attributes=attributes,
            )
        )
    return fixes


class TestInvariants:
    @given(_track())
    @settings(max_examples=150, deadline=None)
    def test_filtered_fix_never_changes_the_state(self, fixes: list[FixPoint]) -> None:
        state = FilterState()
        for fix in fixes:
            before = pickle.dumps(state)
            state, reason = advance(state, fix, FilterSettings())
            if reason is not None:
                assert pickle.dumps(state) == before
            else:
                assert state.time_ms == fix.time_ms

    @given(_track())
    @settings(max_examples=100, deadline=None)
    def test_accepted_fixes_move_forward(self, fixes: list[FixPoint]) -> None:
        reasons, _ = filter_fixes(fixes, FilterSettings())

        kept = [f.time_ms for f, r in zip(fixes, reasons, strict=True) if r is None]
        assert kept == sorted(set(kept))

    @given(_track(), st.data())
    @settings(max_examples=100, deadline=None)
    def test_pickled_state_resumes_identically(
        self, fixes: list[FixPoint], data: st.DataObject
    ) -> None:
        cut = data.draw(st.integers(min_value=0, max_value=len(fixes)))
        whole, whole_state = filter_fixes(fixes, FilterSettings())

        head, state = filter_fixes(fixes[:cut], FilterSettings())
        tail, end_state = filter_fixes(
            fixes[cut:], FilterSettings(), pickle.loads(pickle.dumps(state))
        )

        assert head + tail == whole
        assert end_state == whole_state
