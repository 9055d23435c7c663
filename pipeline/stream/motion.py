"""What the job derives from one device's fixes, in fix-time order, with no Flink.

:class:`DeviceMotion` runs the ``geo`` steppers of one device over its accepted
fixes: :mod:`geo.filtering` (a filtered fix is only marked in history), then
:mod:`geo.trips` (trips, stops, idles, odometer and engine hours),
:mod:`geo.geofences` (membership with dwell, visits) and :mod:`geo.alerts`.  The
Flink function in :mod:`pipeline.stream.functions` keeps its :class:`MotionState`
in keyed state and turns its :class:`Outputs` into rows for the sinks; the tests
drive it directly.

Order
-----
Fixes of one device reach the job in arrival order, which is not always fix-time
order.  :meth:`DeviceMotion.receive` holds each fix in a small buffer and releases
it to the steppers, oldest first, as soon as one of these holds:

- the device has reported a fix ``lateness`` newer (its own event time passed it);
- the fix has waited ``lateness`` in the buffer (:meth:`DeviceMotion.wake`, on a
  processing-time timer), so a device that goes quiet is not held back;
- a timer of the steppers fires at a later event time (:meth:`DeviceMotion.fire`).

So a fix arriving out of order by less than ``lateness`` (of fix time and of
waiting time) is put in its place.  A per-device clock is used rather than
Flink's watermark alone because trackers' clocks and uploads are independent: a
device uploading an hour-old buffer would otherwise be all late, and a device
whose clock runs a minute behind the fleet would never be on time.

A fix older than the newest one already released is *late*.  It is in history
already (the job writes every accepted fix at once); here it is kept as a pending
recompute (a ``recompute_requests`` row) and, :data:`RECOMPUTE_DELAY_MS` after the
last late fix of a burst, :meth:`DeviceMotion.recompute` re-judges the window of
history it touches (:mod:`pipeline.stream.recompute`), replaces the trips, stops
and idles there, re-marks the filtered fixes and recomputes the daily summaries
of the days touched.  Geofence and alert events are about the present: a late fix
raises none (the steppers ignore older fixes by design).

Timers
------
:meth:`DeviceMotion.next_event_ms` is when the trip stepper or the offline rule
next needs a clock (a trip whose vehicle parked and went silent ends after the
minimum stop; a silent device goes offline).  What makes them fire is the
device's *silence*: while a device keeps sending, its own fixes do what the
timers would (the steppers settle what is due before each fix).  Once nothing
arrived from it for ``lateness``, its event time is taken to be the later of

- Flink's watermark: the job registers the due time as an event-time timer,
  which fires when the *other* devices read by the job have reported that far
  (every source subtask must have: one without data holds the watermark back);
  and
- its newest fix time plus the wall time since that fix arrived: a
  processing-time timer, so that a device silent for ten minutes of real time is
  offline even when nothing else reports and no watermark moves.

Every timer due by then fires at its own due time, in order.  After a timer
fired, a fix older than its due time counts as late.
A device replaying old data behind a fleet that is live is so not declared
offline in the middle of its upload, only once it stops sending.

Daily summaries
---------------
A summary row is never incremented: each time a record ends (or a recompute
replaces records), every local day it touches is recomputed with
:func:`geo.summaries.summarise` from all the records overlapping that day.  The
records of the last :data:`KEEP_RECORDS_MS` are kept in the device's state for
this (checkpointed with everything else, so after a restore the replayed records
rebuild the same rows: nothing is counted twice); an older day is recomputed from
the stored records plus what changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

import structlog

from geo import alerts, filtering, geofences, trips
from geo.events import GeoEvent
from geo.fixes import FixPoint
from geo.geofences import GeofenceIndex, Visit, speed_limit_kmh
from geo.summaries import DaySummary, day_pieces, summarise
from geo.trips import Record
from pipeline.ingest.protocols import PROTOCOL_MODULES
from pipeline.stream.profiles import DeviceProfile

__all__ = [
    "COUNTERS_EVERY_MS",
    "KEEP_RECORDS_MS",
    "RECOMPUTE_DELAY_MS",
    "DeviceMotion",
    "FixRow",
    "Fleet",
    "History",
    "HistoryUnavailable",
    "MotionState",
    "Outputs",
    "fix_point",
    "record_key",
]

#: An accepted fix as the job carries it: the first 14 columns of
#: :data:`pipeline.stream.records.FIELD_NAMES` (device .. attributes).
FixRow = tuple[Any, ...]

#: How long the records of a device stay in its state (for its daily summaries).
KEEP_RECORDS_MS: Final = 3 * 86_400_000

#: How long after the last late fix of a burst its window is recomputed, in wall
#: milliseconds: long enough for history (flushed every 0.5 s) to hold the burst.
RECOMPUTE_DELAY_MS: Final = 5_000

#: A burst that keeps going is recomputed at the latest this long after it began.
RECOMPUTE_MAX_WAIT_MS: Final = 60_000

#: How often (fix time) the odometer and engine hours are written while driving.
COUNTERS_EVERY_MS: Final = 60_000

#: At most this many stepper timers fire in one call (a trip end, then offline).
_MAX_TIMERS_AT_ONCE: Final = 8

#: Released together, fixes are looked up in the geofence index in one call from
#: this many on (:meth:`geo.geofences.GeofenceIndex.containing_many`).
_BATCH_LOOKUP: Final = 4

#: Tracker protocols whose decoders publish ``alarm`` events themselves (see
#: ``pipeline.ingest.protocols.base.alarm_event``): the job stores those alarms in
#: ``events`` but does not publish them on the topic a second time.
ALARMS_PUBLISHED_BY_INGEST: Final = frozenset(PROTOCOL_MODULES)

log = structlog.get_logger("rastro.stream")

_DEVICE, _TIME, _SERVER, _LAT, _LON, _ALT, _ACC = 0, 1, 2, 3, 4, 5, 6
_SPEED, _COURSE, _SATS, _VALID, _PROTOCOL, _ATTRIBUTES = 8, 9, 10, 11, 12, 13


class HistoryUnavailable(RuntimeError):
    """Stored history could not be read (PostgreSQL down); the work is retried."""


class Fleet(Protocol):
    """Profiles and geofences (a :class:`pipeline.stream.catalog.Catalog`)."""

    @property
    def index(self) -> GeofenceIndex:
        """Every geofence."""
        ...

    def profile(self, device: str) -> DeviceProfile:
        """The device's settings, time zone and assigned geofences."""
        ...


