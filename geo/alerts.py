"""Alert rules of one device: overspeed, offline, ignition, idle, alarms, low battery.

:func:`advance` steps every rule by one fix and returns the :class:`GeoEvent` values
it fires; :func:`on_timer` and :func:`next_timer_ms` drive the one rule that needs a
clock, a device gone silent.  Everything is judged by event time (the fix time),
never the wall clock: the offline timer runs on the caller's ``now_ms``, which in the
job is Flink's event-time timer (the watermark).  The state is a frozen dataclass of
plain values, pickled into Flink state, so a restart resumes every rule where it was.

The rules:

- **overspeed**: an episode starts at a fix faster than the applicable limit plus
  ``tolerance_kmh`` and ends at the first fix at or below the limit (the tolerance
  is also the hysteresis), when the limit changes (another geofence, another
  setting), when no fix came for ``max_gap_s`` (it ends at the last fast fix), or
  when the device goes offline.  One ``overspeed`` event per episode lasting at
  least ``min_duration_s``, returned when it ends and dated at its start, with its
  maximum speed, limit and duration.  The limit is an input per fix: the caller
  takes the lowest of the device's setting and of the geofences containing the fix
  (:func:`geo.geofences.speed_limit_kmh`).
- **offline / online**: ``deviceOffline`` once no fix came for ``after_s`` (dated
  ``after_s`` after the last fix), ``deviceOnline`` with the next fix.  A fix that
  arrives after a silence whose timer has not fired yet fires both, so the outcome
  does not depend on when timers run.
- **ignition**: ``ignitionOn`` / ``ignitionOff`` when the ``ignition`` attribute
  changes; the first value a device reports sets the state without an event.
- **idle**: one ``idle`` event per idle episode once it lasted ``limit_s``; the
  episode's start (``idle_since_ms``) comes from the trips stepper, per fix.
- **alarms**: one ``alarm`` event per alarm the device reports in its ``alarm``
  attribute (several may be comma-separated), unless the same alarm was already seen
  within ``repeat_window_s`` before: a device repeating an alarm in every fix raises
  it once, and again only after a pause longer than the window.
- **battery**: one ``batteryLow`` event per dip of ``batteryLevel`` (%) below
  ``low_percent``, or of ``battery`` (V) below ``low_volts`` when no level is
  reported; re-armed once the value climbs ``hysteresis`` above the threshold.

Fixes must come in fix-time order; an older one is ignored with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple, TypeGuard

import pandas as pd

from geo.events import GeoEvent
from geo.filtering import fix_points
from geo.fixes import FixPoint

__all__ = [
    "AlarmSettings",
    "AlertSettings",
    "AlertState",
    "BatterySettings",
    "IdleSettings",
    "OfflineSettings",
    "OverspeedSettings",
    "Speeding",
    "advance",
    "next_timer_ms",
    "on_timer",
    "run_alerts",
]


def _check_positive(owner: Any, *, allow_zero: bool = False) -> None:
    """Refuse any settings field that is not a finite number above (or at) zero."""
    for item in fields(owner):
        value = getattr(owner, item.name)
        if value is None:
            continue
        good = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > 0 or (allow_zero and value == 0))
        )
        if not good:
            rule = ">= 0" if allow_zero else "> 0"
            message = f"{item.name} must be a number {rule}, got {value!r}"
            raise ValueError(message)


@dataclass(frozen=True, slots=True)
class OverspeedSettings:
    """Overspeed episodes: ``tolerance_kmh`` over the limit starts one.

    ``min_duration_s`` is the shortest episode reported; ``max_gap_s`` the longest
    silence an episode survives.
    """

    tolerance_kmh: float = 3.0
    min_duration_s: float = 10.0
    max_gap_s: float = 300.0

    def __post_init__(self) -> None:
        _check_positive(self, allow_zero=True)


@dataclass(frozen=True, slots=True)
class OfflineSettings:
    """A device is offline after ``after_s`` seconds without a fix."""

    after_s: float = 600.0

    def __post_init__(self) -> None:
        _check_positive(self)


@dataclass(frozen=True, slots=True)
class IdleSettings:
    """An idle episode is reported once it lasted ``limit_s`` seconds."""

    limit_s: float = 300.0

    def __post_init__(self) -> None:
        _check_positive(self)


@dataclass(frozen=True, slots=True)
class AlarmSettings:
    """The same alarm seen again within ``repeat_window_s`` seconds is not new."""

    repeat_window_s: float = 300.0

    def __post_init__(self) -> None:
        _check_positive(self, allow_zero=True)


@dataclass(frozen=True, slots=True)
class BatterySettings:
    """Low battery thresholds: a charge in % and a voltage in V (``None``: off).

    After a ``batteryLow`` event the rule re-arms once the value is back at the
    threshold plus the hysteresis.
    """

    low_percent: float | None = 20.0
    percent_hysteresis: float = 5.0
    low_volts: float | None = 3.6
    volts_hysteresis: float = 0.1

    def __post_init__(self) -> None:
        _check_positive(self, allow_zero=True)


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Every rule's settings; the job picks one per device group."""

    overspeed: OverspeedSettings = field(default_factory=OverspeedSettings)
    offline: OfflineSettings = field(default_factory=OfflineSettings)
    idle: IdleSettings = field(default_factory=IdleSettings)
    alarm: AlarmSettings = field(default_factory=AlarmSettings)
    battery: BatterySettings = field(default_factory=BatterySettings)


