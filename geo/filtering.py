"""Which fixes of one device are trusted for motion, and why the others are not.

Raw fixes are noisy: trackers without a lock repeat their last position or report
"null island", clocks jump, cell-tower fixes land a kilometre away, multipath throws
a fix a hundred metres off the road, and a parked vehicle's jitter piles up hundreds
of fixes on one spot.  :func:`advance` judges one fix against the last *accepted*
fix of its device and returns the :class:`FilterReason` it is filtered for, or
``None`` when it is accepted.  The streaming job keeps every fix in history, a
filtered one marked with its reason; only accepted fixes reach trip detection
(:mod:`geo.trips`).

A filtered fix never changes the :class:`FilterState`: the next fix is judged
against the same last accepted fix.  This is what lets an outlier be dropped
without dragging the track with it, and a late replay reproduce the live decisions.

The checks, in the order they are made (the first that fails gives the reason):

1. :func:`geo.fixes.rejection`: the device's invalid flag, coordinates out of range,
   null island, more than a day ahead of the server's clock.
2. Clock: more than ``max_ahead_s`` ahead of or ``max_behind_s`` behind the server
   time (skipped when the fix carries no server time, ``server_time_ms == 0``).
3. Order: same time as the last accepted fix (a duplicate), or older (out of order:
   the job sorts fixes by event time, so an older one is a late fix the job's
   late-data path recomputes, see :func:`geo.trips.recompute_window`).
4. Source: a cell-tower or Wi-Fi location (``cellLocation`` attribute, or an accuracy
   radius typical of a cell fix).
5. Accuracy: accuracy radius or HDOP above its limit.
6. Jump: the speed implied by the distance from the last accepted fix is impossible.
7. Minimum distance: closer than ``min_distance_m`` to the last accepted fix, unless
   ``keep_every_s`` has passed since it (one fix per period is kept even when
   parked), the ignition or motion flag changed, or the fix reports a driving speed
   or is the first to report standing still after one (where a trip may end).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal

import pandas as pd

from geo.fixes import MAX_AHEAD_MS, FixPoint, rejection
from geo.tracks import EARTH_RADIUS_M

__all__ = [
    "FilterReason",
    "FilterSettings",
    "FilterState",
    "advance",
    "distance_m",
    "filter_fixes",
    "fix_points",
    "state_after",
]

#: Columns of a track table that :func:`fix_points` folds into ``attributes``.
ATTRIBUTE_COLUMNS: Final = ("ignition", "motion", "hdop", "odometer", "hours")


class FilterReason(StrEnum):
    """Why a fix is not used for motion; the value is what history and metrics show.

    The first four are :class:`geo.fixes.Rejection` reasons, with the same values.
    """

    INVALID = "invalid"
    """The device flagged the fix as invalid (no GNSS lock)."""

    ZERO = "zero"
    """Latitude and longitude both 0."""

    OUT_OF_RANGE = "out_of_range"
    """Coordinates outside ±90 / ±180 degrees, or not numbers."""

    FUTURE = "future"
    """Fix time too far ahead of the server's clock (a broken device clock)."""

    PAST = "past"
    """Fix time too far behind the server's clock (a GPS week-rollover bug, or
    a buffer uploaded too late to still count for trips)."""

    DUPLICATE = "duplicate"
    """Same time as the last accepted fix (with ``duplicate_rule="time"``), or
    same time and position."""

    OUT_OF_ORDER = "out_of_order"
    """Older than the last accepted fix; the job recomputes the window it touches."""

    CELL_LOCATION = "cell_location"
    """A cell-tower or Wi-Fi position, not a satellite fix."""

    INACCURATE = "inaccurate"
    """Accuracy radius or HDOP above the limit."""

    JUMP = "jump"
    """Implied speed from the last accepted fix above ``max_speed_kmh``."""

    STATIONARY = "stationary"
    """Within ``min_distance_m`` of the last accepted fix: parked jitter."""


