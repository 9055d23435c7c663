"""The Flink job graph of :mod:`pipeline.stream.job`: environment, source, sinks.

Kept apart from the entry point so that importing :func:`job_command` (the
supervisor does) does not start loading PyFlink.  Kafka and JDBC are declared as
SQL tables, so their parsing and batching run in the JVM; only the decode/check and
the per-device state are Python.
"""

from __future__ import annotations

import sys
from pathlib import Path

import structlog
from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

from pipeline.jars import ensure_jars
from pipeline.stream.functions import AcceptFixes, DeviceState, FixTime, fix_row_type
from pipeline.stream.job import (
    CONSUMER_GROUP,
    IDLE_PARTITION_SECONDS,
    JOB_NAME,
    LIVE_TOPIC,
    OUT_OF_ORDERNESS_SECONDS,
    POSITIONS_TOPIC,
    JobOptions,
    jdbc_target,
    latest_checkpoint,
)

__all__ = ["build_job", "connector_jars", "flink_configuration"]

log = structlog.get_logger("rastro.stream")

#: Rows the JDBC sink buffers before a batch insert, and the longest it waits.
JDBC_BATCH_ROWS = 2000
JDBC_BATCH_INTERVAL = "500ms"
_ZSTD_JAR = "zstd-jni-"


def connector_jars() -> list[Path]:
    """The connector jars, plus the zstd codec the shaded Kafka connector lacks.

    Rastro's topics are zstd-compressed, and ``flink-sql-connector-kafka`` does not
    bundle ``zstd-jni`` (the Kafka client loads it at run time).  The broker's jar
    set pins it, checksum and all; take it from there unless the connector set
    already carries it.
    """
    jars = ensure_jars("flink-connectors")
    if not any(jar.name.startswith(_ZSTD_JAR) for jar in jars):
        jars += [
            jar for jar in ensure_jars("kafka-broker") if jar.name.startswith(_ZSTD_JAR)
        ]
    return jars


def flink_configuration(options: JobOptions) -> Configuration:
    """Execution, checkpoint and Python settings of the job."""
    checkpoints = options.data / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    jars = [jar.resolve().as_uri() for jar in connector_jars()]

    config = Configuration()
    config.set_string("pipeline.name", JOB_NAME)
    config.set_string("pipeline.jars", ";".join(jars))
    config.set_string("parallelism.default", str(options.parallelism))
    config.set_string("python.execution-mode", "thread")
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("state.backend.type", "hashmap")
    config.set_string("execution.checkpointing.dir", checkpoints.as_uri())
    config.set_string(
        "execution.checkpointing.interval", f"{options.checkpoint_interval}s"
    )
    config.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
    config.set_string(
        "execution.checkpointing.externalized-checkpoint-retention",
        "RETAIN_ON_CANCELLATION",
    )
    config.set_string("execution.checkpointing.num-retained", "2")
    config.set_string("table.local-time-zone", "UTC")

    resume = latest_checkpoint(checkpoints)
    if resume is not None:
        config.set_string("execution.state-recovery.path", resume.as_uri())
        config.set_string("execution.state-recovery.ignore-unclaimed-state", "true")
        log.info("stream_job_resuming", checkpoint=str(resume))

    if options.flink:
        host, _, port = options.flink.rpartition(":")
        config.set_string("execution.target", "remote")
        config.set_string("rest.address", host)
        config.set_string("rest.port", port)
    return config


def build_job(options: JobOptions) -> StreamExecutionEnvironment:
    """Declare the whole job; the caller executes the returned environment."""
    env = StreamExecutionEnvironment.get_execution_environment(
        flink_configuration(options)
    )
    tables = StreamTableEnvironment.create(env)
    tables.execute_sql(_positions_ddl(options))
    tables.execute_sql(_fixes_ddl(options))
    tables.execute_sql(_live_ddl(options))

    payloads = tables.to_data_stream(tables.from_path("positions"))
    accepted = (
        payloads.flat_map(AcceptFixes(options.h3_resolution), fix_row_type())
        .name("accept_fixes")
        .uid("accept-fixes")
        .assign_timestamps_and_watermarks(_watermarks())
        .name("fix_time_watermarks")
        .uid("fix-time-watermarks")
    )
    kept = (
        accepted.key_by(lambda row: row[0], key_type=Types.STRING())
        .process(DeviceState(options.redis), fix_row_type())
        .name("device_state")
        .uid("device-state")
    )
    tables.create_temporary_view("accepted", tables.from_data_stream(kept))

    statements = tables.create_statement_set()
    statements.add_insert_sql(_INSERT_FIXES)
    statements.add_insert_sql(_INSERT_LIVE)
    statements.attach_as_datastream()
    return env


