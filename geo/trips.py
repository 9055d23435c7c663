"""Trips, stops and idling of one device, with its odometer and engine hours.

The streaming job feeds every *accepted* fix of a device (see :mod:`geo.filtering`),
in fix-time order, to :func:`advance`, which returns the device's new
:class:`TripState` and the records that just ended: a :class:`Trip` when the
vehicle has stood still long enough, a :class:`Stop` when the next trip is
confirmed, an :class:`Idle` when the engine stops idling.  :func:`on_timer` ends a
trip whose vehicle went quiet and then silent, and :func:`next_timer_ms` says when
to call it.  :func:`detect_trips` runs the same stepper over a whole track, and
:func:`recompute_window` with :func:`replay_window` redo the part of a device's
history a late fix touches.

How motion is decided
---------------------
Each fix is *active* or *quiet*.  With ``rule="motion"`` (the default) a fix is
active when its speed (the reported one, else the speed implied by the distance from
the previous fix) is at least ``moving_speed_kmh``; where the device reports
ignition, ignition off makes it quiet whatever the speed (GPS drift of a parked car
shows a few km/h; a towed vehicle is then not seen as driving).  With
``rule="ignition"``, ignition on is active and ignition off quiet, so a trip is an
ignition session that moved; a device that never reports ignition falls back to
speed.  Ignition is the last value the device reported, carried over fixes without
it.

A trip *starts* at the first active fix after a stop, once the vehicle has kept
moving for ``min_trip_duration_s`` and is ``min_trip_distance_m`` away from it in a
straight line, so that GPS jitter never makes a trip (until then it is a
*candidate*, and the stop goes on).  It *ends* at the first quiet fix of
a quiet spell lasting ``min_stop_duration_s``: a shorter spell (traffic lights, a
quick drop-off) stays inside the trip, and the same spell discards a candidate that
never became a trip.  A stop is the time between two trips; it starts where the
trip ended.  Every accepted fix belongs to exactly one trip or stop: a trip holds
the fixes from its start up to, not including, its end fix.

The first stop of a run starts at its first fix, so it can be shorter than
``min_stop_duration_s``.  A trip's top speed is the largest reported speed of its
fixes; from positions alone it is the largest median of three consecutive implied
speeds, so that one noisy step does not set it.

Idle is the engine on (ignition, last reported value) while the vehicle is not
moving by speed.  It is recorded when it lasted ``min_idle_s``; idles of a trip add
up to :attr:`Trip.idle_s`.  Devices without ignition have no idle.  An idle never
straddles a trip's start or end.

State and timers
----------------
:func:`advance` is a pure function: it returns a new :class:`TripState` (plain
values, about 500 bytes pickled) and leaves its input alone.  It first does what a
timer due by the fix's time would have done, so the records are the same whether
or not the job fired :func:`on_timer` in between.

Gaps
----
A gap between two fixes longer than ``max_gap_s`` (a tunnel, no coverage) is judged
by the positions at its two ends: if the straight-line speed over it is at least
``moving_speed_kmh`` the vehicle kept moving and the trip goes on (its distance
counts the straight line; a stopped vehicle first seen moving after a gap starts
its trip at the first fix after it); otherwise it stood still, and the trip ended
at the last fix before the gap when the gap (plus any quiet time before it) lasts
``min_stop_duration_s``.  With ``rule="ignition"`` a gap with ignition on at both
ends counts as active.  An idle goes on across a gap only when the engine is on at
both ends and the vehicle did not move; otherwise it ends at the last fix before
the gap.  A device silent for ``lost_after_s`` ends any trip and idle at its last
fix, and such a gap is never counted as driving, idling or engine time.

Odometer and engine hours
-------------------------
Where a fix carries the device's own counters (attributes ``odometer``, metres, and
``hours``, seconds), the state takes them.  Otherwise the odometer adds the
haversine distance from the previous accepted fix, and engine hours add the time
from a fix with ignition on to the next fix.  Trip distances add per-fix increments
(the device's counter difference where two consecutive fixes carry it and it did
not go back, else the haversine distance), so a counter reset does not make a
negative trip.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import pandas as pd

from geo.filtering import distance_m, fix_points
from geo.fixes import FixPoint

__all__ = [
    "Detection",
    "Idle",
    "Mark",
    "RecomputeWindow",
    "Record",
    "Replay",
    "Stop",
    "Trip",
    "TripSettings",
    "TripState",
    "advance",
    "detect_trips",
    "next_timer_ms",
    "on_timer",
    "ongoing",
    "recompute_window",
    "replay_window",
    "resume_state",
]


@dataclass(frozen=True, slots=True)
class TripSettings:
    """How trips, stops and idle are told apart, chosen per device group.

    Parameters
    ----------
    rule
        ``"motion"``: speed decides, ignition off vetoes.  ``"ignition"``: ignition
        decides, speed is the fallback.  See the module's docstring.
    moving_speed_kmh
        Speed from which a fix counts as moving.
    ignition_off_is_parked
        With ``rule="motion"``, a fix reporting ignition off is quiet at any speed.
    min_trip_duration_s, min_trip_distance_m
        How long a vehicle must move from its first active fix, and how far from it
        (straight line) it must get, for a trip to start there.  The duration must
        be above 0.
    min_stop_duration_s
        How long a quiet spell must last to end a trip (and be a stop).  Five
        minutes keeps traffic lights and queues inside trips.
    min_idle_s
        Shortest engine-on standstill recorded as an :class:`Idle`.
    max_gap_s
        A longer gap between two fixes is judged by its end positions.
    lost_after_s
        A device silent this long ends its trip at its last fix.  At least
        ``min_stop_duration_s`` and ``max_gap_s``.

    Examples
    --------
    >>> TripSettings(min_stop_duration_s=20.0).min_stop_duration_s
    20.0
    >>> TripSettings(lost_after_s=60.0)
    Traceback (most recent call last):
    ...
    ValueError: lost_after_s must be at least min_stop_duration_s (300.0) and max_gap_s (180.0), got 60.0
    """  # noqa: E501

    rule: Literal["motion", "ignition"] = "motion"
    moving_speed_kmh: float = 5.0
    ignition_off_is_parked: bool = True
    min_trip_duration_s: float = 60.0
    min_trip_distance_m: float = 300.0
    min_stop_duration_s: float = 300.0
    min_idle_s: float = 180.0
    max_gap_s: float = 180.0
    lost_after_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.rule not in ("motion", "ignition"):
            message = f"rule must be 'motion' or 'ignition', got {self.rule!r}"
            raise ValueError(message)
        for name in (
            "moving_speed_kmh",
            "min_trip_duration_s",
            "min_stop_duration_s",
            "min_idle_s",
            "max_gap_s",
        ):
            _check_finite(name, getattr(self, name), above_zero=True)
        _check_finite("min_trip_distance_m", self.min_trip_distance_m, above_zero=False)
        _check_finite("lost_after_s", self.lost_after_s, above_zero=True)
        if self.lost_after_s < max(self.min_stop_duration_s, self.max_gap_s):
            message = (
                "lost_after_s must be at least min_stop_duration_s "
                f"({self.min_stop_duration_s!r}) and max_gap_s ({self.max_gap_s!r}), "
                f"got {self.lost_after_s!r}"
            )
            raise ValueError(message)


class Mark(NamedTuple):
    """Where and when a fix was, with the device's counters after it.

    ``travelled_m`` is the running sum of the per-fix distance increments (see the
    module's docstring); a trip's distance is its difference between two marks.
    """

    time_ms: int
    latitude: float
    longitude: float
    odometer_m: float
    travelled_m: float


@dataclass(frozen=True, slots=True)
class Trip:
    """A drive from one stop to the next.  Times epoch ms UTC, speeds km/h.

    It starts at its first moving fix and ends at the first fix of the stop after
    it (place and time of both).  ``distance_m`` adds the per-fix increments
    between them, ``duration_s`` is end minus start, ``average_speed_kmh`` their
    ratio.  ``max_speed_ms`` is when the top speed was seen, so a daily summary
    can put it on the right day; ``idle_s`` is the recorded idles inside the trip;
    the odometer readings are the device's at the start and end fixes.
    """

    device: str
    start_ms: int
    end_ms: int
    start_latitude: float
    start_longitude: float
    end_latitude: float
    end_longitude: float
    distance_m: float
    duration_s: float
    max_speed_kmh: float
    max_speed_ms: int
    average_speed_kmh: float
    idle_s: float
    start_odometer_m: float
    end_odometer_m: float


@dataclass(frozen=True, slots=True)
class Stop:
    """The time a vehicle stood between two trips, at the place the first ended."""

    device: str
    latitude: float
    longitude: float
    start_ms: int
    end_ms: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class Idle:
    """Engine on while not moving, at least ``min_idle_s``."""

    device: str
    latitude: float
    longitude: float
    start_ms: int
    end_ms: int
    duration_s: float


Record = Trip | Stop | Idle


@dataclass(slots=True)
class TripState:
    """Everything :func:`advance` remembers about one device; plain values only.

    ``since`` is where the current trip (``moving``) or stop began, ``candidate``
    the first active fix of a possible trip during a stop, ``quiet`` the first quiet
    fix of the current quiet spell, ``idle`` where the engine started idling.
    ``odometer_m`` and ``engine_hours_s`` are the device's readings at ``last``.
    The ``span_*`` and ``quiet_*`` fields collect the open trip's (or candidate's)
    top speed and idle time before and after ``quiet``.
    """

    device: str = ""
    last: Mark | None = None
    ignition: bool | None = None
    device_odometer_m: float | None = None
    odometer_m: float = 0.0
    engine_hours_s: float = 0.0
    travelled_m: float = 0.0
    moving: bool = False
    since: Mark | None = None
    candidate: Mark | None = None
    quiet: Mark | None = None
    idle: Mark | None = None
    span_max_kmh: float = 0.0
    span_max_ms: int = 0
    span_idle_s: float = 0.0
    recent_kmh: tuple[float, ...] = ()
    quiet_max_kmh: float = 0.0
    quiet_max_ms: int = 0
    quiet_idle_s: float = 0.0

    @property
    def driving_since_ms(self) -> int | None:
        """Start of the trip in progress, ``None`` while stopped."""
        return self.since.time_ms if self.moving and self.since else None

    @property
    def stopped_since_ms(self) -> int | None:
        """Start of the stop in progress, ``None`` while driving or before any fix."""
        return None if self.moving or self.since is None else self.since.time_ms

    @property
    def quiet_since_ms(self) -> int | None:
        """Start of the quiet spell that may end the trip in progress."""
        return None if self.quiet is None else self.quiet.time_ms

    @property
    def idle_since_ms(self) -> int | None:
        """Start of the current engine-on standstill (the idle alert's input)."""
        return None if self.idle is None else self.idle.time_ms


@dataclass(frozen=True, slots=True)
class Detection:
    """What :func:`detect_trips` found, each list in the order it was emitted."""

    trips: list[Trip] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    idles: list[Idle] = field(default_factory=list)
    state: TripState = field(default_factory=TripState)


@dataclass(frozen=True, slots=True)
class RecomputeWindow:
    """The part of a device's history late fixes may change.

    ``late_ms`` is the latest of the late fixes.  Replay the accepted fixes from
    ``start_ms`` on (:func:`replay_window`).  ``end_ms`` is the end of the first
    stored stop after ``late_ms``, where the replay usually rejoins the stored
    records (``None``: there is none yet); :attr:`Replay.end_ms` says where it did.
    """

    late_ms: int
    start_ms: int
    end_ms: int | None


@dataclass(frozen=True, slots=True)
class Replay:
    """The records a replay produced, and where it rejoined the stored ones.

    ``end_ms`` is the end of the stored stop the replay reproduced exactly: stored
    records starting from the window's start up to ``end_ms`` are to be replaced by
    these, and from ``end_ms`` on nothing changes.  ``None``: the replay ran out of
    fixes first, so every stored record from the window's start is replaced and
    ``state`` is the device's new live state.
    """

    trips: list[Trip]
    stops: list[Stop]
    idles: list[Idle]
    end_ms: int | None
    state: TripState


@dataclass(frozen=True, slots=True)
class _Step:
    mark: Mark
    previous: Mark | None
    seconds: float
    metres: float
    speed_kmh: float
    reported: bool
    implied_kmh: float
    ignition: bool | None
    active: bool
    idling: bool


def advance(
    state: TripState, fix: FixPoint, settings: TripSettings
) -> tuple[TripState, list[Record]]:
    """Take one accepted fix; return the new state and the records that ended.

    Pure: ``state`` is not modified.  A fix not newer than the last one is out of
    order: it is ignored with a warning (the job's late-data path handles it).

    Examples
    --------
    >>> settings = TripSettings()
    >>> state = TripState()
    >>> for second in range(0, 300, 10):   # 5 minutes at 36 km/h, then parked
    ...     fix = FixPoint("van-1", second * 1000, 48.0 + second * 9e-5, 11.5,
    ...                    speed_kmh=36.0)
    ...     state, records = advance(state, fix, settings)
    >>> state.driving_since_ms
    0
    >>> parked = FixPoint("van-1", 900_000, 48.027, 11.5, speed_kmh=0.0)
    >>> state, records = advance(state, parked, settings)
    >>> [type(record).__name__ for record in records], state.stopped_since_ms
    (['Trip'], 290000)
    """
    if state.device and fix.device != state.device:
        message = f"a fix of {fix.device!r} given to the state of {state.device!r}"
        raise ValueError(message)
    if state.last is not None and fix.time_ms <= state.last.time_ms:
        warnings.warn(
            f"fix of {fix.device!r} at {fix.time_ms} is not newer than the last one "
            f"({state.last.time_ms}); ignored",
            stacklevel=2,
        )
        return state, []

    new = _copied(state)
    new.device = fix.device
    outputs: list[Record] = []
    _settle(new, fix.time_ms, settings, outputs)
    step = _measure(new, fix, settings)
    opening = new.since is None
    if opening:
        # The first fix of a run (or of a replay) opens a stop; a gap before it
        # belongs to no record of this run.
        new.since = step.mark

    if not opening and _is_gap(step, settings):
        _cross_gap(new, step, settings, outputs)
    _take_fix(new, step, settings, outputs)
    _track_idle(new, step, settings, outputs)

    _remember(new, fix, step, settings)
    return new, outputs


def on_timer(
    state: TripState, now_ms: int, settings: TripSettings
) -> tuple[TripState, list[Record]]:
    """End what is due at ``now_ms`` (event time) without a new fix.

    A trip whose vehicle has been quiet for ``min_stop_duration_s`` ends at its
    first quiet fix; a device silent for ``lost_after_s`` ends its trip and idle at
    its last fix.  :func:`advance` does the same before each fix, so calling this
    or not gives the same records.

    Examples
    --------
    >>> on_timer(TripState(), 1_000, TripSettings())[1]
    []
    """
    new = _copied(state)
    outputs: list[Record] = []
    _settle(new, now_ms, settings, outputs)

    return new, outputs


def next_timer_ms(state: TripState, settings: TripSettings) -> int | None:
    """When :func:`on_timer` would next end something, or ``None``.

    Examples
    --------
    >>> next_timer_ms(TripState(), TripSettings()) is None
    True
    """
    if state.quiet is not None:
        return state.quiet.time_ms + _ms(settings.min_stop_duration_s)

    span_open = state.moving or state.candidate is not None
    if state.last is not None and (span_open or state.idle is not None):
        return state.last.time_ms + _ms(settings.lost_after_s)
    return None


def ongoing(state: TripState) -> Trip | Stop | None:
    """The trip or stop in progress, up to and including the last fix.

    What the API shows as "driving since" or "stopped since"; a trip that has
    gone quiet is still the trip (see :attr:`TripState.quiet_since_ms`).

    Examples
    --------
    >>> ongoing(TripState()) is None
    True
    """
    if state.since is None or state.last is None:
        return None
    if not state.moving:
        return _stop(state.device, state.since, state.last)

    quiet_bigger = state.quiet_max_kmh > state.span_max_kmh
    return _trip(
        state.device,
        state.since,
        state.last,
        max_kmh=max(state.span_max_kmh, state.quiet_max_kmh),
        max_ms=state.quiet_max_ms if quiet_bigger else state.span_max_ms,
        idle_s=state.span_idle_s + state.quiet_idle_s,
    )


def resume_state(
    previous: FixPoint | None = None,
    *,
    odometer_m: float = 0.0,
    engine_hours_s: float = 0.0,
) -> TripState:
    """A state that starts a replay after ``previous``, the fix before the window.

    The replay opens a stop at its first fix, as a live run does once a stop is
    confirmed; ``previous`` only gives the step to that first fix (its distance and
    implied speed) and the last ignition, and the counters are its readings.

    Examples
    --------
    >>> resume_state(odometer_m=1_200.0).odometer_m
    1200.0
    """
    if previous is None:
        return TripState(odometer_m=odometer_m, engine_hours_s=engine_hours_s)

    mark = Mark(
        previous.time_ms, previous.latitude, previous.longitude, odometer_m, 0.0
    )
    return TripState(
        device=previous.device,
        last=mark,
        ignition=previous.ignition,
        device_odometer_m=_attribute(previous, "odometer"),
        odometer_m=odometer_m,
        engine_hours_s=engine_hours_s,
    )


def detect_trips(
    fixes: Iterable[FixPoint] | pd.DataFrame,
    settings: TripSettings,
    state: TripState | None = None,
) -> Detection:
    """Run :func:`advance` over one device's accepted fixes, for replay and notebooks.

    ``fixes`` is a time-ordered sequence, or a track table of one device (see
    :func:`geo.filtering.fix_points`).  The trip or stop still in progress at the
    end is in the returned state (:func:`ongoing`), not in the lists.

    Examples
    --------
    >>> fixes = [FixPoint("van-1", s * 1000, 48.0 + s * 9e-5, 11.5, speed_kmh=36.0)
    ...          for s in range(0, 600, 10)]
    >>> found = detect_trips(fixes, TripSettings())
    >>> len(found.trips), found.state.driving_since_ms
    (0, 0)
    """
    current = TripState() if state is None else state
    points = fix_points(fixes) if isinstance(fixes, pd.DataFrame) else fixes
    found = Detection(state=current)
    for fix in points:
        current, records = advance(current, fix, settings)
        _sort_into(found, records)

    return dataclasses.replace(found, state=current)


def recompute_window(
    late_ms: int | Iterable[int], records: Sequence[Record], settings: TripSettings
) -> RecomputeWindow:
    """Which part of a device's history fixes arriving late touch.

    Parameters
    ----------
    late_ms
        The time of the late fix, or the times of a burst of them.
    records
        The device's stored trips and stops around that time, plus the one in
        progress (:func:`ongoing`); idles are ignored.
    settings
        The device group's settings.

    The replay starts at the latest stop that began at least ``lost_after_s``
    before the earliest late fix: that stop was final before the late fix's time
    whatever the fix says (its quiet spell or gap lay wholly before it), so a
    state opening a stop there (:func:`resume_state`) is the live state.  Without
    one it starts at the earliest record (or the late fix).  The window ends with
    the first stop that starts after the latest late fix.

    Examples
    --------
    >>> stop = Stop("van-1", 48.1, 11.5, 0, 3_600_000, 3_600.0)
    >>> recompute_window(7_200_000, [stop], TripSettings())
    RecomputeWindow(late_ms=7200000, start_ms=0, end_ms=None)
    """
    times = [late_ms] if isinstance(late_ms, int) else sorted(late_ms)
    if not times:
        message = "late_ms must hold at least one time"
        raise ValueError(message)
    first_ms, late_ms = times[0], times[-1]

    limit_ms = first_ms - _ms(settings.lost_after_s)
    stops = sorted(
        (r for r in records if isinstance(r, Stop)), key=lambda r: r.start_ms
    )
    settled = [stop.start_ms for stop in stops if stop.start_ms <= limit_ms]
    if settled:
        start_ms = settled[-1]
    else:
        starts = [r.start_ms for r in records if not isinstance(r, Idle)]
        start_ms = min([first_ms, *starts])

    after = [stop.end_ms for stop in stops if stop.start_ms > late_ms]
    return RecomputeWindow(late_ms, start_ms, after[0] if after else None)


def replay_window(
    fixes: Iterable[FixPoint],
    window: RecomputeWindow,
    stored: Sequence[Record],
    settings: TripSettings,
    state: TripState,
) -> Replay:
    """Redo a window of history with its late fix, until it rejoins the stored one.

    Parameters
    ----------
    fixes
        The device's fixes from ``window.start_ms`` on, late ones included, in time
        order (earlier ones are skipped), accepted by the filters: re-judge the
        window from history with :func:`geo.filtering.state_after` of the last
        accepted fix before it, since a late fix can change which of its
        neighbours the minimum-distance rule keeps.
    window
        From :func:`recompute_window`.
    stored
        The device's stored trips and stops (idles optional) around the window.
    settings
        The device group's settings.
    state
        From :func:`resume_state` with the last fix before the window.

    The replay stops as soon as it emits a stop, starting after the late fix, equal
    to a stored one: from there on both runs are in the same state, so the stored
    records after it stand.  Absolute odometer and engine-hour readings after the
    window are not rewritten (the late fix adds its detour, typically metres).
    Ignition is assumed reported on every fix or none, as devices do: a late fix
    carrying the only recent ignition value could change later decisions.

    Examples
    --------
    >>> fixes = [FixPoint("van-1", s * 1000, 48.0 + s * 9e-5, 11.5, speed_kmh=36.0)
    ...          for s in range(0, 600, 10)]
    >>> window = recompute_window(300_000, [], TripSettings())   # nothing stored
    >>> replay = replay_window(fixes, window, [], TripSettings(), resume_state())
    >>> window.start_ms, replay.end_ms, replay.state.driving_since_ms
    (300000, None, 300000)
    """
    targets = {
        (stop.start_ms, stop.end_ms)
        for stop in stored
        if isinstance(stop, Stop) and stop.start_ms > window.late_ms
    }
    found = Detection(state=state)
    current = state
    for fix in fixes:
        if fix.time_ms < window.start_ms:
            continue
        current, records = advance(current, fix, settings)
        _sort_into(found, records)
        rejoined = [
            r
            for r in records
            if isinstance(r, Stop) and (r.start_ms, r.end_ms) in targets
        ]
        if rejoined:
            return _replay(found, rejoined[0].end_ms, current)

    return _replay(found, None, current)


def _replay(found: Detection, end_ms: int | None, state: TripState) -> Replay:
    def keep(record: Record) -> bool:
        return end_ms is None or record.start_ms < end_ms

    return Replay(
        trips=[r for r in found.trips if keep(r)],
        stops=[r for r in found.stops if keep(r)],
        idles=[r for r in found.idles if keep(r)],
        end_ms=end_ms,
        state=state,
    )


def _copied(state: TripState) -> TripState:
    # A shallow copy (the fields are immutable values); dataclasses.replace would
    # cost twice as much per fix.
    new = object.__new__(TripState)
    for name in _STATE_FIELDS:
        setattr(new, name, getattr(state, name))
    return new


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(TripState))