class History(Protocol):
    """Stored history (a :class:`pipeline.stream.history.HistoryReader`)."""

    def records(self, device: str, start_ms: int, end_ms: int | None) -> list[Record]:
        """Stored trips, stops and idles overlapping ``[start_ms, end_ms)``."""
        ...

    def last_stop_start(self, device: str, at_or_before_ms: int) -> int | None:
        """Start of the latest stored stop that began at or before a time."""
        ...

    def fixes(
        self, device: str, start_ms: int, end_ms: int
    ) -> list[tuple[FixRow, str | None]]:
        """Stored fixes with ``start_ms <= fix time <= end_ms`` and their filter."""
        ...

    def last_accepted(self, device: str, before_ms: int) -> FixRow | None:
        """The newest stored fix before ``before_ms`` that no filter dropped."""
        ...


@dataclass(slots=True)
class MotionState:
    """Everything the job remembers about one device's motion; plain values.

    ``buffer`` maps fix time to the fix and the wall time it arrived; ``horizon_ms``
    is the newest fix time the steppers have seen (or a timer fired at);
    ``clock_*`` the newest fix time received and when; ``late`` the late fixes
    waiting for :meth:`DeviceMotion.recompute`; ``records`` the records that ended
    since ``complete_from_ms`` (at most :data:`KEEP_RECORDS_MS` back).
    """

    buffer: dict[int, tuple[FixRow, int]] = field(default_factory=dict)
    horizon_ms: int | None = None
    clock_fix_ms: int | None = None
    clock_wall_ms: int = 0
    filter: filtering.FilterState = field(default_factory=filtering.FilterState)
    trips: trips.TripState = field(default_factory=trips.TripState)
    alerts: alerts.AlertState = field(default_factory=alerts.AlertState)
    membership: geofences.MembershipState = field(
        default_factory=geofences.MembershipState
    )
    records: list[Record] = field(default_factory=list)
    complete_from_ms: int | None = None
    late: dict[int, FixRow] = field(default_factory=dict)
    late_since_wall_ms: int | None = None
    recompute_at_ms: int | None = None
    counters: tuple[float, float] | None = None
    counters_ms: int = 0
    event_timer_ms: int | None = None
    wall_timer_ms: int | None = None


