"""The streaming job: ``positions`` -> checked, indexed fixes -> stores and ``live``.

Source, watermarks, per-device state, sinks::

    Kafka positions (raw protobuf, group rastro-stream; key = device,
                     record time = fix time, both set by ingest)
      -> watermarks on record time, bounded out-of-orderness   (JVM, per partition)
      -> key by record key                                     (JVM)
      -> DeviceState: decode, validity rules, H3 cell, drop repeats, latest to
         Redis, then the steppers                              (Python, thread mode)
      -> JDBC upsert into fixes (batched, idempotent on (device, fix_time))
      -> Kafka live (protobuf with h3 set, key = device)

Checkpoints (hashmap state, under the data folder) commit the Kafka offsets; a
restarted process resumes from the newest retained checkpoint, or from the group's
committed offsets when there is none.  Every sink is idempotent or at-least-once, so
a replay after a crash writes no history row twice and never moves Redis back.

Run ``python -m pipeline.stream.job --kafka HOST:PORT --postgres DSN --redis URL``;
with ``--flink HOST:PORT`` the job goes to that JobManager instead of a local
mini-cluster, and ``--motion-settings JSON`` gives every device the fleet's
settings under its group's and its own (:mod:`pipeline.stream.profiles`).  Once
Flink reports the job RUNNING the process logs ``stream_job_running`` and writes
:func:`running_marker` under the data folder, then blocks until the job ends or the
process is told to stop.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import structlog

from pipeline.config import (
    SettingError,
    Settings,
    parse_motion_settings,
    redact_url,
)
from pipeline.logs import configure_logging

__all__ = [
    "CONSUMER_GROUP",
    "LIVE_TOPIC",
    "POSITIONS_TOPIC",
    "JobOptions",
    "jdbc_target",
    "job_command",
    "latest_checkpoint",
    "main",
    "running_marker",
    "stream_addresses",
    "write_password_file",
]

log = structlog.get_logger("rastro.stream")

POSITIONS_TOPIC = "positions"
LIVE_TOPIC = "live"
CONSUMER_GROUP = "rastro-stream"
JOB_NAME = "rastro-stream"

#: How long a submitted job may take to have its tasks scheduled.
RUNNING_TIMEOUT_S = 300.0
_ENDED = frozenset({"FAILED", "CANCELED", "FINISHED", "SUSPENDED"})


@dataclass(frozen=True)
class JobOptions:
    """Everything the job needs, from the command line or the supervisor."""

    kafka: str
    postgres: str
    redis: str
    data: Path
    flink: str = ""
    h3_resolution: int = 9
    parallelism: int = 1
    checkpoint_interval: int = 10
    lateness: float = 10.0
    motion_settings: str = ""
    from_beginning: bool = False


#: Environment variables that carry the addresses which may hold a password.
#: A command line is visible to every user of the host (``ps``); the
#: environment of a process only to its owner.
POSTGRES_ENV = "RASTRO_STREAM_POSTGRES"
REDIS_ENV = "RASTRO_STREAM_REDIS"


def job_command(settings: Settings, kafka: str) -> list[str]:
    """The argv the supervisor spawns to run the job, with no secret in it.

    PostgreSQL and Redis addresses go through :func:`job_environment`.
    """
    argv = [
        sys.executable,
        "-m",
        "pipeline.stream.job",
        "--kafka",
        kafka,
        "--data",
        str(settings.data.resolve()),
        "--h3-resolution",
        str(settings.h3_resolution),
        "--checkpoint-interval",
        str(settings.checkpoint_interval),
        "--lateness",
        str(settings.lateness),
    ]
    if settings.motion_settings:
        argv += ["--motion-settings", settings.motion_settings]
    if settings.flink:
        argv += ["--flink", settings.flink]
    return argv


def job_environment(postgres: str, redis: str) -> dict[str, str]:
    """The environment entries that give the job its PostgreSQL and Redis."""
    return {POSTGRES_ENV: postgres, REDIS_ENV: redis}


@dataclass(frozen=True)
class JdbcTarget:
    """A PostgreSQL DSN split the way the JDBC connector wants it."""

    url: str
    username: str
    password: str
    host: str
    port: int
    database: str

    def password_line(self) -> str:
        """The line of a PostgreSQL password file (``.pgpass`` format) that gives
        the JDBC driver this login's password; ``:`` and ``\\`` are escaped.

        >>> jdbc_target("postgresql://fleet:p%3Aw@db.local:5433/rastro").password_line()
        'db.local:5433:rastro:fleet:p\\\\:w'
        """
        port = str(self.port)
        fields = [self.host, port, self.database, self.username, self.password]
        return ":".join(
            field.replace("\\", "\\\\").replace(":", "\\:") for field in fields
        )


def jdbc_target(dsn: str) -> JdbcTarget:
    """Turn ``postgresql://user:password@host:port/db`` into a JDBC URL and login.

    The URL names the user; the password stays out of it (see
    :func:`write_password_file`).  ``stringtype=unspecified`` lets PostgreSQL cast
    the attributes text to jsonb.
    The JDBC driver speaks TCP only, so a DSN without a host (a Unix socket) is
    refused with a :class:`SettingError`.
    """
    parts = urlsplit(dsn)
    if parts.scheme not in {"postgresql", "postgres"}:
        message = f"postgres must be a postgresql:// URL, got {redact_url(dsn)!r}"
        raise SettingError(message)
    query = parse_qs(parts.query)
    if not parts.hostname or "host" in query:
        message = (
            "the streaming job reaches PostgreSQL over TCP: postgres needs a host "
            f"in the URL, got {redact_url(dsn)!r}"
        )
        raise SettingError(message)

    database = parts.path.lstrip("/") or unquote(parts.username or "postgres")
    username = unquote(parts.username or "")
    url = (
        f"jdbc:postgresql://{parts.hostname}:{parts.port or 5432}/{database}"
        "?stringtype=unspecified&reWriteBatchedInserts=true"
    )
    if username:
        url += "&user=" + quote(username, safe="")
    return JdbcTarget(
        url=url,
        username=username,
        password=unquote(parts.password or ""),
        host=parts.hostname,
        port=parts.port or 5432,
        database=database,
    )


#: The PostgreSQL password file the job writes for the JDBC sinks, in its data folder.
PASSWORD_FILE = "stream-job.pgpass"


def write_password_file(data: Path, target: JdbcTarget) -> Path | None:
    """Write the JDBC login's password to an owner-only file; ``None`` if it has none.

    The sinks' DDL names the user but not the password: the PostgreSQL JDBC driver
    reads it from the file ``PGPASSFILE`` names, so it is in no job graph.
    """
    if not target.password:
        return None
    path = data / PASSWORD_FILE
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(target.password_line() + "\n")
    return path


def stream_addresses() -> tuple[str, str]:
    """The PostgreSQL DSN and Redis URL, from this process's environment.

    The job's Python operator calls this in ``open``: addresses that may hold a
    password travel in the environment of the job process (and of its JVM), never
    inside the job graph that Flink stores and shows.  On a cluster, every
    TaskManager needs ``RASTRO_STREAM_POSTGRES`` and ``RASTRO_STREAM_REDIS``.
    """
    postgres = os.environ.get(POSTGRES_ENV, "")
    redis = os.environ.get(REDIS_ENV, "")
    if not postgres or not redis:
        message = (
            f"${POSTGRES_ENV} and ${REDIS_ENV} must be set in the environment of "
            "every TaskManager that runs the streaming job"
        )
        raise RuntimeError(message)
    return postgres, redis


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest completed checkpoint under ``checkpoints``, to resume from.

    Flink writes ``<job id>/chk-<n>/_metadata`` last, so a checkpoint with its
    metadata file is complete.
    """
    completed = list(checkpoints.glob("*/chk-*/_metadata"))
    if not completed:
        return None
    newest = max(completed, key=lambda metadata: metadata.stat().st_mtime)
    return newest.parent


