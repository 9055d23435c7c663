"""The whole streaming job on the local mini-cluster, against real Kafka, PG, Redis.

One job serves the first class (the mini-cluster takes 10-20 s to start); the crash
test runs its own two jobs.  Every test uses device ids unique to the run, because
the session's Kafka topics and Redis are shared.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from geo.fixes import h3_cell, h3_hex
from pipeline.model import Fix
from pipeline.services.postgres import SystemPostgres, run_coroutine
from pipeline.stream.job import LIVE_TOPIC, POSITIONS_TOPIC, latest_checkpoint
from pipeline.stream.latest import LATEST_KEY
from tests.fixtures.flink import StreamJobs

pytestmark = [pytest.mark.integration, pytest.mark.flink, pytest.mark.timeout(600)]

WAIT_S = 150.0
DAY_MS = 86_400_000


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


def _produce(bootstrap: str, payloads: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in payloads:
        producer.produce(POSITIONS_TOPIC, key=key.encode(), value=value)
    assert producer.flush(30) == 0


def _send(bootstrap: str, fixes: list[Fix]) -> None:
    _produce(bootstrap, [(fix.device, fix.SerializeToString()) for fix in fixes])


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
        raw = client.hget(LATEST_KEY, device)
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
        jobs.start(dsn, data)
        yield _feed(dsn, stream_topics, redis_url)
    finally:
        jobs.stop_all()
        shutil.rmtree(data, ignore_errors=True)
        postgres_server.drop_database(database)


def _feed(dsn: str, kafka: str, redis_url: str) -> Scenario:
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
    times = {
        truck: [base + step * 1000 for step in range(10)],
        van: [base + step * 1000 for step in range(3)],
    }
    return Scenario(dsn, kafka, redis_url, prefix, times)


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
        _wait_rows(scenario.dsn, scenario.prefix, 13)

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
        _wait_rows(scenario.dsn, scenario.prefix, 13)

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
        fixes = _live(scenario.kafka, scenario.prefix, 13)

        published = sorted((fix.device, fix.fix_time_ms) for fix in fixes)
        wanted = sorted((d, t) for d, times in scenario.times.items() for t in times)
        assert published == wanted
        assert all(fix.h3 == h3_cell(fix.latitude, fix.longitude, 9) for fix in fixes)

    def test_stream_job_old_fix_keeps_latest(self, scenario: Scenario) -> None:
        """An out-of-order fix joins the history but does not move the latest."""
        truck = scenario.prefix + "truck"
        _wait_rows(scenario.dsn, scenario.prefix, 13)
        older = scenario.times[truck][0] - 60_000

        _send(scenario.kafka, [_fix(truck, older, 30)])

        assert _wait_rows(scenario.dsn, scenario.prefix, 14) == 14
        assert _latest(scenario.redis, truck)["time"] == _iso(scenario.times[truck][-1])


def _iso(epoch_ms: int) -> str:
    from pipeline.model import format_time_ms

    return format_time_ms(epoch_ms)


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


class TestStreamJobCrash:
    def test_stream_job_crash_loses_and_repeats_nothing(
        self, stream_jobs: StreamJobs, postgres_dsn: str, tmp_path: Path
    ) -> None:
        """SIGKILL mid-stream, restart: every valid fix is in the history once."""
        prefix = f"crash-{uuid.uuid4().hex[:8]}-"
        first, second, third = (
            _batch(prefix, n * CRASH_BATCH, CRASH_BATCH) for n in range(3)
        )
        data = tmp_path / "data"

        job = stream_jobs.start(postgres_dsn, data)
        _send(stream_jobs.kafka, first)
        assert _wait_rows(postgres_dsn, prefix, CRASH_BATCH) == CRASH_BATCH
        _wait_checkpoint(data / "checkpoints", after=time.time())
        _send(stream_jobs.kafka, second + random.sample(first, 100))
        job.kill()

        restarted = stream_jobs.start(postgres_dsn, data)
        _send(stream_jobs.kafka, third)

        total = 3 * CRASH_BATCH
        assert _wait_rows(postgres_dsn, prefix, total) == total
        assert "stream_job_resuming" in restarted.log_text()
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


def _wait_checkpoint(checkpoints: Path, *, after: float) -> None:
    """Wait for a checkpoint completed after ``after`` (a ``time.time()``)."""
    deadline = time.monotonic() + 60
    while True:
        newest = latest_checkpoint(checkpoints)
        if newest is not None and (newest / "_metadata").stat().st_mtime > after:
            return
        assert time.monotonic() < deadline, "no checkpoint completed in 60 s"
        time.sleep(0.5)