def _sort_into(found: Detection, records: list[Record]) -> None:
    for record in records:
        if isinstance(record, Trip):
            found.trips.append(record)
        elif isinstance(record, Stop):
            found.stops.append(record)
        else:
            found.idles.append(record)


def _measure(state: TripState, fix: FixPoint, settings: TripSettings) -> _Step:
    previous = state.last
    seconds = math.inf
    metres = 0.0
    if previous is not None:
        seconds = (fix.time_ms - previous.time_ms) / 1000
        metres = distance_m(
            previous.latitude, previous.longitude, fix.latitude, fix.longitude
        )

    reported = fix.speed_kmh
    implied = metres / seconds * 3.6 if previous is not None else 0.0
    has_speed = reported is not None and math.isfinite(reported)
    speed = reported if reported is not None and has_speed else implied
    ignition = fix.ignition if fix.ignition is not None else state.ignition
    return _Step(
        mark=_mark(state, fix, previous, metres),
        previous=previous,
        seconds=seconds,
        metres=metres,
        speed_kmh=speed,
        reported=has_speed,
        implied_kmh=implied,
        ignition=ignition,
        active=_active(speed, ignition, settings),
        idling=ignition is True and speed < settings.moving_speed_kmh,
    )


def _mark(
    state: TripState, fix: FixPoint, previous: Mark | None, metres: float
) -> Mark:
    counter = _attribute(fix, "odometer")
    increment = metres
    if counter is not None and state.device_odometer_m is not None:
        if counter >= state.device_odometer_m:
            increment = counter - state.device_odometer_m
    if previous is None:
        increment = 0.0

    odometer = counter if counter is not None else state.odometer_m + increment
    travelled = state.travelled_m + increment
    return Mark(fix.time_ms, fix.latitude, fix.longitude, odometer, travelled)


