"""Daily figures per device and local day, built from trips, stops and idles.

A fleet manager's monthly report sums days, so the job keeps one
:class:`DaySummary` row per device and local day and adds every record to it as
the record ends (:func:`add_record`); the report is then a sum over rows, never a
scan of fixes.  Rows merge by adding sums and taking the larger top speed, so the
order records arrive in does not matter.

The day is the local calendar day in the fleet's time zone (an IANA name such as
``"Europe/Berlin"``).  A record that crosses local midnight is split at midnight
in proportion to time: each day gets the seconds it holds, and a trip's distance
is shared in the same proportion (the fixes between are not kept in the record,
so a constant speed is assumed).  A trip and a stop count once, on the day they
start; a trip's top speed goes to the day it was reached
(:attr:`geo.trips.Trip.max_speed_ms`).  On the day clocks change the day lasts 23
or 25 hours; where midnight itself is skipped, the day starts at the moment of the
change.

``driving_s`` is the time in trips, waits shorter than a stop included; idles
inside trips count in ``idle_s`` too.  A trip still in progress is not counted
until it ends.  When a late fix rewrites records (:func:`geo.trips.replay_window`),
the touched days are recomputed from their records with :func:`summarise`: a top
speed cannot be subtracted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from geo.trips import Idle, Record, Stop, Trip

__all__ = ["DaySummary", "add_record", "day_pieces", "day_shares", "summarise"]

DayKey = tuple[str, date]


@dataclass(frozen=True, slots=True)
class DaySummary:
    """One device's day: metres, seconds, counts and km/h.

    Examples
    --------
    >>> monday = DaySummary("van-1", date(2026, 3, 2), distance_m=1_000.0, trips=1)
    >>> monday.merge(DaySummary("van-1", date(2026, 3, 2), distance_m=500.0))
    ... # doctest: +ELLIPSIS
    DaySummary(device='van-1', day=datetime.date(2026, 3, 2), distance_m=1500.0, ...)
    """

    device: str
    day: date
    distance_m: float = 0.0
    driving_s: float = 0.0
    idle_s: float = 0.0
    stopped_s: float = 0.0
    trips: int = 0
    stops: int = 0
    max_speed_kmh: float = 0.0

    @property
    def key(self) -> DayKey:
        """``(device, day)``, the row's identity."""
        return self.device, self.day

    def merge(self, other: DaySummary) -> DaySummary:
        """The row holding both: sums added, the larger top speed kept."""
        if other.key != self.key:
            message = f"cannot merge the row of {other.key!r} into {self.key!r}"
            raise ValueError(message)

        return DaySummary(
            device=self.device,
            day=self.day,
            distance_m=self.distance_m + other.distance_m,
            driving_s=self.driving_s + other.driving_s,
            idle_s=self.idle_s + other.idle_s,
            stopped_s=self.stopped_s + other.stopped_s,
            trips=self.trips + other.trips,
            stops=self.stops + other.stops,
            max_speed_kmh=max(self.max_speed_kmh, other.max_speed_kmh),
        )


def day_pieces(start_ms: int, end_ms: int, zone: str) -> list[tuple[date, int, int]]:
    """Split ``[start_ms, end_ms)`` at local midnights: ``(day, start, end)``.

    A zero-length interval is one piece on its day.

    Examples
    --------
    >>> start = int(datetime(2026, 3, 1, 22, 0, tzinfo=ZoneInfo("UTC")).timestamp())
    >>> [(d.isoformat(), (b - a) // 60_000) for d, a, b in
    ...  day_pieces(start * 1000, (start + 4 * 3600) * 1000, "Europe/Berlin")]
    [('2026-03-01', 60), ('2026-03-02', 180)]
    """
    if end_ms < start_ms:
        message = f"end_ms must not be before start_ms, got {start_ms!r} to {end_ms!r}"
        raise ValueError(message)

    local = _zone(zone)
    day = datetime.fromtimestamp(start_ms / 1000, local).date()
    pieces = []
    cursor = start_ms
    while True:
        midnight = datetime.combine(day + timedelta(days=1), time(), tzinfo=local)
        boundary = round(midnight.timestamp() * 1000)
        pieces.append((day, cursor, min(end_ms, boundary)))
        if end_ms <= boundary:
            return pieces
        cursor, day = boundary, day + timedelta(days=1)