@dataclass(frozen=True, slots=True)
class FilterSettings:
    """What :func:`advance` filters, chosen per device group by the job.

    Set a limit to ``None`` (or ``min_distance_m`` to 0) to switch its check off.

    Parameters
    ----------
    max_ahead_s
        A fix more than this ahead of the server time is :attr:`~FilterReason.FUTURE`.
        At most one day, the limit :func:`geo.fixes.rejection` already applies.
    max_behind_s
        A fix more than this behind the server time is :attr:`~FilterReason.PAST`.
        Trackers upload buffered fixes hours late, so the default is a week.
    duplicate_rule
        ``"time"``: any fix with the same time as the last accepted one is a
        duplicate.  ``"time_and_position"``: only when the position is the same
        too; a same-time fix elsewhere then meets the jump check (zero seconds
        make any distance beyond ``jump_tolerance_m`` a jump).
    drop_cell_location
        Filter fixes flagged ``cellLocation`` and, when ``cell_accuracy_m`` is set,
        fixes whose accuracy radius is at least that.
    cell_accuracy_m
        GNSS fixes report 3 to 30 m and Wi-Fi fixes 15 to 100 m, while a position
        from cell towers reports several hundred metres to kilometres: a radius of
        500 m or more is taken as a cell fix (Wi-Fi fixes are only recognised by
        their flag).
    max_accuracy_m
        Largest accuracy radius (metres) kept.
    max_hdop
        Largest horizontal dilution of precision (``hdop`` attribute) kept; 10 is
        roughly 50 m of error.
    max_speed_kmh
        Fastest the group's vehicles can go: a fix implying more from the last
        accepted one is a jump.  Set it above any real speed of the group: a fix
        judged a jump is compared with the same stale fix again, so too low a limit
        filters real fast driving.  After a real relocation the filter heals by
        itself once distance over elapsed time is possible again (470 m take 7 s
        at 250 km/h).
    jump_tolerance_m
        Position noise subtracted from the distance before the speed is computed,
        so that noise between fixes a fraction of a second apart is no jump.
    min_distance_m
        A fix closer than this to the last accepted one is
        :attr:`~FilterReason.STATIONARY` (parked jitter), unless one of the
        exceptions below holds.  0 switches the check off.
    keep_every_s
        One fix is kept at least this often, however little the vehicle moved.
    thin_below_kmh
        Only fixes reporting a speed below this (or none) are thinned, so a
        vehicle driving slowly keeps every fix, and the first fix below it after
        an accepted one at or above it is kept, so the moment a vehicle stops is
        kept.  ``None`` thins whatever the speed.

    Examples
    --------
    >>> FilterSettings(min_distance_m=0.0).min_distance_m
    0.0
    >>> FilterSettings(max_hdop=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: max_hdop must be a positive number or None, got -1.0
    """

    max_ahead_s: float = 600.0
    max_behind_s: float | None = 7 * 86_400.0
    duplicate_rule: Literal["time", "time_and_position"] = "time"
    drop_cell_location: bool = True
    cell_accuracy_m: float | None = 500.0
    max_accuracy_m: float | None = 100.0
    max_hdop: float | None = 10.0
    max_speed_kmh: float | None = 250.0
    jump_tolerance_m: float = 5.0
    min_distance_m: float = 50.0
    keep_every_s: float = 300.0
    thin_below_kmh: float | None = 5.0

    def __post_init__(self) -> None:
        for name in ("max_behind_s", "cell_accuracy_m", "max_accuracy_m", "max_hdop"):
            _check_positive(name, getattr(self, name), optional=True)
        for name in ("max_speed_kmh", "thin_below_kmh"):
            _check_positive(name, getattr(self, name), optional=True)
        for name in ("max_ahead_s", "keep_every_s"):
            _check_positive(name, getattr(self, name), optional=False)
        for name in ("jump_tolerance_m", "min_distance_m"):
            _check_not_negative(name, getattr(self, name))
        if self.max_ahead_s * 1000 > MAX_AHEAD_MS:
            message = (
                f"max_ahead_s must be at most {MAX_AHEAD_MS // 1000} s (the validity "
                f"rule of geo.fixes), got {self.max_ahead_s!r}"
            )
            raise ValueError(message)
        if self.duplicate_rule not in ("time", "time_and_position"):
            message = (
                "duplicate_rule must be 'time' or 'time_and_position', "
                f"got {self.duplicate_rule!r}"
            )
            raise ValueError(message)


