"""Benchmark: the tracker server's memory per idle connection, and fixes per second.

Run (about two minutes; needs Debian's PostgreSQL and Redis, and the Kafka jars)::

    .venv/bin/python -m tests.benchmarks.trackers --connections 10000 --devices 1000

It starts PostgreSQL, Redis and a Kafka broker in a temporary folder, registers the
devices, then runs the tracker server (Teltonika port only, the rate limiter on
Redis, the directory on PostgreSQL, ``acks=all`` to Kafka) in a child process of its
own, so that the child's resident memory is the server's alone.  This process plays
the devices over loopback TCP.

1. **Memory.**  RSS of the server (``VmRSS`` of ``/proc/PID/status``) once 200
   devices connected, logged in and left (warm-up), then again once
   ``--connections`` devices are connected, logged in (Teltonika IMEI handshake,
   each answered ``01``) and idle.  Reported: the difference divided by the count.
2. **Throughput.**  ``--devices`` devices connect and log in; each then sends a
   Teltonika data packet, waits for its acknowledgement (sent by the server only
   once Kafka acknowledged the records), and sends the next, for ``--seconds``
   after a warm-up.  Reported: acknowledged records per second, with one-record
   packets (live tracking) and six-record packets (a device emptying its buffer),
   and the server process's CPU use meanwhile.

Everything shares the machine's cores: the device simulator and Kafka take CPU
from the server, so the figures are a floor for the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pipeline.kafka import ensure_topics
from pipeline.ports import free_port
from pipeline.services.kafka import EmbeddedKafka
from pipeline.services.postgres import SystemPostgres, run_coroutine
from pipeline.services.redis import SystemRedis
from pipeline.store.migrations import migrate

# Teltonika packets from /work/shared/protocols/samples.json (Traccar's decoder
# tests, commit 9e5c458): one record, and six records.
ONE_RECORD = bytes.fromhex(
    "000000000000004c08010000016818d500580009c28d9f1cb3757a00be00c60f0053000f06f0"
    "011503c80001011d00fc0007423799180053cdf80dce426f430f88190bb8560bb802f100005a"
    "a110002887e000010000ee8d"
)
SIX_RECORDS = bytes.fromhex(
    "000000000000014708060000013e5a60a4cb003fa7b780fc424518004200000a00000009050101"
    "0200b300b400f000034268a746011818000001c700000000000000013e5dc8ba28003fa7c080fc"
    "4246040001000005000000090501010200b300b400f001034268b44600ef18000001c700000000"
    "000000013e5dc90455003fa7b640fc424388003a0000070000f0090501010200b300b400f00003"
    "4268dc4600f718000001c70000001d000000013e5dc9d368003fa7b800fc424430004900000400"
    "0000090501010200b300b400f001034267de46010718000001c700000000000000013e5dca311d"
    "003fa7b680fc4243cc00420000070000f0090501010200b300b400f0000342685346010b180000"
    "01c700000000000000013e5dcfafe9003fa7b600fc4242f0003d000008000000090501010200b3"
    "00b400f0000342685246011918000001c700000000000600000275"
)
CONNECT_AT_ONCE = 200

# The server process's PostgreSQL and Redis addresses (they may hold passwords).
_POSTGRES_ENV = "RASTRO_BENCH_POSTGRES"
_REDIS_ENV = "RASTRO_BENCH_REDIS"


@dataclass(frozen=True)
class Services:
    """Where the benchmark's services listen."""

    kafka: str
    postgres: str
    redis: str


def imei(number: int) -> str:
    """The 15-digit IMEI of simulated device ``number``."""
    return f"35{number:013d}"


