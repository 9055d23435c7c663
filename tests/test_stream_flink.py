"""The whole streaming job on the local mini-cluster, against real Kafka, PG, Redis.

One job serves the first two classes (the mini-cluster takes 10-20 s to start): the
history and live feed of fixes, then what the ``geo`` steppers derive (trips, stops,
idles, filter marks, daily summaries, geofence visits and events, late data),
checked against geo's own batch functions on the same tracks.  The crash test runs
its own two jobs.  Every test uses device ids unique to the run, because the
session's Kafka topics and Redis are shared.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from geo.events import GeoEvent
from geo.filtering import FilterSettings, filter_fixes
from geo.fixes import FixPoint, h3_cell, h3_hex
from geo.geofences import (
    CircleFence,
    DwellSettings,
    Geofence,
    GeofenceIndex,
    run_membership,
)
from geo.summaries import summarise
from geo.trips import Record, Trip, TripSettings, detect_trips
from pipeline.ingest.service import event_time_ms
from pipeline.kafka import EVENTS, FIX_TIME_HEADER, fix_time_headers
from pipeline.model import Event, Fix
from pipeline.notify.messages import decode_event
from pipeline.services.postgres import SystemPostgres, run_coroutine
from pipeline.store.devices import create_device
from pipeline.store.geofences import GeofenceDraft, create_geofence
from pipeline.store.users import create_user
from pipeline.stream.database import BlockingDatabase
from pipeline.stream.history import HistoryReader
from pipeline.stream.job import LIVE_TOPIC, POSITIONS_TOPIC, latest_checkpoint
from pipeline.stream.latest import latest_keys
from tests.fixtures.flink import StreamJob, StreamJobs
from tests.test_geo_geofences import around_edge, circle, destination
from tests.test_geo_trips import LATITUDE, LONGITUDE, T0, Route, delivery_day

pytestmark = [pytest.mark.integration, pytest.mark.flink, pytest.mark.timeout(600)]

WAIT_S = 150.0
DAY_MS = 86_400_000
#: The job's lateness in these tests (seconds): short, so that results come soon.
LATENESS_S = 2


def _fix(device: str, fix_time_ms: int, step: int, **changes: Any) -> Fix:
    fix = Fix(
        device=device,
        fix_time_ms=fix_time_ms,
        server_time_ms=int(time.time() * 1000),
        latitude=38.70 + step * 0.001,
        longitude=-9.14 + step * 0.0005,
        valid=True,
        protocol="osmand",
    )
    fix.speed_kmh = 20.0 + step
    fix.attributes["battery"] = json.dumps(90 - step)
    for name, value in changes.items():
        setattr(fix, name, value)
    return fix


def _produce(
    bootstrap: str, payloads: list[tuple[str, bytes]], times: list[int] | None = None
) -> None:
    """Records as ingest writes them: keyed by device, with the fix-time header
    (none when ``times`` is ``None``: the job then uses the Kafka time)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for index, (key, value) in enumerate(payloads):
        headers = None if times is None else fix_time_headers(times[index])
        producer.produce(
            POSITIONS_TOPIC, key=key.encode(), value=value, headers=headers
        )
    assert producer.flush(30) == 0


def _produce_unreadable_time(bootstrap: str, fix: Fix) -> None:
    """A fix whose fix-time header is not a number: it counts at its Kafka time."""
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        POSITIONS_TOPIC,
        key=fix.device.encode(),
        value=fix.SerializeToString(),
        headers=[(FIX_TIME_HEADER, b"soon")],
    )
    assert producer.flush(30) == 0


def _send(bootstrap: str, fixes: list[Fix]) -> None:
    now_ms = time.time_ns() // 1_000_000
    _produce(
        bootstrap,
        [(fix.device, fix.SerializeToString()) for fix in fixes],
        [event_time_ms(fix, now_ms) for fix in fixes],
    )


def _query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn)
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    return run_coroutine(fetch)


def _count(dsn: str, prefix: str) -> int:
    rows = _query(dsn, "SELECT count(*) FROM fixes WHERE device LIKE $1", prefix + "%")
    return int(rows[0][0])


def _wait_rows(dsn: str, prefix: str, expected: int, timeout_s: float = WAIT_S) -> int:
    deadline = time.monotonic() + timeout_s
    count = _count(dsn, prefix)
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        count = _count(dsn, prefix)
    return count


