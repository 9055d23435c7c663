"""The H3 refresh in SQL: parents by bit arithmetic, the definitions, late fixes."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import h3
import numpy as np
import pytest
from structlog.testing import capture_logs

from geo import cells
from geo.cells import CellSettings
from geo.fixes import FixPoint
from geo.tracks import read_wkt_track, with_motion
from pipeline.ports import free_port
from pipeline.store import aggregates
from pipeline.store.aggregates import (
    cells_over_period,
    refresh_h3,
    refresh_h3_forever,
    refresh_h3_until_caught_up,
    rewrite_h3_hours,
)

pytestmark = pytest.mark.integration

TRACKS = Path(__file__).parents[1] / "data" / "tracks"
MUNICH = TRACKS / "de-munich-car-barefoot-x0001-001.json"
T0 = datetime(2026, 3, 1, 7, 50, tzinfo=UTC)
FINEST, COARSEST = 9, 6
SETTINGS = CellSettings(resolution=FINEST)


@dataclass(frozen=True)
class Row:
    """One fix as the streaming job writes it."""

    device: str
    fix_time: datetime
    latitude: float
    longitude: float
    speed: float | None
    filter: str | None = None
    server_time: datetime | None = None
    resolution: int = FINEST

    @property
    def cell(self) -> int:
        return int(
            h3.str_to_int(
                h3.latlng_to_cell(self.latitude, self.longitude, self.resolution)
            )
        )


def _munich_rows(device: str, start: datetime, every: int = 1) -> list[Row]:
    """The Munich drive (1 s sampling, traffic-light stops) from ``start``."""
    track = with_motion(read_wkt_track(MUNICH, device))
    track = track.iloc[::every]
    offset = start - track["time"].iloc[0].to_pydatetime()
    rows = []
    for number, fix in enumerate(track.itertuples()):
        speed = None if math.isnan(fix.speed_kmh) else float(fix.speed_kmh)
        rows.append(
            Row(
                device,
                fix.time.to_pydatetime() + offset,
                fix.latitude,
                fix.longitude,
                None if number % 37 == 5 else speed,
                "jump" if number % 53 == 7 else None,
            )
        )
    return rows


def _fleet() -> list[Row]:
    """Three devices crossing the 08:00 and 09:00 hours, some parked a while."""
    rows = _munich_rows("car-a", T0)
    rows += _munich_rows("car-b", T0 + timedelta(minutes=3), every=9)
    rows += _munich_rows("car-c", T0 + timedelta(minutes=58), every=40)
    # Parked after its drive: slow fixes 4 and 15 minutes apart (dwell capped).
    last = rows[-1]
    for minutes in (4, 19):
        rows.append(
            Row(
                "car-c",
                last.fix_time + timedelta(minutes=minutes),
                last.latitude,
                last.longitude,
                0.0,
            )
        )
    return rows


async def _insert(pool: asyncpg.Pool, rows: Iterable[Row]) -> None:
    await pool.executemany(
        "INSERT INTO fixes (device, fix_time, server_time, latitude, longitude, h3,"
        " speed, valid, filter) VALUES ($1, $2, $3, $4, $5, $6, $7, true, $8)",
        [
            (
                row.device,
                row.fix_time,
                row.server_time or row.fix_time + timedelta(seconds=1),
                row.latitude,
                row.longitude,
                row.cell,
                row.speed,
                row.filter,
            )
            for row in rows
        ],
    )


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _points(rows: Iterable[Row]) -> list[FixPoint]:
    """Accepted rows as geo.cells reads them, speeds as PostgreSQL keeps them (real)."""
    return [
        FixPoint(
            row.device,
            round(row.fix_time.timestamp() * 1000),
            row.latitude,
            row.longitude,
            None if row.speed is None else float(np.float32(row.speed)),
        )
        for row in rows
        if row.filter is None
    ]


def _expected(rows: list[Row], coarsest: int, finest: int) -> dict[tuple, dict]:
    """What geo.cells computes from the same fixes, at every resolution."""
    stored = list(cells.aggregate(_points(rows), SETTINGS).values())
    levels = [stored] + [
        cells.rollup(stored, resolution) for resolution in range(coarsest, finest)
    ]
    return {
        (p.resolution, p.cell, datetime.fromtimestamp(p.hour_ms / 1000, UTC)): {
            "fixes": p.fixes,
            "vehicles": p.vehicles,
            "devices": sorted(p.devices),
            "speed_fixes": p.speed_fixes,
            "speed_sum_mkmh": p.speed_sum_mkmh,
            "mean_speed_kmh": p.mean_speed_kmh,
            "p95_speed_kmh": p.speed_quantile_kmh(0.95),
            "dwell_s": p.dwell_s,
            "speed_bins": [value for value, _ in p.speed_bins],
            "speed_counts": [count for _, count in p.speed_bins],
        }
        for level in levels
        for p in level
    }


async def _stored(pool: asyncpg.Pool) -> dict[tuple, dict]:
    rows = await pool.fetch("SELECT * FROM h3_hourly")
    return {
        (row["resolution"], row["cell"], row["hour"]): {
            name: list(row[name]) if isinstance(row[name], list) else row[name]
            for name in _FIGURES
        }
        for row in rows
    }


_FIGURES = (
    "fixes",
    "vehicles",
    "devices",
    "speed_fixes",
    "speed_sum_mkmh",
    "mean_speed_kmh",
    "p95_speed_kmh",
    "dwell_s",
    "speed_bins",
    "speed_counts",
)


def _assert_same(stored: dict[tuple, dict], expected: dict[tuple, dict]) -> None:
    assert stored.keys() == expected.keys()
    for key, want in expected.items():
        got = stored[key]
        for name in _FIGURES:
            if name in ("mean_speed_kmh", "p95_speed_kmh") and want[name] is not None:
                # Stored as real (float32): equal to float32 precision.
                assert got[name] == np.float32(want[name]), (key, name)
            else:
                assert got[name] == want[name], (key, name)


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    connections = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        yield connections
    finally:
        await connections.close()


async def _refresh(pool: asyncpg.Pool, **settings: float) -> aggregates.RefreshRound:
    return await refresh_h3_until_caught_up(
        pool, SETTINGS, coarsest=COARSEST, settle_s=0.0, **settings
    )


class TestParent:
    async def test_parent_matches_h3_py(self, pool: asyncpg.Pool) -> None:
        """5,000 random cells of every resolution, each to a random coarser one."""
        draw = random.Random(20260301)
        cells, wanted = [], []
        for _ in range(5_000):
            resolution = draw.randint(0, 15)
            cell = h3.latlng_to_cell(
                draw.uniform(-90, 90), draw.uniform(-180, 180), resolution
            )
            cells.append(h3.str_to_int(cell))
            wanted.append(draw.randint(0, resolution))

        rows = await pool.fetch(
            "SELECT rastro_h3_parent(c, r) AS parent, rastro_h3_resolution(c) AS own"
            " FROM unnest($1::bigint[], $2::integer[]) WITH ORDINALITY AS u (c, r, n)"
            " ORDER BY n",
            cells,
            wanted,
        )

        for cell, resolution, row in zip(cells, wanted, rows, strict=True):
            text = h3.int_to_str(cell)
            assert row["parent"] == h3.str_to_int(h3.cell_to_parent(text, resolution))
            assert row["own"] == h3.get_resolution(text)

    async def test_parent_finer_than_cell_is_null(self, pool: asyncpg.Pool) -> None:
        cell = h3.str_to_int(h3.latlng_to_cell(48.1, 11.5, 7))

        finer = await pool.fetchval("SELECT rastro_h3_parent($1, 8)", cell)
        itself = await pool.fetchval("SELECT rastro_h3_parent($1, 7)", cell)

        assert finer is None
        assert itself == cell


class TestRefresh:
    async def test_refresh_matches_geo_cells(self, pool: asyncpg.Pool) -> None:
        """Every row at every resolution equals geo.cells' batch output."""
        rows = _fleet()
        await _insert(pool, rows)

        done = await _refresh(pool)

        stored = await _stored(pool)
        assert done.caught_up
        assert done.hours == 3  # 07:00, 08:00, 09:00
        assert any(v["dwell_s"] > 0 for v in stored.values())
        assert any(v["vehicles"] == 3 for v in stored.values())
        _assert_same(stored, _expected(rows, COARSEST, FINEST))

    async def test_rollup_equals_direct_aggregation(self, pool: asyncpg.Pool) -> None:
        """Rolled-up rows equal aggregating the same fixes at 7 alone."""
        rows = _fleet()
        await _insert(pool, rows)
        await _refresh(pool)
        stored = await _stored(pool)

        direct = await pool.fetch(
            "SELECT * FROM rastro_h3_hourly($1, 7, 7)",
            [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)],
        )

        rolled = {k: v for k, v in stored.items() if k[0] == 7}
        assert rolled and len(direct) == len(rolled)
        for row in direct:
            key = (7, row["cell"], row["hour"])
            assert rolled[key] == {
                name: list(row[name]) if isinstance(row[name], list) else row[name]
                for name in _FIGURES
            }
        # Fixes and dwell of the children add up to their parent's.
        for (_, parent, hour), value in rolled.items():
            children = [
                v
                for (r, cell, h), v in stored.items()
                if r == FINEST
                and h == hour
                and h3.str_to_int(h3.cell_to_parent(h3.int_to_str(cell), 7)) == parent
            ]
            assert value["fixes"] == sum(c["fixes"] for c in children)
            assert value["dwell_s"] == pytest.approx(
                sum(c["dwell_s"] for c in children)
            )

    async def test_refresh_skips_filtered_and_unindexed(
        self, pool: asyncpg.Pool
    ) -> None:
        await _insert(pool, [Row("car-x", T0, 48.1, 11.5, 0.0, filter="accuracy")])
        await pool.execute(
            "INSERT INTO fixes (device, fix_time, server_time, latitude, longitude,"
            " valid) VALUES ('car-y', $1, $1, 48.1, 11.5, true)",
            T0,
        )

        done = await _refresh(pool)

        assert done.hours == 1
        assert await pool.fetchval("SELECT count(*) FROM h3_hourly") == 0

    async def test_refresh_late_fix_updates_old_hour(self, pool: asyncpg.Pool) -> None:
        """A late fix lands in its own old hour, and splits its predecessor's pair."""
        parked = [
            Row("car-l", T0 + timedelta(minutes=m), 48.1, 11.5, 1.0) for m in (0, 2, 30)
        ]
        await _insert(pool, parked)
        await _refresh(pool)
        before = await _stored(pool)
        late = Row(
            "car-l",
            T0 + timedelta(minutes=3),
            48.1,
            11.5,
            1.0,
            server_time=datetime.now(UTC),
        )

        await _insert(pool, [late])
        done = await _refresh(pool)

        after = await _stored(pool)
        key = (FINEST, late.cell, _hour(T0))
        assert done.hours == 1
        assert before[key]["fixes"] == 2  # 07:50 and 07:52; 08:20 is another hour
        assert after[key]["fixes"] == 3
        # Pairs 07:50-07:52 (120 s) and 07:52-08:20 (capped at 300 s), then
        # 07:52-07:53 (60 s) and 07:53-08:20 (300 s).
        assert before[key]["dwell_s"] == 120 + 300
        assert after[key]["dwell_s"] == 120 + 60 + 300
        _assert_same(after, _expected([*parked, late], COARSEST, FINEST))

    async def test_refresh_next_fix_pairs_previous_hour(
        self, pool: asyncpg.Pool
    ) -> None:
        """Arriving at 08:01, a fix gives 07:58 (in the 07:00 hour) its dwell."""
        first = Row("car-n", T0 + timedelta(minutes=8), 48.1, 11.5, 0.0)
        await _insert(pool, [first])
        await _refresh(pool)
        alone = await _stored(pool)
        second = Row(
            "car-n",
            T0 + timedelta(minutes=11),
            48.1,
            11.5,
            0.0,
            server_time=datetime.now(UTC),
        )

        await _insert(pool, [second])
        done = await _refresh(pool)

        stored = await _stored(pool)
        assert alone[(FINEST, first.cell, _hour(first.fix_time))]["dwell_s"] == 0
        assert done.hours == 2
        assert stored[(FINEST, first.cell, _hour(first.fix_time))]["dwell_s"] == 180
        assert stored[(FINEST, first.cell, _hour(second.fix_time))]["dwell_s"] == 0

    async def test_refresh_after_days_of_silence(self, pool: asyncpg.Pool) -> None:
        """A device back after three days pairs with its last fix, far back."""
        parked = Row("car-q", T0, 48.1, 11.5, 0.0)
        await _insert(pool, [parked])
        await _refresh(pool)
        back = Row(
            "car-q",
            T0 + timedelta(days=3),
            48.1,
            11.5,
            0.0,
            server_time=datetime.now(UTC),
        )

        await _insert(pool, [back])
        done = await _refresh(pool)

        stored = await _stored(pool)
        assert done.hours == 2
        assert stored[(FINEST, parked.cell, _hour(T0))]["dwell_s"] == 300
        _assert_same(stored, _expected([parked, back], COARSEST, FINEST))

    async def test_refresh_waits_for_settle_time(self, pool: asyncpg.Pool) -> None:
        fresh = Row("car-s", T0, 48.1, 11.5, 3.0, server_time=datetime.now(UTC))
        await _insert(pool, [fresh])

        waiting = await refresh_h3(pool, SETTINGS, coarsest=COARSEST, settle_s=60)
        settled = await refresh_h3(pool, SETTINGS, coarsest=COARSEST, settle_s=0)

        assert waiting.hours == 0 and waiting.caught_up
        assert settled.hours == 1
        assert waiting.refreshed_to < fresh.server_time <= settled.refreshed_to

    async def test_refresh_in_bounded_rounds(self, pool: asyncpg.Pool) -> None:
        """A backlog of arrivals is read at most max_span per transaction."""
        rows = [
            Row(
                "car-r",
                T0 + timedelta(hours=h),
                48.1,
                11.5,
                20.0,
                server_time=T0 + timedelta(hours=h),
            )
            for h in range(6)
        ]
        await _insert(pool, rows)

        first = await refresh_h3(
            pool, SETTINGS, coarsest=COARSEST, settle_s=0, max_span_s=3600
        )
        rest = await _refresh(pool, max_span_s=3600)

        assert not first.caught_up
        assert first.hours == 2  # arrivals 07:50 and 08:50: one hour of arrival time
        assert rest.caught_up
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM h3_hourly WHERE resolution = $1", FINEST
            )
            == 6
        )

    async def test_refresh_idempotent_and_rewrite_equal(
        self, pool: asyncpg.Pool
    ) -> None:
        await _insert(pool, _fleet())
        await _refresh(pool)
        first = await _stored(pool)

        await pool.execute("UPDATE h3_refresh_state SET refreshed_to = '-infinity'")
        await _refresh(pool)
        again = await _stored(pool)
        await pool.execute("UPDATE h3_hourly SET fixes = 0")
        written = await rewrite_h3_hours(
            pool,
            T0 - timedelta(hours=1),
            T0 + timedelta(hours=3),
            SETTINGS,
            coarsest=COARSEST,
        )

        assert again == first
        assert await _stored(pool) == first
        assert written == len(first)

    async def test_rewrite_drops_cells_left_empty(self, pool: asyncpg.Pool) -> None:
        """A fix filtered after the fact takes its cell's row with it."""
        await _insert(pool, [Row("car-f", T0, 48.1, 11.5, 30.0)])
        await _refresh(pool)
        await pool.execute("UPDATE fixes SET filter = 'jump'")

        await rewrite_h3_hours(
            pool, T0, T0 + timedelta(minutes=1), SETTINGS, coarsest=COARSEST
        )

        assert await pool.fetchval("SELECT count(*) FROM h3_hourly") == 0

    async def test_filter_changed_later_rewrites_its_hours(
        self, pool: asyncpg.Pool
    ) -> None:
        """The job's recompute re-marks old fixes; their hours follow."""
        rows = _fleet()
        await _insert(pool, rows)
        await _refresh(pool)
        victim = next(row for row in rows if row.device == "car-a")
        await pool.execute(
            "UPDATE fixes SET filter = 'stationary' WHERE device = $1"
            " AND fix_time = $2",
            victim.device,
            victim.fix_time,
        )
        noted = await pool.fetchval("SELECT count(*) FROM h3_stale_hours")

        hours, written = await aggregates.refresh_stale_h3(pool)

        remaining = [
            dataclasses.replace(row, filter="stationary") if row == victim else row
            for row in rows
        ]
        assert noted >= 1 and hours == noted and written > 0
        _assert_same(await _stored(pool), _expected(remaining, COARSEST, FINEST))
        assert await pool.fetchval("SELECT count(*) FROM h3_stale_hours") == 0

    async def test_filter_set_before_refresh_notes_nothing(
        self, pool: asyncpg.Pool
    ) -> None:
        """The job marks a fresh fix within seconds: the refresh reads it marked."""
        now = datetime.now(UTC).replace(microsecond=0)
        await _insert(pool, [Row("car-n", now, 48.1, 11.5, 30.0, server_time=now)])

        await pool.execute("UPDATE fixes SET filter = 'jump' WHERE device = 'car-n'")

        assert await pool.fetchval("SELECT count(*) FROM h3_stale_hours") == 0
        assert await aggregates.refresh_stale_h3(pool) == (0, 0)

    async def test_refresh_records_settings(self, pool: asyncpg.Pool) -> None:
        rules = CellSettings(resolution=8, stopped_below_kmh=5.0, max_dwell_gap_s=60)
        assert await aggregates.refreshed(pool) is None

        await refresh_h3(pool, rules, coarsest=4, settle_s=0)

        assert await aggregates.refreshed(pool) == aggregates.Refreshed(4, rules)

    async def test_refresh_other_dwell_rules(self, pool: asyncpg.Pool) -> None:
        """Thresholds are settings, in SQL as in geo.cells."""
        rules = CellSettings(resolution=FINEST, stopped_below_kmh=50, max_dwell_gap_s=5)
        rows = _fleet()
        await _insert(pool, rows)

        await refresh_h3_until_caught_up(pool, rules, coarsest=FINEST, settle_s=0)

        stored = list(cells.aggregate(_points(rows), rules).values())
        expected = {
            (FINEST, p.cell, datetime.fromtimestamp(p.hour_ms / 1000, UTC)): p.dwell_s
            for p in stored
        }
        got = {key: value["dwell_s"] for key, value in (await _stored(pool)).items()}
        assert got == expected

    @pytest.mark.parametrize(
        ("coarsest", "message"),
        [
            (10, "coarsest must be from 0 to the stored resolution 9, got 10"),
            (-1, "coarsest must be from 0 to the stored resolution 9, got -1"),
        ],
    )
    async def test_refresh_bad_coarsest_refused(
        self, pool: asyncpg.Pool, coarsest: int, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            await refresh_h3(pool, SETTINGS, coarsest=coarsest)

    async def test_refresh_bad_times_refused(self, pool: asyncpg.Pool) -> None:
        with pytest.raises(ValueError, match="settle_s must be >= 0 and max_span_s"):
            await refresh_h3(pool, SETTINGS, coarsest=5, max_span_s=0)

    async def test_sql_refuses_bad_resolutions(self, pool: asyncpg.Pool) -> None:
        """The SQL function checks too, for callers other than Rastro."""
        with pytest.raises(asyncpg.RaiseError, match="need 0 <= coarsest <= finest"):
            await pool.fetch("SELECT * FROM rastro_refresh_h3(5, 9)")


class TestQuantile:
    @pytest.mark.parametrize("q", [0.0, 0.5, 0.95, 1.0])
    async def test_quantile_of_bins_matches_geo_cells(
        self, pool: asyncpg.Pool, q: float
    ) -> None:
        draw = random.Random(7)
        for _ in range(50):
            speeds = [draw.choice([0.0, 3.2, 49.6, 50.4, 130.0, 260.0])] * draw.randint(
                1, 4
            ) + [draw.uniform(0, 140) for _ in range(draw.randint(0, 30))]
            hour = cells.merged(
                cells.CellHour.of_fix(1, FixPoint("d", 0, 0.0, 0.0, speed))
                for speed in speeds
            )[(1, 0)]

            got = await pool.fetchval(
                "SELECT rastro_quantile_of_bins($1, $2, $3)",
                [value for value, _ in hour.speed_bins],
                [count for _, count in hour.speed_bins],
                q,
            )

            assert got == hour.speed_quantile_kmh(q)

    async def test_quantile_of_nothing_is_null(self, pool: asyncpg.Pool) -> None:
        assert (
            await pool.fetchval("SELECT rastro_quantile_of_bins('{}', '{}', 0.5)")
            is None
        )


class TestRefreshForever:
    async def test_forever_refreshes_until_cancelled(
        self, pool: asyncpg.Pool, postgres_dsn: str
    ) -> None:
        await _insert(pool, _fleet()[:50])

        task = asyncio.create_task(
            refresh_h3_forever(
                postgres_dsn, 0.05, SETTINGS, coarsest=COARSEST, settle_s=0
            )
        )
        try:
            for _ in range(400):
                written = await pool.fetchval("SELECT count(*) FROM h3_hourly")
                if written:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        assert written > 0
        assert await aggregates.refreshed(pool) == aggregates.Refreshed(
            COARSEST, SETTINGS
        )

    async def test_forever_survives_database_down(self) -> None:
        """Each failed round is logged with the DSN's password hidden; no crash."""
        dsn = f"postgresql://rastro:secret-pw@127.0.0.1:{free_port()}/rastro"

        with capture_logs() as logs:
            task = asyncio.create_task(
                refresh_h3_forever(dsn, 0.01, SETTINGS, coarsest=COARSEST)
            )
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        failures = [e for e in logs if e["event"] == "h3_refresh_failed"]
        assert len(failures) >= 2
        assert all("secret-pw" not in str(event) for event in failures)

    async def test_forever_bad_interval_refused(self) -> None:
        with pytest.raises(ValueError, match="interval_s must be above 0"):
            await refresh_h3_forever("postgresql://x/y", 0, SETTINGS, coarsest=5)


class TestCellsOverPeriod:
    async def test_fleet_and_devices_paths_agree(self, pool: asyncpg.Pool) -> None:
        """h3_hourly merged equals the same devices' fixes aggregated on the fly."""
        await _insert(pool, _fleet())
        await _refresh(pool)
        window = {"start": _hour(T0), "end": _hour(T0) + timedelta(hours=3)}

        fleet = await cells_over_period(
            pool, resolution=8, cells=None, devices=None, limit=1000, **window
        )
        own = await cells_over_period(
            pool,
            resolution=8,
            cells=None,
            devices=["car-a", "car-b", "car-c"],
            limit=1000,
            **window,
        )

        assert fleet.cells and not fleet.truncated
        assert own.cells == fleet.cells

    async def test_period_merges_as_geo_cells(self, pool: asyncpg.Pool) -> None:
        """A period's row is geo.cells' merge of the cell's hours."""
        rows = _fleet()
        await _insert(pool, rows)
        await _refresh(pool)
        stored = list(cells.aggregate(_points(rows), SETTINGS).values())
        merged = {}
        for partial in cells.rollup(stored, 6):
            key = partial.cell
            merged[key] = (
                partial
                if key not in merged
                else merged[key].merge(
                    dataclasses.replace(partial, hour_ms=merged[key].hour_ms)
                )
            )

        page = await cells_over_period(
            pool,
            resolution=6,
            start=_hour(T0),
            end=_hour(T0) + timedelta(hours=3),
            cells=None,
            devices=None,
            limit=1000,
        )

        assert {row["cell"] for row in page.cells} == set(merged)
        for row in page.cells:
            want = merged[row["cell"]]
            assert row["fixes"] == want.fixes
            assert row["vehicles"] == want.vehicles
            assert row["dwell_s"] == pytest.approx(want.dwell_s)
            assert row["mean_speed_kmh"] == want.mean_speed_kmh
            assert row["p95_speed_kmh"] == want.speed_quantile_kmh(0.95)
        assert max(row["hours"] for row in page.cells) == 3

    async def test_period_limit_and_cells(self, pool: asyncpg.Pool) -> None:
        await _insert(pool, _fleet())
        await _refresh(pool)
        window = {"start": _hour(T0), "end": _hour(T0) + timedelta(hours=3)}
        every = await cells_over_period(
            pool, resolution=9, cells=None, devices=None, limit=10_000, **window
        )

        top = await cells_over_period(
            pool, resolution=9, cells=None, devices=None, limit=3, **window
        )
        chosen = await cells_over_period(
            pool,
            resolution=9,
            cells=[every.cells[-1]["cell"], 12345],
            devices=None,
            limit=10,
            **window,
        )

        assert top.truncated and top.cells == every.cells[:3]
        assert [row["fixes"] for row in every.cells] == sorted(
            (row["fixes"] for row in every.cells), reverse=True
        )
        assert chosen.cells == [every.cells[-1]] and not chosen.truncated

    async def test_period_without_devices_is_empty(self, pool: asyncpg.Pool) -> None:
        page = await cells_over_period(
            pool,
            resolution=9,
            start=T0,
            end=T0 + timedelta(hours=1),
            cells=None,
            devices=[],
            limit=10,
        )

        assert page.cells == [] and not page.truncated

    async def test_period_gives_up_after_timeout(self, pool: asyncpg.Pool) -> None:
        """Aggregating on the fly is cancelled past the timeout, not left running."""
        await _insert(pool, _fleet())

        with pytest.raises(asyncpg.QueryCanceledError):
            await cells_over_period(
                pool,
                resolution=9,
                start=_hour(T0),
                end=_hour(T0) + timedelta(days=30),
                cells=None,
                devices=["car-a", "car-b", "car-c"],
                limit=10,
                timeout_s=0.001,
            )

        assert await pool.fetchval("SELECT 1") == 1


def test_timescale_variant_holds_the_same_refresh() -> None:
    """sql/timescale/004 is sql/004 without the BRIN index, plus its aggregate."""
    folder = Path(__file__).parents[1] / "sql"
    plain = (folder / "004_h3_refresh.sql").read_text()
    timescale = (folder / "timescale" / "004_h3_refresh.sql").read_text()
    body = plain[plain.index("-- Columns 003 described") :]
    brin = body[
        body.index("-- A refresh reads whole hours") : body.index("-- H3 index")
    ]

    assert "CREATE INDEX fixes_fix_time_brin" in brin
    assert body.replace(brin, "").rstrip() in timescale
    assert "fixes_fix_time_brin" not in timescale
    assert "WITH (timescaledb.continuous" in timescale