def day_shares(record: Record, zone: str) -> list[DaySummary]:
    """What one trip, stop or idle adds to each local day it touches.

    Examples
    --------
    >>> stop = Stop("van-1", 48.1, 11.5, 0, 600_000, 600.0)
    >>> [(s.day.isoformat(), s.stops, s.stopped_s) for s in day_shares(stop, "UTC")]
    [('1970-01-01', 1, 600.0)]
    """
    if not isinstance(record, Trip | Stop | Idle):
        message = f"record must be a Trip, Stop or Idle, got {type(record).__name__}"
        raise TypeError(message)

    pieces = day_pieces(record.start_ms, record.end_ms, zone)
    spans = [p for p in pieces if p[2] > p[1]] or pieces[:1]
    whole_ms = record.end_ms - record.start_ms
    top_day = _top_day(record, pieces)

    shares = []
    for day, start, end in spans:
        fraction = (end - start) / whole_ms if whole_ms > 0 else 1.0
        first = day == pieces[0][0]
        shares.append(
            _share(record, day, (end - start) / 1000, fraction, first, day == top_day)
        )
    return shares


def summarise(records: Iterable[Record], zone: str) -> list[DaySummary]:
    """Every device's day rows from its records, sorted by device and day.

    Examples
    --------
    >>> idle = Idle("van-1", 48.1, 11.5, 0, 300_000, 300.0)
    >>> [(s.device, s.idle_s) for s in summarise([idle], "UTC")]
    [('van-1', 300.0)]
    """
    rows: dict[DayKey, DaySummary] = {}
    for record in records:
        for share in add_record(rows, record, zone):
            rows[share.key] = share

    return [rows[key] for key in sorted(rows)]


def add_record(
    rows: Mapping[DayKey, DaySummary], record: Record, zone: str
) -> list[DaySummary]:
    """The rows ``record`` touches, updated: what the job upserts when it ends.

    ``rows`` holds the existing rows by ``(device, day)`` (those not given count as
    empty); it is not modified.

    Examples
    --------
    >>> trip = Trip("van-1", 0, 600_000, 48.1, 11.5, 48.2, 11.5, 11_000.0, 600.0,
    ...             90.0, 300_000, 66.0, 0.0, 0.0, 11_000.0)
    >>> [row.distance_m for row in add_record({}, trip, "UTC")]
    [11000.0]
    """
    updated = []
    for share in day_shares(record, zone):
        existing = rows.get(share.key)
        updated.append(share if existing is None else existing.merge(share))

    return updated


def _share(
    record: Record, day: date, seconds: float, fraction: float, first: bool, top: bool
) -> DaySummary:
    if isinstance(record, Trip):
        return DaySummary(
            device=record.device,
            day=day,
            distance_m=record.distance_m * fraction,
            driving_s=seconds,
            trips=int(first),
            max_speed_kmh=record.max_speed_kmh if top else 0.0,
        )
    if isinstance(record, Stop):
        return DaySummary(record.device, day, stopped_s=seconds, stops=int(first))
    return DaySummary(record.device, day, idle_s=seconds)


def _top_day(record: Record, pieces: list[tuple[date, int, int]]) -> date | None:
    if not isinstance(record, Trip):
        return None
    moment = min(max(record.max_speed_ms, record.start_ms), record.end_ms)
    holding = [day for day, start, end in pieces if start <= moment < end]
    return holding[0] if holding else pieces[-1][0]


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        message = f"zone must be an IANA time zone name, got {name!r}"
        raise ValueError(message) from error