def _active(speed_kmh: float, ignition: bool | None, settings: TripSettings) -> bool:
    moving = speed_kmh >= settings.moving_speed_kmh
    if settings.rule == "ignition":
        return moving if ignition is None else ignition
    return moving and not (settings.ignition_off_is_parked and ignition is False)


def _is_gap(step: _Step, settings: TripSettings) -> bool:
    if step.previous is None:
        return False
    elapsed_ms = step.mark.time_ms - step.previous.time_ms
    return _ms(settings.max_gap_s) < elapsed_ms < _ms(settings.lost_after_s)


def _cross_gap(
    state: TripState, step: _Step, settings: TripSettings, outputs: list[Record]
) -> None:
    assert step.previous is not None
    implied = step.metres / step.seconds * 3.6
    moved = implied >= settings.moving_speed_kmh
    if state.idle is not None and (moved or step.ignition is not True):
        # The vehicle moved or the engine stopped somewhere in the gap: the idle
        # ends at the last fix before it.
        _end_idle(state, step.previous.time_ms, settings, outputs)

    if not _gap_active(state, step, moved, settings):
        _go_quiet(state, step.previous)
        _settle(state, step.mark.time_ms, settings, outputs)
        return

    # A stopped vehicle seen moving only after the gap starts its trip at the
    # first fix after it: the stop lasted at least until it was confirmed.
    _go_active(state, step.mark)
    _note_speed(state, implied, step.mark.time_ms)
    _confirm(state, step.mark, settings, outputs)


