"""Alert rules of one device: overspeed, offline, ignition, idle, alarms, battery."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.alerts import (
    AlarmSettings,
    AlertSettings,
    AlertState,
    BatterySettings,
    IdleSettings,
    OfflineSettings,
    OverspeedSettings,
    advance,
    next_timer_ms,
    on_timer,
    run_alerts,
)
from geo.events import GeoEvent
from geo.fixes import FixPoint

SETTINGS = AlertSettings()
START_MS = 1_700_000_000_000


def drive(
    speeds: Sequence[float | None],
    step_s: float = 5.0,
    device: str = "bus",
    **attributes: Sequence[Any],
) -> list[FixPoint]:
    """Fixes ``step_s`` apart heading north, with per-fix attributes where not None."""
    fixes = []
    for i, speed in enumerate(speeds):
        extra = {k: v[i] for k, v in attributes.items() if v[i] is not None}
        fixes.append(
            FixPoint(
                device,
                START_MS + round(i * step_s * 1000),
                48.1 + i * 1e-4,
                11.5,
                speed_kmh=speed,
                attributes=extra,
            )
        )
    return fixes


def flat(fired: Sequence[list[GeoEvent]]) -> list[GeoEvent]:
    return list(itertools.chain.from_iterable(fired))


def step_all(
    fixes: Sequence[FixPoint], limits: Sequence[float | None] | None = None
) -> list[list[GeoEvent]]:
    """The events each fix fired, one list per fix."""
    state, fired = AlertState(), []
    for i, fix in enumerate(fixes):
        limit = None if limits is None else limits[i]
        state, events = advance(state, fix, SETTINGS, limit_kmh=limit)
        fired.append(events)
    return fired


class TestOverspeed:
    def test_episode_starts_over_tolerance_and_ends_at_the_limit(self) -> None:
        """Limit 50, tolerance 3: 60 starts it, 55 and 52 keep it, 50 ends it."""
        speeds = [40.0, 40.0, 60.0, 62.0, 65.0, 61.0, 55.0, 52.0, 50.0, 45.0]
        fixes = drive(speeds)

        fired = step_all(fixes, [50.0] * len(fixes))

        assert [i for i, events in enumerate(fired) if events] == [8]
        (event,) = fired[8]
        assert event.type == "overspeed"
        assert event.time_ms == fixes[2].time_ms
        assert (event.latitude, event.longitude) == (fixes[2].latitude, 11.5)
        assert event.attributes == {
            "max_speed_kmh": 65.0,
            "limit_kmh": 50.0,
            "duration_s": 30.0,
        }

    def test_within_tolerance_never_starts(self) -> None:
        fired = step_all(drive([52.0, 53.0, 53.0, 40.0]), [50.0] * 4)

        assert fired == [[], [], [], []]

    def test_shorter_than_minimum_is_dropped(self) -> None:
        """Episodes of 5 s are dropped; one of 10 s (the minimum) is kept."""
        speeds = [60.0, 40.0, 60.0, 40.0, 60.0, 60.0, 40.0]

        fired = flat(step_all(drive(speeds), [50.0] * len(speeds)))

        assert [e.attributes["duration_s"] for e in fired] == [10.0]

    def test_limit_change_ends_the_episode(self) -> None:
        """Into a 30 zone at 60 km/h: the 50 episode ends, a 30 episode starts."""
        fixes = drive([60.0, 60.0, 60.0, 60.0, 60.0, 20.0])

        fired = flat(step_all(fixes, [50.0, 50.0, 50.0, 30.0, 30.0, 30.0]))

        assert [
            (e.attributes["limit_kmh"], e.attributes["duration_s"]) for e in fired
        ] == [
            (50.0, 15.0),
            (30.0, 10.0),
        ]
        assert fired[1].time_ms == fixes[3].time_ms

    def test_no_limit_ends_the_episode_and_no_speed_is_ignored(self) -> None:
        fixes = drive([60.0, None, 60.0, 60.0, 60.0])

        fired = step_all(fixes, [50.0, 50.0, 50.0, None, 50.0])

        assert [e.attributes["duration_s"] for e in flat(fired)] == [15.0]
        assert fired[3] != []

    def test_long_gap_ends_at_the_last_fast_fix(self) -> None:
        fixes = drive([60.0, 60.0, 60.0])
        late = FixPoint("bus", fixes[-1].time_ms + 400_000, 48.2, 11.5, speed_kmh=60.0)

        fired = step_all([*fixes, late], [50.0] * 4)

        assert [e.attributes["duration_s"] for e in fired[3]] == [10.0]
        assert fired[3][0].time_ms == fixes[0].time_ms


class TestOffline:
    def test_timers_survive_a_pickled_state(self) -> None:
        first, later = drive([10.0])[0], START_MS + 3_600_000
        state, _ = advance(AlertState(), first, SETTINGS)
        due = next_timer_ms(state, SETTINGS)
        state = pickle.loads(pickle.dumps(state))

        early, nothing = on_timer(state, START_MS + 600_000, SETTINGS)
        assert (early, nothing) == (state, [])
        state, fired = on_timer(early, START_MS + 600_001, SETTINGS)
        state = pickle.loads(pickle.dumps(state))
        again, repeated = on_timer(state, later, SETTINGS)
        back, online = advance(
            again, FixPoint("bus", later, 48.2, 11.5, speed_kmh=0.0), SETTINGS
        )

        assert due == START_MS + 600_001
        assert [(e.type, e.device, e.time_ms, e.attributes) for e in fired] == [
            ("deviceOffline", "bus", START_MS + 600_000, {"last_seen": START_MS})
        ]
        assert (fired[0].latitude, fired[0].longitude) == (first.latitude, 11.5)
        assert next_timer_ms(state, SETTINGS) is None and repeated == []
        assert [(e.type, e.attributes) for e in online] == [
            ("deviceOnline", {"offline_s": 3600.0})
        ]
        assert next_timer_ms(back, SETTINGS) == later + 600_001

    def test_late_timer_is_caught_up_by_the_next_fix(self) -> None:
        """Without the timer, the fix after the silence fires both events."""
        first, second = drive([10.0, 10.0], step_s=700.0)
        state, _ = advance(AlertState(), first, SETTINGS)

        _, events = advance(state, second, SETTINGS)
        timed, by_timer = on_timer(state, second.time_ms, SETTINGS)
        _, after_timer = advance(timed, second, SETTINGS)

        assert [e.type for e in events] == ["deviceOffline", "deviceOnline"]
        assert events == by_timer + after_timer

    def test_fix_exactly_at_the_limit_is_in_time(self) -> None:
        fixes = drive([10.0, 10.0], step_s=600.0)

        assert flat(step_all(fixes)) == []

    def test_no_fix_no_timer(self) -> None:
        assert next_timer_ms(AlertState(), SETTINGS) is None
        assert on_timer(AlertState(), START_MS, SETTINGS) == (AlertState(), [])

    def test_offline_ends_an_overspeed_episode(self) -> None:
        fixes = drive([70.0] * 7)
        state = AlertState()
        for fix in fixes:
            state, _ = advance(state, fix, SETTINGS, limit_kmh=50.0)

        _, events = on_timer(state, fixes[-1].time_ms + 700_000, SETTINGS)

        assert [e.type for e in events] == ["overspeed", "deviceOffline"]
        assert events[0].attributes["duration_s"] == 30.0


class TestIgnitionIdleAlarmBattery:
    def test_ignition_only_on_change(self) -> None:
        states = [None, True, True, False, None, False, True]
        fixes = drive([0.0] * len(states), ignition=states)

        fired = step_all(fixes)

        assert [[e.type for e in events] for events in fired] == [
            [],
            [],
            [],
            ["ignitionOff"],
            [],
            [],
            ["ignitionOn"],
        ]

    def test_idle_once_per_episode(self) -> None:
        fixes = drive([0.0] * 12, step_s=60.0)
        since = [None] + [fixes[1].time_ms] * 7 + [None] + [fixes[9].time_ms] * 3
        state, fired = AlertState(), []
        for fix, idle_since in zip(fixes, since, strict=True):
            state, events = advance(state, fix, SETTINGS, idle_since_ms=idle_since)
            fired += [(fixes.index(fix), e) for e in events]

        assert [(i, e.type, e.attributes) for i, e in fired] == [
            (6, "idle", {"duration_s": 300.0, "idle_since": fixes[1].time_ms})
        ]

    def test_alarm_once_per_window(self) -> None:
        alarms = ["sos"] * 13 + [None] * 40 + ["sos", "sos,powerCut", 7]
        fixes = drive([0.0] * len(alarms), step_s=10.0, alarm=alarms)

        with pytest.warns(UserWarning, match="alarm of 'bus' .* is not a string: 7"):
            fired = flat(step_all(fixes))

        assert [((e.time_ms - START_MS) // 10_000, e.attributes) for e in fired] == [
            (0, {"alarm": "sos"}),
            (53, {"alarm": "sos"}),
            (54, {"alarm": "powerCut"}),
        ]

    def test_battery_once_per_dip_with_hysteresis(self) -> None:
        levels = [50, 30, 19, 18, 22, 24, 19, 26, 15]
        fixes = drive([0.0] * len(levels), batteryLevel=levels)

        fired = flat(step_all(fixes))

        assert [(e.time_ms - START_MS) // 5000 for e in fired] == [2, 8]
        assert fired[0].attributes == {"batteryLevel": 19, "threshold": 20.0}

    def test_battery_voltage_when_no_level(self) -> None:
        fixes = drive([0.0, 0.0], battery=[3.9, 3.5])

        fired = flat(step_all(fixes))

        assert [(e.type, e.attributes) for e in fired] == [
            ("batteryLow", {"battery": 3.5, "threshold": 3.6})
        ]


class TestSettingsAndOrder:
    @pytest.mark.parametrize(
        ("build", "match"),
        [
            (
                lambda: OverspeedSettings(tolerance_kmh=-1.0),
                "tolerance_kmh must be a number >= 0",
            ),
            (lambda: OfflineSettings(after_s=0.0), "after_s must be a number > 0"),
            (
                lambda: IdleSettings(limit_s=float("nan")),
                "limit_s must be a number > 0",
            ),
            (
                lambda: AlarmSettings(repeat_window_s="5"),
                "repeat_window_s must be a number",
            ),
            (lambda: BatterySettings(low_percent=True), "low_percent must be a number"),
        ],
    )
    def test_bad_settings_are_refused(self, build: Any, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            build()

    def test_older_fix_is_ignored_with_a_warning(self) -> None:
        first, second = drive([10.0, 10.0])
        state, _ = advance(AlertState(), second, SETTINGS)

        with pytest.warns(UserWarning, match="older than the previous one"):
            again, events = advance(state, first, SETTINGS)

        assert (again, events) == (state, [])

    def test_batch_reads_a_track_table(self) -> None:
        fixes = drive([60.0, 60.0, 60.0, 40.0])
        frame = pd.DataFrame(
            {
                "device": "bus",
                "time": pd.to_datetime([f.time_ms for f in fixes], unit="ms", utc=True),
                "latitude": [f.latitude for f in fixes],
                "longitude": 11.5,
                "speed_kmh": [f.speed_kmh for f in fixes],
                "limit_kmh": 50.0,
            }
        ).iloc[::-1]

        _, events = run_alerts(frame, SETTINGS)

        assert [(e.type, e.attributes["duration_s"]) for e in events] == [
            ("overspeed", 15.0)
        ]

    def test_batch_refuses_misaligned_inputs(self) -> None:
        with pytest.raises(ValueError, match="one value per fix \\(2\\), got 1 and 2"):
            run_alerts(drive([1.0, 2.0]), SETTINGS, limits_kmh=[50.0])


@st.composite
def streams(
    draw: st.DrawFn,
) -> tuple[list[FixPoint], list[float | None], list[int | None], list[int]]:
    """Random fixes of two devices with speeds, limits, idling, alarms and batteries."""
    count = draw(st.integers(1, 40))
    fixes, limits, idles = [], [], []
    time_ms = START_MS
    idle_since: dict[str, int | None] = {"a": None, "b": None}
    for _ in range(count):
        time_ms += draw(st.sampled_from([1_000, 5_000, 60_000, 400_000, 700_000]))
        device = draw(st.sampled_from(["a", "b"]))
        attributes: dict[str, Any] = {}
        if draw(st.booleans()):
            attributes["ignition"] = draw(st.booleans())
        if draw(st.integers(0, 4)) == 0:
            attributes["alarm"] = draw(
                st.sampled_from(["sos", "tamper", "sos,jamming"])
            )
        if draw(st.booleans()):
            attributes["batteryLevel"] = draw(st.integers(5, 40))
        speed = draw(st.one_of(st.none(), st.floats(0, 140)))
        if draw(st.booleans()):
            idle_since[device] = None if draw(st.booleans()) else time_ms
        fixes.append(
            FixPoint(
                device, time_ms, 48.1, 11.5, speed_kmh=speed, attributes=attributes
            )
        )
        limits.append(draw(st.sampled_from([None, 30.0, 50.0])))
        idles.append(idle_since[device])
    timers = draw(st.lists(st.integers(0, count - 1), max_size=5))
    return fixes, limits, idles, timers


@settings(max_examples=80, deadline=None)
@given(case=streams(), cut=st.integers(0, 40))
def test_batch_equals_stepping_and_pickles_resume(
    case: tuple[list[FixPoint], list[float | None], list[int | None], list[int]],
    cut: int,
) -> None:
    """A restart from a pickled state anywhere changes nothing (what Flink does)."""
    fixes, limits, idles, _ = case
    states, batch = run_alerts(
        fixes,
        SETTINGS,
        limits_kmh=limits,
        idle_since_ms=idles,
        until_ms=fixes[-1].time_ms + 10**9,
    )

    stepped: dict[str, AlertState] = {}
    events: list[GeoEvent] = []
    for i, fix in enumerate(fixes):
        if i == cut:
            stepped = pickle.loads(pickle.dumps(stepped))
        stepped[fix.device], found = advance(
            stepped.get(fix.device, AlertState()),
            fix,
            SETTINGS,
            limit_kmh=limits[i],
            idle_since_ms=idles[i],
        )
        events += found
    for device in stepped:
        stepped[device], found = on_timer(
            stepped[device], fixes[-1].time_ms + 10**9, SETTINGS
        )
        events += found

    assert events == batch and stepped == states
    assert {e.device for e in batch} <= {"a", "b"}
    for device in states:
        kinds = [e.type for e in batch if e.device == device]
        offline, online = kinds.count("deviceOffline"), kinds.count("deviceOnline")
        assert offline - online == 1  # every silence reported, the last one still open


@settings(max_examples=60, deadline=None)
@given(case=streams())
def test_timers_in_between_do_not_change_the_outcome(
    case: tuple[list[FixPoint], list[float | None], list[int | None], list[int]],
) -> None:
    """Firing timers between fixes (as the watermark advances) gives the same events."""
    fixes, limits, idles, timers = case
    until_ms = fixes[-1].time_ms + 10**9
    _, without = run_alerts(
        fixes, SETTINGS, limits_kmh=limits, idle_since_ms=idles, until_ms=until_ms
    )

    states: dict[str, AlertState] = {}
    events: list[GeoEvent] = []
    for i, fix in enumerate(fixes):
        for device in states:
            if i in timers:
                states[device], found = on_timer(
                    states[device], fix.time_ms - 1, SETTINGS
                )
                events += found
        states[fix.device], found = advance(
            states.get(fix.device, AlertState()),
            fix,
            SETTINGS,
            limit_kmh=limits[i],
            idle_since_ms=idles[i],
        )
        events += found
    for device in states:
        states[device], found = on_timer(states[device], until_ms, SETTINGS)
        events += found

    assert sorted(events, key=_order) == sorted(without, key=_order)


def _order(event: GeoEvent) -> tuple[int, str, str]:
    return event.time_ms, event.device, event.type
