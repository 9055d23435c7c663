"""Late fixes: redo the window of a device's history they touch, with geo's batch code.

A fix that reaches the job after newer fixes of its device were used is *late*
(see :mod:`pipeline.stream.motion`).  :func:`plan_recompute` takes the device's
pending late fixes and

1. finds the window they touch with :func:`geo.trips.recompute_window`, from the
   records around them (stored ones, the state's own recent ones, the one in
   progress);
2. reads the window's fixes from history (the late ones are there too, and taken
   from the state in case history has not caught up), and re-judges them with
   :func:`geo.filtering.advance` from :func:`geo.filtering.state_after` of the last
   accepted fix before the window, since a late fix can change which of its
   neighbours the filters keep;
3. replays the accepted ones with :func:`geo.trips.replay_window` from
   :func:`geo.trips.resume_state`, which stops where it rejoins the stored records.

The result says which stored records to delete and which to write, and the filter
of every fix of the window.  When the replay runs to the newest fix the job used
(it did not rejoin), its trip and filter states replace the live ones, so the
records the job emits next follow on from the corrected past.

Absolute odometer readings of replayed trips are aligned on the stored trip the
replay ends with (or on the live state), so a late fix moves them by its detour
only; engine hours are not rewritten.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from geo import filtering, trips
from geo.trips import Mark, Record, Trip, TripState
from pipeline.stream.motion import FixRow, History, MotionState, fix_point, record_key
from pipeline.stream.profiles import DeviceProfile

__all__ = ["Recomputed", "plan_recompute"]


@dataclass(frozen=True, slots=True)
class Recomputed:
    """What a recompute changes.

    ``removed`` are stored records the replay does not reproduce, ``added`` the
    replayed records (all of them: writing an unchanged one again is harmless);
    ``marks`` the filter of every fix of the window (``None``: accepted).
    ``trips`` and ``filter`` are the new live states, or ``None`` when the replay
    rejoined the stored records and the live states stand.
    """

    window: trips.RecomputeWindow
    end_ms: int | None
    removed: list[Record]
    added: list[Record]
    marks: list[tuple[FixRow, str | None]]
    trips: TripState | None
    filter: filtering.FilterState | None


def plan_recompute(
    late: Mapping[int, FixRow],
    state: MotionState,
    profile: DeviceProfile,
    history: History,
) -> Recomputed:
    """Replay the window the late fixes touch; raises ``HistoryUnavailable``.

    Parameters
    ----------
    late
        The late fixes by fix time (at least one).
    state
        The device's live state (its horizon, recent records, live steppers).
    profile
        The device's settings.
    history
        Stored records and fixes.
    """
    if not late or state.horizon_ms is None:
        message = "a recompute needs late fixes and a device that has a horizon"
        raise ValueError(message)
    device = next(iter(late.values()))[0]
    times = sorted(late)

    around = _records_around(device, times[0], state, profile, history)
    ongoing = trips.ongoing(state.trips)
    window = trips.recompute_window(
        times, [*around.values(), *([ongoing] if ongoing else [])], profile.trips
    )

    previous = history.last_accepted(device, window.start_ms)
    judged, final_filter = _judge(
        device, window, late, previous, state, profile, history
    )
    accepted = [fix_point(row) for row, reason in judged if reason is None]
    start = trips.resume_state(fix_point(previous) if previous else None)
    stored = [*around.values(), *([ongoing] if ongoing else [])]
    replay = trips.replay_window(accepted, window, stored, profile.trips, start)

    end = replay.end_ms
    removed = [
        r
        for r in around.values()
        if r.start_ms >= window.start_ms and (end is None or r.start_ms < end)
    ]
    offset = _odometer_offset(replay, around, state)
    replayed: list[Record] = [*replay.trips, *replay.stops, *replay.idles]
    added = [_shifted(r, offset) for r in replayed]
    marks = [(row, reason) for row, reason in judged if end is None or row[1] < end]
    live = None if end is not None else _adopted(replay.state, offset, state.trips)
    return Recomputed(
        window=window,
        end_ms=end,
        removed=removed,
        added=added,
        marks=marks,
        trips=live,
        filter=final_filter if end is None else None,
    )


def _records_around(
    device: str,
    first_ms: int,
    state: MotionState,
    profile: DeviceProfile,
    history: History,
) -> dict[tuple[str, int], Record]:
    """Stored records from the last settled stop on, the state's own winning."""
    lost_ms = round(profile.trips.lost_after_s * 1000)
    settled = history.last_stop_start(device, first_ms - lost_ms)
    since = settled if settled is not None else first_ms - lost_ms
    found = {record_key(r): r for r in history.records(device, since, None)}
    found.update((record_key(r), r) for r in state.records if r.end_ms >= since)
    return found


def _judge(
    device: str,
    window: trips.RecomputeWindow,
    late: Mapping[int, FixRow],
    previous: FixRow | None,
    state: MotionState,
    profile: DeviceProfile,
    history: History,
) -> tuple[list[tuple[FixRow, str | None]], filtering.FilterState]:
    """Every fix of the window with its filter reason, and the filter state after."""
    assert state.horizon_ms is not None
    rows = {
        row[1]: row
        for row, _ in history.fixes(device, window.start_ms, state.horizon_ms)
    }
    rows.update((t, row) for t, row in late.items() if t >= window.start_ms)

    current = (
        filtering.state_after(fix_point(previous))
        if previous is not None
        else filtering.FilterState()
    )
    judged: list[tuple[FixRow, str | None]] = []
    for fix_ms in sorted(rows):
        row = rows[fix_ms]
        current, reason = filtering.advance(current, fix_point(row), profile.filters)
        judged.append((row, None if reason is None else reason.value))
    return judged, current


def _odometer_offset(
    replay: trips.Replay, around: Mapping[tuple[str, int], Record], state: MotionState
) -> float:
    """What to add to replayed odometer readings to continue the stored ones."""
    if replay.end_ms is None:
        return state.trips.odometer_m - replay.state.odometer_m
    for trip in reversed(replay.trips):
        stored = around.get(record_key(trip))
        if isinstance(stored, Trip) and stored.end_ms == trip.end_ms:
            return stored.end_odometer_m - trip.end_odometer_m
    return 0.0


def _shifted(record: Record, offset: float) -> Record:
    if not isinstance(record, Trip) or offset == 0.0:
        return record
    return dataclasses.replace(
        record,
        start_odometer_m=record.start_odometer_m + offset,
        end_odometer_m=record.end_odometer_m + offset,
    )


def _adopted(replayed: TripState, offset: float, live: TripState) -> TripState:
    """The replay's end state on the live state's odometer and engine hours."""

    def moved(mark: Mark | None) -> Mark | None:
        return (
            None if mark is None else mark._replace(odometer_m=mark.odometer_m + offset)
        )

    return dataclasses.replace(
        replayed,
        last=moved(replayed.last),
        since=moved(replayed.since),
        candidate=moved(replayed.candidate),
        quiet=moved(replayed.quiet),
        idle=moved(replayed.idle),
        odometer_m=replayed.odometer_m + offset,
        engine_hours_s=live.engine_hours_s,
    )
