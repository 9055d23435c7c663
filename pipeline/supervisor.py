"""Start every Rastro tier in order, keep it running, and stop it cleanly.

``rastro serve`` and ``rastro demo`` land here.  A service whose address is not given
is started embedded, with its data under the data folder; a given address is used as
it is.  Order matters: the stores and Kafka come first, then the schema and topics,
then the streaming job, the API with its ingest ports, the dashboard and, for the demo,
the simulator.  Everything started is stopped in the reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from pipeline.config import Settings, load_settings, parse_networks
from pipeline.logs import configure_logging
from pipeline.ports import ensure_port_free, ensure_udp_port_free, free_port

log = structlog.get_logger("rastro.supervisor")

_S = TypeVar("_S", bound="Service")

#: How long the streaming job may take to start (the first run downloads jars).
STREAM_JOB_READY_TIMEOUT_S = 600.0


class Service(Protocol):
    """What the embedded service classes in :mod:`pipeline.services` share."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Addresses:
    """Where each backing service is, embedded or given."""

    kafka: str
    postgres: str
    redis: str
    mqtt: str
    mqtt_shared_subscriptions: bool


@dataclass
class ChildProcess:
    """A tier that runs as its own process (the streaming job, the dashboard)."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]
    #: Environment entries beyond the supervisor's own (addresses with secrets).
    extra_env: dict[str, str] = field(default_factory=dict, repr=False)
    restarts: int = 0


@dataclass
class RunningRastro:
    """Everything started, so it can be stopped in reverse order."""

    services: list[Service] = field(default_factory=list)
    processes: list[ChildProcess] = field(default_factory=list)

    def stop(self) -> None:
        """Stop child processes, then embedded services, newest first."""
        for child in reversed(self.processes):
            _stop_process(child.name, child.process)
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop()


def run_rastro(flags: Mapping[str, Any], *, devices: int) -> int:
    """Run Rastro until interrupted; ``devices`` > 0 also runs the simulator."""
    configure_logging()
    settings = load_settings(flags)
    started = time.monotonic()
    running = RunningRastro()
    try:
        _check_ports(settings)
        addresses = start_services(settings, running)
        asyncio.run(_serve(settings, addresses, running, devices, started))
    except KeyboardInterrupt:
        log.info("rastro_interrupted")
    finally:
        running.stop()
        log.info("rastro_stopped")
    return 0


def _check_ports(settings: Settings) -> None:
    wanted = ["http_port", "dashboard_port", "osmand_port"]
    if not settings.mqtt:
        wanted.append("mqtt_port")
    if not settings.kafka:
        wanted.append("kafka_port")
    trackers = tracker_ports(settings)
    wanted.extend(f"{name}_port" for name in trackers)
    if settings.detect_port:
        wanted.append("detect_port")
    for setting in wanted:
        ensure_port_free(setting, settings.bind, getattr(settings, setting))
    for name in _udp_protocols(trackers):
        ensure_udp_port_free(f"{name}_port", settings.bind, trackers[name])
    if settings.owntracks_port:
        ensure_port_free("owntracks_port", settings.bind, settings.owntracks_port)
    if settings.coap_port:
        ensure_udp_port_free("coap_port", settings.bind, settings.coap_port)


def tracker_ports(settings: Settings) -> dict[str, int]:
    """The port of each tracker protocol that is switched on (not 0)."""
    from pipeline.ingest.protocols import PROTOCOL_MODULES

    ports = {name: int(getattr(settings, f"{name}_port")) for name in PROTOCOL_MODULES}
    return {name: port for name, port in ports.items() if port}


def _udp_protocols(ports: dict[str, int]) -> list[str]:
    from pipeline.ingest.protocols import tracker_protocols

    protocols = tracker_protocols()
    return [name for name in ports if protocols[name].udp]


def start_services(settings: Settings, running: RunningRastro) -> Addresses:
    """Start the embedded services whose addresses were not given."""
    from pipeline.services.kafka import EmbeddedKafka
    from pipeline.services.mqtt import EmbeddedMqttBroker
    from pipeline.services.postgres import EmbeddedPostgres
    from pipeline.services.redis import EmbeddedRedis

    data = settings.data.resolve()
    data.mkdir(parents=True, exist_ok=True)

    postgres = settings.postgres
    if not postgres:
        embedded_pg = EmbeddedPostgres(data / "postgres", port=free_port())
        postgres = _started(running, "postgres", embedded_pg).dsn

    redis = settings.redis
    if not redis:
        embedded_redis = EmbeddedRedis(data / "redis", port=free_port())
        redis = _started(running, "redis", embedded_redis).url

    mqtt, shared = settings.mqtt, True
    if not mqtt:
        broker = EmbeddedMqttBroker(port=settings.mqtt_port, host=settings.bind)
        mqtt = _started(running, "mqtt", broker).url
        shared = broker.supports_shared_subscriptions

    kafka = settings.kafka
    if not kafka:
        embedded_kafka = EmbeddedKafka(data / "kafka", port=settings.kafka_port)
        kafka = _started(running, "kafka", embedded_kafka).bootstrap_servers

    return Addresses(kafka, postgres, redis, mqtt, shared)


def _started(running: RunningRastro, name: str, service: _S) -> _S:
    began = time.monotonic()
    service.start()
    running.services.append(service)
    log.info(
        "service_started", service=name, seconds=round(time.monotonic() - began, 2)
    )
    return service


async def _serve(
    settings: Settings,
    addresses: Addresses,
    running: RunningRastro,
    devices: int,
    started: float,
) -> None:
    import asyncpg
    import redis.asyncio as aioredis

    from pipeline.api.app import ApiContext, create_api, serve_api
    from pipeline.api.auth import ensure_admin
    from pipeline.ingest.directory import DeviceDirectory
    from pipeline.ingest.limiter import DeviceRateLimiter
    from pipeline.ingest.service import IngestService
    from pipeline.kafka import (
        EVENTS,
        LIVE,
        POSITIONS,
        DurableProducer,
        ensure_topics,
        tail_topic,
    )
    from pipeline.store.migrations import (
        ensure_partitions,
        migrate,
    )

    applied = await migrate(addresses.postgres)
    log.info("schema_ready", applied=applied)
    await ensure_partitions(addresses.postgres)
    partitions = settings.kafka_partitions
    topics = {POSITIONS: partitions, LIVE: partitions, EVENTS: partitions}
    await asyncio.to_thread(ensure_topics, addresses.kafka, topics)

    _spawn_stream_job(settings, addresses, running)
    api_url = f"http://{settings.bind}:{settings.http_port}"
    _spawn_dashboard(settings, api_url, running)

    shutdown = asyncio.Event()
    ready = asyncio.Event()
    _install_signal_handlers(shutdown)

    pool = await asyncpg.create_pool(addresses.postgres, min_size=1, max_size=10)
    redis = aioredis.Redis.from_url(addresses.redis)
    limiter = DeviceRateLimiter(addresses.redis, rate=settings.device_rate)
    try:
        generated = await ensure_admin(pool, settings.admin_password or None)
        async with DurableProducer(addresses.kafka) as producer:
            ingest = IngestService(producer, DeviceDirectory(pool), limiter)
            context = ApiContext(
                pool=pool,
                redis=redis,
                ingest=ingest,
                live_source=lambda: tail_topic(addresses.kafka, LIVE),
                events_source=lambda: tail_topic(addresses.kafka, EVENTS),
                ready=ready,
                webhook_allowed_networks=parse_networks(
                    settings.webhook_allowed_networks
                ),
            )
            api = create_api(context)
            async with (
                asyncio.TaskGroup() as tasks,
                contextlib.AsyncExitStack() as stack,
            ):
                for bridge in _mqtt_bridges(addresses, ingest):
                    await stack.enter_async_context(bridge)
                tasks.create_task(
                    serve_api(api, settings.bind, settings.http_port, shutdown)
                )
                _serve_device_ports(tasks, settings, ingest, shutdown)
                _run_background(tasks, settings, addresses, pool, running, shutdown)
                tasks.create_task(
                    _announce_when_ready(settings, generated, started, ready, shutdown)
                )
                if devices:
                    tasks.create_task(
                        _run_demo_simulator(pool, api_url, devices, shutdown)
                    )
                await shutdown.wait()
    finally:
        await limiter.close()
        await redis.aclose()
        await pool.close()


def _mqtt_bridges(addresses: Addresses, ingest: Any) -> list[Any]:
    """The MQTT bridges: ``gps/+/+`` positions and OwnTracks' own topics."""
    from pipeline.ingest.mqtt import MqttBridge
    from pipeline.ingest.owntracks import owntracks_bridge

    shared = addresses.mqtt_shared_subscriptions
    return [
        MqttBridge(addresses.mqtt, ingest, shared=shared),
        owntracks_bridge(addresses.mqtt, ingest, shared=shared),
    ]


