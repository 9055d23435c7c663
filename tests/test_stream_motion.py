"""The device operator's logic without Flink: order, steppers, late data, days.

:class:`~pipeline.stream.motion.DeviceMotion` is driven as the Flink function
drives it, and its outputs are applied to an in-memory history the way the JDBC
sinks apply them to PostgreSQL.  Results are checked against geo's own batch
functions on the same tracks (the geo tests' builders).
"""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date

import pytest

from geo.alerts import AlertSettings, BatterySettings, OfflineSettings
from geo.events import GeoEvent
from geo.filtering import FilterSettings, filter_fixes
from geo.fixes import FixPoint
from geo.geofences import CircleFence, DwellSettings, GeofenceIndex, run_membership
from geo.summaries import DaySummary, summarise
from geo.trips import Record, Stop, Trip, TripSettings, detect_trips
from pipeline.config import MOTION_KEYS, load_settings, parse_motion_settings
from pipeline.model import Event
from pipeline.notify.messages import event_document
from pipeline.stream.motion import (
    KEEP_RECORDS_MS,
    RECOMPUTE_DELAY_MS,
    DeviceMotion,
    FixRow,
    HistoryUnavailable,
    MotionState,
    Outputs,
    fix_point,
    record_key,
)
from pipeline.stream.profiles import DEFAULT_PROFILE, DeviceProfile, resolve_profile
from tests.test_geo_geofences import around_edge, circle
from tests.test_geo_trips import T0, Route, _comparable, delivery_day

LATENESS_MS = 10_000
WALL0 = 5_000_000_000_000


def row_of(fix: FixPoint, protocol: str = "osmand") -> FixRow:
    """The row the job carries for ``fix`` (h3 left at 0: the steppers ignore it)."""
    return (
        fix.device,
        fix.time_ms,
        fix.server_time_ms,
        fix.latitude,
        fix.longitude,
        fix.altitude,
        fix.accuracy,
        0,
        fix.speed_kmh,
        fix.course,
        fix.satellites,
        fix.valid,
        protocol,
        json.dumps(dict(fix.attributes)),
    )


@dataclass
class MemoryFleet:
    """Profiles by device and one geofence index."""

    index: GeofenceIndex = field(default_factory=lambda: GeofenceIndex([]))
    profiles: dict[str, DeviceProfile] = field(default_factory=dict)

    def profile(self, device: str) -> DeviceProfile:
        return self.profiles.get(device, DEFAULT_PROFILE)


@dataclass
class MemoryHistory:
    """History as the job's sinks leave it: fixes with their filter, and records."""

    rows: dict[tuple[str, int], FixRow] = field(default_factory=dict)
    filters: dict[tuple[str, int], str | None] = field(default_factory=dict)
    stored: dict[tuple[str, str, int], Record] = field(default_factory=dict)
    days: dict[tuple[str, str, date], DaySummary] = field(default_factory=dict)
    events: dict[tuple[str, str, int], GeoEvent] = field(default_factory=dict)
    requests: set[tuple[str, int]] = field(default_factory=set)
    reads: int = 0
    down: bool = False

    def store_fix(self, row: FixRow) -> None:
        self.rows[row[0], row[1]] = row

    def apply(self, out: Outputs) -> None:
        for row, reason in out.marks:
            self.rows[row[0], row[1]] = row
            self.filters[row[0], row[1]] = reason
        for record, deleted in out.records:
            key = (record.device, *record_key(record))
            if deleted:
                self.stored.pop(key, None)
            else:
                self.stored[key] = record
        for summary, zone, deleted in out.summaries:
            day_key = (summary.device, zone, summary.day)
            if deleted:
                self.days.pop(day_key, None)
            else:
                self.days[day_key] = summary
        for event, _ in out.events:
            self.events[event.device, event.type, event.time_ms] = event
        for device, fix_ms, done in out.requests:
            if done:
                self.requests.discard((device, fix_ms))
            else:
                self.requests.add((device, fix_ms))

    def _check(self) -> None:
        self.reads += 1
        if self.down:
            raise HistoryUnavailable("history unreadable: test")

    def records(self, device: str, start_ms: int, end_ms: int | None) -> list[Record]:
        self._check()
        return sorted(
            (
                r
                for r in self.stored.values()
                if r.device == device
                and r.end_ms >= start_ms
                and (end_ms is None or r.start_ms < end_ms)
            ),
            key=lambda r: r.start_ms,
        )

    def last_stop_start(self, device: str, at_or_before_ms: int) -> int | None:
        self._check()
        starts = [
            r.start_ms
            for r in self.stored.values()
            if isinstance(r, Stop) and r.device == device
            if r.start_ms <= at_or_before_ms
        ]
        return max(starts, default=None)

    def fixes(
        self, device: str, start_ms: int, end_ms: int
    ) -> list[tuple[FixRow, str | None]]:
        self._check()
        keys = sorted(
            k for k in self.rows if k[0] == device and start_ms <= k[1] <= end_ms
        )
        return [(self.rows[k], self.filters.get(k)) for k in keys]

    def last_accepted(self, device: str, before_ms: int) -> FixRow | None:
        self._check()
        keys = [
            k
            for k in self.rows
            if k[0] == device and k[1] < before_ms and self.filters.get(k) is None
        ]
        return self.rows[max(keys)] if keys else None

    def records_of(self, device: str) -> list[Record]:
        return [r for r in self.stored.values() if r.device == device]