@dataclass(slots=True)
class Outputs:
    """What one call produced, for the sinks.

    ``records`` and ``summaries`` pair each row with whether it is deleted;
    ``visits`` are ``(device, geofence, enter_ms, exit_ms or None)``; ``events``
    pair each event with whether to publish it on the ``events`` topic;
    ``counters`` are ``(device, odometer_m, engine_s, source)``; ``requests``
    ``(device, fix time, done)``.
    """

    marks: list[tuple[FixRow, str | None]] = field(default_factory=list)
    records: list[tuple[Record, bool]] = field(default_factory=list)
    visits: list[tuple[str, str, int, int | None]] = field(default_factory=list)
    events: list[tuple[GeoEvent, bool]] = field(default_factory=list)
    summaries: list[tuple[DaySummary, str, bool]] = field(default_factory=list)
    counters: list[tuple[str, float, float, str]] = field(default_factory=list)
    requests: list[tuple[str, int, bool]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (
                self.marks,
                self.records,
                self.visits,
                self.events,
                self.summaries,
                self.counters,
                self.requests,
            )
        )


def fix_point(row: FixRow) -> FixPoint:
    """The :class:`geo.fixes.FixPoint` of an accepted fix row."""
    attributes = json.loads(row[_ATTRIBUTES]) if row[_ATTRIBUTES] else {}
    return FixPoint(
        device=row[_DEVICE],
        time_ms=row[_TIME],
        latitude=row[_LAT],
        longitude=row[_LON],
        speed_kmh=_finite(row[_SPEED]),
        course=_finite(row[_COURSE]),
        altitude=_finite(row[_ALT]),
        accuracy=_finite(row[_ACC]),
        satellites=row[_SATS],
        valid=bool(row[_VALID]),
        server_time_ms=row[_SERVER] or 0,
        attributes=attributes,
    )


def record_key(record: Record) -> tuple[str, int]:
    """A record's identity in its table: kind and start (the device is implied)."""
    return type(record).__name__, record.start_ms