@dataclass(slots=True)
class FilterState:
    """The last accepted fix of one device: all the filter remembers.

    Plain values only, so it pickles into Flink's keyed state.  ``time_ms`` is
    ``None`` before the first accepted fix; ``speed_kmh`` is its reported speed.
    ``ignition`` and ``motion`` are the last values accepted fixes reported
    (carried over fixes that report none).
    """

    time_ms: int | None = None
    latitude: float = 0.0
    longitude: float = 0.0
    speed_kmh: float | None = None
    ignition: bool | None = None
    motion: bool | None = None


def advance(
    state: FilterState, fix: FixPoint, settings: FilterSettings
) -> tuple[FilterState, FilterReason | None]:
    """Judge one fix; return the state after it and why it is filtered (or ``None``).

    Pure: ``state`` is not modified.  A filtered fix returns ``state`` itself.

    Parameters
    ----------
    state
        The device's filter state, :class:`FilterState()` before its first fix.
    fix
        The next fix of the device, in fix-time order.
    settings
        The device group's settings.

    Examples
    --------
    >>> settings = FilterSettings()
    >>> first = FixPoint("van-1", 1_000, 48.137, 11.575, server_time_ms=2_000)
    >>> state, reason = advance(FilterState(), first, settings)
    >>> reason is None, state.time_ms
    (True, 1000)
    >>> away = FixPoint("van-1", 2_000, 48.147, 11.575, server_time_ms=3_000)
    >>> advance(state, away, settings)[1]
    <FilterReason.JUMP: 'jump'>
    """
    reason = _reason(state, fix, settings)
    if reason is not None:
        return state, reason

    return _accepted(state, fix), None


def state_after(fix: FixPoint) -> FilterState:
    """The filter state once ``fix`` was accepted: where a replay resumes from.

    A replay of a window takes the last accepted fix before it from history and
    judges the window's fixes from there, as the live job did.

    Examples
    --------
    >>> state_after(FixPoint("van-1", 5_000, 48.1, 11.5)).time_ms
    5000
    """
    return _accepted(FilterState(), fix)


def filter_fixes(
    fixes: Iterable[FixPoint] | pd.DataFrame,
    settings: FilterSettings,
    state: FilterState | None = None,
) -> tuple[list[FilterReason | None], FilterState]:
    """Run :func:`advance` over one device's fixes, for notebooks and replay.

    Parameters
    ----------
    fixes
        The device's fixes in time order, or a track table (see :func:`fix_points`).
    settings
        The device group's settings.
    state
        Where to resume from (:func:`state_after`); a fresh state by default.

    Returns
    -------
    reasons, state
        One reason (``None``: accepted) per fix, in input order, and the state after
        the last fix.

    Examples
    --------
    >>> fixes = [FixPoint("van-1", t, 48.1, 11.5) for t in (0, 0, 60_000)]
    >>> reasons, state = filter_fixes(fixes, FilterSettings())
    >>> [None if r is None else r.value for r in reasons]
    [None, 'duplicate', 'stationary']
    """
    current = FilterState() if state is None else state
    points = fix_points(fixes) if isinstance(fixes, pd.DataFrame) else fixes
    reasons: list[FilterReason | None] = []
    for fix in points:
        current, reason = advance(current, fix, settings)
        reasons.append(reason)

    return reasons, current