def _parse_args(argv: Sequence[str] | None) -> JobOptions:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stream.job", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--kafka", required=True, help="bootstrap HOST:PORT[,...]")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(POSTGRES_ENV),
        help=f"postgresql:// DSN (TCP); default ${POSTGRES_ENV}, which keeps a "
        "password off the command line",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get(REDIS_ENV),
        help=f"redis:// URL; default ${REDIS_ENV}",
    )
    parser.add_argument("--flink", default="", help="JobManager HOST:PORT")
    parser.add_argument("--data", type=Path, default=defaults.data)
    parser.add_argument("--h3-resolution", type=int, default=defaults.h3_resolution)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument(
        "--checkpoint-interval",
        type=int,
        default=defaults.checkpoint_interval,
        help="seconds between checkpoints",
    )
    parser.add_argument(
        "--lateness",
        type=float,
        default=defaults.lateness,
        help="seconds a fix may come out of order and still be used in order",
    )
    parser.add_argument(
        "--motion-settings",
        default="",
        help="JSON object of the fleet's filters, trips, dwell, alerts, speedLimit",
    )
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="read positions from the earliest offset, ignoring committed ones",
    )
    args = parser.parse_args(argv)
    if not args.postgres or not args.redis:
        parser.error(
            f"--postgres and --redis (or ${POSTGRES_ENV}, ${REDIS_ENV}) are required"
        )
    options = JobOptions(
        kafka=args.kafka,
        postgres=args.postgres,
        redis=args.redis,
        data=args.data.resolve(),
        flink=args.flink,
        h3_resolution=args.h3_resolution,
        parallelism=args.parallelism,
        checkpoint_interval=args.checkpoint_interval,
        lateness=args.lateness,
        motion_settings=args.motion_settings,
        from_beginning=args.from_beginning,
    )
    _check(options)
    return options