@dataclass
class Run:
    """One device operator and what it stored."""

    fleet: MemoryFleet = field(default_factory=MemoryFleet)
    history: MemoryHistory = field(default_factory=MemoryHistory)
    state: MotionState = field(default_factory=MotionState)
    wall_ms: int = WALL0
    outputs: list[Outputs] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.motion = DeviceMotion(self.fleet, self.history, LATENESS_MS)

    def send(
        self, fixes: Iterable[FixPoint], *, step_ms: int = 10, protocol: str = "osmand"
    ) -> None:
        for fix in fixes:
            row = row_of(fix, protocol)
            self.history.store_fix(row)
            self.wall_ms += step_ms
            self._apply(
                lambda out, row=row: self.motion.receive(
                    self.state, row, self.wall_ms, out
                )
            )

    def wait(self, wall_ms: int) -> None:
        """Let wall time pass, waking the operator whenever it asked to be."""
        while True:
            due = self.motion.next_wall_ms(self.state)
            if due is None or due > self.wall_ms + wall_ms:
                break
            wall_ms -= max(0, due - self.wall_ms)
            self.wall_ms = max(self.wall_ms, due)
            self._apply(lambda out: self.motion.wake(self.state, self.wall_ms, out))
        self.wall_ms += wall_ms

    def fire(self, now_ms: int) -> None:
        self._apply(lambda out: self.motion.fire(self.state, now_ms, self.wall_ms, out))

    def _apply(self, call: object) -> None:
        out = Outputs()
        call(out)  # type: ignore[operator]
        self.history.apply(out)
        self.outputs.append(out)

    def events(self) -> list[GeoEvent]:
        return [event for out in self.outputs for event, _ in out.events]

    def marks(self) -> dict[int, str | None]:
        return {row[1]: reason for out in self.outputs for row, reason in out.marks}


def batch(
    fixes: Sequence[FixPoint], profile: DeviceProfile = DEFAULT_PROFILE
) -> tuple[list[Record], list[str | None]]:
    """What geo's batch functions make of a track: records and filter reasons."""
    reasons, _ = filter_fixes(fixes, profile.filters)
    accepted = [f for f, r in zip(fixes, reasons, strict=True) if r is None]
    found = detect_trips(accepted, profile.trips)
    values = [None if r is None else r.value for r in reasons]
    return [*found.trips, *found.stops, *found.idles], values