def distance_m(
    latitude1: float, longitude1: float, latitude2: float, longitude2: float
) -> float:
    """Great-circle (haversine) distance in metres between two points in degrees.

    The scalar twin of :func:`geo.tracks.haversine_m`, for per-fix steppers.

    Examples
    --------
    >>> round(distance_m(0.0, 0.0, 1.0, 0.0))
    111195
    """
    phi1 = math.radians(latitude1)
    phi2 = math.radians(latitude2)
    half_dphi = (phi2 - phi1) / 2
    half_dlmb = math.radians(longitude2 - longitude1) / 2
    a = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * (
        math.sin(half_dlmb) ** 2
    )

    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(max(a, 0.0), 1.0)))


def fix_points(track: pd.DataFrame, device: str | None = None) -> list[FixPoint]:
    """The rows of a track table as :class:`~geo.fixes.FixPoint` values, by time.

    Columns read: ``time`` (datetime, UTC) or ``time_ms``, ``latitude``,
    ``longitude``, ``device`` (or the ``device`` argument, which wins), and when
    present ``speed_kmh``, ``course``, ``altitude``, ``accuracy``, ``satellites``,
    ``valid``, ``server_time_ms``, ``attributes`` (a dict per row) and the attribute
    columns ``ignition``, ``motion``, ``hdop``, ``odometer``, ``hours`` (folded into
    ``attributes``; missing values left out).

    Examples
    --------
    >>> frame = pd.DataFrame({"time": pd.to_datetime(["2026-01-01T00:00:01Z"]),
    ...                       "latitude": [48.1], "longitude": [11.5]})
    >>> fix_points(frame, device="van-1")[0].time_ms
    1767225601000
    """
    missing = {"latitude", "longitude"} - set(track.columns)
    if device is None and "device" not in track.columns:
        missing.add("device")
    if "time" not in track.columns and "time_ms" not in track.columns:
        missing.add("time")
    if missing:
        message = f"a track table needs the columns {sorted(missing)}"
        raise ValueError(message)

    rows = track.to_dict("records")
    points = [_fix_point(row, device) for row in rows]

    return sorted(points, key=lambda point: point.time_ms)


def _reason(
    state: FilterState, fix: FixPoint, settings: FilterSettings
) -> FilterReason | None:
    invalid = _validity(fix, settings)
    if invalid is not None:
        return invalid

    if state.time_ms is not None:
        ordering = _ordering(state, fix, settings)
        if ordering is not None:
            return ordering

    quality = _quality(fix, settings)
    if quality is not None or state.time_ms is None:
        return quality

    return _movement(state, fix, settings)


def _validity(fix: FixPoint, settings: FilterSettings) -> FilterReason | None:
    server_ms = fix.server_time_ms or fix.time_ms
    rejected = rejection(
        valid=fix.valid,
        latitude=fix.latitude,
        longitude=fix.longitude,
        fix_time_ms=fix.time_ms,
        server_time_ms=server_ms,
    )
    if rejected is not None:
        return FilterReason(rejected.value)

    ahead_ms = fix.time_ms - server_ms
    if ahead_ms > settings.max_ahead_s * 1000:
        return FilterReason.FUTURE
    behind = settings.max_behind_s
    if behind is not None and -ahead_ms > behind * 1000:
        return FilterReason.PAST
    return None


def _ordering(
    state: FilterState, fix: FixPoint, settings: FilterSettings
) -> FilterReason | None:
    assert state.time_ms is not None
    if fix.time_ms < state.time_ms:
        return FilterReason.OUT_OF_ORDER
    if fix.time_ms > state.time_ms:
        return None

    same_place = (fix.latitude, fix.longitude) == (state.latitude, state.longitude)
    if settings.duplicate_rule == "time" or same_place:
        return FilterReason.DUPLICATE
    return None


def _quality(fix: FixPoint, settings: FilterSettings) -> FilterReason | None:
    accuracy = fix.accuracy
    if settings.drop_cell_location:
        if fix.attributes.get("cellLocation") is True:
            return FilterReason.CELL_LOCATION
        limit = settings.cell_accuracy_m
        if limit is not None and accuracy is not None and accuracy >= limit:
            return FilterReason.CELL_LOCATION

    if settings.max_accuracy_m is not None and accuracy is not None:
        if accuracy > settings.max_accuracy_m:
            return FilterReason.INACCURATE
    hdop = _number(fix.attributes, "hdop")
    if settings.max_hdop is not None and hdop is not None and hdop > settings.max_hdop:
        return FilterReason.INACCURATE
    return None