def _gap_active(
    state: TripState, step: _Step, moved: bool, settings: TripSettings
) -> bool:
    before, after = state.ignition, step.ignition
    if settings.rule == "ignition" and before is not None and after is not None:
        return before and after
    if settings.rule == "motion" and settings.ignition_off_is_parked:
        return moved and after is not False
    return moved


def _take_fix(
    state: TripState, step: _Step, settings: TripSettings, outputs: list[Record]
) -> None:
    if step.active:
        _go_active(state, step.mark)
        _note_fix_speed(state, step)
        _confirm(state, step.mark, settings, outputs)
        return

    _go_quiet(state, step.mark)
    _note_fix_speed(state, step)
    _settle(state, step.mark.time_ms, settings, outputs)


def _go_active(state: TripState, mark: Mark) -> None:
    if state.quiet is not None:
        if state.quiet_max_kmh > state.span_max_kmh:
            state.span_max_kmh, state.span_max_ms = (
                state.quiet_max_kmh,
                state.quiet_max_ms,
            )
        state.span_idle_s += state.quiet_idle_s
        _clear_quiet(state)
    elif not state.moving and state.candidate is None:
        state.candidate = mark
        state.recent_kmh = ()
        state.span_max_kmh, state.span_max_ms = 0.0, mark.time_ms
        state.span_idle_s = 0.0


