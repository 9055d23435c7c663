"""What the job reads from PostgreSQL: profiles, geofences (kept current), history.

Real PostgreSQL, no Flink: :class:`~pipeline.stream.catalog.Catalog` and
:class:`~pipeline.stream.history.HistoryReader` over a migrated database, changed
through the same store functions the API uses.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest
from structlog.testing import capture_logs

from geo.geofences import CircleFence
from geo.trips import Idle, Stop, Trip, TripSettings
from pipeline.services.postgres import run_coroutine
from pipeline.store.devices import create_device
from pipeline.store.geofences import (
    GeofenceDraft,
    StoredGeofence,
    create_geofence,
    delete_geofence,
    update_geofence,
)
from pipeline.store.users import create_user
from pipeline.stream.catalog import Catalog
from pipeline.stream.database import BlockingDatabase
from pipeline.stream.history import HistoryReader, utc
from pipeline.stream.motion import HistoryUnavailable
from pipeline.stream.profiles import DEFAULT_PROFILE

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
_T = TypeVar("_T")


def _draft(
    radius_m: float, *, devices: tuple[int, ...] = (), groups: tuple[int, ...] = ()
) -> GeofenceDraft:
    fence = CircleFence(
        id="x", name="Depot", latitude=48.1, longitude=11.5, radius_m=radius_m
    )
    return GeofenceDraft(
        name="Depot",
        kind="circle",
        geometry={
            "type": "Feature",
            "geometry": fence.geometry(),
            "properties": fence.extra_properties(),
        },
        speed_limit_kmh=30.0,
        attributes={},
        devices=devices,
        groups=groups,
    )


def _run(dsn: str, statement: str, *args: object) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn)
        try:
            return list(await connection.fetch(statement, *args))
        finally:
            await connection.close()

    return run_coroutine(go)


class Fleet:
    """A user with two devices, one of them in a group, made through the store."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

        async def make() -> tuple[int, int, int, int]:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            try:
                user = await create_user(pool, "fleet-owner", "secret-password")
                van = await create_device(
                    pool, user.id, "van-1", "Van", {"trips": {"rule": "ignition"}}
                )
                bus = await create_device(pool, user.id, "bus-1", "Bus", {})
                group = await pool.fetchval(
                    "INSERT INTO device_groups (owner_id, name, attributes)"
                    " VALUES ($1, 'buses', $2::jsonb) RETURNING id",
                    user.id,
                    json.dumps(
                        {"speedLimit": 60, "alerts": {"offline": {"after_s": 120}}}
                    ),
                )
                await pool.execute(
                    "UPDATE devices SET group_id = $1 WHERE id = $2", group, bus.id
                )
                await pool.execute(
                    "UPDATE users SET time_zone = 'Europe/Lisbon' WHERE id = $1",
                    user.id,
                )
                return user.id, van.id, bus.id, group
            finally:
                await pool.close()

        self.user, self.van, self.bus, self.group = run_coroutine(make)

    def create(self, draft: GeofenceDraft) -> StoredGeofence:
        return run_coroutine(
            lambda: self._with_pool(create_geofence, self.user, None, draft)
        )

    def update(self, geofence_id: int, draft: GeofenceDraft) -> None:
        run_coroutine(
            lambda: self._with_pool(update_geofence, geofence_id, None, draft)
        )

    def delete(self, geofence_id: int) -> None:
        run_coroutine(lambda: self._with_pool(delete_geofence, geofence_id, None))

    async def _with_pool(self, call: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        try:
            return await call(pool, *args)
        finally:
            await pool.close()


@pytest.fixture
def database(postgres_dsn: str) -> Iterator[BlockingDatabase]:
    opened = BlockingDatabase(postgres_dsn)
    try:
        yield opened
    finally:
        opened.close()


class TestCatalog:
    def test_profiles_from_group_and_device_attributes(
        self, postgres_dsn: str, database: BlockingDatabase
    ) -> None:
        fleet = Fleet(postgres_dsn)
        catalog = Catalog(database, poll_s=0.0)

        assert catalog.refresh(force=True)

        van, bus = catalog.profile("van-1"), catalog.profile("bus-1")
        assert van.trips.rule == "ignition"
        assert (bus.speed_limit_kmh, bus.alerts.offline.after_s) == (60.0, 120)
        assert van.time_zone == bus.time_zone == "Europe/Lisbon"
        assert catalog.profile("unknown-9") is DEFAULT_PROFILE
        assert fleet.group > 0

    def test_fleet_settings_under_group_and_device(
        self, postgres_dsn: str, database: BlockingDatabase
    ) -> None:
        """The fleet layer applies to every device; group and device values win."""
        Fleet(postgres_dsn)
        fleet = {
            "trips": {"rule": "motion", "min_idle_s": 60},
            "alerts": {"offline": {"after_s": 900}},
            "speedLimit": 100,
        }
        catalog = Catalog(database, poll_s=0.0, fleet_attributes=fleet)

        catalog.refresh(force=True)

        van, bus = catalog.profile("van-1"), catalog.profile("bus-1")
        unknown = catalog.profile("unknown-9")
        assert van.trips == TripSettings(rule="ignition", min_idle_s=60)
        assert bus.trips == unknown.trips == TripSettings(min_idle_s=60)
        assert (van.speed_limit_kmh, bus.speed_limit_kmh) == (100.0, 60.0)
        assert (van.alerts.offline.after_s, bus.alerts.offline.after_s) == (900, 120)
        assert unknown.speed_limit_kmh == 100.0

    def test_refused_fleet_setting_is_logged_once(
        self, postgres_dsn: str, database: BlockingDatabase
    ) -> None:
        """Once for the fleet, not once per device; the devices keep the rest."""
        Fleet(postgres_dsn)
        fleet = {"speedLimit": -1, "trips": {"min_idle_s": 60}}

        with capture_logs() as logs:
            catalog = Catalog(database, poll_s=0.0, fleet_attributes=fleet)
            catalog.refresh(force=True)

        refused = [
            entry for entry in logs if entry["event"] == "stream_setting_refused"
        ]
        assert refused == [
            {
                "event": "stream_setting_refused",
                "log_level": "warning",
                "setting": "motion_settings",
                "problem": "motion_settings: speedLimit must be a positive number, "
                "got -1",
            }
        ]
        assert catalog.profile("van-1").trips.min_idle_s == 60
        assert catalog.profile("van-1").speed_limit_kmh is None
        assert catalog.profile("bus-1").speed_limit_kmh == 60.0

    def test_geofence_changes_are_picked_up(
        self, postgres_dsn: str, database: BlockingDatabase
    ) -> None:
        """Created for a device, widened and given to a group, then deleted: each
        change shows at the next poll, and nothing changes without one."""
        fleet = Fleet(postgres_dsn)
        catalog = Catalog(database, poll_s=0.0)
        catalog.refresh(force=True)

        stored = fleet.create(_draft(100.0, devices=(fleet.van,)))
        created = catalog.refresh()
        fence_id = str(stored.id)
        first = catalog.index[fence_id]
        unchanged = catalog.refresh()
        fleet.update(stored.id, _draft(300.0, groups=(fleet.group,)))
        updated = catalog.refresh()
        second = catalog.index[fence_id]
        van, bus = catalog.profile("van-1"), catalog.profile("bus-1")
        fleet.delete(stored.id)
        deleted = catalog.refresh()

        assert (created, unchanged, updated, deleted) == (True, False, True, True)
        assert isinstance(first, CircleFence) and first.radius_m == 100.0
        assert first.speed_limit_kmh == 30.0
        assert isinstance(second, CircleFence) and second.radius_m == 300.0
        assert (van.geofences, bus.geofences) == (frozenset(), frozenset({fence_id}))
        assert fence_id not in catalog.index
        assert catalog.profile("bus-1").geofences == frozenset()

    def test_unusable_geofence_is_left_out(
        self, postgres_dsn: str, database: BlockingDatabase
    ) -> None:
        fleet = Fleet(postgres_dsn)
        _run(
            postgres_dsn,
            "INSERT INTO geofences (owner_id, name, kind, geometry)"
            " VALUES ($1, 'broken', 'circle', $2::jsonb)",
            fleet.user,
            json.dumps(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [1, 2]},
                    "properties": {},
                }
            ),
        )
        catalog = Catalog(database, poll_s=0.0)

        catalog.refresh(force=True)

        assert len(catalog.index) == 0

    def test_database_down_keeps_the_last_catalog(self, postgres_dsn: str) -> None:
        Fleet(postgres_dsn)
        database = BlockingDatabase(postgres_dsn)
        catalog = Catalog(database, poll_s=0.0)
        catalog.refresh(force=True)
        database.close()
        catalog._database = BlockingDatabase("postgresql://nobody@127.0.0.1:1/none")

        changed = catalog.refresh()

        assert not changed
        assert catalog.profile("van-1").trips.rule == "ignition"