def _check(options: JobOptions) -> None:
    if not 0 <= options.h3_resolution <= 15:
        message = f"h3_resolution must be from 0 to 15, got {options.h3_resolution!r}"
        raise SettingError(message)
    if options.parallelism < 1:
        message = f"parallelism must be at least 1, got {options.parallelism!r}"
        raise SettingError(message)
    if options.checkpoint_interval < 1:
        message = (
            "checkpoint_interval must be at least 1 second, "
            f"got {options.checkpoint_interval!r}"
        )
        raise SettingError(message)
    if not (options.lateness >= 0 and math.isfinite(options.lateness)):
        message = f"lateness must be 0 seconds or more, got {options.lateness!r}"
        raise SettingError(message)
    parse_motion_settings(options.motion_settings)
    jdbc_target(options.postgres)


def main(argv: Sequence[str] | None = None) -> int:
    """Submit the job, log ``stream_job_running``, and wait until it ends."""
    configure_logging()
    options = _parse_args(argv)

    from pipeline.stream.graph import build_job

    # Thread mode runs Python inside the JVM, which finds the venv through PATH.
    venv_bin = str(Path(sys.executable).parent)
    os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    # The JVM's own log goes under the data folder, not into the installed package.
    flink_logs = options.data / "logs" / "flink"
    flink_logs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLINK_LOG_DIR", str(flink_logs))

    # The JVM and the Python operator inside it inherit these (see stream_addresses).
    os.environ.update(job_environment(options.postgres, options.redis))
    password_file = write_password_file(options.data, jdbc_target(options.postgres))
    if password_file is not None:
        os.environ["PGPASSFILE"] = str(password_file)
        # Needed while the job runs (the sinks reconnect), not after.
        atexit.register(password_file.unlink, missing_ok=True)

    env = build_job(options)
    # Building the environment (Beam's start-up) lowers the root logger to WARNING;
    # keep this process's own lifecycle events visible.
    logging.getLogger("rastro").setLevel(logging.INFO)
    client = env.execute_async(JOB_NAME)
    job_id = str(client.get_job_id())
    marker = running_marker(options.data)

    def cancel(signum: int, frame: FrameType | None) -> None:
        log.info("stream_job_stopping", job_id=job_id, signal=signum)
        marker.unlink(missing_ok=True)
        client.cancel().result()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, cancel)
    signal.signal(signal.SIGINT, cancel)
    _wait_until_running(client, job_id)
    marker.write_text(job_id + "\n")
    log.info(
        "stream_job_running",
        job_id=job_id,
        flink=options.flink or "local",
        kafka=options.kafka,
        postgres=redact_url(options.postgres),
        parallelism=options.parallelism,
    )
    try:
        client.get_job_execution_result().result()
    finally:
        marker.unlink(missing_ok=True)
    log.info("stream_job_finished", job_id=job_id)
    return 0


def running_marker(data: Path) -> Path:
    """The file that says the job is running; the supervisor waits for it.

    It holds the job id, is written once Flink reports the job RUNNING and is
    removed when the job process stops.
    """
    return data / "stream-job.running"


def _wait_until_running(client: Any, job_id: str) -> None:
    """Block until Flink reports the job RUNNING; raise if it ended instead."""
    deadline = time.monotonic() + RUNNING_TIMEOUT_S
    while time.monotonic() < deadline:
        status = str(client.get_job_status().result())
        if status.endswith("RUNNING"):
            return
        if status.rsplit(".", 1)[-1] in _ENDED:
            message = f"stream job {job_id} ended as {status} before running"
            raise RuntimeError(message)
        time.sleep(0.2)
    message = f"stream job {job_id} not running after {RUNNING_TIMEOUT_S} s"
    raise RuntimeError(message)


if __name__ == "__main__":
    sys.exit(main())