def _serve_device_ports(
    tasks: asyncio.TaskGroup,
    settings: Settings,
    ingest: Any,
    shutdown: asyncio.Event,
) -> None:
    """Start every port devices report to: OsmAnd, OwnTracks, CoAP, trackers."""
    from pipeline.api.app import serve_api
    from pipeline.ingest.coap import serve_coap
    from pipeline.ingest.osmand import create_osmand_app
    from pipeline.ingest.owntracks import create_owntracks_app
    from pipeline.ingest.trackers import TrackerServer

    bind = settings.bind
    osmand = create_osmand_app(ingest)
    tasks.create_task(serve_api(osmand, bind, settings.osmand_port, shutdown))
    if settings.owntracks_port:
        owntracks = create_owntracks_app(ingest)
        tasks.create_task(serve_api(owntracks, bind, settings.owntracks_port, shutdown))
    if settings.coap_port:
        tasks.create_task(serve_coap(ingest, bind, settings.coap_port, shutdown))

    trackers = TrackerServer(
        ingest,
        register_unknown=settings.register_unknown,
        idle_timeout_s=settings.tracker_idle_timeout,
    )
    detect_port = settings.detect_port or None
    ports = tracker_ports(settings)
    tasks.create_task(trackers.serve(bind, ports, shutdown, detect_port=detect_port))


