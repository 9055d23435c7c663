"""Daily summaries in geo.summaries: midnight splits, time zones, merging."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.summaries import DaySummary, add_record, day_pieces, day_shares, summarise
from geo.trips import Idle, Record, Stop, Trip, TripSettings, detect_trips
from tests.test_geo_trips import delivery_day

BERLIN = "Europe/Berlin"
HOUR_MS = 3_600_000


def _local_ms(zone: str, *parts: int) -> int:
    return int(datetime(*parts, tzinfo=ZoneInfo(zone)).timestamp() * 1000)  # type: ignore[misc]


def _trip(
    start_ms: int, end_ms: int, distance_m: float, top_kmh: float, top_ms: int
) -> Trip:
    seconds = (end_ms - start_ms) / 1000
    return Trip(
        device="van-1",
        start_ms=start_ms,
        end_ms=end_ms,
        start_latitude=52.5,
        start_longitude=13.4,
        end_latitude=52.6,
        end_longitude=13.5,
        distance_m=distance_m,
        duration_s=seconds,
        max_speed_kmh=top_kmh,
        max_speed_ms=top_ms,
        average_speed_kmh=distance_m / seconds * 3.6,
        idle_s=0.0,
        start_odometer_m=1_000.0,
        end_odometer_m=1_000.0 + distance_m,
    )


class TestMidnight:
    def test_trip_is_shared_in_proportion_to_time(self) -> None:
        """23:40 to 00:40 local: a third of the hour before midnight."""
        start = _local_ms(BERLIN, 2026, 5, 4, 23, 40)
        trip = _trip(start, start + HOUR_MS, 60_000.0, 110.0, start + 45 * 60_000)

        monday, tuesday = day_shares(trip, BERLIN)

        assert (monday.day, tuesday.day) == (date(2026, 5, 4), date(2026, 5, 5))
        assert monday.distance_m == pytest.approx(20_000.0)
        assert tuesday.distance_m == pytest.approx(40_000.0)
        assert (monday.driving_s, tuesday.driving_s) == (1_200.0, 2_400.0)
        assert (monday.trips, tuesday.trips) == (1, 0)
        assert (monday.max_speed_kmh, tuesday.max_speed_kmh) == (0.0, 110.0)

    def test_same_trip_in_another_zone_is_one_day(self) -> None:
        """In Lisbon (an hour behind) the same trip is 22:40 to 23:40."""
        start = _local_ms(BERLIN, 2026, 5, 4, 23, 40)
        trip = _trip(start, start + HOUR_MS, 60_000.0, 110.0, start)

        [day] = day_shares(trip, "Europe/Lisbon")

        assert day.day == date(2026, 5, 4)
        assert day.distance_m == 60_000.0

    def test_stop_counts_on_its_first_day(self) -> None:
        start = _local_ms(BERLIN, 2026, 5, 4, 18, 0)
        stop = Stop("van-1", 52.5, 13.4, start, start + 40 * HOUR_MS, 40 * 3600.0)

        shares = day_shares(stop, BERLIN)

        assert [s.stops for s in shares] == [1, 0, 0]
        assert [s.stopped_s / 3600 for s in shares] == [6, 24, 10]

    def test_idle_is_split_too(self) -> None:
        start = _local_ms(BERLIN, 2026, 5, 4, 23, 55)
        idle = Idle("van-1", 52.5, 13.4, start, start + 600_000, 600.0)

        shares = day_shares(idle, BERLIN)

        assert [s.idle_s for s in shares] == [300.0, 300.0]

    def test_record_ending_at_midnight_touches_one_day(self) -> None:
        end = _local_ms(BERLIN, 2026, 5, 5, 0, 0)
        trip = _trip(end - HOUR_MS, end, 30_000.0, 50.0, end)

        [day] = day_shares(trip, BERLIN)

        assert (day.day, day.max_speed_kmh) == (date(2026, 5, 4), 50.0)

    def test_zero_length_record_is_one_share(self) -> None:
        moment = _local_ms(BERLIN, 2026, 5, 4, 12, 0)
        stop = Stop("van-1", 52.5, 13.4, moment, moment, 0.0)

        [day] = day_shares(stop, BERLIN)

        assert (day.stops, day.stopped_s) == (1, 0.0)


class TestClockChanges:
    @pytest.mark.parametrize(
        ("zone", "first_day", "hours"),
        [
            (BERLIN, (2026, 3, 28), [24, 23, 24]),  # spring forward at 02:00
            (BERLIN, (2026, 10, 24), [24, 25, 24]),  # fall back at 03:00
            ("America/Santiago", (2022, 9, 10), [24, 23, 24]),  # midnight skipped
        ],
    )
    def test_day_lengths(
        self, zone: str, first_day: tuple[int, int, int], hours: list[int]
    ) -> None:
        start = _local_ms(zone, *first_day, 0, 0)
        end = start + sum(hours) * HOUR_MS

        pieces = day_pieces(start, end, zone)

        assert [(b - a) / HOUR_MS for _, a, b in pieces] == hours
        assert [a for _, a, _ in pieces[1:]] == [b for _, _, b in pieces[:-1]]


class TestMerging:
    def test_rows_of_different_days_do_not_merge(self) -> None:
        monday = DaySummary("van-1", date(2026, 5, 4))

        with pytest.raises(ValueError, match="cannot merge the row of"):
            monday.merge(DaySummary("van-1", date(2026, 5, 5)))

    def test_add_record_updates_the_existing_row(self) -> None:
        start = _local_ms(BERLIN, 2026, 5, 4, 9, 0)
        first = _trip(start, start + HOUR_MS, 50_000.0, 90.0, start)
        second = _trip(start + 2 * HOUR_MS, start + 3 * HOUR_MS, 30_000.0, 120.0, start)
        rows = {row.key: row for row in add_record({}, first, BERLIN)}

        [row] = add_record(rows, second, BERLIN)

        assert (row.trips, row.distance_m, row.max_speed_kmh) == (2, 80_000.0, 120.0)
        assert rows[row.key].trips == 1

    def test_unknown_zone_is_refused(self) -> None:
        with pytest.raises(ValueError, match="zone must be an IANA time zone name"):
            day_pieces(0, 1_000, "Mars/Olympus_Mons")

    def test_backwards_interval_is_refused(self) -> None:
        with pytest.raises(ValueError, match="end_ms must not be before start_ms"):
            day_pieces(2_000, 1_000, "UTC")

    def test_other_records_are_refused(self) -> None:
        with pytest.raises(TypeError, match="record must be a Trip, Stop or Idle"):
            day_shares(DaySummary("van-1", date(2026, 5, 4)), "UTC")  # type: ignore[arg-type]


class TestDeliveryDay:
    def test_van_day_across_midnight(self) -> None:
        """The built day starts at 23:13 in Berlin, so it spans two local days;
        the days add up to the records."""
        found = detect_trips(delivery_day().fixes, TripSettings())
        records: list[Record] = [*found.trips, *found.stops, *found.idles]

        days = summarise(records, BERLIN)

        assert [d.day for d in days] == [date(2023, 11, 14), date(2023, 11, 15)]
        assert sum(d.trips for d in days) == 3
        assert sum(d.stops for d in days) == 3
        assert sum(d.idle_s for d in days) == 240
        assert sum(d.distance_m for d in days) == pytest.approx(
            sum(t.distance_m for t in found.trips)
        )
        assert sum(d.driving_s for d in days) == 900 + 1140 + 1200
        assert max(d.max_speed_kmh for d in days) == 60


ZONES = ["UTC", BERLIN, "America/Santiago", "Asia/Kolkata", "Pacific/Chatham"]


@st.composite
def _records(draw: st.DrawFn) -> list[Record]:
    base = _local_ms("UTC", 2026, 3, 27, 0, 0)
    records: list[Record] = []
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        start = base + draw(st.integers(min_value=0, max_value=96 * HOUR_MS))
        end = start + draw(st.integers(min_value=0, max_value=40 * HOUR_MS))
        kind = draw(st.sampled_from(["trip", "stop", "idle"]))
        if kind == "trip":
            distance = draw(st.floats(min_value=0, max_value=500_000))
            top = draw(st.integers(min_value=start, max_value=end))
            records.append(_trip(start, max(end, start + 1), distance, 80.0, top))
        elif kind == "stop":
            records.append(Stop("van-1", 52.5, 13.4, start, end, (end - start) / 1000))
        else:
            records.append(Idle("van-1", 52.5, 13.4, start, end, (end - start) / 1000))
    return records


class TestInvariants:
    @given(_records(), st.sampled_from(ZONES))
    @settings(max_examples=200, deadline=None)
    def test_days_add_up_to_the_records(self, records: list[Record], zone: str) -> None:
        days = summarise(records, zone)

        trips = [r for r in records if isinstance(r, Trip)]
        stops = [r for r in records if isinstance(r, Stop)]
        idles = [r for r in records if isinstance(r, Idle)]
        assert sum(d.trips for d in days) == len(trips)
        assert sum(d.stops for d in days) == len(stops)
        assert sum(d.driving_s for d in days) == pytest.approx(
            sum(t.duration_s for t in trips)
        )
        assert sum(d.distance_m for d in days) == pytest.approx(
            sum(t.distance_m for t in trips), abs=1e-6
        )
        assert sum(d.stopped_s for d in days) == pytest.approx(
            sum(s.duration_s for s in stops)
        )
        assert sum(d.idle_s for d in days) == pytest.approx(
            sum(i.duration_s for i in idles)
        )

    @given(_records(), st.sampled_from(ZONES), st.randoms())
    @settings(max_examples=100, deadline=None)
    def test_incremental_equals_batch_in_any_order(
        self, records: list[Record], zone: str, rng: object
    ) -> None:
        """What the job upserts record by record equals a recomputation."""
        shuffled = list(records)
        rng.shuffle(shuffled)  # type: ignore[attr-defined]
        rows: dict[tuple[str, date], DaySummary] = {}

        for record in shuffled:
            for row in add_record(rows, record, zone):
                rows[row.key] = row

        expected = summarise(records, zone)
        assert sorted(rows) == [row.key for row in expected]
        for row in expected:
            got = rows[row.key]
            assert (got.trips, got.stops, got.max_speed_kmh) == (
                row.trips,
                row.stops,
                row.max_speed_kmh,
            )
            assert got.distance_m == pytest.approx(row.distance_m, abs=1e-6)
            assert got.stopped_s == pytest.approx(row.stopped_s)