def login(number: int) -> bytes:
    """The Teltonika IMEI handshake of device ``number``."""
    text = imei(number).encode()
    return len(text).to_bytes(2, "big") + text


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from ``/proc/PID/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_services(folder: Path, devices: int) -> Iterator[Services]:
    """PostgreSQL (devices registered), Redis and Kafka (topics made) in ``folder``."""
    postgres = SystemPostgres(folder / "postgres", port=free_port(), durable=False)
    redis = SystemRedis(folder / "redis", port=free_port())
    kafka = EmbeddedKafka(folder / "kafka", port=free_port(), heap="1g")
    started: list[SystemPostgres | SystemRedis | EmbeddedKafka] = []
    try:
        for service in (postgres, redis, kafka):
            service.start()
            started.append(service)
        dsn = postgres.create_database("bench")
        run_coroutine(lambda: _prepare_database(dsn, devices))
        ensure_topics(kafka.bootstrap_servers, {"positions": 8, "events": 8})
        yield Services(kafka.bootstrap_servers, dsn, redis.url)
    finally:
        for service in reversed(started):
            service.stop()


async def _prepare_database(dsn: str, devices: int) -> None:
    await migrate(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO users (name, password_hash) VALUES ('bench', 'x')"
        )
        await connection.execute(
            "INSERT INTO devices (unique_id, name, owner_id)"
            " SELECT '35' || lpad(n::text, 13, '0'), 'bench', users.id"
            " FROM generate_series(0, $1 - 1) AS n, users WHERE users.name = 'bench'",
            devices,
        )
    finally:
        await connection.close()


# -- the server, in its own process ----------------------------------------------


async def serve(services: Services, port: int) -> None:
    """Run the tracker server (Teltonika only) until stdin closes."""
    from pipeline.ingest.directory import DeviceDirectory
    from pipeline.ingest.limiter import DeviceRateLimiter
    from pipeline.ingest.service import IngestService
    from pipeline.ingest.trackers import TrackerServer
    from pipeline.kafka import DurableProducer
    from pipeline.logs import configure_logging

    configure_logging("WARNING")
    pool = await asyncpg.create_pool(services.postgres, min_size=1, max_size=10)
    limiter = DeviceRateLimiter(services.redis)
    async with DurableProducer(services.kafka) as producer:
        ingest = IngestService(producer, DeviceDirectory(pool), limiter)
        server = TrackerServer(ingest)
        await server.start("127.0.0.1", {"teltonika": port})
        print("ready", flush=True)  # the parent waits for it
        await asyncio.to_thread(sys.stdin.read)
        await server.stop()
        print(dict(server.counters), file=sys.stderr, flush=True)
    await limiter.close()
    await pool.close()


@contextlib.contextmanager
def server_process(services: Services, port: int) -> Iterator[subprocess.Popen[str]]:
    """The server in a child process, ready when this yields."""
    profile = os.environ.get("RASTRO_BENCH_PROFILE")  # cProfile output of the server
    argv = [
        sys.executable,
        *(["-m", "cProfile", "-o", profile] if profile else []),
        "-m",
        "tests.benchmarks.trackers",
        "serve",
        "--kafka",
        services.kafka,
        "--port",
        str(port),
    ]
    # Addresses that may hold a password go through the environment, not argv.
    secrets = {_POSTGRES_ENV: services.postgres, _REDIS_ENV: services.redis}
    child = subprocess.Popen(
        argv,
        env={**os.environ, **secrets},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the tracker server did not start")
        yield child
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=60)


# -- the devices ------------------------------------------------------------------