class Speeding(NamedTuple):
    """An overspeed episode in progress."""

    start_ms: int
    latitude: float
    longitude: float
    limit_kmh: float
    max_speed_kmh: float
    last_over_ms: int


@dataclass(frozen=True, slots=True)
class AlertState:
    """What every rule remembers about one device; plain values, cheap to pickle.

    Never mutated: :func:`advance` and :func:`on_timer` return a new one.
    """

    device: str = ""
    last_time_ms: int | None = None
    last_latitude: float | None = None
    last_longitude: float | None = None
    offline: bool = False
    speeding: Speeding | None = None
    ignition: bool | None = None
    idle_reported_since_ms: int | None = None
    alarms_seen_ms: dict[str, int] = field(default_factory=dict)
    battery_low: bool = False


def advance(
    state: AlertState,
    fix: FixPoint,
    settings: AlertSettings,
    *,
    limit_kmh: float | None = None,
    idle_since_ms: int | None = None,
) -> tuple[AlertState, list[GeoEvent]]:
    """Step every alert rule of one device by one fix.

    Parameters
    ----------
    state
        The device's state (``AlertState()`` at first).
    fix
        Its next fix, in fix-time order.
    settings
        The rules' settings.
    limit_kmh
        The speed limit that applies to this fix, ``None`` for none.
    idle_since_ms
        When the device's current idle episode began (from the trips stepper),
        ``None`` when it is not idle.

    Returns
    -------
    tuple
        The new state and the events this fix fired, in rule order.

    Examples
    --------
    >>> state, events = advance(AlertState(), FixPoint("bus", 0, 48.1, 11.5, 70.0),
    ...                         AlertSettings(), limit_kmh=50.0)
    >>> state, events = advance(state, FixPoint("bus", 20_000, 48.1, 11.6, 45.0),
    ...                         AlertSettings(), limit_kmh=50.0)
    >>> [(e.type, e.attributes["max_speed_kmh"], e.attributes["duration_s"])
    ...  for e in events]
    [('overspeed', 70.0, 20.0)]
    """
    if state.last_time_ms is not None and fix.time_ms < state.last_time_ms:
        warnings.warn(
            f"fix of {fix.device!r} at {fix.time_ms} is older than the previous one "
            f"({state.last_time_ms}); alerts ignore it",
            stacklevel=2,
        )
        return state, []

    state, events = _back_online(state, fix, settings)
    speeding, found = _overspeed(state.speeding, fix, limit_kmh, settings.overspeed)
    events += found
    ignition, found = _ignition(state.ignition, fix)
    events += found
    idle_reported, found = _idle(
        state.idle_reported_since_ms, fix, idle_since_ms, settings.idle
    )
    events += found
    alarms_seen, found = _alarms(state.alarms_seen_ms, fix, settings.alarm)
    events += found
    battery_low, found = _battery(state.battery_low, fix, settings.battery)
    events += found

    return AlertState(
        device=fix.device,
        last_time_ms=fix.time_ms,
        last_latitude=fix.latitude,
        last_longitude=fix.longitude,
        offline=False,
        speeding=speeding,
        ignition=ignition,
        idle_reported_since_ms=idle_reported,
        alarms_seen_ms=alarms_seen,
        battery_low=battery_low,
    ), events


def next_timer_ms(state: AlertState, settings: AlertSettings) -> int | None:
    """When :func:`on_timer` must run next (event time, epoch ms), ``None`` for never.

    It is 1 ms after the silence reaches ``after_s``, so that a fix at exactly that
    time still counts as in time.

    Examples
    --------
    >>> state, _ = advance(AlertState(), FixPoint("bus", 1_000, 48.1, 11.5),
    ...                    AlertSettings())
    >>> next_timer_ms(state, AlertSettings())
    601001
    """
    if state.offline or state.last_time_ms is None:
        return None
    return _offline_at_ms(state, settings) + 1