def _live(bootstrap: str, prefix: str, expected: int) -> list[Fix]:
    """Every ``live`` fix of our devices: ``expected`` of them, then 3 s more."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}"}
    )
    try:
        partitions = consumer.list_topics(LIVE_TOPIC, timeout=30).topics[LIVE_TOPIC]
        consumer.assign(
            [TopicPartition(LIVE_TOPIC, p, 0) for p in partitions.partitions]
        )
        fixes: list[Fix] = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None and message.key().startswith(
                    prefix.encode()
                ):
                    fix = Fix.FromString(message.value())
                    assert message.key() == fix.device.encode()
                    fixes.append(fix)
            if len(fixes) >= expected:
                deadline = min(deadline, time.monotonic() + 3.0)
        return fixes
    finally:
        consumer.close()


def _latest(redis_url: str, device: str) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hget(latest_keys(device)[0], device)
    finally:
        client.close()
    assert raw is not None, f"no latest fix for {device}"
    document: dict[str, Any] = json.loads(raw)
    return document


@dataclass
class Scenario:
    """What the shared job was fed, and where to look for the results."""

    dsn: str
    kafka: str
    redis: str
    prefix: str
    times: dict[str, list[int]]
    job: StreamJob


ORDER = [3, 0, 7, 1, 9, 2, 8, 4, 6, 5]
REPEATED = [2, 7, 9]


@pytest.fixture(scope="module")
def scenario(
    postgres_server: SystemPostgres,
    postgres_template: str,
    stream_topics: str,
    redis_url: str,
) -> Iterator[Scenario]:
    """One job fed good, invalid, repeated, out-of-order and malformed fixes."""
    database = f"test_stream_{uuid.uuid4().hex[:8]}"
    dsn = postgres_server.create_database(database, template=postgres_template)
    data = Path(tempfile.mkdtemp(prefix="rastro-test-stream-"))
    jobs = StreamJobs(kafka=stream_topics, redis=redis_url)
    try:
        job = jobs.start(dsn, data, "--lateness", str(LATENESS_S))
        yield _feed(dsn, stream_topics, redis_url, job)
    finally:
        jobs.stop_all()
        shutil.rmtree(data, ignore_errors=True)
        postgres_server.drop_database(database)


def _feed(dsn: str, kafka: str, redis_url: str, job: StreamJob) -> Scenario:
    prefix = f"it-{uuid.uuid4().hex[:8]}-"
    truck, van = prefix + "truck", prefix + "van"
    base = int(time.time() * 1000) - 600_000
    fixes = [_fix(truck, base + step * 1000, step) for step in ORDER]
    fixes += [_fix(truck, base + step * 1000, step) for step in REPEATED]
    fixes += [_fix(van, base + step * 1000, step) for step in range(3)]
    fixes += [
        _fix(truck, base + 20_000, 20, valid=False),
        _fix(truck, base + 21_000, 21, latitude=0.0, longitude=0.0),
        _fix(van, base + 22_000, 22, latitude=95.0),
        _fix(van, base + 2 * DAY_MS, 23),
    ]
    _send(kafka, fixes)
    _produce(kafka, [(truck, b"\xff\xfe not a fix")])
    misfiled = _fix(van, base + 30_000, 30)  # keyed by another device: refused
    _produce(kafka, [(truck, misfiled.SerializeToString())], [base + 30_000])
    _produce_unreadable_time(kafka, _fix(van, base + 3000, 3))
    times = {
        truck: [base + step * 1000 for step in range(10)],
        van: [base + step * 1000 for step in range(4)],
    }
    return Scenario(dsn, kafka, redis_url, prefix, times, job)


class TestStreamJob:
    def test_stream_job_writes_valid_fixes_once(self, scenario: Scenario) -> None:
        expected = sum(len(times) for times in scenario.times.values())

        assert _wait_rows(scenario.dsn, scenario.prefix, expected) == expected
        time.sleep(3)
        rows = _query(
            scenario.dsn,
            "SELECT device, (extract(epoch FROM fix_time) * 1000)::bigint AS ms "
            "FROM fixes WHERE device LIKE $1",
            scenario.prefix + "%",
        )
        written = {(row["device"], row["ms"]) for row in rows}
        wanted = {(d, t) for d, times in scenario.times.items() for t in times}
        assert len(rows) == expected
        assert written == wanted

    def test_stream_job_row_has_every_column(self, scenario: Scenario) -> None:
        truck = scenario.prefix + "truck"
        _wait_rows(scenario.dsn, scenario.prefix, 14)

        rows = _query(
            scenario.dsn,
            "SELECT * FROM fixes WHERE device = $1 ORDER BY fix_time LIMIT 1",
            truck,
        )

        row = rows[0]
        step0 = _fix(truck, scenario.times[truck][0], 0)
        assert int(row["fix_time"].timestamp() * 1000) == scenario.times[truck][0]
        assert row["latitude"] == step0.latitude
        assert row["h3"] == h3_cell(step0.latitude, step0.longitude, 9)
        assert row["speed"] == pytest.approx(20.0)
        assert row["altitude"] is None
        assert row["valid"] is True
        assert row["protocol"] == "osmand"
        assert json.loads(row["attributes"]) == {"battery": 90}

    def test_stream_job_latest_is_newest_fix(self, scenario: Scenario) -> None:
        _wait_rows(scenario.dsn, scenario.prefix, 14)

        for device, times in scenario.times.items():
            document = _latest(scenario.redis, device)
            newest = _fix(device, times[-1], len(times) - 1)
            assert document["time"] == _iso(times[-1])
            assert document["latitude"] == newest.latitude
            assert document["h3"] == h3_hex(
                h3_cell(newest.latitude, newest.longitude, 9)
            )
            assert document["uniqueId"] == device

    def test_stream_job_publishes_accepted_on_live(self, scenario: Scenario) -> None:
        fixes = _live(scenario.kafka, scenario.prefix, 14)

        published = sorted((fix.device, fix.fix_time_ms) for fix in fixes)
        wanted = sorted((d, t) for d, times in scenario.times.items() for t in times)
        assert published == wanted
        assert all(fix.h3 == h3_cell(fix.latitude, fix.longitude, 9) for fix in fixes)

    def test_stream_job_old_fix_keeps_latest(self, scenario: Scenario) -> None:
        """An out-of-order fix joins the history but does not move the latest."""
        truck = scenario.prefix + "truck"
        _wait_rows(scenario.dsn, scenario.prefix, 14)
        older = scenario.times[truck][0] - 60_000

        _send(scenario.kafka, [_fix(truck, older, 30)])

        assert _wait_rows(scenario.dsn, scenario.prefix, 15) == 15
        assert _latest(scenario.redis, truck)["time"] == _iso(scenario.times[truck][-1])


def _iso(epoch_ms: int) -> str:
    from pipeline.model import format_time_ms

    return format_time_ms(epoch_ms)


# --- what the steppers derive -------------------------------------------------------


def _sent(fix: FixPoint) -> tuple[Fix, FixPoint]:
    """The protobuf a device sends for ``fix``, and the fix as the job reads it back.

    Speeds travel as 32-bit floats, so the expected results are computed from the
    fix as received, exactly as the job sees it.
    """
    proto = Fix(
        device=fix.device,
        fix_time_ms=fix.time_ms,
        server_time_ms=fix.server_time_ms,
        latitude=fix.latitude,
        longitude=fix.longitude,
        valid=True,
        protocol="osmand",
    )
    if fix.speed_kmh is not None:
        proto.speed_kmh = fix.speed_kmh
    for key, value in fix.attributes.items():
        proto.attributes[key] = json.dumps(value)
    speed = proto.speed_kmh if proto.HasField("speed_kmh") else None
    return proto, replace(fix, speed_kmh=speed)


def _send_track(kafka: str, fixes: Sequence[FixPoint]) -> list[FixPoint]:
    pairs = [_sent(fix) for fix in fixes]
    _send(kafka, [proto for proto, _ in pairs])
    return [seen for _, seen in pairs]


def _expected(
    fixes: Sequence[FixPoint], fence: Geofence | None = None
) -> tuple[list[Record], list[str | None], list[GeoEvent]]:
    """geo's batch results for a track: records, filter reasons, geofence events."""
    reasons, _ = filter_fixes(fixes, FilterSettings())
    accepted = [f for f, r in zip(fixes, reasons, strict=True) if r is None]
    found = detect_trips(accepted, TripSettings())
    crossings: list[GeoEvent] = []
    if fence is not None:
        _, outputs = run_membership(accepted, GeofenceIndex([fence]), DwellSettings())
        crossings = [o for o in outputs if isinstance(o, GeoEvent)]
    records: list[Record] = [*found.trips, *found.stops, *found.idles]
    return records, [None if r is None else r.value for r in reasons], crossings


