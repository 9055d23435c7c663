"""Benchmark: fixes per second through the whole streaming job, and what they cost.

Run it on an otherwise idle machine (it starts its own services)::

    .venv/bin/python -m tests.benchmarks.stream_job --fixes 200000 --devices 1000

1. **Services.** Debian's PostgreSQL, Redis and a Kafka broker in a temporary
   folder; the schema migrated; ``--devices`` devices registered in one group, with
   ``--geofences`` geofences (random polygons, circles and corridors over Munich,
   the geo tests' ``city_fences``) assigned to the group, so that every fix is
   tested against all of them.
2. **Input.** ``--fixes`` protobuf fixes on the ``positions`` topic (8 partitions)
   *before* the job starts: each device drives 10 minutes at 40 km/h and parks 5
   minutes with GPS jitter, one fix every 5 s, in the past.
3. **Throughput.** For each ``--parallelism``, a fresh database and data folder,
   then ``python -m pipeline.stream.job --from-beginning``: the rate is the number
   of history rows over the time from the first row to the last (the device
   operator emits a fix's history row and then runs the steppers on it before it
   takes the next fix, so the history rate is the operator's rate).
4. **Latency.** With the last job still running: a device reports ignition on; the
   time from Kafka acknowledging that fix to its ``ignitionOn`` event arriving on
   the ``events`` topic, repeated ``--latency-samples`` times.  The fix waits in
   the ordering buffer for the job's lateness (``--lateness``), by design.
5. **Cost per fix in Python**, in this process: decoding and checking a record
   (``accept``), the device operator's logic (dedupe verdict, the steppers, state
   freeze and pickle) with 10 and with ``--geofences`` geofences, compared with
   the per-fix time the job achieved at parallelism 1.

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from confluent_kafka import Consumer, Producer, TopicPartition

from geo.fixes import FixPoint
from geo.geofences import Geofence, GeofenceIndex, to_geojson
from pipeline.kafka import EVENTS, ensure_topics, fix_time_headers
from pipeline.model import Fix
from pipeline.notify.messages import decode_event
from pipeline.ports import free_port
from pipeline.services.kafka import EmbeddedKafka
from pipeline.services.postgres import SystemPostgres, run_coroutine
from pipeline.services.redis import SystemRedis
from pipeline.store.migrations import migrate
from pipeline.stream.job import POSITIONS_TOPIC, job_environment
from pipeline.stream.motion import DeviceMotion, MotionState, Outputs
from pipeline.stream.profiles import DeviceProfile
from pipeline.stream.records import accept, judge, position_signature
from pipeline.stream.snapshot import freeze
from tests.test_geo_geofences import city_fences, destination

PARTITIONS = 8
STEP_S = 5
START_TIMEOUT_S = 180.0


@dataclass
class Services:
    postgres: SystemPostgres
    kafka: str
    redis: str


@contextmanager
def running_services(folder: Path) -> Iterator[Services]:
    postgres = SystemPostgres(folder / "postgres", port=free_port(), durable=False)
    redis = SystemRedis(folder / "redis", port=free_port())
    kafka = EmbeddedKafka(folder / "kafka", port=free_port(), heap="1g")
    started: list[Any] = []
    try:
        for service in (postgres, redis, kafka):
            service.start()
            started.append(service)
        ensure_topics(
            kafka.bootstrap_servers,
            {POSITIONS_TOPIC: PARTITIONS, "live": PARTITIONS, EVENTS: PARTITIONS},
        )
        yield Services(postgres, kafka.bootstrap_servers, redis.url)
    finally:
        for service in reversed(started):
            service.stop()


def device_id(number: int) -> str:
    return f"bench-{number:05d}"


def track(number: int, count: int, start_ms: int) -> list[FixPoint]:
    """One device: drive 10 min at 40 km/h, park 5 min with jitter, repeat."""
    rng = random.Random(number)
    lat, lon = rng.uniform(48.08, 48.22), rng.uniform(11.4, 11.7)
    heading = rng.uniform(0, 360)
    fixes = []
    for step in range(count):
        moving = (step * STEP_S) % 900 < 600
        speed = 40.0 if moving else rng.uniform(0.0, 2.0)
        if moving:
            lat, lon = destination(lat, lon, heading, 40 / 3.6 * STEP_S)
            heading = (heading + rng.uniform(-20, 20)) % 360
        jitter = 0.0 if moving else rng.uniform(-4e-5, 4e-5)
        time_ms = start_ms + step * STEP_S * 1000
        fixes.append(
            FixPoint(
                device_id(number),
                time_ms,
                lat + jitter,
                lon + jitter,
                speed_kmh=speed,
                server_time_ms=time_ms + 1_000,
                attributes={"ignition": moving},
            )
        )
    return fixes


def payload(fix: FixPoint) -> bytes:
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
    return proto.SerializeToString()


def fleet_fixes(devices: int, fixes: int) -> list[FixPoint]:
    """The whole input in arrival order: devices interleaved, each in fix order."""
    per_device = max(1, fixes // devices)
    start_ms = int(time.time() * 1000) - (per_device + 60) * STEP_S * 1000
    tracks = [track(n, per_device, start_ms) for n in range(devices)]
    return [t[i] for i in range(per_device) for t in tracks]


def produce(bootstrap: str, fixes: Sequence[FixPoint]) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "compression.type": "zstd",
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 2_000_000,
        }
    )
    for fix in fixes:
        producer.produce(
            POSITIONS_TOPIC,
            key=fix.device.encode(),
            value=payload(fix),
            headers=fix_time_headers(fix.time_ms),  # as ingest does
        )
        producer.poll(0)
    producer.flush(120)


async def prepare(dsn: str, devices: int, fences: Sequence[Geofence]) -> None:
    """Schema, one owner, the devices in one group, the geofences on the group."""
    await migrate(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        owner = await connection.fetchval(
            "INSERT INTO users (name, password_hash) VALUES ('bench', 'x') RETURNING id"
        )
        group = await connection.fetchval(
            "INSERT INTO device_groups (owner_id, name) VALUES ($1, 'fleet')"
            " RETURNING id",
            owner,
        )
        await connection.executemany(
            "INSERT INTO devices (unique_id, name, owner_id, group_id)"
            " VALUES ($1, $1, $2, $3)",
            [(device_id(n), owner, group) for n in range(devices)],
        )
        rows = [_geofence_row(fence, owner) for fence in fences]
        ids = [
            await connection.fetchval(
                "INSERT INTO geofences (owner_id, name, kind, geometry)"
                " VALUES ($1, $2, $3, $4::jsonb) RETURNING id",
                *row,
            )
            for row in rows
        ]
        await connection.executemany(
            "INSERT INTO geofence_assignments (geofence_id, group_id) VALUES ($1, $2)",
            [(i, group) for i in ids],
        )
    finally:
        await connection.close()


def _geofence_row(fence: Geofence, owner: int) -> tuple[Any, ...]:
    feature = to_geojson(fence)
    geometry = feature["geometry"]
    kind = {"Point": "circle", "LineString": "corridor"}.get(
        geometry["type"], "polygon"
    )
    extra = {k: v for k, v in feature["properties"].items() if k in ("radius", "width")}
    stored = {"type": "Feature", "geometry": geometry, "properties": extra}
    return owner, fence.name, kind, json.dumps(stored)


def start_job(
    services: Services, dsn: str, data: Path, parallelism: int, lateness: float
) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True, exist_ok=True)
    log = (data / "job.log").open("wb")
    argv = [
        sys.executable,
        "-m",
        "pipeline.stream.job",
        "--kafka",
        services.kafka,
        "--data",
        str(data),
        "--parallelism",
        str(parallelism),
        "--lateness",
        str(lateness),
        "--checkpoint-interval",
        "10",
        "--from-beginning",
    ]
    process = subprocess.Popen(
        argv,
        env={**os.environ, **job_environment(dsn, services.redis)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while "stream_job_running" not in (data / "job.log").read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the job did not start:\n" + _tail(data / "job.log"))
        time.sleep(0.5)
    return process


def stop_job(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-40:])


def history_rows(dsn: str) -> int:
    async def count() -> int:
        connection = await asyncpg.connect(dsn)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM fixes"))
        finally:
            await connection.close()

    return run_coroutine(count)


def measure_throughput(dsn: str, expected: int, timeout_s: float) -> dict[str, float]:
    """History rows per second from the first row to the last."""
    deadline = time.monotonic() + timeout_s
    first = last = None
    rows = 0
    while rows < expected and time.monotonic() < deadline:
        rows = history_rows(dsn)
        now = time.monotonic()
        if rows and first is None:
            first = (now, rows)
        last = (now, rows)
        time.sleep(0.5)
    if first is None or last is None or last[0] <= first[0]:
        return {"rows": rows, "fixes_per_s": 0.0}
    rate = (last[1] - first[1]) / (last[0] - first[0])
    return {"rows": rows, "seconds": round(last[0] - first[0], 1), "fixes_per_s": rate}


def measure_latency(services: Services, samples: int) -> dict[str, float]:
    """Kafka acknowledgement of an ignition-on fix -> its event on ``events``."""
    consumer = Consumer(
        {"bootstrap.servers": services.kafka, "group.id": f"bench-{uuid.uuid4().hex}"}
    )
    topic = consumer.list_topics(EVENTS, timeout=30).topics[EVENTS]
    assigned = []
    for partition in topic.partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(EVENTS, partition))
        assigned.append(TopicPartition(EVENTS, partition, high))
    consumer.assign(assigned)
    producer = Producer({"bootstrap.servers": services.kafka, "linger.ms": 0})
    delays = []
    try:
        for _ in range(samples):
            device = f"latency-{uuid.uuid4().hex[:8]}"
            now_ms = int(time.time() * 1000)
            fixes = [
                FixPoint(
                    device,
                    now_ms - 60_000,
                    48.1,
                    11.5,
                    speed_kmh=0.0,
                    server_time_ms=now_ms,
                    attributes={"ignition": False},
                ),
                FixPoint(
                    device,
                    now_ms - 1_000,
                    48.1,
                    11.5,
                    speed_kmh=0.0,
                    server_time_ms=now_ms,
                    attributes={"ignition": True},
                ),
            ]
            acked: list[float] = []
            for fix in fixes:
                producer.produce(
                    POSITIONS_TOPIC,
                    key=device.encode(),
                    value=payload(fix),
                    headers=fix_time_headers(fix.time_ms),
                    on_delivery=lambda error, _, acked=acked: acked.append(
                        time.monotonic()
                    ),
                )
            producer.flush(10)
            delays.append(_await_event(consumer, device, acked[-1]))
            time.sleep(0.2)
    finally:
        consumer.close()
    found = [d for d in delays if math.isfinite(d)]
    return {
        "samples": len(found),
        "median_s": round(statistics.median(found), 3) if found else math.nan,
        "max_s": round(max(found), 3) if found else math.nan,
    }


def _await_event(consumer: Consumer, device: str, acked: float) -> float:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for message in consumer.consume(100, 0.05):
            if message.error() is not None or message.key() != device.encode():
                continue
            if decode_event(message.value() or b"").type == "ignitionOn":
                return time.monotonic() - acked
    return math.inf


class _Fleet:
    def __init__(self, index: GeofenceIndex, profile: DeviceProfile) -> None:
        self.index = index
        self._profile = profile

    def profile(self, device: str) -> DeviceProfile:
        return self._profile


class _NoHistory:
    def records(self, *_: Any) -> list[Any]:
        return []

    def last_stop_start(self, *_: Any) -> None:
        return None

    def fixes(self, *_: Any) -> list[Any]:
        return []

    def last_accepted(self, *_: Any) -> None:
        return None


def python_cost(fixes: Sequence[FixPoint], fence_count: int) -> dict[str, float]:
    """Microseconds per fix of the job's Python work, measured in this process."""
    payloads = [payload(fix) for fix in fixes]
    started = time.perf_counter()
    accepted = [accept(p, 9) for p in payloads]
    accept_us = (time.perf_counter() - started) / len(payloads) * 1e6

    index = GeofenceIndex(city_fences(fence_count))
    profile = DeviceProfile(geofences=frozenset(index))
    motion = DeviceMotion(_Fleet(index, profile), _NoHistory(), 2_000)
    states: dict[str, MotionState] = {}
    stored: dict[str, bytes] = {}
    started = time.perf_counter()
    wall = 0
    for fix in accepted:
        assert not isinstance(fix, str)
        row = fix.as_tuple()
        wall += 1
        judge(
            row[1],
            position_signature(row[3], row[4]),
            seen_signature=None,
            latest_ms=None,
        )
        state = states.setdefault(row[0], MotionState())
        out = Outputs()
        motion.receive(state, row[:14], wall, out)
        motion.timers(state)
        stored[row[0]] = pickle.dumps(freeze(state))
    device_us = (time.perf_counter() - started) / len(accepted) * 1e6
    return {"accept_us": round(accept_us, 1), "device_operator_us": round(device_us, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixes", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--geofences", type=int, default=10)
    parser.add_argument("--many-geofences", type=int, default=10_000)
    parser.add_argument("--parallelism", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--lateness", type=float, default=2.0)
    parser.add_argument("--latency-samples", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()

    fixes = fleet_fixes(args.devices, args.fixes)
    report: dict[str, Any] = {
        "fixes": len(fixes),
        "devices": args.devices,
        "geofences": args.geofences,
        "lateness_s": args.lateness,
        "cpus": os.cpu_count(),
    }
    sample = fixes[: min(len(fixes), 50_000)]
    report["python_10_geofences"] = python_cost(sample, args.geofences)
    report["python_many_geofences"] = {
        "geofences": args.many_geofences,
        **python_cost(sample, args.many_geofences),
    }

    folder = Path(tempfile.mkdtemp(prefix="rastro-bench-stream-"))
    try:
        with running_services(folder) as services:
            produce(services.kafka, fixes)
            fences = city_fences(args.geofences)
            runs = []
            job = None
            for parallelism in args.parallelism:
                if job is not None:
                    stop_job(job)
                dsn = services.postgres.create_database(f"bench_p{parallelism}")
                run_coroutine(lambda dsn=dsn: prepare(dsn, args.devices, fences))
                job = start_job(
                    services,
                    dsn,
                    folder / f"job-p{parallelism}",
                    parallelism,
                    args.lateness,
                )
                result = measure_throughput(dsn, len(fixes), args.timeout)
                runs.append({"parallelism": parallelism, **result})
            report["throughput"] = runs
            report["latency"] = measure_latency(services, args.latency_samples)
            if job is not None:
                stop_job(job)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    at_one = [r for r in report["throughput"] if r["parallelism"] == 1]
    if at_one and at_one[0]["fixes_per_s"]:
        job_us = 1e6 / at_one[0]["fixes_per_s"]
        python_us = sum(report["python_10_geofences"].values())
        report["job_us_per_fix_p1"] = round(job_us, 1)
        report["python_share_p1"] = round(python_us / job_us, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