class DeviceMotion:
    """The steppers of every device of one job instance.

    Parameters
    ----------
    fleet
        Profiles and geofences.
    history
        Stored history, read for late data and for days older than the state.
    lateness_ms
        How far out of order (fix time and waiting time) a fix may come and still
        be put in order.
    """

    def __init__(self, fleet: Fleet, history: History, lateness_ms: int) -> None:
        if lateness_ms < 0:
            message = f"lateness_ms must be at least 0, got {lateness_ms!r}"
            raise ValueError(message)
        self._fleet = fleet
        self._history = history
        self.lateness_ms = lateness_ms

    # --- the three ways in ---------------------------------------------------------

    def receive(
        self, state: MotionState, row: FixRow, wall_ms: int, out: Outputs
    ) -> None:
        """Take a newly accepted fix; release what its arrival makes due."""
        fix_ms = row[_TIME]
        horizon = state.horizon_ms
        if horizon is not None and fix_ms <= horizon:
            if fix_ms < horizon:
                self._note_late(state, row, wall_ms, out)
            # A fix at the very time of the newest one used is a resend with
            # another position: history keeps the later one, motion the first.
            return

        state.buffer[fix_ms] = (row, wall_ms)
        if state.clock_fix_ms is None or fix_ms > state.clock_fix_ms:
            state.clock_fix_ms, state.clock_wall_ms = fix_ms, wall_ms
        self._release(state, state.clock_fix_ms - self.lateness_ms, out)

    def wake(
        self,
        state: MotionState,
        wall_ms: int,
        out: Outputs,
        watermark_ms: int | None = None,
    ) -> None:
        """A processing-time timer: release what waited, fire what silence made due.

        ``watermark_ms`` is Flink's current watermark, if any.  Also runs a
        pending recompute once it is due.
        """
        waited = wall_ms - self.lateness_ms
        expired = [t for t, (_, arrived) in state.buffer.items() if arrived <= waited]
        if expired:
            self._release(state, max(expired), out)
        self._fire_due(state, wall_ms, watermark_ms, out)

        if state.recompute_at_ms is not None and wall_ms >= state.recompute_at_ms:
            self.recompute(state, wall_ms, out)

    def fire(
        self, state: MotionState, timer_ms: int, wall_ms: int, out: Outputs
    ) -> None:
        """An event-time timer: the watermark passed ``timer_ms``."""
        self._fire_due(state, wall_ms, timer_ms, out)

    def _fire_due(
        self,
        state: MotionState,
        wall_ms: int,
        watermark_ms: int | None,
        out: Outputs,
    ) -> None:
        """End what is due by the device's event time, if the device is quiet.

        A device that sent a fix less than ``lateness`` ago is still reporting:
        its own fixes decide (they do what a timer would).  Otherwise its event
        time is the watermark, or its newest fix time plus the wall time since
        that fix arrived, whichever is later; every timer due by then fires, in
        order, at its own due time, after the buffered fixes up to then.
        """
        if state.clock_fix_ms is None:
            return
        silent_ms = wall_ms - state.clock_wall_ms
        if silent_ms < self.lateness_ms:
            return
        now_ms = state.clock_fix_ms + silent_ms
        if watermark_ms is not None:
            now_ms = max(now_ms, watermark_ms)
        self._release(state, now_ms, out)

        for _ in range(_MAX_TIMERS_AT_ONCE):
            due = self.next_event_ms(state)
            if due is None or due > now_ms:
                return
            profile = self._fleet.profile(_device_of(state))
            state.trips, records = trips.on_timer(state.trips, due, profile.trips)
            state.alerts, events = alerts.on_timer(state.alerts, due, profile.alerts)
            self._ended(state, records, profile, out)
            out.events.extend((event, True) for event in events)
            # The steppers now stand at the due time: an older fix is late.
            state.horizon_ms = max(state.horizon_ms or due, due)

    def recompute(self, state: MotionState, wall_ms: int, out: Outputs) -> None:
        """Redo the window of history the pending late fixes touch.

        When history cannot be read the late fixes stay pending and the recompute
        is tried again :data:`RECOMPUTE_MAX_WAIT_MS` later.
        """
        from pipeline.stream.recompute import plan_recompute

        if not state.late:
            state.recompute_at_ms = state.late_since_wall_ms = None
            return
        device = next(iter(state.late.values()))[_DEVICE]
        profile = self._fleet.profile(device)
        try:
            plan = plan_recompute(state.late, state, profile, self._history)
        except HistoryUnavailable as error:
            log.warning(
                "late_fixes_recompute_postponed",
                device=device,
                late=len(state.late),
                reason=str(error),
            )
            state.recompute_at_ms = wall_ms + RECOMPUTE_MAX_WAIT_MS
            return

        self.replace_records(state, profile, plan.removed, plan.added, out)
        out.marks.extend(plan.marks)
        if plan.trips is not None and plan.filter is not None:
            state.trips, state.filter = plan.trips, plan.filter
        out.requests.extend((device, fix_ms, True) for fix_ms in sorted(state.late))
        log.info(
            "late_fixes_recomputed",
            device=device,
            late=len(state.late),
            window_start_ms=plan.window.start_ms,
            rejoined_ms=plan.end_ms,
            removed=len(plan.removed),
            added=len(plan.added),
        )
        state.late = {}
        state.recompute_at_ms = state.late_since_wall_ms = None

    # --- when to be called again --------------------------------------------------

    def next_event_ms(self, state: MotionState) -> int | None:
        """Event time at which the steppers next need :meth:`fire`, or ``None``."""
        device = state.trips.device or state.alerts.device
        if not device:
            return None
        profile = self._fleet.profile(device)
        wanted = [
            trips.next_timer_ms(state.trips, profile.trips),
            alerts.next_timer_ms(state.alerts, profile.alerts),
        ]
        return min((t for t in wanted if t is not None), default=None)

    def next_wall_ms(
        self, state: MotionState, watermark_ms: int | None = None
    ) -> int | None:
        """Wall time at which :meth:`wake` has something to do, or ``None``."""
        return self.timers(state, watermark_ms)[1]

    def timers(
        self, state: MotionState, watermark_ms: int | None = None
    ) -> tuple[int | None, int | None]:
        """:meth:`next_event_ms` and :meth:`next_wall_ms` at once."""
        due = self.next_event_ms(state)
        return due, self._next_wall(state, due, watermark_ms)

    def _next_wall(
        self, state: MotionState, due: int | None, watermark_ms: int | None
    ) -> int | None:
        wanted = [state.recompute_at_ms]
        if state.buffer:
            oldest = min(arrived for _, arrived in state.buffer.values())
            wanted.append(oldest + self.lateness_ms)
        if due is not None and state.clock_fix_ms is not None:
            ahead_ms = due - state.clock_fix_ms
            if watermark_ms is not None and watermark_ms >= due:
                ahead_ms = 0
            wanted.append(state.clock_wall_ms + max(self.lateness_ms, ahead_ms))
        return min((t for t in wanted if t is not None), default=None)

    # --- stepping -----------------------------------------------------------------

    def _release(self, state: MotionState, up_to_ms: int, out: Outputs) -> None:
        due = sorted(t for t in state.buffer if t <= up_to_ms)
        if not due:
            return
        rows = [state.buffer.pop(t)[0] for t in due]
        profile = self._fleet.profile(rows[0][_DEVICE])
        inside = self._lookup(rows, profile)
        for row, containing in zip(rows, inside, strict=True):
            self._step(state, row, profile, containing, out)

    def _lookup(
        self, rows: Sequence[FixRow], profile: DeviceProfile
    ) -> list[frozenset[str] | None]:
        """Assigned geofences containing each fix, ``None``: look up one by one."""
        if not profile.geofences or len(rows) < _BATCH_LOOKUP:
            return [None] * len(rows)
        found = self._fleet.index.containing_many(
            [row[_LAT] for row in rows], [row[_LON] for row in rows]
        )
        return [ids & profile.geofences for ids in found]

    def _step(
        self,
        state: MotionState,
        row: FixRow,
        profile: DeviceProfile,
        containing: frozenset[str] | None,
        out: Outputs,
    ) -> None:
        fix = fix_point(row)
        state.horizon_ms = fix.time_ms
        if state.complete_from_ms is None:
            state.complete_from_ms = fix.time_ms

        state.filter, reason = filtering.advance(state.filter, fix, profile.filters)
        if reason is not None:
            out.marks.append((row, reason.value))
            return

        state.trips, records = trips.advance(state.trips, fix, profile.trips)
        self._ended(state, records, profile, out)
        fences = self._geofences(state, fix, profile, containing, out)
        limit = speed_limit_kmh(
            [self._fleet.index[i] for i in fences], profile.speed_limit_kmh
        )
        state.alerts, events = alerts.advance(
            state.alerts,
            fix,
            profile.alerts,
            limit_kmh=limit,
            idle_since_ms=state.trips.idle_since_ms,
        )
        tracker = row[_PROTOCOL] in ALARMS_PUBLISHED_BY_INGEST
        out.events.extend(
            (event, not (tracker and event.type == "alarm")) for event in events
        )
        self._counters(state, fix, bool(records), out)

    def _geofences(
        self,
        state: MotionState,
        fix: FixPoint,
        profile: DeviceProfile,
        containing: frozenset[str] | None,
        out: Outputs,
    ) -> frozenset[str]:
        membership = state.membership
        if not profile.geofences and not membership.inside and not membership.pending:
            return frozenset()
        index = self._fleet.index
        if containing is None:
            containing = (
                index.containing(fix.latitude, fix.longitude) & profile.geofences
                if profile.geofences
                else frozenset()
            )

        state.membership, produced = geofences.advance(
            membership, fix, profile.dwell, containing=containing, fences=index
        )
        for item in produced:
            if isinstance(item, Visit):
                out.visits.append(
                    (item.device, item.geofence, item.enter_ms, item.exit_ms)
                )
                continue
            out.events.append((item, True))
            if item.type == "geofenceEnter":
                fence = str(item.attributes["geofence"])
                out.visits.append((item.device, fence, item.time_ms, None))
        return containing

    def _counters(
        self, state: MotionState, fix: FixPoint, ended: bool, out: Outputs
    ) -> None:
        current = (state.trips.odometer_m, state.trips.engine_hours_s)
        if current == state.counters:
            return
        if not ended and fix.time_ms - state.counters_ms < COUNTERS_EVERY_MS:
            return
        reported = "odometer" in fix.attributes or "hours" in fix.attributes
        out.counters.append(
            (fix.device, *current, "device" if reported else "computed")
        )
        state.counters, state.counters_ms = current, fix.time_ms

    def _note_late(
        self, state: MotionState, row: FixRow, wall_ms: int, out: Outputs
    ) -> None:
        first = not state.late
        state.late[row[_TIME]] = row
        out.requests.append((row[_DEVICE], row[_TIME], False))
        if first or state.late_since_wall_ms is None:
            state.late_since_wall_ms = wall_ms
        state.recompute_at_ms = min(
            wall_ms + RECOMPUTE_DELAY_MS,
            state.late_since_wall_ms + RECOMPUTE_MAX_WAIT_MS,
        )

    # --- records and days ---------------------------------------------------------

    def _ended(
        self,
        state: MotionState,
        records: Sequence[Record],
        profile: DeviceProfile,
        out: Outputs,
    ) -> None:
        if not records:
            return
        self.replace_records(state, profile, [], records, out)

    def replace_records(
        self,
        state: MotionState,
        profile: DeviceProfile,
        removed: Sequence[Record],
        added: Sequence[Record],
        out: Outputs,
    ) -> None:
        """Delete and upsert records, keep the state's copy, redo the days touched."""
        gone = {record_key(r) for r in removed} - {record_key(r) for r in added}
        out.records.extend((r, True) for r in removed if record_key(r) in gone)
        out.records.extend((r, False) for r in added)

        replaced = gone | {record_key(r) for r in added}
        kept = [r for r in state.records if record_key(r) not in replaced]
        state.records = sorted([*kept, *added], key=lambda r: (r.start_ms, r.end_ms))
        self._prune(state)

        zone = profile.time_zone
        days = sorted({d for r in (*removed, *added) for d, *_ in _pieces(r, zone)})
        for day in days:
            try:
                out.summaries.append(self._day(state, zone, day, gone))
            except HistoryUnavailable as error:
                # The row is rebuilt whole by the next record ending that day.
                log.warning(
                    "daily_summary_skipped",
                    device=_device_of(state),
                    day=day.isoformat(),
                    reason=str(error),
                )

    def _prune(self, state: MotionState) -> None:
        if state.horizon_ms is None:
            return
        floor = state.horizon_ms - KEEP_RECORDS_MS
        if state.records and state.records[0].end_ms < floor:
            state.records = [r for r in state.records if r.end_ms >= floor]
        if state.complete_from_ms is None or state.complete_from_ms < floor:
            state.complete_from_ms = floor

    def _day(
        self, state: MotionState, zone: str, day: date, gone: set[tuple[str, int]]
    ) -> tuple[DaySummary, str, bool]:
        start_ms, end_ms = day_bounds_ms(day, zone)
        known: dict[tuple[str, int], Record] = {}
        complete = state.complete_from_ms
        if complete is None or start_ms < complete:
            # Raises HistoryUnavailable: the caller keeps the request and retries.
            stored = self._history.records(_device_of(state), start_ms, end_ms)
            known.update((record_key(r), r) for r in stored)
            for key in gone:
                known.pop(key, None)
        known.update((record_key(r), r) for r in state.records)

        overlapping = [r for r in known.values() if _overlaps(r, start_ms, end_ms)]
        rows = [row for row in summarise(overlapping, zone) if row.day == day]
        if rows:
            return rows[0], zone, False
        return DaySummary(_device_of(state), day), zone, True


def day_bounds_ms(day: date, zone: str) -> tuple[int, int]:
    """Start and end of a local day, epoch milliseconds (23 or 25 h at a DST change)."""
    local = ZoneInfo(zone)
    start = datetime.combine(day, time(), tzinfo=local)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=local)
    return round(start.timestamp() * 1000), round(end.timestamp() * 1000)


def _pieces(record: Record, zone: str) -> list[tuple[date, int, int]]:
    return day_pieces(record.start_ms, record.end_ms, zone)


def _overlaps(record: Record, start_ms: int, end_ms: int) -> bool:
    if record.end_ms == record.start_ms:
        return start_ms <= record.start_ms < end_ms
    return record.start_ms < end_ms and record.end_ms > start_ms


def _device_of(state: MotionState) -> str:
    if state.trips.device:
        return state.trips.device
    for record in state.records:
        return record.device
    return state.alerts.device


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