class TestOrder:
    def test_delivery_day_matches_geo_batch(self) -> None:
        """Records, filter marks and day rows equal geo's batch run of the day."""
        fixes = delivery_day().fixes
        run = Run()

        run.send(fixes)
        run.wait(LATENESS_MS)

        records, reasons = batch(fixes)
        assert _comparable(run.history.records_of("van-1")) == _comparable(records)
        marked = run.marks()
        assert [marked.get(f.time_ms) for f in fixes] == reasons
        assert any(reasons), "the day has parked jitter the filters thin"
        expected_days = {(s.day, s) for s in summarise(records, "UTC")}
        stored_days = {(day, s) for (_, _, day), s in run.history.days.items()}
        assert stored_days == expected_days

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_out_of_order_within_lateness_changes_nothing(self, seed: int) -> None:
        fixes = delivery_day().fixes
        shuffled = _jostled(fixes, seed, within_ms=LATENESS_MS + 1)
        in_order, jostled = Run(), Run()

        in_order.send(fixes)
        in_order.wait(LATENESS_MS)
        jostled.send(shuffled)
        jostled.wait(LATENESS_MS)

        assert shuffled != fixes
        assert jostled.history.stored == in_order.history.stored
        assert jostled.marks() == in_order.marks()
        assert jostled.events() == in_order.events()
        assert not jostled.history.requests

    def test_quiet_device_is_released_after_lateness(self) -> None:
        route = Route().start().drive(60, 40)
        run = Run()

        run.send(route.fixes)
        held = len(run.state.buffer)
        run.wait(LATENESS_MS - 100)
        still = len(run.state.buffer)
        run.wait(200)

        assert held == 1  # only the fix within lateness of the newest waits
        assert still == held
        assert run.state.buffer == {}
        assert run.state.horizon_ms == route.fixes[-1].time_ms

    def test_filtered_fix_is_marked_and_moves_nothing(self) -> None:
        route = Route().start().drive(300, 40)
        fixes = route.fixes
        jump = replace(
            fixes[10],
            time_ms=fixes[10].time_ms + 5_000,
            latitude=fixes[10].latitude + 0.05,
        )
        run = Run()

        run.send(fixes[:11])
        run.wait(LATENESS_MS)
        before = pickle.dumps((run.state.trips, run.state.filter, run.state.alerts))
        run.send([jump])
        run.wait(LATENESS_MS)

        assert run.marks()[jump.time_ms] == "jump"
        after = pickle.dumps((run.state.trips, run.state.filter, run.state.alerts))
        assert after == before
        assert run.state.horizon_ms == jump.time_ms

    def test_state_survives_pickling_mid_stream(self) -> None:
        """What a Flink restore does: the pickled state resumes with equal outputs."""
        fixes = delivery_day().fixes
        whole = Run()
        whole.send(fixes)
        whole.wait(LATENESS_MS)

        cut = Run()
        cut.send(fixes[:333])
        resumed = Run(history=cut.history, state=pickle.loads(pickle.dumps(cut.state)))
        resumed.wall_ms = cut.wall_ms
        resumed.send(fixes[333:])
        resumed.wait(LATENESS_MS)

        assert resumed.history.stored == whole.history.stored
        assert resumed.history.days == whole.history.days
        assert cut.events() + resumed.events() == whole.events()


class TestTimers:
    def test_silent_device_ends_its_trip_and_goes_offline_by_wall_clock(self) -> None:
        """No watermark moves: the wall-clock fallback ends the trip, then offline."""
        route = Route().start().park(300).drive(600, 40).park(30)
        run = Run()

        run.send(route.fixes)
        run.wait(LATENESS_MS)
        trips_before = [r for r in run.history.stored.values() if isinstance(r, Trip)]
        run.wait(700_000)

        _, reasons = batch(route.fixes)
        last = max(
            f.time_ms for f, r in zip(route.fixes, reasons, strict=True) if r is None
        )
        trips_after = [r for r in run.history.stored.values() if isinstance(r, Trip)]
        assert trips_before == []
        assert len(trips_after) == 1
        assert trips_after[0].end_ms == route.fixes[-3].time_ms
        offline = [e for e in run.events() if e.type == "deviceOffline"]
        assert [e.time_ms for e in offline] == [last + 600_000]

    def test_event_timer_ends_the_trip_at_due_time(self) -> None:
        route = Route().start().park(300).drive(600, 40).park(30)
        run = Run()
        run.send(route.fixes)
        run.wait(LATENESS_MS)

        due = run.motion.next_event_ms(run.state)
        assert due is not None
        run.fire(due - 1)
        early = [r for r in run.history.stored.values() if isinstance(r, Trip)]
        run.fire(due)

        assert early == []
        assert [type(r).__name__ for r, _ in run.outputs[-1].records[:1]] == ["Trip"]
        assert run.state.horizon_ms == due

    def test_fix_older_than_a_fired_timer_is_late(self) -> None:
        route = Route().start().park(300).drive(600, 40).park(30)
        run = Run()
        run.send(route.fixes)
        run.wait(LATENESS_MS)
        due = run.motion.next_event_ms(run.state)
        assert due is not None
        run.fire(due)

        run.send([replace(route.fixes[-1], time_ms=due - 1_000)])

        assert run.history.requests == {("van-1", due - 1_000)}


