"""Trips, stops, idle, odometer and late data in geo.trips, on built and real tracks."""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.filtering import FilterSettings, filter_fixes, fix_points
from geo.fixes import FixPoint
from geo.tracks import read_wkt_track, with_motion
from geo.trips import (
    Record,
    Stop,
    Trip,
    TripSettings,
    TripState,
    advance,
    detect_trips,
    next_timer_ms,
    on_timer,
    ongoing,
    recompute_window,
    replay_window,
    resume_state,
)

BAREFOOT = (
    Path(__file__).parents[1]
    / "data"
    / "tracks"
    / "de-munich-car-barefoot-x0001-001.json"
)

T0 = 1_700_000_000_000
LATITUDE, LONGITUDE = 48.137, 11.575
METRES_PER_DEGREE = 111_195.0


@dataclass
class Route:
    """Builds one device's fixes leg by leg: drive, park, silent gaps.

    Each leg advances the clock by its duration and emits a fix every
    ``interval_s`` (the first one ``interval_s`` after the leg starts).  Speed is
    reported unless ``report_speed`` is off; ignition is reported unless
    ``report_ignition`` is off; ``counter_m`` adds the device's own odometer.
    """

    interval_s: int = 10
    device: str = "van-1"
    report_speed: bool = True
    report_ignition: bool = True
    counter_m: float | None = None
    time_ms: int = T0
    north_m: float = 0.0
    east_m: float = 0.0
    travelled_m: float = 0.0
    fixes: list[FixPoint] = field(default_factory=list)

    def start(self, *, ignition: bool = False) -> Route:
        self._emit(0.0, ignition)
        return self

    def drive(
        self,
        seconds: int,
        speed_kmh: float,
        heading: float = 90.0,
        *,
        ignition: bool = True,
    ) -> Route:
        step_m = speed_kmh / 3.6 * self.interval_s
        for _ in range(seconds // self.interval_s):
            self.time_ms += self.interval_s * 1000
            self._move(step_m, heading)
            self._emit(speed_kmh, ignition)
        return self

    def park(
        self,
        seconds: int,
        *,
        ignition: bool = False,
        jitter_m: float = 0.0,
        seed: int = 1,
    ) -> Route:
        noise = random.Random(seed)
        north, east = self.north_m, self.east_m
        for _ in range(seconds // self.interval_s):
            self.time_ms += self.interval_s * 1000
            self.north_m = north + noise.uniform(-jitter_m, jitter_m)
            self.east_m = east + noise.uniform(-jitter_m, jitter_m)
            self._emit(noise.uniform(0.0, 2.0) if jitter_m else 0.0, ignition)
        self.north_m, self.east_m = north, east
        return self

    def gap(self, seconds: int, speed_kmh: float = 0.0, heading: float = 90.0) -> Route:
        """Time passes without fixes (a tunnel, no coverage); the vehicle goes on."""
        self.time_ms += seconds * 1000
        self._move(speed_kmh / 3.6 * seconds, heading)
        return self

    def _move(self, metres: float, heading: float) -> None:
        self.north_m += metres * math.cos(math.radians(heading))
        self.east_m += metres * math.sin(math.radians(heading))
        self.travelled_m += metres

    def _emit(self, speed_kmh: float, ignition: bool) -> None:
        attributes: dict[str, object] = {}
        if self.report_ignition:
            attributes["ignition"] = ignition
        if self.counter_m is not None:
            attributes["odometer"] = self.counter_m + self.travelled_m
        self.fixes.append(
            FixPoint(
                device=self.device,
                time_ms=self.time_ms,
                latitude=LATITUDE + self.north_m / METRES_PER_DEGREE,
                longitude=LONGITUDE + self.east_m / _metres_per_degree_east(),
                speed_kmh=speed_kmh if self.report_speed else None,
                server_time_ms=self.time_ms + 1_000,
                attributes=attributes,
            )
        )


def _metres_per_degree_east() -> float:
    return METRES_PER_DEGREE * math.cos(math.radians(LATITUDE))


def _at(seconds: int) -> int:
    return T0 + seconds * 1000


def delivery_day(route: Route | None = None) -> Route:
    """A van's day: depot, three drives with two deliveries and a queue.

    Times from T0 (s): depot 0-600, drive 40 km/h 600-1500, delivery with the
    engine off 1500-2100, drive 50 km/h north 2100-2700, 4 min waiting with the
    engine on 2700-2940, drive 30 km/h west 2940-3240, delivery 3240-4140, drive
    60 km/h south 4140-5340, back at the depot 5340-7140.
    """
    van = route or Route()
    return (
        van.start()
        .park(600)
        .drive(900, 40)
        .park(600)
        .drive(600, 50, heading=0)
        .park(240, ignition=True)
        .drive(300, 30, heading=270)
        .park(900)
        .drive(1200, 60, heading=180)
        .park(1800)
    )


class TestTripSettings:
    @pytest.mark.parametrize(
        ("changes", "match"),
        [
            ({"rule": "speed"}, "rule must be 'motion' or 'ignition', got 'speed'"),
            ({"min_trip_duration_s": 0}, "min_trip_duration_s must be a positive"),
            ({"moving_speed_kmh": math.nan}, "moving_speed_kmh must be a positive"),
            ({"min_trip_distance_m": -1.0}, "min_trip_distance_m must be a number of"),
            ({"lost_after_s": 120.0}, "lost_after_s must be at least min_stop_dur"),
        ],
    )
    def test_bad_setting_is_refused(
        self, changes: dict[str, object], match: str
    ) -> None:
        with pytest.raises(ValueError, match=match):
            TripSettings(**changes)  # type: ignore[arg-type]


class TestDeliveryDay:
    def test_three_trips_between_stops(self) -> None:
        found = detect_trips(delivery_day().fixes, TripSettings())

        # A trip runs from its first moving fix to its first parked fix.
        assert [(t.start_ms, t.end_ms) for t in found.trips] == [
            (_at(610), _at(1510)),
            (_at(2110), _at(3250)),
            (_at(4150), _at(5350)),
        ]
        assert [(s.start_ms, s.end_ms) for s in found.stops] == [
            (_at(0), _at(610)),
            (_at(1510), _at(2110)),
            (_at(3250), _at(4150)),
        ]
        assert found.state.stopped_since_ms == _at(5350)

    def test_trip_figures_follow_the_legs(self) -> None:
        """Distance runs from the first moving fix, one 10 s step into the leg."""
        first, second, third = detect_trips(delivery_day().fixes, TripSettings()).trips

        assert first.duration_s == 900
        assert first.distance_m == pytest.approx(40 / 3.6 * 890, rel=1e-3)
        assert first.max_speed_kmh == 40
        assert first.average_speed_kmh == pytest.approx(
            first.distance_m / 900 * 3.6, rel=1e-9
        )
        assert second.duration_s == 600 + 240 + 300
        assert second.distance_m == pytest.approx(
            50 / 3.6 * 590 + 30 / 3.6 * 300, rel=1e-3
        )
        assert second.max_speed_kmh == 50
        assert second.idle_s == 240
        assert third.max_speed_kmh == 60
        assert (third.end_latitude, third.end_longitude) != (
            third.start_latitude,
            third.start_longitude,
        )

    def test_short_wait_with_engine_on_is_idle_inside_the_trip(self) -> None:
        found = detect_trips(delivery_day().fixes, TripSettings())

        assert [(i.start_ms, i.end_ms, i.duration_s) for i in found.idles] == [
            (_at(2710), _at(2950), 240.0)
        ]

    def test_stops_are_where_trips_ended(self) -> None:
        found = detect_trips(delivery_day().fixes, TripSettings())

        for trip, stop in zip(found.trips, found.stops[1:], strict=False):
            assert (stop.start_ms, stop.latitude, stop.longitude) == (
                trip.end_ms,
                trip.end_latitude,
                trip.end_longitude,
            )

    def test_odometer_and_engine_hours_accumulate(self) -> None:
        """Engine time is every ignition-on fix to the next: the drives and the
        4 min wait; the odometer adds every leg's distance."""
        route = delivery_day()

        state = detect_trips(route.fixes, TripSettings()).state

        assert state.engine_hours_s == 900 + 600 + 240 + 300 + 1200
        assert state.odometer_m == pytest.approx(route.travelled_m, rel=1e-3)
        assert route.travelled_m == pytest.approx(
            (40 * 900 + 50 * 600 + 30 * 300 + 60 * 1200) / 3.6
        )

    def test_device_counters_win(self) -> None:
        route = delivery_day(Route(counter_m=120_000.0))
        last = route.fixes[-1]
        route.fixes[-1] = replace(
            last, attributes={**last.attributes, "hours": 7_200.0}
        )

        found = detect_trips(route.fixes, TripSettings())

        first = found.trips[0]
        assert first.start_odometer_m == pytest.approx(120_000 + 40 / 3.6 * 10)
        assert first.distance_m == pytest.approx(40 / 3.6 * 890)
        assert found.state.odometer_m == pytest.approx(120_000 + route.travelled_m)
        assert found.state.engine_hours_s == 7_200.0

    def test_counter_reset_makes_no_negative_trip(self) -> None:
        """The device's counter restarts from 0 in the middle of the drive."""
        route = Route(counter_m=50_000.0).start().park(600).drive(600, 40).park(600)
        reset_at = len(route.fixes) - 90
        offset = route.fixes[reset_at].attributes["odometer"]
        for index in range(reset_at, len(route.fixes)):
            fix = route.fixes[index]
            counter = fix.attributes["odometer"] - offset
            route.fixes[index] = replace(
                fix, attributes={**fix.attributes, "odometer": counter}
            )

        trip = detect_trips(route.fixes, TripSettings()).trips[0]

        assert trip.distance_m == pytest.approx(40 / 3.6 * 590, rel=1e-3)

    def test_default_filters_keep_the_day(self) -> None:
        """Thinning drops most parked fixes but none the records depend on: the
        moving off, the stopping and the ignition changes are kept."""
        route = delivery_day()
        reasons, _ = filter_fixes(route.fixes, FilterSettings())
        kept = [f for f, r in zip(route.fixes, reasons, strict=True) if r is None]

        thinned = detect_trips(kept, TripSettings())
        everything = detect_trips(route.fixes, TripSettings())

        assert len(kept) < len(route.fixes) * 0.6
        assert _comparable(_records(thinned)) == _comparable(_records(everything))

    def test_without_ignition_the_wait_has_no_idle(self) -> None:
        """Speed alone decides; the 4 min wait stays inside the trip."""
        found = detect_trips(
            delivery_day(Route(report_ignition=False)).fixes, TripSettings()
        )

        assert len(found.trips) == 3
        assert found.idles == []
        assert found.trips[1].idle_s == 0
        assert found.state.engine_hours_s == 0

    def test_without_reported_speed_positions_decide(self) -> None:
        """Implied speeds give the same trips; ignition still vetoes."""
        found = detect_trips(
            delivery_day(Route(report_speed=False)).fixes, TripSettings()
        )

        assert [t.start_ms for t in found.trips] == [_at(610), _at(2110), _at(4150)]
        assert found.trips[2].max_speed_kmh == pytest.approx(60, rel=1e-3)


class TestIgnitionRule:
    def test_long_wait_with_engine_on(self) -> None:
        """10 min waiting with the engine on: a stop by motion, part of the trip by
        ignition; idle either way."""
        route = Route().start().park(600).drive(600, 50).park(600, ignition=True)
        route.drive(600, 50).park(900)

        by_motion = detect_trips(route.fixes, TripSettings())
        by_ignition = detect_trips(route.fixes, TripSettings(rule="ignition"))

        assert len(by_motion.trips) == 2
        assert len(by_ignition.trips) == 1
        assert by_ignition.trips[0].idle_s == 600
        assert by_ignition.trips[0].duration_s == 1800
        assert [i.duration_s for i in by_motion.idles] == [600]
        assert by_motion.trips[0].idle_s == 0

    def test_engine_on_without_moving_is_no_trip(self) -> None:
        route = Route().start().park(600).park(900, ignition=True).park(900)

        found = detect_trips(route.fixes, TripSettings(rule="ignition"))

        assert found.trips == []
        assert [(i.start_ms, i.end_ms) for i in found.idles] == [(_at(610), _at(1510))]
        assert found.state.stopped_since_ms == T0

    def test_ignition_off_vetoes_drift_speed(self) -> None:
        route = Route().start().park(600)
        drift = [
            replace(f, speed_kmh=12.0) for f in Route(time_ms=_at(600)).park(900).fixes
        ]

        found = detect_trips(route.fixes + drift, TripSettings())

        assert found.trips == []
        assert found.state.candidate is None


class TestParkedJitter:
    def test_parked_vehicle_stays_one_stop(self) -> None:
        """Three hours parked with 15 m of jitter: the filter keeps one fix per
        5 min, and no trip comes of it."""
        route = Route(report_ignition=False).start().park(10_800, jitter_m=15.0)

        reasons, _ = filter_fixes(route.fixes, FilterSettings())
        kept = [f for f, r in zip(route.fixes, reasons, strict=True) if r is None]
        found = detect_trips(kept, TripSettings())

        assert len(kept) == 1 + 10_800 // 300
        assert (found.trips, found.stops, found.idles) == ([], [], [])
        stop = ongoing(found.state)
        assert isinstance(stop, Stop)
        assert (stop.start_ms, stop.end_ms) == (T0, _at(10_800))

    def test_unfiltered_jitter_from_positions_makes_no_trip(self) -> None:
        """Implied speeds from 15 m jitter reach 10 km/h, but the vehicle never
        gets 300 m away."""
        route = Route(report_ignition=False, report_speed=False).start()
        route.park(3_600, jitter_m=15.0, seed=7)

        found = detect_trips(route.fixes, TripSettings())

        assert found.trips == []
        assert found.state.stopped_since_ms == T0


class TestGaps:
    def test_tunnel_keeps_one_trip(self) -> None:
        """Four minutes without fixes at 60 km/h: distance over time says it kept
        moving."""
        route = Route().start().park(600).drive(600, 60).gap(240, 60).drive(600, 60)
        route.park(900)

        found = detect_trips(route.fixes, TripSettings())

        [trip] = found.trips
        assert (trip.start_ms, trip.end_ms) == (
            _at(610),
            _at(600 + 600 + 240 + 600 + 10),
        )
        assert trip.distance_m == pytest.approx(60 / 3.6 * (1440 - 10), rel=1e-3)

    def test_silence_without_moving_ends_the_trip_at_the_last_fix(self) -> None:
        route = Route(report_ignition=False).start().park(600).drive(600, 60)
        last_moving = route.fixes[-1]
        route.gap(1_200).park(600)

        found = detect_trips(route.fixes, TripSettings())

        [trip] = found.trips
        assert trip.end_ms == last_moving.time_ms
        assert (trip.end_latitude, trip.end_longitude) == (
            last_moving.latitude,
            last_moving.longitude,
        )
        assert found.state.stopped_since_ms == last_moving.time_ms

    def test_lost_device_ends_the_trip_even_if_it_moved(self) -> None:
        """40 min of silence is beyond lost_after_s: two trips, not one."""
        route = Route().start().park(600).drive(600, 60).gap(2_400, 60).drive(600, 60)

        found = detect_trips(route.fixes, TripSettings())

        assert [t.end_ms for t in found.trips] == [_at(1200)]
        assert found.state.driving_since_ms == _at(1200 + 2_400 + 10)


class TestTimers:
    def test_timer_ends_a_quiet_trip_without_a_new_fix(self) -> None:
        route = Route().start().park(600).drive(600, 50).park(60)
        state = detect_trips(route.fixes, TripSettings()).state

        due = next_timer_ms(state, TripSettings())
        early, none = on_timer(state, _at(1500), TripSettings())
        late, records = on_timer(state, _at(1510), TripSettings())

        assert due == _at(1210 + 300)
        assert none == [] and early.driving_since_ms == _at(610)
        assert [type(r) for r in records] == [Trip]
        assert late.stopped_since_ms == _at(1210)
        assert next_timer_ms(late, TripSettings()) is None

    def test_timer_for_a_silent_driver(self) -> None:
        route = Route().start().park(600).drive(600, 50)
        state = detect_trips(route.fixes, TripSettings()).state

        due = next_timer_ms(state, TripSettings())
        after, records = on_timer(state, _at(1200 + 1800), TripSettings())

        assert due == _at(1200 + 1800)
        assert [(r.start_ms, r.end_ms) for r in records] == [(_at(610), _at(1200))]
        assert after.stopped_since_ms == _at(1200)

    def test_idle_since_for_the_alert(self) -> None:
        route = Route().start().park(600).drive(600, 50).park(120, ignition=True)

        state = detect_trips(route.fixes, TripSettings()).state

        assert state.idle_since_ms == _at(1210)
        assert state.quiet_since_ms == _at(1210)
        assert state.driving_since_ms == _at(610)


class TestAdvance:
    def test_out_of_order_fix_is_ignored_with_a_warning(self) -> None:
        route = Route().start().park(60)
        state = detect_trips(route.fixes, TripSettings()).state

        with pytest.warns(UserWarning, match="is not newer than the last one"):
            after, records = advance(state, route.fixes[2], TripSettings())

        assert after is state and records == []

    def test_fix_of_another_device_is_refused(self) -> None:
        state = detect_trips(Route().start().fixes, TripSettings()).state
        stranger = replace(Route().start().fixes[0], device="van-2", time_ms=_at(10))

        with pytest.raises(ValueError, match="a fix of 'van-2' given to the state of"):
            advance(state, stranger, TripSettings())

    def test_advance_leaves_its_input_alone(self) -> None:
        fixes = delivery_day().fixes
        state = detect_trips(fixes[:100], TripSettings()).state
        before = pickle.dumps(state)

        advance(state, fixes[100], TripSettings())

        assert pickle.dumps(state) == before

    def test_ongoing_trip_shows_driving_since(self) -> None:
        route = Route().start().park(600).drive(300, 36)

        trip = ongoing(detect_trips(route.fixes, TripSettings()).state)

        assert isinstance(trip, Trip)
        assert (trip.start_ms, trip.end_ms) == (_at(610), _at(900))
        assert trip.distance_m == pytest.approx(10 * 290, rel=1e-3)


class TestMunichSample:
    """The barefoot sample: 20 min of west Munich with six waits of 20-120 s."""

    @staticmethod
    def _accepted(filters: FilterSettings) -> list[FixPoint]:
        fixes = fix_points(read_wkt_track(BAREFOOT, device="car"))
        reasons, _ = filter_fixes(fixes, filters)
        return [f for f, r in zip(fixes, reasons, strict=True) if r is None]

    def test_defaults_see_traffic_not_stops(self) -> None:
        """Five minutes make a stop by default: the waits are traffic, so the
        whole drive is one trip (still going when the sample ends)."""
        fixes = self._accepted(FilterSettings())

        found = detect_trips(fixes, TripSettings())

        trip = ongoing(found.state)
        assert isinstance(trip, Trip)
        assert found.trips == []
        assert all(s.start_ms == fixes[0].time_ms for s in found.stops)
        assert trip.end_ms - trip.start_ms >= 19 * 60_000
        assert trip.distance_m == pytest.approx(13_600, rel=0.02)

    def test_traffic_settings_find_the_six_waits(self) -> None:
        """With 20 s stops and short trips allowed, the stops are the six runs of
        fixes under 3 km/h lasting 20 s or more (the data/tracks README's rule)."""
        traffic = TripSettings(
            min_stop_duration_s=20, min_trip_duration_s=10, min_trip_distance_m=50
        )
        fixes = self._accepted(FilterSettings(min_distance_m=0.0))
        waits = _slow_runs(with_motion(read_wkt_track(BAREFOOT)), min_s=20)

        found = detect_trips(fixes, traffic)

        stops = [s for s in found.stops if s.start_ms > fixes[0].time_ms]
        assert len(waits) == 6
        assert len(stops) == 6
        for stop, (start_ms, _) in zip(stops, waits, strict=True):
            assert abs(stop.start_ms - start_ms) <= 2_000
        assert all(20 <= s.duration_s <= 120 for s in stops)

    def test_top_speed_ignores_the_healed_jump(self) -> None:
        """After the 470 m snap the first kept fix implies about 250 km/h; the
        median of three implied speeds keeps it out of the trip's top speed."""
        fixes = self._accepted(FilterSettings(min_distance_m=0.0))

        trip = ongoing(detect_trips(fixes, TripSettings()).state)

        assert isinstance(trip, Trip)
        assert 80 < trip.max_speed_kmh < 130


def _slow_runs(track: object, min_s: float) -> list[tuple[int, int]]:
    times = [int(t.value // 1_000_000) for t in track["time"]]  # type: ignore[index]
    slow = [not (s >= 3) for s in track["speed_kmh"]]  # type: ignore[index]
    runs, start = [], None
    for index, is_slow in enumerate(slow):
        if is_slow and start is None:
            start = index
        if not is_slow and start is not None:
            runs.append((times[start], times[index - 1]))
            start = None
    return [(a, b) for a, b in runs if b - a >= min_s * 1000 and a > times[0]]


class TestLateData:
    def test_tunnel_burst_splits_the_trip(self) -> None:
        """A van stuck 7 min in a tunnel sends those fixes late.  Live, the gap
        looked like driving; the replayed window finds the stop, and splicing it
        into the stored records gives what a full recompute gives."""
        route = Route().start().park(600).drive(600, 60)
        before_tunnel = len(route.fixes)
        route.drive(120, 30).park(420, ignition=True).drive(120, 30)
        burst = route.fixes[before_tunnel:]
        route.drive(600, 60).park(900).drive(600, 60).park(900)
        live_fixes = [f for f in route.fixes if f not in burst]

        live = detect_trips(live_fixes, TripSettings())
        full = detect_trips(route.fixes, TripSettings())
        stored = [*_records(live), _ongoing_record(live.state)]
        window = recompute_window([f.time_ms for f in burst], stored, TripSettings())
        replayed = replay_window(
            route.fixes, window, stored, TripSettings(), resume_state()
        )

        assert len(live.trips) == 2 and len(full.trips) == 3
        assert window.start_ms == T0
        assert replayed.end_ms == window.end_ms
        assert _splice(_records(live), window, replayed) == _comparable(_records(full))

    def test_window_starts_at_a_settled_stop(self) -> None:
        found = detect_trips(delivery_day().fixes, TripSettings())
        records = _records(found)
        delivery = found.stops[2]

        window = recompute_window(
            delivery.start_ms + 1_800_000, records, TripSettings()
        )
        early = recompute_window(delivery.start_ms + 60_000, records, TripSettings())

        assert window.start_ms == delivery.start_ms
        assert window.end_ms is None
        assert early.start_ms == found.stops[1].start_ms
        assert early.end_ms is None

    def test_window_ends_after_the_next_stop(self) -> None:
        found = detect_trips(delivery_day().fixes, TripSettings())

        window = recompute_window(_at(1000), _records(found), TripSettings())

        assert (window.start_ms, window.end_ms) == (T0, _at(2110))

    def test_empty_burst_is_refused(self) -> None:
        with pytest.raises(ValueError, match="late_ms must hold at least one time"):
            recompute_window([], [], TripSettings())


def _records(found: object) -> list[Record]:
    return [*found.trips, *found.stops, *found.idles]  # type: ignore[attr-defined]


def _ongoing_record(state: TripState) -> Record:
    record = ongoing(state)
    assert record is not None
    return record


def _comparable(records: Sequence[Record]) -> list[tuple[object, ...]]:
    """Records without their absolute odometer readings, rounded, in time order."""
    rows = []
    for record in records:
        values = astuple(record)
        if isinstance(record, Trip):
            values = values[:-2]
        rounded = tuple(round(v, 3) if isinstance(v, float) else v for v in values)
        rows.append((record.start_ms, type(record).__name__, *rounded))
    return sorted(rows, key=lambda row: row[:2])


def _splice(
    stored: Sequence[Record], window: object, replayed: object
) -> list[tuple[object, ...]]:
    start_ms = window.start_ms  # type: ignore[attr-defined]
    end_ms = replayed.end_ms  # type: ignore[attr-defined]
    kept = [
        r
        for r in stored
        if r.start_ms < start_ms or (end_ms is not None and r.start_ms >= end_ms)
    ]
    new = [*replayed.trips, *replayed.stops, *replayed.idles]  # type: ignore[attr-defined]
    return _comparable(kept + new)


# Random days: legs of driving, parking (engine on or off) and silence.
Leg = tuple[str, int, float, float, bool]


def _legs() -> st.SearchStrategy[list[Leg]]:
    leg = st.tuples(
        st.sampled_from(["drive", "park", "gap"]),
        st.integers(min_value=1, max_value=24).map(lambda n: n * 30),
        st.sampled_from([0.0, 4.0, 15.0, 50.0, 90.0]),
        st.floats(min_value=0, max_value=360),
        st.booleans(),
    )
    return st.lists(leg, min_size=1, max_size=8)


@st.composite
def _days(draw: st.DrawFn) -> tuple[list[FixPoint], TripSettings]:
    route = Route(
        interval_s=draw(st.sampled_from([10, 30, 60])),
        report_speed=draw(st.booleans()),
        report_ignition=draw(st.booleans()),
    ).start(ignition=draw(st.booleans()))
    for kind, seconds, speed, heading, engine in draw(_legs()):
        if kind == "drive":
            route.drive(seconds, speed, heading, ignition=engine)
        elif kind == "park":
            route.park(seconds, ignition=engine, jitter_m=draw(st.sampled_from([0, 8])))
        else:
            route.gap(seconds, speed, heading)
    chosen = TripSettings(
        rule=draw(st.sampled_from(["motion", "ignition"])),
        min_trip_duration_s=draw(st.sampled_from([30.0, 60.0])),
        min_trip_distance_m=draw(st.sampled_from([0.0, 100.0, 300.0])),
        min_stop_duration_s=draw(st.sampled_from([60.0, 300.0])),
        min_idle_s=draw(st.sampled_from([60.0, 180.0])),
        max_gap_s=draw(st.sampled_from([45.0, 180.0])),
        lost_after_s=draw(st.sampled_from([900.0, 1800.0])),
    )
    return route.fixes, chosen


def _containing(records: Sequence[Record], last_ms: int, time_ms: int) -> list[Record]:
    """Records holding ``time_ms``: [start, end), the open one up to ``last_ms``."""
    return [
        r
        for r in records
        if r.start_ms <= time_ms < r.end_ms
        or (r.end_ms == last_ms and r.start_ms <= time_ms <= last_ms)
    ]


class TestInvariants:
    @given(_days(), st.booleans())
    @settings(max_examples=200, deadline=None)
    def test_every_fix_in_exactly_one_trip_or_stop(
        self, day: tuple[list[FixPoint], TripSettings], thin: bool
    ) -> None:
        fixes, chosen = day
        if thin:
            reasons, _ = filter_fixes(fixes, FilterSettings())
            fixes = [f for f, r in zip(fixes, reasons, strict=True) if r is None]

        found = detect_trips(fixes, chosen)

        last_ms = fixes[-1].time_ms
        records: list[Record] = [
            *found.trips,
            *found.stops,
            _ongoing_record(found.state),
        ]
        for fix in fixes:
            assert len(_containing(records, last_ms, fix.time_ms)) == 1, fix.time_ms
        for idle in found.idles:
            holders = [r for r in records if r.start_ms <= idle.start_ms < r.end_ms]
            assert len(holders) == 1
            assert idle.end_ms <= holders[0].end_ms

    @given(_days())
    @settings(max_examples=200, deadline=None)
    def test_records_respect_the_settings(
        self, day: tuple[list[FixPoint], TripSettings]
    ) -> None:
        fixes, chosen = day

        found = detect_trips(fixes, chosen)

        for trip in found.trips:
            assert trip.duration_s >= chosen.min_trip_duration_s
            assert trip.distance_m >= chosen.min_trip_distance_m - 1e-6
            assert trip.start_ms <= trip.max_speed_ms <= trip.end_ms
            inside = sum(
                i.duration_s
                for i in found.idles
                if trip.start_ms <= i.start_ms < trip.end_ms
            )
            assert trip.idle_s == pytest.approx(inside)
        later = [s for s in found.stops if s.start_ms > fixes[0].time_ms]
        assert all(s.duration_s >= chosen.min_stop_duration_s for s in later)
        assert all(i.duration_s >= chosen.min_idle_s for i in found.idles)

    @given(_days(), st.data())
    @settings(max_examples=150, deadline=None)
    def test_batch_equals_stepping_with_timers(
        self, day: tuple[list[FixPoint], TripSettings], data: st.DataObject
    ) -> None:
        """Timers fired at any point between fixes change nothing."""
        fixes, chosen = day
        found = detect_trips(fixes, chosen)

        state, outputs = TripState(), []
        for fix in fixes:
            due = next_timer_ms(state, chosen)
            if due is not None and due <= fix.time_ms and data.draw(st.booleans()):
                now = data.draw(st.integers(min_value=due, max_value=fix.time_ms))
                state, records = on_timer(state, now, chosen)
                outputs += records
            state, records = advance(state, fix, chosen)
            outputs += records

        assert _comparable(outputs) == _comparable(_records(found))
        assert state == found.state

    @given(_days(), st.data())
    @settings(max_examples=150, deadline=None)
    def test_pickled_state_resumes_identically(
        self, day: tuple[list[FixPoint], TripSettings], data: st.DataObject
    ) -> None:
        fixes, chosen = day
        cut = data.draw(st.integers(min_value=0, max_value=len(fixes)))
        whole = detect_trips(fixes, chosen)

        head = detect_trips(fixes[:cut], chosen)
        restored = pickle.loads(pickle.dumps(head.state))
        tail = detect_trips(fixes[cut:], chosen, restored)

        assert head.trips + tail.trips == whole.trips
        assert head.stops + tail.stops == whole.stops
        assert head.idles + tail.idles == whole.idles
        assert tail.state == whole.state

    @given(_days(), st.data())
    @settings(max_examples=200, deadline=None)
    def test_late_fix_replay_matches_a_full_recompute(
        self, day: tuple[list[FixPoint], TripSettings], data: st.DataObject
    ) -> None:
        fixes, chosen = day
        late = data.draw(st.integers(min_value=0, max_value=len(fixes) - 1))
        live_fixes = fixes[:late] + fixes[late + 1 :]

        live = detect_trips(live_fixes, chosen)
        full = detect_trips(fixes, chosen)
        stored = _records(live)
        if live_fixes:
            stored.append(_ongoing_record(live.state))
        window = recompute_window(fixes[late].time_ms, stored, chosen)
        before = [f for f in fixes if f.time_ms < window.start_ms]
        resumed = resume_state(before[-1] if before else None)
        replayed = replay_window(fixes, window, stored, chosen, resumed)

        now = _comparable([_ongoing_record(full.state)])
        assert _splice(_records(live), window, replayed) == _comparable(_records(full))
        if replayed.end_ms is None:
            assert _comparable([_ongoing_record(replayed.state)]) == now
        else:
            assert _comparable([_ongoing_record(live.state)]) == now