def _run_background(
    tasks: asyncio.TaskGroup,
    settings: Settings,
    addresses: Addresses,
    pool: Any,
    running: RunningRastro,
    shutdown: asyncio.Event,
) -> None:
    """Start the loops that keep things current: children, partitions, notifier, H3."""
    from pipeline.notify.service import run_notifier
    from pipeline.store.migrations import maintain_partitions

    notifier = run_notifier(
        addresses.kafka,
        pool,
        smtp_host=settings.smtp_host,
        smtp_port=settings.smtp_port,
        smtp_user=settings.smtp_user,
        smtp_password=settings.smtp_password,
        smtp_from=settings.smtp_from,
        smtp_starttls=settings.smtp_starttls,
        smtp_implicit_tls=settings.smtp_implicit_tls,
        webhook_allowed_networks=settings.webhook_allowed_networks,
    )
    tasks.create_task(_watch_children(running, shutdown))
    tasks.create_task(_until(shutdown, maintain_partitions(addresses.postgres)))
    tasks.create_task(_until(shutdown, notifier))
    tasks.create_task(_until(shutdown, _refresh_h3(settings, addresses)))


def _refresh_h3(settings: Settings, addresses: Addresses) -> Coroutine[Any, Any, None]:
    """The loop that keeps the hourly H3 aggregates current (late fixes included)."""
    from geo.cells import CellSettings
    from pipeline.store.aggregates import refresh_h3_forever

    return refresh_h3_forever(
        addresses.postgres,
        settings.h3_refresh_interval,
        CellSettings(resolution=settings.h3_resolution),
        coarsest=settings.h3_rollup_resolution,
    )


