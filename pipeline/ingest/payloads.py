"""Decode a positions request body into fixes, one verdict per record.

A body is JSON (one position object or an array of them, in the API form read by
:func:`pipeline.model.fix_from_json`) or Protocol Buffers (a ``rastro.v1.FixBatch``
or a single ``rastro.v1.Fix``).  Decoding never stops at the first bad record: each
record either becomes an ``(index, Fix)`` pair or a :class:`Rejection` naming its
index and what was wrong, so a client learns which records to fix and the good ones
are still published.

A body that cannot be read at all (not JSON, broken protobuf framing, too large, an
unknown content type) raises :class:`PayloadError`, whose ``status`` is the HTTP
status to answer with (400, 413 or 415).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from pipeline.model import Fix, FixBatch, FixError, fix_from_json

__all__ = [
    "JSON_TYPES",
    "MAX_BODY_BYTES",
    "MAX_RECORDS",
    "PROTOBUF_TYPES",
    "ParsedBatch",
    "PayloadError",
    "Rejection",
    "check_fix",
    "parse_json_positions",
    "parse_positions",
    "parse_protobuf_positions",
]

MAX_RECORDS = 10_000
MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_UNIQUE_ID = 128

JSON_TYPES = frozenset({"application/json", "text/json"})
PROTOBUF_TYPES = frozenset(
    {
        "application/x-protobuf",
        "application/protobuf",
        "application/vnd.google.protobuf",
    }
)

_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LENGTH, _WIRE_FIXED32 = 0, 1, 2, 5
_FLOAT_FIELDS = ("speed_kmh", "course", "altitude", "accuracy")


class PayloadError(ValueError):
    """The body as a whole cannot be decoded; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Rejection:
    """One record not accepted: its index in the request, why, and the status.

    ``kind`` groups reasons for counting: ``malformed``, ``not_allowed``,
    ``unknown_device``, ``rate_limited``, ``topic_mismatch``.
    """

    index: int
    reason: str
    status: int = 400
    kind: str = "malformed"


@dataclass
class ParsedBatch:
    """What a body decoded to: the good records and the rejected ones."""

    fixes: list[tuple[int, Fix]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.fixes) + len(self.rejected)


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_positions(
    body: bytes,
    content_type: str | None,
    *,
    server_time_ms: int,
    max_records: int = MAX_RECORDS,
    max_bytes: int = MAX_BODY_BYTES,
) -> ParsedBatch:
    """Decode a positions request by its content type (JSON or Protocol Buffers).

    Raises :class:`PayloadError` with status 415 for another content type, 413 for a
    body over ``max_bytes`` or with more than ``max_records`` records, 400 when the
    body cannot be decoded at all.
    """
    if len(body) > max_bytes:
        message = f"body is {len(body)} bytes; at most {max_bytes} are accepted"
        raise PayloadError(message, 413)

    kind = media_type(content_type)
    if kind in JSON_TYPES or kind.endswith("+json"):
        return parse_json_positions(
            body, server_time_ms=server_time_ms, max_records=max_records
        )
    if kind in PROTOBUF_TYPES:
        return parse_protobuf_positions(
            body, server_time_ms=server_time_ms, max_records=max_records
        )
    message = (
        f"content type must be application/json or application/x-protobuf, "
        f"got {content_type!r}"
    )
    raise PayloadError(message, 415)


def parse_json_positions(
    body: bytes | str | Any,
    *,
    server_time_ms: int,
    protocol: str = "json",
    max_records: int = MAX_RECORDS,
    default_device: str | None = None,
) -> ParsedBatch:
    """Decode a JSON position object or array; ``body`` may be already decoded.

    ``default_device`` is the uniqueId of records that carry none (MQTT takes it
    from the topic).
    """
    document = _load_json(body) if isinstance(body, bytes | str) else body
    records = document if isinstance(document, list) else [document]
    _check_count(len(records), max_records)

    batch = ParsedBatch()
    for index, record in enumerate(records):
        if default_device and isinstance(record, dict) and "uniqueId" not in record:
            record = {**record, "uniqueId": default_device}
        try:
            fix = fix_from_json(
                record, server_time_ms=server_time_ms, protocol=protocol
            )
        except FixError as error:
            batch.rejected.append(Rejection(index, str(error)))
            continue
        batch.fixes.append((index, fix))
    return batch