def on_timer(
    state: AlertState, now_ms: int, settings: AlertSettings
) -> tuple[AlertState, list[GeoEvent]]:
    """Fire the offline rule if the device has been silent long enough by ``now_ms``.

    Parameters
    ----------
    state
        The device's state.
    now_ms
        The caller's clock, event time: the watermark in the job, the last fix
        time in a replay.
    settings
        The rules' settings.
    """
    due = next_timer_ms(state, settings)
    if due is None or now_ms < due:
        return state, []
    return _go_offline(state, settings)


def _offline_at_ms(state: AlertState, settings: AlertSettings) -> int:
    assert state.last_time_ms is not None
    return state.last_time_ms + round(settings.offline.after_s * 1000)


def _go_offline(
    state: AlertState, settings: AlertSettings
) -> tuple[AlertState, list[GeoEvent]]:
    """The device is offline: say so, and end any overspeed episode at its last fix."""
    assert state.last_time_ms is not None
    events = []
    if state.speeding is not None:
        ended = state.speeding.last_over_ms
        events += _episode_event(
            state.speeding, ended, state.device, settings.overspeed
        )
    offline = GeoEvent(
        state.device,
        "deviceOffline",
        _offline_at_ms(state, settings),
        state.last_latitude,
        state.last_longitude,
        {"last_seen": state.last_time_ms},
    )
    events.append(offline)
    return replace(state, offline=True, speeding=None), events


def _back_online(
    state: AlertState, fix: FixPoint, settings: AlertSettings
) -> tuple[AlertState, list[GeoEvent]]:
    events: list[GeoEvent] = []
    due = next_timer_ms(state, settings)
    if due is not None and fix.time_ms >= due:
        # The silence timer has not run yet: fire it now, as it would have.
        state, events = _go_offline(state, settings)
    if state.offline and state.last_time_ms is not None:
        silent_s = (fix.time_ms - state.last_time_ms) / 1000
        events.append(_event(fix, "deviceOnline", offline_s=silent_s))
    return state, events


def _overspeed(
    episode: Speeding | None,
    fix: FixPoint,
    limit_kmh: float | None,
    settings: OverspeedSettings,
) -> tuple[Speeding | None, list[GeoEvent]]:
    speed = fix.speed_kmh
    if speed is None or not math.isfinite(speed):
        return episode, []

    events: list[GeoEvent] = []
    if episode is not None:
        end_ms = _episode_end_ms(episode, fix, speed, limit_kmh, settings)
        if end_ms is None:
            fastest = max(episode.max_speed_kmh, speed)
            return episode._replace(max_speed_kmh=fastest, last_over_ms=fix.time_ms), []
        events = _episode_event(episode, end_ms, fix.device, settings)

    if limit_kmh is not None and speed > limit_kmh + settings.tolerance_kmh:
        started = Speeding(
            fix.time_ms, fix.latitude, fix.longitude, limit_kmh, speed, fix.time_ms
        )
        return started, events
    return None, events


def _episode_end_ms(
    episode: Speeding,
    fix: FixPoint,
    speed: float,
    limit_kmh: float | None,
    settings: OverspeedSettings,
) -> int | None:
    """When an episode ended, as of this fix; ``None`` while it goes on."""
    if fix.time_ms - episode.last_over_ms > settings.max_gap_s * 1000:
        return episode.last_over_ms
    if limit_kmh != episode.limit_kmh or speed <= episode.limit_kmh:
        return fix.time_ms
    return None


def _episode_event(
    episode: Speeding, end_ms: int, device: str, settings: OverspeedSettings
) -> list[GeoEvent]:
    duration_s = (end_ms - episode.start_ms) / 1000
    if duration_s < settings.min_duration_s:
        return []
    attributes = {
        "max_speed_kmh": episode.max_speed_kmh,
        "limit_kmh": episode.limit_kmh,
        "duration_s": duration_s,
    }
    event = GeoEvent(
        device,
        "overspeed",
        episode.start_ms,
        episode.latitude,
        episode.longitude,
        attributes,
    )
    return [event]


def _ignition(
    previous: bool | None, fix: FixPoint
) -> tuple[bool | None, list[GeoEvent]]:
    now = fix.ignition
    if now is None:
        return previous, []
    if previous is None or now == previous:
        return now, []
    return now, [_event(fix, "ignitionOn" if now else "ignitionOff")]


def _idle(
    reported_since_ms: int | None,
    fix: FixPoint,
    idle_since_ms: int | None,
    settings: IdleSettings,
) -> tuple[int | None, list[GeoEvent]]:
    if idle_since_ms is None or idle_since_ms == reported_since_ms:
        return reported_since_ms, []
    idle_ms = fix.time_ms - idle_since_ms
    if idle_ms < settings.limit_s * 1000:
        return reported_since_ms, []
    event = _event(fix, "idle", duration_s=idle_ms / 1000, idle_since=idle_since_ms)
    return idle_since_ms, [event]


