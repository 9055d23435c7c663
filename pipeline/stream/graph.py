"""The Flink job graph of :mod:`pipeline.stream.job`: environment, source, sinks.

Kept apart from the entry point so that importing :func:`job_command` (the
supervisor does) does not start loading PyFlink.  Kafka and JDBC are declared as
SQL tables, so their parsing and batching run in the JVM, and so do the watermarks
and the keying: the device operator is the only Python one.

The device operator's side outputs (:mod:`pipeline.stream.results`) each feed a
JDBC upsert sink: filter marks into ``fixes``, then ``trips``, ``stops``,
``idles``, ``geofence_visits``, ``events``, ``daily_summaries``,
``device_counters`` and ``recompute_requests``; events also go to the ``events``
topic.  The JDBC sinks flush at every checkpoint, so what the operator emitted
before a checkpoint is stored when it completes; everything is keyed, so what a
restore replays is written again, not twice.
"""

from __future__ import annotations

import sys
from pathlib import Path

import structlog
from pyflink.common import Configuration, Types
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream import (
    DataStream,
    KeyedStream,
    OutputTag,
    StreamExecutionEnvironment,
)
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment, Table

from pipeline.config import parse_motion_settings
from pipeline.jars import ensure_jars
from pipeline.kafka import EVENTS, FIX_TIME_HEADER
from pipeline.stream import results
from pipeline.stream.functions import DeviceState, fix_row_type
from pipeline.stream.job import (
    CONSUMER_GROUP,
    JOB_NAME,
    LIVE_TOPIC,
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
    # The sinks' primary keys are the records' identities; the operator already
    # emits each key's changes in order, so no materialising state is needed.
    config.set_string("table.exec.sink.upsert-materialize", "NONE")

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
    tables.execute_sql(_topic_sink_ddl(options, "live_sink", LIVE_TOPIC))
    for name, table, columns, key in _RESULT_SINKS:
        tables.execute_sql(_jdbc_ddl(options, name, table, columns, key))
    tables.execute_sql(_topic_sink_ddl(options, "events_topic", EVENTS))

    lateness_ms = round(options.lateness * 1000)
    fleet = parse_motion_settings(options.motion_settings)
    records = tables.to_append_stream(
        tables.sql_query(_RECORDS_BY_DEVICE), _record_row_type()
    )
    kept = (
        _keyed_by_device(records)
        .process(
            DeviceState(
                lateness_ms,
                options.h3_resolution,
                fleet,
            ),
            fix_row_type(),
        )
        .name("device_state")
        .uid("device-state")
    )
    tables.create_temporary_view("accepted", tables.from_data_stream(kept))
    for view, tag, changelog in _SIDE_OUTPUTS:
        table = _side_table(tables, kept, tag, changelog=changelog)
        tables.create_temporary_view(view, table)

    statements = tables.create_statement_set()
    for statement in (_INSERT_FIXES, _INSERT_LIVE, *_INSERT_RESULTS):
        statements.add_insert_sql(statement)
    statements.attach_as_datastream()
    return env


def _side_table(
    tables: StreamTableEnvironment,
    stream: DataStream,
    tag: OutputTag,
    *,
    changelog: bool,
) -> Table:
    side = stream.get_side_output(tag)
    if changelog:
        return tables.from_changelog_stream(side)
    return tables.from_data_stream(side)


def _record_row_type() -> TypeInformation:
    """``Row(device, Row(payload))``: the shape a keyed Python operator reads.

    PyFlink's keyed operators take ``Row(key, value)`` and hand ``value`` to the
    function; :data:`_RECORDS_BY_DEVICE` produces that shape directly.
    """
    payload = Types.ROW_NAMED(["payload"], [Types.PRIMITIVE_ARRAY(Types.BYTE())])
    return Types.ROW_NAMED(["device", "record"], [Types.STRING(), payload])


def _keyed_by_device(records: DataStream) -> KeyedStream:
    """``records`` keyed by their first field, in the JVM.

    ``DataStream.key_by`` always adds a Python map that computes the key, one more
    crossing into Python and back per fix; the key here is already a column (the
    Kafka record key), so the stream is keyed the way that map's output would be,
    with PyFlink's own key selector for ``Row(key, value)``.  The Flink tests run
    the whole job through it.
    """
    gateway = get_gateway()
    key_type = Types.ROW([Types.STRING()]).get_java_type_info()
    j_stream = records._j_data_stream  # private: see the docstring
    j_keyed = j_stream.keyBy(gateway.jvm.KeyByKeySelector(), key_type)
    return KeyedStream(j_keyed, records.get_type(), records)


def _sql_string(value: str) -> str:
    """A SQL string literal for a DDL option (options cannot be parameters)."""
    return "'" + value.replace("'", "''") + "'"


def _positions_ddl(options: JobOptions) -> str:
    """The ``positions`` topic: device (record key), payload and fix time.

    Ingest keys each record by its device and gives it the fix time in a header
    (:data:`~pipeline.kafka.FIX_TIME_HEADER`, see
    :func:`pipeline.ingest.service.event_time_ms`), so the watermark is computed
    in the JVM, per partition: the newest fix time read minus the lateness.  A
    record without a readable header counts at its Kafka timestamp.  A partition
    without records for :func:`_idle_timeout` stops holding the watermark back.
    """
    startup = "earliest-offset" if options.from_beginning else "group-offsets"
    lateness_ms = round(options.lateness * 1000)
    lateness = f"{lateness_ms // 1000}.{lateness_ms % 1000:03d}"
    return f"""
        CREATE TEMPORARY TABLE positions (
            device STRING,
            payload BYTES,
            headers MAP<STRING, BYTES> METADATA VIRTUAL,
            sent_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
            fix_time AS COALESCE(
                TO_TIMESTAMP_LTZ(
                    TRY_CAST(CAST(headers['{FIX_TIME_HEADER}'] AS STRING) AS BIGINT), 3
                ),
                sent_time
            ),
            WATERMARK FOR fix_time AS fix_time - INTERVAL '{lateness}' SECOND
        ) WITH (
            'connector' = 'kafka',
            'topic' = '{POSITIONS_TOPIC}',
            'properties.bootstrap.servers' = {_sql_string(options.kafka)},
            'properties.group.id' = '{CONSUMER_GROUP}',
            'properties.auto.offset.reset' = 'earliest',
            'scan.startup.mode' = '{startup}',
            'scan.watermark.idle-timeout' = '{_idle_timeout(options)} ms',
            'key.format' = 'raw',
            'key.fields' = 'device',
            'value.format' = 'raw',
            'value.fields-include' = 'EXCEPT_KEY'
        )
    """


def _idle_timeout(options: JobOptions) -> int:
    """Milliseconds after which a partition without records is left out of the
    watermark: the lateness, and never under a second.

    A fleet smaller than the partition count leaves partitions empty; waiting on
    them would stop every event-time timer (the device operator's wall-clock
    fallback would still release fixes, a lateness later).
    """
    return max(1000, round(options.lateness * 1000))


#: Records without a key get an empty one: decoded, they are refused as
#: :data:`~pipeline.stream.functions.KEY_MISMATCH`, counted, not lost silently.
_RECORDS_BY_DEVICE = """
    SELECT COALESCE(device, '') AS device, ROW(payload) AS record FROM positions
"""


def _fixes_ddl(options: JobOptions) -> str:
    return _jdbc_ddl(options, "fixes_sink", "fixes", _FIX_COLUMNS, "device, fix_time")


def _jdbc_ddl(
    options: JobOptions, name: str, table: str, columns: str, key: str
) -> str:
    target = jdbc_target(options.postgres)
    return f"""
        CREATE TEMPORARY TABLE {name} (
            {columns},
            PRIMARY KEY ({key}) NOT ENFORCED
        ) WITH (
            'connector' = 'jdbc',
            'url' = {_sql_string(target.url)},
            'table-name' = '{table}',
            'sink.buffer-flush.max-rows' = '{JDBC_BATCH_ROWS}',
            'sink.buffer-flush.interval' = '{JDBC_BATCH_INTERVAL}',
            'sink.max-retries' = '5'
        )
    """


def _topic_sink_ddl(options: JobOptions, name: str, topic: str) -> str:
    """A Kafka sink of ``(device_key, payload)`` records, keyed by device.

    At least once: after a restore a record may come again, the same record
    (a fix's device and time, an event's device, time and type) for a reader to
    recognise.
    """
    return f"""
        CREATE TEMPORARY TABLE {name} (device_key BYTES, payload BYTES) WITH (
            'connector' = 'kafka',
            'topic' = '{topic}',
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

_FIX_COLUMNS = """
    device STRING, fix_time STRING, server_time STRING, latitude DOUBLE,
    longitude DOUBLE, altitude FLOAT, accuracy FLOAT, h3 BIGINT, speed FLOAT,
    course FLOAT, satellites INT, valid BOOLEAN, protocol STRING, attributes STRING
"""
_PERIOD_COLUMNS = """
    device STRING, start_time STRING, end_time STRING, latitude DOUBLE,
    longitude DOUBLE, duration_s DOUBLE
"""

#: The JDBC sinks of the side outputs: name, table, columns, primary key.
_RESULT_SINKS = (
    ("marks_sink", "fixes", _FIX_COLUMNS + ", `filter` STRING", "device, fix_time"),
    (
        "trips_sink",
        "trips",
        """device STRING, start_time STRING, end_time STRING,
        start_latitude DOUBLE, start_longitude DOUBLE, end_latitude DOUBLE,
        end_longitude DOUBLE, distance_m DOUBLE, duration_s DOUBLE,
        max_speed_kmh DOUBLE, max_speed_time STRING, avg_speed_kmh DOUBLE,
        idle_s DOUBLE, start_odometer_m DOUBLE, end_odometer_m DOUBLE""",
        "device, start_time",
    ),
    ("stops_sink", "stops", _PERIOD_COLUMNS, "device, start_time"),
    ("idles_sink", "idles", _PERIOD_COLUMNS, "device, start_time"),
    (
        "visits_sink",
        "geofence_visits",
        """device STRING, geofence_id BIGINT, enter_time STRING, exit_time STRING,
        duration_s DOUBLE""",
        "device, geofence_id, enter_time",
    ),
    (
        "events_sink",
        "events",
        """device STRING, `type` STRING, event_time STRING, latitude DOUBLE,
        longitude DOUBLE, attributes STRING""",
        "device, `type`, event_time",
    ),
    (
        "summaries_sink",
        "daily_summaries",
        """device STRING, time_zone STRING, `day` STRING, distance_m DOUBLE,
        driving_s DOUBLE, idle_s DOUBLE, stopped_s DOUBLE, trips INT, stops INT,
        max_speed_kmh DOUBLE, updated_at STRING""",
        "device, time_zone, `day`",
    ),
    (
        "counters_sink",
        "device_counters",
        """device STRING, odometer_m DOUBLE, engine_s DOUBLE, source STRING,
        updated_at STRING""",
        "device",
    ),
    (
        "requests_sink",
        "recompute_requests",
        "device STRING, fix_time STRING, requested_at STRING",
        "device, fix_time",
    ),
)

#: The side outputs as views: name, tag, whether it carries deletions.
_SIDE_OUTPUTS = (
    ("marks", results.MARKS, False),
    ("trips", results.TRIPS, True),
    ("stops", results.STOPS, True),
    ("idles", results.IDLES, True),
    ("visits", results.VISITS, False),
    ("events", results.EVENTS, False),
    ("summaries", results.SUMMARIES, True),
    ("counters", results.COUNTERS, False),
    ("requests", results.REQUESTS, True),
)

_PERIOD_SELECT = """
    SELECT device, {start}, {end}, latitude, longitude, duration_s FROM {view}
"""

_INSERT_RESULTS = (
    """
    INSERT INTO marks_sink
    SELECT device, {fix_time}, {server_time}, latitude, longitude, altitude,
           accuracy, h3, speed, course, satellites, valid, protocol, attributes,
           `filter`
    FROM marks
    """.format(
        fix_time=_utc_text("fix_time_ms"), server_time=_utc_text("server_time_ms")
    ),
    """
    INSERT INTO trips_sink
    SELECT device, {start}, {end}, start_latitude, start_longitude, end_latitude,
           end_longitude, distance_m, duration_s, max_speed_kmh, {top},
           avg_speed_kmh, idle_s, start_odometer_m, end_odometer_m
    FROM trips
    """.format(
        start=_utc_text("start_ms"),
        end=_utc_text("end_ms"),
        top=_utc_text("max_speed_ms"),
    ),
    "INSERT INTO stops_sink"
    + _PERIOD_SELECT.format(
        start=_utc_text("start_ms"), end=_utc_text("end_ms"), view="stops"
    ),
    "INSERT INTO idles_sink"
    + _PERIOD_SELECT.format(
        start=_utc_text("start_ms"), end=_utc_text("end_ms"), view="idles"
    ),
    """
    INSERT INTO visits_sink
    SELECT device, geofence_id, {enter}, {exit}, duration_s FROM visits
    """.format(enter=_utc_text("enter_ms"), exit=_utc_text("exit_ms")),
    """
    INSERT INTO events_sink
    SELECT device, `type`, {time}, latitude, longitude, attributes FROM events
    """.format(time=_utc_text("event_time_ms")),
    """
    INSERT INTO events_topic
    SELECT ENCODE(device, 'UTF-8'), payload FROM events WHERE publish
    """,
    """
    INSERT INTO summaries_sink
    SELECT device, time_zone, `day`, distance_m, driving_s, idle_s, stopped_s, trips,
           stops, max_speed_kmh, {now}
    FROM summaries
    """.format(now=_utc_text("UNIX_TIMESTAMP() * 1000")),
    """
    INSERT INTO counters_sink
    SELECT device, odometer_m, engine_s, source, {updated} FROM counters
    """.format(updated=_utc_text("updated_ms")),
    """
    INSERT INTO requests_sink
    SELECT device, {fix_time}, {requested} FROM requests
    """.format(fix_time=_utc_text("fix_time_ms"), requested=_utc_text("requested_ms")),
)