class TestLateData:
    def test_tunnel_burst_recomputed_like_a_full_run(self) -> None:
        """The geo tests' tunnel: the burst comes after the rest; once recomputed the
        stored records are what a full batch run of the whole track gives."""
        route = Route().start().park(600).drive(600, 60)
        before_tunnel = len(route.fixes)
        route.drive(120, 30).park(420, ignition=True).drive(120, 30)
        burst = route.fixes[before_tunnel:]
        route.drive(600, 60).park(900).drive(600, 60).park(900)
        live = [f for f in route.fixes if f not in burst]
        run = Run()

        run.send(live)
        run.wait(LATENESS_MS)
        live_trips = [r for r in run.history.stored.values() if isinstance(r, Trip)]
        run.send(burst)
        pending = set(run.history.requests)
        run.wait(RECOMPUTE_DELAY_MS + LATENESS_MS)

        full, reasons = batch(route.fixes)
        assert len(live_trips) == 2
        assert pending == {("van-1", f.time_ms) for f in burst}
        assert run.history.requests == set()
        assert _comparable(run.history.records_of("van-1")) == _comparable(full)
        marked = {**run.marks()}
        assert [marked.get(f.time_ms) for f in burst] == [
            reasons[route.fixes.index(f)] for f in burst
        ]
        expected_days = {s.day: s for s in summarise(full, "UTC")}
        stored_days = {day: s for (_, _, day), s in run.history.days.items()}
        assert stored_days.keys() == expected_days.keys()
        for day, row in stored_days.items():
            assert row.trips == expected_days[day].trips
            assert row.distance_m == pytest.approx(expected_days[day].distance_m)

    def test_late_fix_in_the_ongoing_stop_adopts_the_replayed_state(self) -> None:
        """The replay runs to the newest fix: its state becomes the live one, so the
        next trip starts where a full run starts it."""
        route = Route().start().park(600).drive(600, 40).park(900)
        late = route.fixes[-40]
        route.drive(600, 40).park(600)
        run = Run()
        head = [f for f in route.fixes if f.time_ms <= route.fixes[-121].time_ms]

        run.send([f for f in head if f is not late])
        run.wait(LATENESS_MS)
        run.send([late])
        run.wait(RECOMPUTE_DELAY_MS + LATENESS_MS)
        run.send(route.fixes[len(head) :])
        run.wait(LATENESS_MS)

        full, _ = batch(route.fixes)
        assert _comparable(run.history.records_of("van-1")) == _comparable(full)

    def test_history_down_keeps_the_request(self) -> None:
        route = Route().start().park(600).drive(600, 40).park(600)
        late = route.fixes[50]
        run = Run()
        run.send([f for f in route.fixes if f is not late])
        run.wait(LATENESS_MS)
        run.history.down = True

        run.send([late])
        run.wait(RECOMPUTE_DELAY_MS + 100)
        pending = set(run.history.requests)
        run.history.down = False
        run.wait(120_000)

        assert pending == {("van-1", late.time_ms)}
        assert run.history.requests == set()