def _go_quiet(state: TripState, mark: Mark) -> None:
    span_open = state.moving or state.candidate is not None
    if span_open and state.quiet is None:
        _clear_quiet(state)
        state.quiet = mark


def _clear_quiet(state: TripState) -> None:
    state.quiet = None
    state.quiet_max_kmh, state.quiet_max_ms, state.quiet_idle_s = 0.0, 0, 0.0


def _note_fix_speed(state: TripState, step: _Step) -> None:
    if not (state.moving or state.candidate is not None):
        return
    if step.reported:
        _note_speed(state, step.speed_kmh, step.mark.time_ms)
        return

    # From positions alone, one noisy step (multipath, a healed jump) must not
    # set the trip's top speed: take the median of the last three implied speeds
    # of the trip, the lower of its first two.
    speeds = sorted((*state.recent_kmh, step.implied_kmh))
    state.recent_kmh = (*state.recent_kmh[-1:], step.implied_kmh)
    _note_speed(state, speeds[1] if len(speeds) == 3 else speeds[0], step.mark.time_ms)


def _note_speed(state: TripState, speed_kmh: float, time_ms: int) -> None:
    if not (state.moving or state.candidate is not None):
        return
    if state.quiet is None and speed_kmh > state.span_max_kmh:
        state.span_max_kmh, state.span_max_ms = speed_kmh, time_ms
    elif state.quiet is not None and speed_kmh > state.quiet_max_kmh:
        state.quiet_max_kmh, state.quiet_max_ms = speed_kmh, time_ms