def _movement(
    state: FilterState, fix: FixPoint, settings: FilterSettings
) -> FilterReason | None:
    assert state.time_ms is not None
    metres = distance_m(state.latitude, state.longitude, fix.latitude, fix.longitude)
    seconds = (fix.time_ms - state.time_ms) / 1000

    if settings.max_speed_kmh is not None:
        excess_m = max(0.0, metres - settings.jump_tolerance_m)
        if excess_m > 0 and (
            seconds <= 0 or excess_m / seconds * 3.6 > settings.max_speed_kmh
        ):
            return FilterReason.JUMP

    if metres < settings.min_distance_m and _thinned(state, fix, seconds, settings):
        return FilterReason.STATIONARY
    return None


def _thinned(
    state: FilterState, fix: FixPoint, seconds: float, settings: FilterSettings
) -> bool:
    if seconds >= settings.keep_every_s:
        return False
    if _changed(fix.ignition, state.ignition):
        return False
    if _changed(_flag(fix.attributes, "motion"), state.motion):
        return False

    below = settings.thin_below_kmh
    if below is None or fix.speed_kmh is None:
        return True
    stopping = state.speed_kmh is not None and state.speed_kmh >= below
    return fix.speed_kmh < below and not stopping


def _changed(reported: bool | None, last: bool | None) -> bool:
    return reported is not None and reported != last


def _accepted(state: FilterState, fix: FixPoint) -> FilterState:
    ignition = fix.ignition
    motion = _flag(fix.attributes, "motion")
    return FilterState(
        time_ms=fix.time_ms,
        latitude=fix.latitude,
        longitude=fix.longitude,
        speed_kmh=fix.speed_kmh,
        ignition=state.ignition if ignition is None else ignition,
        motion=state.motion if motion is None else motion,
    )


def _flag(attributes: Mapping[str, Any], name: str) -> bool | None:
    value = attributes.get(name)
    return value if isinstance(value, bool) else None


def _number(attributes: Mapping[str, Any], name: str) -> float | None:
    value = attributes.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fix_point(row: Mapping[str, Any], device: str | None) -> FixPoint:
    attributes = dict(row.get("attributes") or {})
    for name in ATTRIBUTE_COLUMNS:
        value = _present(row.get(name))
        if value is not None:
            attributes[name] = value

    return FixPoint(
        device=str(device if device is not None else row["device"]),
        time_ms=_time_ms(row),
        latitude=float(row["latitude"]),
        longitude=float(row["longitude"]),
        speed_kmh=_float(row.get("speed_kmh")),
        course=_float(row.get("course")),
        altitude=_float(row.get("altitude")),
        accuracy=_float(row.get("accuracy")),
        satellites=_int(row.get("satellites")),
        valid=bool(_present(row.get("valid"), True)),
        server_time_ms=_int(row.get("server_time_ms")) or 0,
        attributes=attributes,
    )


def _time_ms(row: Mapping[str, Any]) -> int:
    if "time_ms" in row:
        return int(row["time_ms"])
    return int(pd.Timestamp(row["time"]).value // 1_000_000)


def _present(value: Any, default: Any = None) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    if hasattr(value, "item"):
        return value.item()
    return value


def _float(value: Any) -> float | None:
    present = _present(value)
    return None if present is None else float(present)


def _int(value: Any) -> int | None:
    present = _present(value)
    return None if present is None else int(present)


def _check_positive(name: str, value: float | None, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int | float) or not value > 0 or math.isinf(value):
        wanted = "a positive number or None" if optional else "a positive number"
        message = f"{name} must be {wanted}, got {value!r}"
        raise ValueError(message)


def _check_not_negative(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not value >= 0 or math.isinf(value):
        message = f"{name} must be a number of at least 0, got {value!r}"
        raise ValueError(message)