def _watermarks() -> WatermarkStrategy:
    return (
        WatermarkStrategy.for_bounded_out_of_orderness(
            Duration.of_seconds(OUT_OF_ORDERNESS_SECONDS)
        )
        .with_timestamp_assigner(FixTime())
        .with_idleness(Duration.of_seconds(IDLE_PARTITION_SECONDS))
    )


def _sql_string(value: str) -> str:
    """A SQL string literal for a DDL option (options cannot be parameters)."""
    return "'" + value.replace("'", "''") + "'"


def _positions_ddl(options: JobOptions) -> str:
    startup = "earliest-offset" if options.from_beginning else "group-offsets"
    return f"""
        CREATE TEMPORARY TABLE positions (payload BYTES) WITH (
            'connector' = 'kafka',
            'topic' = '{POSITIONS_TOPIC}',
            'properties.bootstrap.servers' = {_sql_string(options.kafka)},
            'properties.group.id' = '{CONSUMER_GROUP}',
            'properties.auto.offset.reset' = 'earliest',
            'scan.startup.mode' = '{startup}',
            'format' = 'raw'
        )
    """


def _fixes_ddl(options: JobOptions) -> str:
    target = jdbc_target(options.postgres)
    return f"""
        CREATE TEMPORARY TABLE fixes_sink (
            device STRING,
            fix_time STRING,
            server_time STRING,
            latitude DOUBLE,
            longitude DOUBLE,
            altitude FLOAT,
            accuracy FLOAT,
            h3 BIGINT,
            speed FLOAT,
            course FLOAT,
            satellites INT,
            valid BOOLEAN,
            protocol STRING,
            attributes STRING,
            PRIMARY KEY (device, fix_time) NOT ENFORCED
        ) WITH (
            'connector' = 'jdbc',
            'url' = {_sql_string(target.url)},
            'table-name' = 'fixes',
            'username' = {_sql_string(target.username)},
            'password' = {_sql_string(target.password)},
            'sink.buffer-flush.max-rows' = '{JDBC_BATCH_ROWS}',
            'sink.buffer-flush.interval' = '{JDBC_BATCH_INTERVAL}',
            'sink.max-retries' = '5'
        )
    """


def _live_ddl(options: JobOptions) -> str:
    return f"""
        CREATE TEMPORARY TABLE live_sink (device_key BYTES, payload BYTES) WITH (
            'connector' = 'kafka',
            'topic' = '{LIVE_TOPIC}',
            'properties.bootstrap.servers' = {_sql_string(options.kafka)},
            'key.format' = 'raw',
            'key.fields' = 'device_key',
            'value.format' = 'raw',
            'value.fields-include' = 'EXCEPT_KEY',
            'sink.delivery-guarantee' = 'at-least-once'
        )
    """


def _utc_text(epoch_ms: str) -> str:
    """SQL rendering epoch milliseconds as ISO-8601 text with a UTC offset.

    The JDBC connector has no TIMESTAMP_LTZ; text with an explicit offset, cast by
    PostgreSQL (``stringtype=unspecified``), keeps the instant exact whatever the
    JVM's time zone.
    """
    local = f"TO_TIMESTAMP_LTZ({epoch_ms}, 3)"
    return f"DATE_FORMAT({local}, 'yyyy-MM-dd HH:mm:ss.SSS') || '+00'"


_INSERT_FIXES = """
    INSERT INTO fixes_sink
    SELECT device, {fix_time}, {server_time}, latitude, longitude, altitude,
           accuracy, h3, speed, course, satellites, valid, protocol, attributes
    FROM accepted
""".format(fix_time=_utc_text("fix_time_ms"), server_time=_utc_text("server_time_ms"))

_INSERT_LIVE = """
    INSERT INTO live_sink
    SELECT ENCODE(device, 'UTF-8'), payload FROM accepted
"""