async def _until(shutdown: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run a background loop until shutdown, then cancel it."""
    task = asyncio.ensure_future(work)
    await shutdown.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _announce_when_ready(
    settings: Settings,
    generated: str | None,
    started: float,
    ready: asyncio.Event,
    shutdown: asyncio.Event,
) -> None:
    """Wait for the streaming job to run, then say where everything is.

    Until then fixes are accepted and kept in Kafka, but nothing reaches the map;
    ``/api/v1/health`` reports ``ready: false`` meanwhile.
    """
    from pipeline.stream.job import running_marker

    marker = running_marker(settings.data.resolve())
    deadline = time.monotonic() + STREAM_JOB_READY_TIMEOUT_S
    while not marker.exists() and not shutdown.is_set():
        if time.monotonic() > deadline:
            log.error(
                "stream_job_not_running",
                waited_s=STREAM_JOB_READY_TIMEOUT_S,
                log=str(settings.data.resolve() / "logs" / "stream-job.log"),
            )
            break
        await asyncio.sleep(0.25)
    if shutdown.is_set():
        return
    ready.set()
    _announce(settings, generated, started)


def _announce(settings: Settings, generated: str | None, started: float) -> None:
    dashboard = f"http://{settings.bind}:{settings.dashboard_port}/"
    seconds = round(time.monotonic() - started, 1)
    log.info("rastro_ready", dashboard=dashboard, seconds=seconds)
    lines = [
        "",
        f"  Rastro is running (started in {seconds} s).",
        f"  Dashboard: {dashboard}",
        f"  API:       http://{settings.bind}:{settings.http_port}/api/v1/",
        f"  OsmAnd:    {settings.bind}:{settings.osmand_port}",
    ]
    if settings.detect_port:
        lines.append(
            f"  Trackers:  {settings.bind}:{settings.detect_port} (any protocol; "
            "one port per protocol as in the README)"
        )
    if generated:
        lines.append(f"  Login:     admin / {generated}   (shown once; keep it)")
    else:
        lines.append(
            "  Login:     admin / the password you set (RASTRO_ADMIN_PASSWORD)"
        )
    # The one place the password is shown: the terminal of whoever started Rastro.
    print("\n".join(lines) + "\n", flush=True)  # noqa: T201


async def _run_demo_simulator(
    pool: Any, api_url: str, devices: int, shutdown: asyncio.Event
) -> None:
    from pipeline.api.auth import issue_token_for_admin
    from pipeline.simulate import run_simulation

    token = await issue_token_for_admin(pool)
    simulation = asyncio.create_task(
        run_simulation(
            devices=devices, via="http", server=api_url, token=token, register=True
        )
    )
    await shutdown.wait()
    simulation.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await simulation


def _install_signal_handlers(shutdown: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, shutdown.set)


def _spawn_stream_job(
    settings: Settings, addresses: Addresses, running: RunningRastro
) -> None:
    from pipeline.stream.job import job_command, job_environment, running_marker

    running_marker(settings.data.resolve()).unlink(missing_ok=True)
    argv = job_command(settings, addresses.kafka)
    secrets = job_environment(addresses.postgres, addresses.redis)
    _spawn(running, "stream-job", argv, settings.data.resolve() / "logs", secrets)


def _spawn_dashboard(settings: Settings, api_url: str, running: RunningRastro) -> None:
    from apps.server import dashboard_command

    argv = dashboard_command(
        port=settings.dashboard_port,
        bind=settings.bind,
        api_url=api_url,
        map_style=settings.map_style or None,
    )
    _spawn(running, "dashboard", argv, settings.data.resolve() / "logs")


def _spawn(
    running: RunningRastro,
    name: str,
    argv: list[str],
    logs: Path,
    extra_env: dict[str, str] | None = None,
) -> None:
    """Start a child tier; ``extra_env`` carries what must stay off its argv."""
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    env = extra_env or {}
    process = _popen(argv, log_path, env)
    running.processes.append(ChildProcess(name, argv, log_path, process, extra_env=env))
    log.info("process_started", process=name, pid=process.pid, log=str(log_path))


def _popen(
    argv: list[str], log_path: Path, extra_env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_child_env() | extra_env,
            start_new_session=True,
        )


async def _watch_children(running: RunningRastro, shutdown: asyncio.Event) -> None:
    """Restart a child tier that died, with a growing pause, until shutdown."""
    while not shutdown.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shutdown.wait(), timeout=2.0)
        if shutdown.is_set():
            return

        for child in running.processes:
            code = child.process.poll()
            if code is None:
                continue
            child.restarts += 1
            pause = min(60.0, 2.0**child.restarts)
            log.error(
                "process_exited",
                process=child.name,
                exit_code=code,
                log=str(child.log_path),
                restart_in_s=pause,
            )
            await asyncio.sleep(pause)
            child.process = _popen(child.argv, child.log_path, child.extra_env)
            log.info("process_restarted", process=child.name, pid=child.process.pid)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _stop_process(name: str, process: subprocess.Popen[bytes]) -> None:
    """Ask the child to stop, then clear whatever is left of its process group.

    The leader is signalled alone first: the streaming job cancels its Flink job
    through the JVM it started, which must still be alive to hear it.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            log.warning("process_killed", process=name, pid=process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # The group outlives its leader when a grandchild (a JVM) is still running.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