def _stored(dsn: str, device: str) -> list[Record]:
    """The device's trips, stops and idles as the job stored them, read back."""
    database = BlockingDatabase(dsn)
    try:
        return HistoryReader(database).records(device, 0, None)
    finally:
        database.close()


def _shape(records: Sequence[Record]) -> list[tuple[object, ...]]:
    """What must match exactly: kind, times, rounded measures."""
    rows = []
    for record in records:
        row: tuple[object, ...] = (
            type(record).__name__,
            record.start_ms,
            record.end_ms,
        )
        if isinstance(record, Trip):
            row += (
                round(record.distance_m, 3),
                round(record.max_speed_kmh, 2),
                record.max_speed_ms,
                record.idle_s,
            )
        rows.append(row)
    return sorted(rows, key=lambda r: (r[1], str(r[0])))


def _wait_until(
    check: Callable[[], bool], what: str, timeout_s: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.5)


def _events(dsn: str, device: str) -> list[asyncpg.Record]:
    return _query(
        dsn,
        "SELECT type, (extract(epoch FROM event_time) * 1000)::bigint AS ms,"
        " latitude, longitude, attributes::text AS attributes"
        " FROM events WHERE device = $1 ORDER BY event_time, type",
        device,
    )


def _published(bootstrap: str, prefix: str, settle_s: float = 3.0) -> list[Event]:
    """Every event of our devices on the ``events`` topic, from the beginning."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}"}
    )
    try:
        partitions = consumer.list_topics(EVENTS, timeout=30).topics[EVENTS]
        consumer.assign([TopicPartition(EVENTS, p, 0) for p in partitions.partitions])
        found: list[Event] = []
        quiet_until = time.monotonic() + settle_s
        while time.monotonic() < quiet_until:
            for message in consumer.consume(1000, 0.2):
                key = message.key() or b""
                if message.error() is None and key.startswith(prefix.encode()):
                    found.append(decode_event(message.value() or b""))
                    quiet_until = time.monotonic() + settle_s
        return found
    finally:
        consumer.close()


async def _register(dsn: str, unique_id: str, depot: CircleFence) -> tuple[int, int]:
    """A user, a device and a geofence assigned to it, through the store; ids."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        user = await create_user(pool, f"owner-{unique_id}", "secret-password")
        device = await create_device(pool, user.id, unique_id, unique_id, {})
        draft = GeofenceDraft(
            name=depot.name,
            kind="circle",
            geometry={
                "type": "Feature",
                "geometry": depot.geometry(),
                "properties": depot.extra_properties(),
            },
            speed_limit_kmh=None,
            attributes={},
            devices=(device.id,),
        )
        stored = await create_geofence(pool, user.id, None, draft)
        return device.id, stored.id
    finally:
        await pool.close()


