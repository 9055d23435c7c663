"""The Protocol Buffers wire form of fixes, written by hand for the binary decoders.

Decoders of packets that carry many records (Teltonika AVL data, Meitrack ``CCC``
uploads) do not build each :class:`~pipeline.model.Fix` through its Python
constructor: they write every record's ``Fix`` in wire form, join them into one
``FixBatch`` and let the C parser read it at once (:func:`decoded_batch`), which
costs several times less.  The fixes are exactly those :func:`~.base.new_fix`
builds; field numbers come from the message descriptors, so a renumbered field
changes what is written, not what is read.

Encoding, for the fields these decoders write: a field is its key (field number
shifted left by 3, or-ed with the wire type: 0 varint, 1 64-bit, 2 length-delimited,
5 32-bit) as a varint, then its value; ``attributes`` is a map, each entry a
length-delimited message of a key (field 1) and a value (field 2), both strings.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from functools import cache

from pipeline.ingest.protocols.base import Decoded, alarm_event, encode_attribute
from pipeline.model import Fix, FixBatch

__all__ = [
    "ALTITUDE",
    "ATTRIBUTES",
    "COURSE",
    "FIXES",
    "FIX_TIME",
    "LATITUDE",
    "LONGITUDE",
    "ONE_BYTE",
    "POSITION",
    "SATELLITES",
    "SPEED",
    "VALID",
    "attribute_entry",
    "decoded_batch",
    "entry_prefix",
    "field_key",
    "fix_head",
    "length_delimited",
    "tag",
    "varint",
]

#: Every byte value as a one-byte ``bytes``.
ONE_BYTE = [bytes((value,)) for value in range(256)]
#: Varints of 14-bit pieces: both bytes with the continuation bit, and (for the
#: last piece) only the first.  Three pieces make a Unix time in ms.
_PIECES = [bytes((piece & 0x7F | 0x80, piece >> 7 | 0x80)) for piece in range(0x4000)]
_LAST_PIECES = [bytes((piece & 0x7F | 0x80, piece >> 7)) for piece in range(0x4000)]


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer, least significant group first.

    Examples
    --------
    >>> varint(300).hex(), varint(1_760_000_000_000).hex()
    ('ac02', '8080b3c19c33')
    """
    if value < 0x80:
        return ONE_BYTE[value]
    if value < 0x4000:
        return _LAST_PIECES[value]
    if 1 << 35 <= value < 1 << 42:
        # Every Unix time in ms from 1971 to 2109: the hot path, 6 bytes.
        return (
            _PIECES[value & 0x3FFF]
            + _PIECES[value >> 14 & 0x3FFF]
            + _LAST_PIECES[value >> 28]
        )
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_key(message: type[Fix] | type[FixBatch], name: str, wire_type: int) -> int:
    """The key of a field (its number and wire type), from the message's descriptor."""
    number: int = message.DESCRIPTOR.fields_by_name[name].number
    return number << 3 | wire_type


def tag(message: type[Fix] | type[FixBatch], name: str, wire_type: int) -> bytes:
    """The key of a field as written before its value."""
    return varint(field_key(message, name, wire_type))


def length_delimited(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field (bytes, string or message) with key ``key``."""
    return key + varint(len(payload)) + payload


def _one_byte_key(name: str, wire_type: int) -> int:
    """The key of a ``Fix`` field the fast encoders write as one byte."""
    key = field_key(Fix, name, wire_type)
    if key > 0x7F:
        message = f"Fix.{name} needs a field number below 16 for a one-byte key"
        raise RuntimeError(message)
    return key


#: ``FixBatch.fixes``: each fix of a batch is this key, its length, its bytes.
FIXES = tag(FixBatch, "fixes", 2)
ATTRIBUTES = tag(Fix, "attributes", 2)
FIX_TIME = tag(Fix, "fix_time_ms", 0)
#: One-byte keys of the position fields, in :data:`POSITION`'s order.
LATITUDE = _one_byte_key("latitude", 1)
LONGITUDE = _one_byte_key("longitude", 1)
SPEED = _one_byte_key("speed_kmh", 5)
COURSE = _one_byte_key("course", 5)
ALTITUDE = _one_byte_key("altitude", 5)
#: One-byte keys of two varint fields.
SATELLITES = _one_byte_key("satellites", 0)
VALID = _one_byte_key("valid", 0)
#: Key and value of latitude and longitude (double), speed, course and altitude
#: (float), little-endian as the wire form wants them.
POSITION = struct.Struct("<BdBdBfBfBf")

_DEVICE = tag(Fix, "device", 2)
_SERVER_TIME = tag(Fix, "server_time_ms", 0)


def entry_prefix(key: str) -> bytes:
    """An ``attributes`` entry's bytes before its value's length: key and value tag."""
    return length_delimited(b"\x0a", key.encode()) + b"\x12"


def attribute_entry(key: str, json_text: str) -> bytes:
    """The whole ``Fix.attributes`` field of one entry (``json_text`` its value)."""
    value = json_text.encode()
    entry = entry_prefix(key) + varint(len(value)) + value
    return length_delimited(ATTRIBUTES, entry)


@cache
def _protocol_field(protocol: str) -> bytes:
    return length_delimited(tag(Fix, "protocol", 2), protocol.encode())


def fix_head(device: str, server_time_ms: int, protocol: str) -> bytes:
    """The fields every fix of one packet shares: device, server time, protocol."""
    return (
        length_delimited(_DEVICE, device.encode())
        + _SERVER_TIME
        + varint(server_time_ms)
        + _protocol_field(protocol)
    )


def decoded_batch(
    batch: bytes,
    alarms: Iterable[tuple[int, str]],
    fix_times_ms: Iterable[int] | None = None,
) -> Decoded:
    """The fixes of a ``FixBatch``'s wire bytes, and the events of their alarms.

    ``alarms`` gives the index of each fix that raised an alarm, and the alarm: it
    becomes that fix's ``alarm`` attribute and an alarm event.  ``fix_times_ms``,
    one per fix, are set on the parsed fixes: cheaper than writing the 6-byte
    varint of each, for encoders that leave the time out of the wire form.
    """
    fixes = list(FixBatch.FromString(batch).fixes)
    if fix_times_ms is not None:
        for fix, fix_time_ms in zip(fixes, fix_times_ms, strict=True):
            fix.fix_time_ms = fix_time_ms
    events = []
    for index, alarm in alarms:
        fix = fixes[index]
        fix.attributes["alarm"] = encode_attribute(alarm)
        events.append(alarm_event(fix, alarm))
    return Decoded(fixes=fixes, events=events)