def _confirm(
    state: TripState, mark: Mark, settings: TripSettings, outputs: list[Record]
) -> None:
    candidate = state.candidate
    if state.moving or candidate is None or state.since is None:
        return
    long_enough = mark.time_ms - candidate.time_ms >= _ms(settings.min_trip_duration_s)
    away_m = distance_m(
        candidate.latitude, candidate.longitude, mark.latitude, mark.longitude
    )
    far_enough = away_m >= settings.min_trip_distance_m
    if not (long_enough and far_enough):
        return

    if candidate.time_ms > state.since.time_ms:
        outputs.append(_stop(state.device, state.since, candidate))
    state.moving, state.since, state.candidate = True, candidate, None


def _settle(
    state: TripState, now_ms: int, settings: TripSettings, outputs: list[Record]
) -> None:
    last = state.last
    if last is not None and now_ms - last.time_ms >= _ms(settings.lost_after_s):
        if state.idle is not None:
            _end_idle(state, last.time_ms, settings, outputs)
        _go_quiet(state, last)

    quiet = state.quiet
    if quiet is None or now_ms - quiet.time_ms < _ms(settings.min_stop_duration_s):
        return
    if state.moving and state.since is not None:
        outputs.append(
            _trip(
                state.device,
                state.since,
                quiet,
                max_kmh=state.span_max_kmh,
                max_ms=state.span_max_ms,
                idle_s=state.span_idle_s,
            )
        )
        state.moving, state.since = False, quiet
    state.candidate = None
    _clear_quiet(state)
    state.span_max_kmh, state.span_max_ms, state.span_idle_s = 0.0, 0, 0.0