EDGE_OFFSETS_M = [30.0, 10.0, -10.0, 5.0, -20.0, -50.0, -60.0, -60.0, 10.0, 30.0]
EDGE_OFFSETS_M += [40.0, 50.0, 60.0]


def _edge_track(device: str) -> list[FixPoint]:
    """The geo tests' drive round a depot's edge: in, out once, 20 s apart."""
    points = around_edge(circle(200.0), EDGE_OFFSETS_M)
    return [
        FixPoint(
            device,
            T0 + i * 20_000,
            lat,
            lon,
            speed_kmh=20.0,
            server_time_ms=T0 + i * 20_000 + 1_000,
        )
        for i, (lat, lon) in enumerate(points)
    ]


def _tunnel(device: str) -> tuple[list[FixPoint], list[FixPoint]]:
    """The geo tests' tunnel: the whole track, and the burst sent late."""
    route = Route(device=device).start().park(600).drive(600, 60)
    before_tunnel = len(route.fixes)
    route.drive(120, 30).park(420, ignition=True).drive(120, 30)
    burst = route.fixes[before_tunnel:]
    route.drive(600, 60).park(900).drive(600, 60).park(900)
    return route.fixes, burst


@dataclass
class Motion:
    """The motion devices fed to the shared job, as the job received them."""

    dsn: str
    kafka: str
    prefix: str
    van: list[FixPoint]
    tunnel: list[FixPoint]
    burst: list[FixPoint]
    live_trips: int
    edge: list[FixPoint]
    geofence_id: int