async def connect_device(
    port: int, number: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A device connected and logged in (its ``01`` received)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(login(number))
    if await reader.readexactly(1) != b"\x01":
        raise RuntimeError(f"device {imei(number)} was refused")
    return reader, writer


async def connect_many(
    port: int, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` devices, connected a batch at a time (the listen backlog)."""
    links = []
    for start in range(0, count, CONNECT_AT_ONCE):
        batch = range(start, min(start + CONNECT_AT_ONCE, count))
        links += await asyncio.gather(*(connect_device(port, n) for n in batch))
    return links


async def close_all(
    links: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    for _, writer in links:
        writer.close()
    await asyncio.sleep(1)


async def measure_memory(pid: int, port: int, connections: int) -> dict[str, float]:
    """RSS before and after ``connections`` logged-in idle devices."""
    await close_all(await connect_many(port, CONNECT_AT_ONCE))  # warm-up
    before = rss_bytes(pid)
    links = await connect_many(port, connections)
    await asyncio.sleep(2)
    after = rss_bytes(pid)
    await close_all(links)
    return {
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
        "bytes_per_connection": (after - before) / connections,
    }


async def measure_throughput(
    pid: int, port: int, devices: int, packet: bytes, records: int, seconds: float
) -> dict[str, float]:
    """Acknowledged records per second with ``devices`` devices sending ``packet``."""
    links = await connect_many(port, devices)
    acked = [0]
    counting = asyncio.Event()
    stop = asyncio.Event()

    async def device(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while not stop.is_set():
            writer.write(packet)
            ack = await reader.readexactly(4)
            if int.from_bytes(ack, "big") != records:
                raise RuntimeError(f"unexpected acknowledgement {ack.hex()}")
            if counting.is_set():
                acked[0] += records

    tasks = [asyncio.create_task(device(r, w)) for r, w in links]
    await asyncio.sleep(3)  # warm-up: connections, caches, Kafka batches
    counting.set()
    started, cpu_started = time.monotonic(), cpu_seconds(pid)
    own_started = time.process_time()
    await asyncio.sleep(seconds)
    elapsed, cpu = time.monotonic() - started, cpu_seconds(pid) - cpu_started
    own = time.process_time() - own_started
    total = acked[0]
    stop.set()
    await asyncio.wait(tasks, timeout=15)
    for task in tasks:
        task.cancel()
    await close_all(links)
    return {
        "records_per_s": total / elapsed,
        "packets_per_s": total / records / elapsed,
        "server_cpu_share": cpu / elapsed,
        "devices_cpu_share": own / elapsed,
    }


async def run_devices(pid: int, port: int, args: argparse.Namespace) -> None:
    if not args.skip_memory:
        memory = await measure_memory(pid, port, args.connections)
        print(
            f"idle connections: {args.connections}, RSS "
            f"{memory['rss_before_mib']:.1f} -> {memory['rss_after_mib']:.1f} MiB, "
            f"{memory['bytes_per_connection'] / 1024:.1f} KiB per connection"
        )
    for packet, records in ((ONE_RECORD, 1), (SIX_RECORDS, 6)):
        figures = await measure_throughput(
            pid, port, args.devices, packet, records, args.seconds
        )
        print(
            f"{args.devices} devices, {records}-record packets: "
            f"{figures['records_per_s']:.0f} fixes/s acknowledged "
            f"({figures['packets_per_s']:.0f} packets/s), "
            f"server CPU {figures['server_cpu_share'] * 100:.0f}% of one core, "
            f"device simulator {figures['devices_cpu_share'] * 100:.0f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    child = commands.add_parser("serve", help="(internal) the server process")
    child.add_argument("--kafka", required=True)
    child.add_argument("--postgres", default=os.environ.get(_POSTGRES_ENV))
    child.add_argument("--redis", default=os.environ.get(_REDIS_ENV))
    child.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--skip-memory", action="store_true", help="measure the throughput only"
    )
    args = parser.parse_args()

    limit = raise_fd_limit()
    if args.command == "serve":
        services = Services(args.kafka, args.postgres, args.redis)
        asyncio.run(serve(services, args.port))
        return

    if args.connections + 100 > limit:
        parser.error(f"--connections must stay below the open-file limit {limit}")
    folder = Path(tempfile.mkdtemp(prefix="rastro-bench-trackers-"))
    try:
        wanted = max(args.connections, args.devices)
        with running_services(folder, wanted) as services:
            port = free_port()
            with server_process(services, port) as server:
                asyncio.run(run_devices(server.pid, port, args))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