class TestDays:
    def test_day_before_the_state_is_read_from_history(self) -> None:
        """A trip stored before the job's state began still counts in its day."""
        earlier = Trip(
            "van-1",
            T0 - 7_200_000,
            T0 - 6_600_000,
            48.0,
            11.5,
            48.1,
            11.5,
            5_000.0,
            600.0,
            50.0,
            T0 - 7_000_000,
            30.0,
            0.0,
            0.0,
            5_000.0,
        )
        run = Run()
        run.history.stored["van-1", "Trip", earlier.start_ms] = earlier

        run.send(delivery_day().fixes)
        run.wait(LATENESS_MS)

        records, _ = batch(delivery_day().fixes)
        first_day = min(s.day for s in summarise(records, "UTC"))
        row = run.history.days["van-1", "UTC", first_day]
        alone = summarise(records, "UTC")[0]
        assert row.trips == 1 + alone.trips
        assert row.distance_m == pytest.approx(5_000.0 + alone.distance_m)
        assert run.history.reads > 0

    def test_days_in_the_owner_time_zone(self) -> None:
        profile, _ = resolve_profile(None, None, time_zone="Pacific/Auckland")
        run = Run(fleet=MemoryFleet(profiles={"van-1": profile}))

        run.send(delivery_day().fixes)
        run.wait(LATENESS_MS)

        records, _ = batch(delivery_day().fixes)
        zones = {zone for _, zone, _ in run.history.days}
        stored = {day: s for (_, _, day), s in run.history.days.items()}
        assert zones == {"Pacific/Auckland"}
        assert stored == {s.day: s for s in summarise(records, "Pacific/Auckland")}

    def test_records_older_than_kept_are_pruned(self) -> None:
        route = Route(interval_s=60).start().drive(1200, 40).park(600)
        route.park(4 * 86_400 // 60 * 60 // 4).drive(1200, 40).park(600)
        run = Run()

        run.send(route.fixes)
        run.wait(LATENESS_MS)

        assert run.state.records
        horizon = run.state.horizon_ms
        assert horizon is not None
        assert all(r.end_ms >= horizon - KEEP_RECORDS_MS for r in run.state.records)


class TestGeofences:
    def test_edge_track_matches_run_membership(self) -> None:
        """Driving in and out of a depot on its edge: the events geo's batch gives,
        an open visit on entry, closed on exit."""
        fence = replace(circle(200.0), id="7")
        offsets = [
            30.0,
            10.0,
            -10.0,
            5.0,
            -20.0,
            -50.0,
            -60.0,
            -60.0,
            10.0,
            30.0,
            40.0,
            50.0,
        ]
        points = around_edge(fence, offsets)
        fixes = [
            FixPoint(
                "van-1",
                T0 + i * 20_000,
                lat,
                lon,
                speed_kmh=20.0,
                server_time_ms=T0 + i * 20_000,
            )
            for i, (lat, lon) in enumerate(points)
        ]
        dwell = DwellSettings(None, 3, None, 3)
        profile = DeviceProfile(
            filters=FilterSettings(min_distance_m=0.0),
            dwell=dwell,
            geofences=frozenset({"7"}),
        )
        run = Run(fleet=MemoryFleet(GeofenceIndex([fence]), {"van-1": profile}))

        run.send(fixes)
        run.wait(LATENESS_MS)

        _, expected = run_membership(fixes, GeofenceIndex([fence]), dwell)
        crossings = [e for e in run.events() if e.type.startswith("geofence")]
        assert crossings == [o for o in expected if isinstance(o, GeoEvent)]
        visits = [v for out in run.outputs for v in out.visits]
        enter, exit_ = crossings
        assert visits == [
            ("van-1", "7", enter.time_ms, None),
            ("van-1", "7", enter.time_ms, exit_.time_ms),
        ]

    def test_unassigned_geofence_is_ignored(self) -> None:
        fence = replace(circle(200.0), id="7")
        fixes = [
            FixPoint(
                "van-1", T0 + i * 20_000, fence.latitude, fence.longitude, speed_kmh=0.0
            )
            for i in range(6)
        ]
        run = Run(fleet=MemoryFleet(GeofenceIndex([fence])))

        run.send(fixes)
        run.wait(LATENESS_MS)

        assert [e for e in run.events() if e.type.startswith("geofence")] == []

    def test_overspeed_takes_the_geofence_limit(self) -> None:
        fence = CircleFence(
            id="3",
            name="School",
            latitude=48.137,
            longitude=11.6,
            radius_m=3_000.0,
            speed_limit_kmh=30.0,
        )
        route = Route().start().drive(600, 50)
        profile = DeviceProfile(geofences=frozenset({"3"}), speed_limit_kmh=90.0)
        run = Run(fleet=MemoryFleet(GeofenceIndex([fence]), {"van-1": profile}))

        run.send(route.fixes)
        run.wait(LATENESS_MS)
        run.send(Route(time_ms=route.time_ms).start().drive(30, 20).fixes[1:])
        run.wait(LATENESS_MS)

        overspeed = [e for e in run.events() if e.type == "overspeed"]
        assert len(overspeed) == 1
        assert overspeed[0].attributes["limit_kmh"] == 30.0
        assert overspeed[0].attributes["max_speed_kmh"] == 50.0


class TestEvents:
    def test_tracker_alarm_stored_but_not_published_again(self) -> None:
        fixes = [
            FixPoint(
                "van-1",
                T0 + i * 1000,
                48.1,
                11.5 + i * 0.001,
                speed_kmh=30.0,
                attributes={"alarm": "sos"},
            )
            for i in range(3)
        ]
        tracker, app = Run(), Run()

        tracker.send(fixes, protocol="gt06")
        tracker.wait(LATENESS_MS)
        app.send(fixes, protocol="osmand")
        app.wait(LATENESS_MS)

        def alarms(run: Run) -> list[tuple[str, bool]]:
            return [
                (e.type, p)
                for out in run.outputs
                for e, p in out.events
                if e.type == "alarm"
            ]

        assert alarms(tracker) == [("alarm", False)]
        assert alarms(app) == [("alarm", True)]

    def test_event_payload_reads_back_on_the_topic(self) -> None:
        from pipeline.stream.results import event_payload

        event = GeoEvent(
            "van-1",
            "geofenceExit",
            T0,
            48.1,
            11.5,
            {"geofence": "7", "name": "Depot", "duration_s": 6.0},
        )

        document = event_document(Event.FromString(event_payload(event)))

        assert document["attributes"] == {
            "geofence": "7",
            "name": "Depot",
            "duration_s": 6.0,
        }
        assert (document["uniqueId"], document["type"]) == ("van-1", "geofenceExit")

    def test_counters_at_trip_end_and_every_minute(self) -> None:
        route = delivery_day()
        run = Run()

        run.send(route.fixes)
        run.wait(LATENESS_MS)

        counters = [c for out in run.outputs for c in out.counters]
        assert counters[-1][1] == pytest.approx(run.state.trips.odometer_m)
        assert counters[-1][2] == run.state.trips.engine_hours_s
        assert len(counters) >= 3
        assert {c[3] for c in counters} == {"computed"}


class TestProfiles:
    def test_device_fields_win_over_group_fields(self) -> None:
        profile, problems = resolve_profile(
            {
                "trips": {"min_stop_duration_s": 120, "rule": "ignition"},
                "speedLimit": 80,
            },
            {"trips": {"rule": "motion"}, "alerts": {"offline": {"after_s": 60}}},
        )

        assert problems == []
        assert profile.trips == TripSettings(rule="motion", min_stop_duration_s=120)
        assert profile.alerts.offline == OfflineSettings(after_s=60)
        assert profile.alerts.overspeed == AlertSettings().overspeed
        assert profile.speed_limit_kmh == 80.0

    @pytest.mark.parametrize(
        ("attributes", "problem"),
        [
            (
                {"filters": {"max_hdop": -1}},
                "filters: max_hdop must be a positive number",
            ),
            (
                {"dwell": {"enter_after": 3}},
                "dwell: unknown settings \\['enter_after'\\]",
            ),
            (
                {"speedLimit": "fast"},
                "speedLimit must be a positive number, got 'fast'",
            ),
            (
                {"alerts": {"battery": {"low_percent": -5}}},
                "alerts.battery: low_percent must be",
            ),
        ],
    )
    def test_refused_setting_falls_back_and_is_reported(
        self, attributes: dict[str, object], problem: str
    ) -> None:
        group = {"filters": {"max_hdop": 5.0}}

        profile, problems = resolve_profile(group, attributes)

        assert len(problems) == 1
        assert __import__("re").match(problem, problems[0])
        assert profile.filters.max_hdop == 5.0
        assert profile.speed_limit_kmh is None

    def test_fleet_layer_applies_under_group_and_device(self) -> None:
        """Fleet, then group, then device, field by field."""
        fleet = {
            "filters": {"min_distance_m": 20, "max_hdop": 4},
            "trips": {"rule": "ignition", "min_idle_s": 60},
            "dwell": {"enter_after_fixes": 1},
            "alerts": {"battery": {"low_percent": 30, "low_volts": None}},
            "speedLimit": 100,
        }
        group = {"filters": {"min_distance_m": 35}, "speedLimit": 80}
        device = {"filters": {"max_hdop": 2}, "trips": {"rule": "motion"}}

        profile, problems = resolve_profile(group, device, fleet_attributes=fleet)

        assert problems == []
        assert profile.filters == FilterSettings(min_distance_m=35, max_hdop=2)
        assert profile.trips == TripSettings(rule="motion", min_idle_s=60)
        assert profile.dwell == DwellSettings(enter_after_fixes=1)
        assert profile.alerts.battery == BatterySettings(low_percent=30, low_volts=None)
        assert profile.alerts.offline == AlertSettings().offline
        assert profile.speed_limit_kmh == 80.0

    def test_fleet_layer_alone_over_defaults(self) -> None:
        profile, _ = resolve_profile(
            None, {}, fleet_attributes={"speedLimit": 90, "trips": {"rule": "ignition"}}
        )

        assert profile.speed_limit_kmh == 90.0
        assert profile.trips == TripSettings(rule="ignition")
        assert profile.filters == DEFAULT_PROFILE.filters

    def test_no_fleet_layer_is_the_two_layers(self) -> None:
        group = {"trips": {"min_stop_duration_s": 120}}
        device = {"alerts": {"idle": {"limit_s": 60}}}

        assert resolve_profile(group, device, fleet_attributes={}) == resolve_profile(
            group, device
        )

    def test_refused_fleet_value_falls_back_and_is_named(self) -> None:
        """A refused fleet value leaves the defaults; its problem names the layer."""
        fleet = {"filters": {"max_hdop": -1, "min_distance_m": 5}, "speedLimit": -3}
        group = {"filters": {"max_accuracy_m": 40}}

        profile, problems = resolve_profile(group, None, fleet_attributes=fleet)

        assert problems == [
            "motion_settings: filters: max_hdop must be a positive number or None, "
            "got -1",
            "motion_settings: speedLimit must be a positive number, got -3",
        ]
        assert profile.filters == FilterSettings(max_accuracy_m=40)
        assert profile.speed_limit_kmh is None

    def test_misspelled_alert_rule_is_reported(self) -> None:
        """A typo in a rule's name would otherwise leave the rule at its default."""
        group = {"alerts": {"ofline": {"after_s": 900}, "idle": {"limit_s": 60}}}
        fleet = {"alerts": {"overspeeed": {}}}

        profile, problems = resolve_profile(group, None, fleet_attributes=fleet)

        known = "(known: alarm, battery, idle, offline, overspeed)"
        assert problems == [
            f"motion_settings: alerts: unknown rule overspeeed {known}",
            f"alerts: unknown rule ofline {known}",
        ]
        assert profile.alerts.offline == AlertSettings().offline
        assert profile.alerts.idle.limit_s == 60

    def test_config_accepts_every_profile_key(self) -> None:
        """Each key ``resolve_profile`` reads passes the start-up check and is used."""
        text = json.dumps(
            {
                "filters": {"keep_every_s": 60},
                "trips": {"max_gap_s": 120},
                "dwell": {"exit_after_s": 30},
                "alerts": {"offline": {"after_s": 1200}},
                "speedLimit": 70,
            }
        )

        settings = load_settings({}, {"RASTRO_MOTION_SETTINGS": text})
        fleet = parse_motion_settings(settings.motion_settings)
        profile, problems = resolve_profile(None, None, fleet_attributes=fleet)

        assert sorted(fleet) == sorted(MOTION_KEYS)
        assert problems == []
        assert profile.filters.keep_every_s == 60
        assert profile.trips.max_gap_s == 120
        assert profile.dwell.exit_after_s == 30
        assert profile.alerts.offline.after_s == 1200
        assert profile.speed_limit_kmh == 70.0

    def test_unknown_time_zone_is_utc(self) -> None:
        profile, problems = resolve_profile(None, None, time_zone="Mars/Olympus")

        assert profile.time_zone == "UTC"
        assert problems == ["time zone 'Mars/Olympus' is unknown, UTC is used"]


def test_fix_point_reads_a_row() -> None:
    fix = FixPoint(
        "van-1",
        T0,
        48.1,
        11.5,
        speed_kmh=12.5,
        accuracy=4.0,
        server_time_ms=T0 + 900,
        attributes={"ignition": True, "hdop": 1.2},
    )

    assert fix_point(row_of(fix)) == fix


def _jostled(fixes: Sequence[FixPoint], seed: int, within_ms: int) -> list[FixPoint]:
    """The fixes with neighbours swapped when they are less than ``within_ms`` apart."""
    rng = random.Random(seed)
    jostled = list(fixes)
    for i in range(0, len(jostled) - 1, 2):
        close = jostled[i + 1].time_ms - jostled[i].time_ms < within_ms
        if close and rng.random() < 0.5:
            jostled[i], jostled[i + 1] = jostled[i + 1], jostled[i]
    return jostled