def _track_idle(
    state: TripState, step: _Step, settings: TripSettings, outputs: list[Record]
) -> None:
    if state.idle is not None and not step.idling:
        _end_idle(state, step.mark.time_ms, settings, outputs)
    if state.idle is None and step.idling:
        state.idle = step.mark


def _end_idle(
    state: TripState, end_ms: int, settings: TripSettings, outputs: list[Record]
) -> None:
    start = state.idle
    assert start is not None
    state.idle = None
    seconds = (end_ms - start.time_ms) / 1000
    if seconds < settings.min_idle_s:
        return

    outputs.append(
        Idle(
            state.device,
            start.latitude,
            start.longitude,
            start.time_ms,
            end_ms,
            seconds,
        )
    )
    span_start = state.since if state.moving else state.candidate
    if state.quiet is not None and start.time_ms >= state.quiet.time_ms:
        state.quiet_idle_s += seconds
    elif span_start is not None and start.time_ms >= span_start.time_ms:
        state.span_idle_s += seconds


def _remember(
    state: TripState, fix: FixPoint, step: _Step, settings: TripSettings
) -> None:
    hours = _attribute(fix, "hours")
    if hours is not None:
        state.engine_hours_s = hours
    elif state.ignition is True and step.seconds < settings.lost_after_s:
        state.engine_hours_s += step.seconds

    state.last = step.mark
    state.ignition = step.ignition
    state.device_odometer_m = _attribute(fix, "odometer")
    state.odometer_m = step.mark.odometer_m
    state.travelled_m = step.mark.travelled_m