@pytest.fixture(scope="module")
def motion(scenario: Scenario) -> Motion:
    """A delivery day, a tunnel whose burst comes late, and a geofence created
    through the store while the job runs, then driven through."""
    prefix = f"mo-{uuid.uuid4().hex[:8]}-"
    kafka, dsn = scenario.kafka, scenario.dsn
    van = _send_track(kafka, delivery_day(Route(device=prefix + "van")).fixes)
    tunnel, burst = _tunnel(prefix + "tunnel")
    _send_track(kafka, [f for f in tunnel if f not in burst])

    _, geofence_id = run_coroutine(
        lambda: _register(dsn, prefix + "edge", circle(200.0))
    )
    _wait_until(
        lambda: (
            "geofences=1" in scenario.job.log_text()
            and "devices=1" in scenario.job.log_text()
        ),
        "the job loads the new geofence and device",
        timeout_s=30,
    )
    edge = _send_track(kafka, _edge_track(prefix + "edge"))

    def live_trips() -> int:
        return sum(isinstance(r, Trip) for r in _stored(dsn, prefix + "tunnel"))

    _wait_until(lambda: live_trips() == 2, "the tunnel's live trips are stored")
    tunnel = [_sent(f)[1] for f in tunnel]
    burst = _send_track(kafka, burst)
    return Motion(dsn, kafka, prefix, van, tunnel, burst, 2, edge, geofence_id)