def parse_protobuf_positions(
    body: bytes,
    *,
    server_time_ms: int,
    protocol: str = "protobuf",
    max_records: int = MAX_RECORDS,
    default_device: str | None = None,
) -> ParsedBatch:
    """Decode a ``FixBatch`` (each record checked on its own) or a single ``Fix``.

    A FixBatch holds nothing but field 1 (its fixes), so a body whose top level has
    any other field is read as one Fix.  Each fix of a batch is decoded from its own
    bytes: a corrupt record is rejected by index, its neighbours still decode.
    """
    chunks = list(_top_level_fields(body))
    if all(number == 1 and wire == _WIRE_LENGTH for number, wire, _ in chunks):
        records = [raw for _, _, raw in chunks]
    else:
        records = [body]
    _check_count(len(records), max_records)

    batch = ParsedBatch()
    for index, raw in enumerate(records):
        try:
            fix = _decode_fix(raw)
            if default_device and not fix.device:
                fix.device = default_device
            check_fix(fix, server_time_ms=server_time_ms, protocol=protocol)
        except FixError as error:
            batch.rejected.append(Rejection(index, str(error)))
            continue
        batch.fixes.append((index, fix))
    return batch


def encode_batch(fixes: list[Fix]) -> bytes:
    """A ``FixBatch`` of ``fixes``, serialised (what protobuf clients send)."""
    encoded: bytes = FixBatch(fixes=fixes).SerializeToString()
    return encoded


def check_fix(fix: Fix, *, server_time_ms: int, protocol: str) -> None:
    """Validate a decoded protobuf fix in place and stamp the server's fields.

    The same rules as the JSON form: a non-empty uniqueId of at most 128 characters,
    finite coordinates within range, finite optional numbers.  A fix time of 0 (not
    sent) becomes the server time.  Raises :class:`FixError` naming the field.
    """
    device = fix.device.strip()
    if not device:
        message = "device (uniqueId) must be a non-empty string"
        raise FixError(message)
    if len(device) > MAX_UNIQUE_ID:
        message = (
            f"device must be at most {MAX_UNIQUE_ID} characters, got {len(device)}"
        )
        raise FixError(message)
    _check_range("latitude", fix.latitude, 90.0)
    _check_range("longitude", fix.longitude, 180.0)
    for name in _FLOAT_FIELDS:
        if fix.HasField(name) and not math.isfinite(getattr(fix, name)):
            message = f"{name} must be finite, got {getattr(fix, name)!r}"
            raise FixError(message)

    fix.device = device
    fix.server_time_ms = server_time_ms
    fix.protocol = protocol
    if fix.fix_time_ms <= 0:
        fix.fix_time_ms = server_time_ms


def _load_json(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError as error:
        message = f"body is not UTF-8 text: {error.reason} at byte {error.start}"
        raise PayloadError(message) from error
    except json.JSONDecodeError as error:
        message = (
            f"body is not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno})"
        )
        raise PayloadError(message) from error


def _check_count(count: int, max_records: int) -> None:
    if count > max_records:
        message = f"request has {count} records; at most {max_records} are accepted"
        raise PayloadError(message, 413)
    if count == 0:
        message = "request has no records"
        raise PayloadError(message)


def _check_range(name: str, value: float, limit: float) -> None:
    if not math.isfinite(value) or not -limit <= value <= limit:
        message = f"{name} must be between {-limit:g} and {limit:g}, got {value!r}"
        raise FixError(message)


def _decode_fix(raw: bytes) -> Fix:
    fix = Fix()
    try:
        fix.ParseFromString(raw)
    except DecodeError as error:
        message = f"not a valid rastro.v1.Fix: {error}"
        raise FixError(message) from error
    return fix


def _top_level_fields(body: bytes) -> Iterator[tuple[int, int, bytes]]:
    """``(field number, wire type, value bytes)`` of each top-level field.

    Only the framing is read, so a batch can be split into its records before any
    record is decoded.  Raises :class:`PayloadError` on broken framing.
    """
    position, end = 0, len(body)
    while position < end:
        tag, position = _varint(body, position)
        number, wire = tag >> 3, tag & 7
        start = position
        if wire == _WIRE_VARINT:
            _, position = _varint(body, position)
        elif wire == _WIRE_FIXED64:
            position += 8
        elif wire == _WIRE_FIXED32:
            position += 4
        elif wire == _WIRE_LENGTH:
            length, start = _varint(body, position)
            position = start + length
        else:
            message = f"body is not Protocol Buffers: wire type {wire} at byte {start}"
            raise PayloadError(message)
        if position > end or number == 0:
            message = f"body is not Protocol Buffers: field ends past byte {end}"
            raise PayloadError(message)
        yield number, wire, body[start:position]


def _varint(body: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while position < len(body) and shift < 64:
        byte = body[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    message = f"body is not Protocol Buffers: bad varint before byte {position}"
    raise PayloadError(message)
