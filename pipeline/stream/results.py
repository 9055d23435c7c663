"""The rows the device operator hands to the sinks, one side output per table.

:func:`side_outputs` turns a :class:`pipeline.stream.motion.Outputs` into
``(OutputTag, Row)`` pairs, which a Python process function yields to emit on a
side output.  Each side output becomes a SQL view in :mod:`pipeline.stream.graph`
and is written by a JDBC upsert sink (the ``events`` one also by the Kafka sink of
the ``events`` topic).  Rows of a record that a late-data recompute removed are
``DELETE`` rows of a changelog stream, so the JDBC sink deletes them, in order
with the other rows of the same device.

Times travel as epoch milliseconds and become text with a UTC offset in SQL
(see :func:`pipeline.stream.graph.utc_text`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pyflink.common import Row, RowKind, Types
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream import OutputTag

from geo.events import GeoEvent
from geo.summaries import DaySummary
from geo.trips import Idle, Record, Stop, Trip
from pipeline.model import Event
from pipeline.stream.motion import FixRow, Outputs
from pipeline.stream.records import FIELD_NAMES

__all__ = [
    "COUNTERS",
    "EVENTS",
    "IDLES",
    "MARKS",
    "REQUESTS",
    "STOPS",
    "SUMMARIES",
    "TRIPS",
    "VISITS",
    "event_payload",
    "side_outputs",
]


def _row_type(columns: list[tuple[str, TypeInformation]]) -> TypeInformation:
    return Types.ROW_NAMED([name for name, _ in columns], [kind for _, kind in columns])


_S, _L, _D, _F = Types.STRING(), Types.LONG(), Types.DOUBLE(), Types.FLOAT()

_MARK_TYPES = [_S, _L, _L, _D, _D, _F, _F, _L, _F, _F, Types.INT(), Types.BOOLEAN()]
_MARK_TYPES += [_S, _S, _S]

#: A filtered (or re-judged) fix: the history columns and its ``filter``.
MARKS = OutputTag(
    "marks",
    _row_type(list(zip([*FIELD_NAMES[:14], "filter"], _MARK_TYPES, strict=True))),
)

TRIPS = OutputTag(
    "trips",
    _row_type(
        [
            ("device", _S),
            ("start_ms", _L),
            ("end_ms", _L),
            ("start_latitude", _D),
            ("start_longitude", _D),
            ("end_latitude", _D),
            ("end_longitude", _D),
            ("distance_m", _D),
            ("duration_s", _D),
            ("max_speed_kmh", _D),
            ("max_speed_ms", _L),
            ("avg_speed_kmh", _D),
            ("idle_s", _D),
            ("start_odometer_m", _D),
            ("end_odometer_m", _D),
        ]
    ),
)

_PERIOD = _row_type(
    [
        ("device", _S),
        ("start_ms", _L),
        ("end_ms", _L),
        ("latitude", _D),
        ("longitude", _D),
        ("duration_s", _D),
    ]
)
STOPS = OutputTag("stops", _PERIOD)
IDLES = OutputTag("idles", _PERIOD)

VISITS = OutputTag(
    "visits",
    _row_type(
        [
            ("device", _S),
            ("geofence_id", _L),
            ("enter_ms", _L),
            ("exit_ms", _L),
            ("duration_s", _D),
        ]
    ),
)

EVENTS = OutputTag(
    "events",
    _row_type(
        [
            ("device", _S),
            ("type", _S),
            ("event_time_ms", _L),
            ("latitude", _D),
            ("longitude", _D),
            ("attributes", _S),
            ("payload", Types.PRIMITIVE_ARRAY(Types.BYTE())),
            ("publish", Types.BOOLEAN()),
        ]
    ),
)

SUMMARIES = OutputTag(
    "summaries",
    _row_type(
        [
            ("device", _S),
            ("time_zone", _S),
            ("day", _S),
            ("distance_m", _D),
            ("driving_s", _D),
            ("idle_s", _D),
            ("stopped_s", _D),
            ("trips", Types.INT()),
            ("stops", Types.INT()),
            ("max_speed_kmh", _D),
        ]
    ),
)

COUNTERS = OutputTag(
    "counters",
    _row_type(
        [
            ("device", _S),
            ("odometer_m", _D),
            ("engine_s", _D),
            ("source", _S),
            ("updated_ms", _L),
        ]
    ),
)

REQUESTS = OutputTag(
    "requests",
    _row_type([("device", _S), ("fix_time_ms", _L), ("requested_ms", _L)]),
)


def side_outputs(out: Outputs, wall_ms: int) -> Iterator[tuple[OutputTag, Row]]:
    """Every row of ``out``, tagged with its side output."""
    for row, reason in out.marks:
        yield MARKS, _mark(row, reason)
    for record, deleted in out.records:
        yield _record(record, deleted)
    for device, fence, enter_ms, exit_ms in out.visits:
        duration = None if exit_ms is None else (exit_ms - enter_ms) / 1000
        yield VISITS, Row(device, int(fence), enter_ms, exit_ms, duration)
    for event, publish in out.events:
        yield EVENTS, _event(event, publish)
    for summary, zone, deleted in out.summaries:
        yield SUMMARIES, _kind(_summary(summary, zone), deleted)
    for device, odometer_m, engine_s, source in out.counters:
        yield COUNTERS, Row(device, odometer_m, engine_s, source, wall_ms)
    for device, fix_ms, done in out.requests:
        yield REQUESTS, _kind(Row(device, fix_ms, wall_ms), done)


def event_payload(event: GeoEvent) -> bytes:
    """The protobuf ``rastro.v1.Event`` of the ``events`` topic.

    Attribute values are JSON-encoded, as every producer of the topic does.
    """
    message = Event(device=event.device, event_time_ms=event.time_ms, type=event.type)
    if event.latitude is not None and event.longitude is not None:
        message.latitude = event.latitude
        message.longitude = event.longitude
    for key, value in event.attributes.items():
        message.attributes[key] = json.dumps(value, separators=(",", ":"))
    return message.SerializeToString()


def _mark(row: FixRow, reason: str | None) -> Row:
    return Row(*row[:14], reason)


def _record(record: Record, deleted: bool) -> tuple[OutputTag, Row]:
    if isinstance(record, Trip):
        row = Row(
            record.device,
            record.start_ms,
            record.end_ms,
            record.start_latitude,
            record.start_longitude,
            record.end_latitude,
            record.end_longitude,
            record.distance_m,
            record.duration_s,
            record.max_speed_kmh,
            record.max_speed_ms,
            record.average_speed_kmh,
            record.idle_s,
            record.start_odometer_m,
            record.end_odometer_m,
        )
        return TRIPS, _kind(row, deleted)
    tag = STOPS if isinstance(record, Stop) else IDLES
    assert isinstance(record, Stop | Idle)
    period = Row(
        record.device,
        record.start_ms,
        record.end_ms,
        record.latitude,
        record.longitude,
        record.duration_s,
    )
    return tag, _kind(period, deleted)


def _event(event: GeoEvent, publish: bool) -> Row:
    attributes = json.dumps(dict(event.attributes), separators=(",", ":"))
    return Row(
        event.device,
        event.type,
        event.time_ms,
        event.latitude,
        event.longitude,
        attributes,
        event_payload(event),
        publish,
    )


def _summary(summary: DaySummary, zone: str) -> Row:
    return Row(
        summary.device,
        zone,
        summary.day.isoformat(),
        summary.distance_m,
        summary.driving_s,
        summary.idle_s,
        summary.stopped_s,
        summary.trips,
        summary.stops,
        summary.max_speed_kmh,
    )


def _kind(row: Row, deleted: bool) -> Row:
    if deleted:
        row.set_row_kind(RowKind.DELETE)
    return row