class TestStreamJobMotion:
    def test_delivery_day_equals_geo_batch(self, motion: Motion) -> None:
        """Trips, stops, idles and filter marks are what geo's batch run gives."""
        device = motion.prefix + "van"
        records, reasons, _ = _expected(motion.van)

        def marks() -> list[tuple[int, str | None]]:
            rows = _query(
                motion.dsn,
                "SELECT (extract(epoch FROM fix_time) * 1000)::bigint AS ms, filter"
                " FROM fixes WHERE device = $1 ORDER BY fix_time",
                device,
            )
            return [(row["ms"], row["filter"]) for row in rows]

        wanted = [(f.time_ms, r) for f, r in zip(motion.van, reasons, strict=True)]
        _wait_until(lambda: marks() == wanted, "the van's fixes are marked")

        assert _shape(_stored(motion.dsn, device)) == _shape(records)
        assert "stationary" in reasons
        assert sum(isinstance(r, Trip) for r in records) == 3

    def test_daily_summaries_equal_geo_summarise(self, motion: Motion) -> None:
        device = motion.prefix + "van"
        records, _, _ = _expected(motion.van)
        expected = summarise(records, "UTC")
        _wait_until(
            lambda: len(_stored(motion.dsn, device)) == len(records),
            "the van's records are stored",
        )
        time.sleep(1)

        rows = _query(
            motion.dsn,
            "SELECT * FROM daily_summaries WHERE device = $1 ORDER BY day",
            device,
        )
        assert [row["day"] for row in rows] == [s.day for s in expected]
        for row, day in zip(rows, expected, strict=True):
            assert row["time_zone"] == "UTC"
            assert row["distance_m"] == pytest.approx(day.distance_m)
            assert row["driving_s"] == day.driving_s
            assert row["idle_s"] == day.idle_s
            assert row["stopped_s"] == day.stopped_s
            assert (row["trips"], row["stops"]) == (day.trips, day.stops)
            assert row["max_speed_kmh"] == pytest.approx(day.max_speed_kmh)

    def test_silent_van_goes_offline_once(self, motion: Motion) -> None:
        """Live devices moved the watermark past the van's due time: once the van
        stopped sending, it is offline, dated its offline delay after its last
        accepted fix, in the table and on the ``events`` topic."""
        device = motion.prefix + "van"
        _, reasons, _ = _expected(motion.van)
        last = max(f.time_ms for f, r in zip(motion.van, reasons, strict=True) if not r)

        def offline() -> list[asyncpg.Record]:
            return [
                e for e in _events(motion.dsn, device) if e["type"] == "deviceOffline"
            ]

        _wait_until(lambda: bool(offline()), "the van's offline event")
        published = [
            e for e in _published(motion.kafka, device) if e.type == "deviceOffline"
        ]

        assert [e["ms"] for e in offline()] == [last + 600_000]
        assert [e.event_time_ms for e in published] == [last + 600_000]
        ignitions = [
            e for e in _events(motion.dsn, device) if e["type"] == "ignitionOn"
        ]
        assert len(ignitions) == 3

    def test_geofence_made_while_running_enters_and_exits(self, motion: Motion) -> None:
        device = motion.prefix + "edge"
        fence = str(motion.geofence_id)
        depot = replace(circle(200.0), id=fence, name="Depot")
        _, _, crossings = _expected(motion.edge, depot)

        def stored() -> list[asyncpg.Record]:
            return [
                e
                for e in _events(motion.dsn, device)
                if e["type"].startswith("geofence")
            ]

        _wait_until(lambda: len(stored()) == 2, "the enter and exit events")
        published = [
            e for e in _published(motion.kafka, device) if e.type.startswith("geofence")
        ]
        visits = _query(
            motion.dsn,
            "SELECT geofence_id,"
            " (extract(epoch FROM enter_time) * 1000)::bigint AS enter,"
            " (extract(epoch FROM exit_time) * 1000)::bigint AS exit, duration_s"
            " FROM geofence_visits WHERE device = $1",
            device,
        )

        assert [e.type for e in crossings] == ["geofenceEnter", "geofenceExit"]
        assert [(e["type"], e["ms"]) for e in stored()] == [
            (e.type, e.time_ms) for e in crossings
        ]
        assert [json.loads(e["attributes"]) for e in stored()] == [
            dict(e.attributes) for e in crossings
        ]
        assert [(e.type, e.event_time_ms) for e in published] == [
            (e.type, e.time_ms) for e in crossings
        ]
        enter, exit_ = crossings
        assert [tuple(v) for v in visits] == [
            (
                motion.geofence_id,
                enter.time_ms,
                exit_.time_ms,
                exit_.attributes["duration_s"],
            )
        ]

    def test_late_burst_recomputed_like_a_full_run(self, motion: Motion) -> None:
        """The tunnel's burst comes after the rest: it is in history at once, and
        once recomputed the stored records are those of a full batch run."""
        device = motion.prefix + "tunnel"
        records, reasons, _ = _expected(motion.tunnel)

        def requests() -> int:
            rows = _query(
                motion.dsn,
                "SELECT count(*) FROM recompute_requests WHERE device = $1",
                device,
            )
            return int(rows[0][0])

        _wait_until(
            lambda: _shape(_stored(motion.dsn, device)) == _shape(records),
            "the recomputed tunnel records",
        )
        _wait_until(lambda: requests() == 0, "the recompute requests are done")
        marks = _query(
            motion.dsn,
            "SELECT (extract(epoch FROM fix_time) * 1000)::bigint AS ms, filter"
            " FROM fixes WHERE device = $1 ORDER BY fix_time",
            device,
        )

        assert motion.live_trips == 2
        assert sum(isinstance(r, Trip) for r in records) == 3
        assert [(row["ms"], row["filter"]) for row in marks] == [
            (f.time_ms, r) for f, r in zip(motion.tunnel, reasons, strict=True)
        ]


CRASH_DEVICES = 20
CRASH_BATCH = 1000


def _batch(prefix: str, start: int, count: int) -> list[Fix]:
    """``count`` fixes, one second apart per device, from sequence number ``start``."""
    base = int(time.time() * 1000) - DAY_MS
    fixes = []
    for number in range(start, start + count):
        device = f"{prefix}{number % CRASH_DEVICES:02d}"
        step = number // CRASH_DEVICES
        fixes.append(_fix(device, base + step * 1000, step % 50))
    return fixes


def _crossings(dsn: str, device: str) -> list[str]:
    return [e["type"] for e in _events(dsn, device) if e["type"].startswith("geofence")]


def _crash_van(device: str) -> tuple[Route, CircleFence]:
    """A van that parks, then drives east through a depot 1.5 km away."""
    base = int(time.time() * 1000) - DAY_MS
    route = Route(device=device, time_ms=base).start().park(300)
    latitude, longitude = destination(LATITUDE, LONGITUDE, 90.0, 1_500.0)
    depot = CircleFence(
        id="depot", name="Depot", latitude=latitude, longitude=longitude, radius_m=400.0
    )
    return route, depot