class TestHistoryReader:
    def test_records_and_fixes_read_back(
        self, postgres_dsn: str, database: BlockingDatabase
    ) -> None:
        _run(
            postgres_dsn,
            "INSERT INTO trips (device, start_time, end_time, start_latitude,"
            " start_longitude, end_latitude, end_longitude, distance_m, duration_s,"
            " max_speed_kmh, max_speed_time, avg_speed_kmh, idle_s)"
            " VALUES ('van-1', $1, $2, 48.1, 11.5, 48.2, 11.6, 9000, 600, 72, $3,"
            " 54, 0)",
            utc(T0),
            utc(T0 + 600_000),
            utc(T0 + 300_000),
        )
        for table in ("stops", "idles"):
            _run(
                postgres_dsn,
                f"INSERT INTO {table} (device, start_time, end_time, latitude,"
                " longitude, duration_s) VALUES ('van-1', $1, $2, 48.2, 11.6, 300)",
                utc(T0 + 600_000),
                utc(T0 + 900_000),
            )
        for offset, reason in ((0, None), (10_000, "stationary"), (20_000, None)):
            _run(
                postgres_dsn,
                "INSERT INTO fixes (device, fix_time, server_time, latitude,"
                " longitude, valid, protocol, attributes, filter)"
                " VALUES ('van-1', $1, $1, 48.1, 11.5, true, 'osmand', $2, $3)",
                utc(T0 + offset),
                json.dumps({"ignition": True}),
                reason,
            )
        history = HistoryReader(database)

        records = history.records("van-1", T0 + 700_000, None)
        everything = history.records("van-1", T0, T0 + 1)
        fixes = history.fixes("van-1", T0, T0 + 20_000)
        accepted = history.last_accepted("van-1", T0 + 20_000)

        assert [type(r) for r in records] == [Stop, Idle]
        assert isinstance(everything[0], Trip)
        assert everything[0].max_speed_ms == T0 + 300_000
        assert everything[0].max_speed_kmh == 72.0
        assert history.last_stop_start("van-1", T0 + 600_000) == T0 + 600_000
        assert history.last_stop_start("van-1", T0) is None
        assert [(row[1], reason) for row, reason in fixes] == [
            (T0, None),
            (T0 + 10_000, "stationary"),
            (T0 + 20_000, None),
        ]
        assert json.loads(fixes[0][0][13]) == {"ignition": True}
        assert accepted is not None and accepted[1] == T0

    def test_unreachable_history_is_reported(self) -> None:
        database = BlockingDatabase("postgresql://nobody@127.0.0.1:1/none")
        try:
            with pytest.raises(HistoryUnavailable, match="history unreadable"):
                HistoryReader(database).last_accepted("van-1", T0)
        finally:
            database.close()