def _alarms(
    seen_ms: Mapping[str, int], fix: FixPoint, settings: AlarmSettings
) -> tuple[dict[str, int], list[GeoEvent]]:
    window_ms = settings.repeat_window_s * 1000
    recent = {a: t for a, t in seen_ms.items() if fix.time_ms - t <= window_ms}
    value = fix.attributes.get("alarm")
    if value is None:
        return recent, []
    if not isinstance(value, str):
        warnings.warn(
            f"alarm of {fix.device!r} at {fix.time_ms} is not a string: {value!r}",
            stacklevel=3,
        )
        return recent, []

    events = []
    for alarm in dict.fromkeys(a.strip() for a in value.split(",") if a.strip()):
        if alarm not in recent:
            events.append(_event(fix, "alarm", alarm=alarm))
        recent[alarm] = fix.time_ms
    return recent, events


def _battery(
    low: bool, fix: FixPoint, settings: BatterySettings
) -> tuple[bool, list[GeoEvent]]:
    reading = _battery_reading(fix.attributes, settings)
    if reading is None:
        return low, []

    name, value, threshold, hysteresis = reading
    if low:
        return value < threshold + hysteresis, []
    if value >= threshold:
        return False, []
    return True, [_event(fix, "batteryLow", **{name: value, "threshold": threshold})]


def _battery_reading(
    attributes: Mapping[str, Any], settings: BatterySettings
) -> tuple[str, float, float, float] | None:
    level, volts = attributes.get("batteryLevel"), attributes.get("battery")
    if settings.low_percent is not None and _is_reading(level):
        return "batteryLevel", level, settings.low_percent, settings.percent_hysteresis
    if settings.low_volts is not None and _is_reading(volts):
        return "battery", volts, settings.low_volts, settings.volts_hysteresis
    return None


def _is_reading(value: Any) -> TypeGuard[float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _event(fix: FixPoint, kind: str, **attributes: Any) -> GeoEvent:
    return GeoEvent(
        fix.device, kind, fix.time_ms, fix.latitude, fix.longitude, attributes
    )


def run_alerts(
    fixes: Sequence[FixPoint] | pd.DataFrame,
    settings: AlertSettings,
    *,
    limits_kmh: Sequence[float | None] | None = None,
    idle_since_ms: Sequence[int | None] | None = None,
    until_ms: int | None = None,
) -> tuple[dict[str, AlertState], list[GeoEvent]]:
    """Run :func:`advance` over fixes of any devices, as replay does.

    Parameters
    ----------
    fixes
        Fixes of one or more devices, taken in fix-time order (stable for equal
        times); or a track table (see :func:`geo.filtering.fix_points`), whose
        columns ``limit_kmh`` and ``idle_since_ms`` give the per-fix inputs when
        present.
    settings
        The rules' settings.
    limits_kmh, idle_since_ms
        The per-fix inputs of :func:`advance`, aligned with a sequence of fixes.
    until_ms
        Where replay stops: every device's timer due by then fires.

    Returns
    -------
    tuple
        The final state per device, and every event in order.
    """
    if isinstance(fixes, pd.DataFrame):
        frame = fixes.sort_values("time", kind="stable", ignore_index=True)
        limits_kmh = _column(frame, "limit_kmh")
        idle_since_ms = _column(frame, "idle_since_ms")
        fixes = fix_points(frame)

    count = len(fixes)
    limits = list(limits_kmh) if limits_kmh is not None else [None] * count
    idles = list(idle_since_ms) if idle_since_ms is not None else [None] * count
    if len(limits) != count or len(idles) != count:
        message = (
            f"limits_kmh and idle_since_ms must have one value per fix ({count}), "
            f"got {len(limits)} and {len(idles)}"
        )
        raise ValueError(message)

    states: dict[str, AlertState] = {}
    events: list[GeoEvent] = []
    for i in sorted(range(count), key=lambda i: fixes[i].time_ms):
        fix = fixes[i]
        states[fix.device], found = advance(
            states.get(fix.device, AlertState()),
            fix,
            settings,
            limit_kmh=limits[i],
            idle_since_ms=idles[i],
        )
        events += found
    if until_ms is not None:
        for device, state in states.items():
            states[device], found = on_timer(state, until_ms, settings)
            events += found
    return states, events


def _column(frame: pd.DataFrame, name: str) -> list[Any] | None:
    if name not in frame.columns:
        return None
    return [None if pd.isna(v) else v for v in frame[name].tolist()]