class TestStreamJobCrash:
    def test_stream_job_crash_loses_and_repeats_nothing(
        self, stream_jobs: StreamJobs, postgres_dsn: str, tmp_path: Path
    ) -> None:
        """SIGKILL mid-stream, restart: every valid fix is in the history once.

        A van is killed with the job in the middle of a trip and inside a
        geofence; after the restart it leaves the geofence and parks: one trip,
        one geofenceEnter and one geofenceExit, each as geo's batch run has them.
        """
        prefix = f"crash-{uuid.uuid4().hex[:8]}-"
        first, second, third = (
            _batch(prefix, n * CRASH_BATCH, CRASH_BATCH) for n in range(3)
        )
        data = tmp_path / "data"
        van = f"crashvan-{uuid.uuid4().hex[:8]}"
        route, depot = _crash_van(van)
        _, fence_id = run_coroutine(lambda: _register(postgres_dsn, van, depot))
        depot = replace(depot, id=str(fence_id))

        job = stream_jobs.start(postgres_dsn, data, "--lateness", str(LATENESS_S))
        seen = _send_track(stream_jobs.kafka, route.drive(120, 40).fixes)
        _send(stream_jobs.kafka, first)
        assert _wait_rows(postgres_dsn, prefix, CRASH_BATCH) == CRASH_BATCH
        _wait_until(
            lambda: _crossings(postgres_dsn, van) == ["geofenceEnter"],
            "the van enters the depot",
        )
        _wait_checkpoint(data / "checkpoints", after=time.time())
        sent = len(route.fixes)
        seen += _send_track(stream_jobs.kafka, route.drive(30, 40).fixes[sent:])
        _send(stream_jobs.kafka, second + random.sample(first, 100))
        job.kill()

        restarted = stream_jobs.start(postgres_dsn, data, "--lateness", str(LATENESS_S))
        sent = len(route.fixes)
        seen += _send_track(
            stream_jobs.kafka, route.drive(300, 40).park(600).fixes[sent:]
        )
        _send(stream_jobs.kafka, third)

        total = 3 * CRASH_BATCH
        assert _wait_rows(postgres_dsn, prefix, total) == total
        assert "stream_job_resuming" in restarted.log_text()
        records, _, crossings = _expected(seen, depot)
        trips = [r for r in records if isinstance(r, Trip)]
        _wait_until(
            lambda: (
                _shape([r for r in _stored(postgres_dsn, van) if isinstance(r, Trip)])
                == _shape(trips)
            ),
            "the van's trip is stored",
        )
        time.sleep(3)
        rows = _query(
            postgres_dsn,
            "SELECT count(*), count(DISTINCT (device, fix_time)) FROM fixes "
            "WHERE device LIKE $1",
            prefix + "%",
        )
        assert tuple(rows[0]) == (total, total)
        newest = {fix.device: fix for fix in third}
        for device, fix in newest.items():
            assert _latest(stream_jobs.redis, device)["time"] == _iso(fix.fix_time_ms)

        assert len(trips) == 1
        assert _shape(_stored(postgres_dsn, van)) == _shape(records)
        assert [(e.type, e.time_ms) for e in crossings] == [
            ("geofenceEnter", crossings[0].time_ms),
            ("geofenceExit", crossings[1].time_ms),
        ]
        stored = [
            (e["type"], e["ms"])
            for e in _events(postgres_dsn, van)
            if e["type"].startswith("geofence")
        ]
        assert stored == [(e.type, e.time_ms) for e in crossings]
        published = [
            (e.type, e.event_time_ms)
            for e in _published(stream_jobs.kafka, van)
            if e.type.startswith("geofence")
        ]
        assert published == stored


def _wait_checkpoint(checkpoints: Path, *, after: float) -> None:
    """Wait for a checkpoint completed after ``after`` (a ``time.time()``)."""
    deadline = time.monotonic() + 60
    while True:
        newest = latest_checkpoint(checkpoints)
        if newest is not None and (newest / "_metadata").stat().st_mtime > after:
            return
        assert time.monotonic() < deadline, "no checkpoint completed in 60 s"
        time.sleep(0.5)