def _trip(
    device: str, start: Mark, end: Mark, *, max_kmh: float, max_ms: int, idle_s: float
) -> Trip:
    seconds = (end.time_ms - start.time_ms) / 1000
    metres = end.travelled_m - start.travelled_m
    return Trip(
        device=device,
        start_ms=start.time_ms,
        end_ms=end.time_ms,
        start_latitude=start.latitude,
        start_longitude=start.longitude,
        end_latitude=end.latitude,
        end_longitude=end.longitude,
        distance_m=metres,
        duration_s=seconds,
        max_speed_kmh=max_kmh,
        max_speed_ms=max_ms if max_kmh > 0 else start.time_ms,
        average_speed_kmh=metres / seconds * 3.6 if seconds > 0 else 0.0,
        idle_s=idle_s,
        start_odometer_m=start.odometer_m,
        end_odometer_m=end.odometer_m,
    )


def _stop(device: str, start: Mark, end: Mark) -> Stop:
    seconds = (end.time_ms - start.time_ms) / 1000
    return Stop(
        device, start.latitude, start.longitude, start.time_ms, end.time_ms, seconds
    )


def _attribute(fix: FixPoint, name: str) -> float | None:
    value: Any = fix.attributes.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _check_finite(name: str, value: float, *, above_zero: bool) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value)
    if ok and (value > 0 if above_zero else value >= 0):
        return
    wanted = "a positive number" if above_zero else "a number of at least 0"
    message = f"{name} must be {wanted}, got {value!r}"
    raise ValueError(message)
