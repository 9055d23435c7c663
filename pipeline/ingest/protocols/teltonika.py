"""Teltonika AVL protocol (FMB, FMC, FMM, FMT, FM6 series), on TCP and UDP port 5027.

Layouts from Teltonika's public wiki, "Teltonika Data Sending Protocols" (the
former "Codec" page): codec 8 (``0x08``), 8 Extended (``0x8E``) and 16
(``0x10``) carry AVL records; codec 12 (``0x0C``) carries command text.

TCP.  A connection opens with the IMEI: a 2-byte length, then the IMEI in ASCII
digits.  The server answers ``01`` to accept it (``00`` refuses it, then closes).
Every later frame is ``00000000``, a 4-byte data length, then the data (codec
id, record count, the records, the record count again) and a 4-byte field
holding the CRC-16/IBM (ARC) of the data.  The reply to AVL data is the number
of records accepted as a 4-byte big-endian integer; the device deletes them
then, and sends them again when no reply comes.

UDP.  Each datagram carries its own header: 2-byte length of what follows,
2-byte packet id, one unused byte, 1-byte AVL packet id, 2-byte IMEI length and
the IMEI, then the AVL data with no CRC.  The reply is ``0005``, the packet id,
``01``, the AVL packet id and the number of records accepted (one byte).

A record is the time (uint64, Unix ms), priority (0 low, 1 high, 2 panic),
longitude and latitude (int32, 1e-7 degree), altitude (int16, m), angle
(uint16, degrees), satellites (uint8), speed (uint16, km/h), then the IO
section: the id of the IO element that triggered the record (0: a periodic
record), the element count, then groups of 1-, 2-, 4- and 8-byte values, each
group led by its count.  Codec 8 has 1-byte ids and counts; 8 Extended 2-byte
ids and counts and a last group of variable-length values (2-byte id, 2-byte
length); codec 16 2-byte ids, 1-byte counts and a generation-type byte after the
event id.  A record taken without a GNSS fix repeats the last position with 0
satellites: it is marked invalid.

Every IO element becomes ``io<id>`` (integers as sent, unsigned; variable-length
values as lower-case hex strings), and the common ones are also named with the
vocabulary of :mod:`.base`; see :data:`NAMED_IO`.  The triggering id becomes
``event`` and a non-zero priority ``priority``.  A record triggered by one of
the ids of :data:`ALARM_IO` with an alarm value gets ``alarm`` and an alarm
event.  Codec 12 frames are answers to commands sent to the device: their text
is logged (``teltonika_command_response``) and they give no fix and no reply.

Records are turned into :class:`~pipeline.model.Fix` messages by writing their
Protocol Buffers wire form (:mod:`.wire`; attribute entries cached by the IO
element's raw bytes) and letting the C parser read the whole packet at once: the
complete decode then costs less than building the same fixes through the Python
constructor alone.  The fixes are exactly those :func:`~.base.new_fix` builds
(the tests compare them).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import crcmod
import structlog

from pipeline.ingest.protocols import wire
from pipeline.ingest.protocols.base import (
    Decoded,
    FrameError,
    TrackerProtocol,
    TrackerSession,
)
from pipeline.ingest.protocols.frames import cut_frames
from pipeline.ingest.protocols.wire import (
    ALTITUDE,
    COURSE,
    FIX_TIME,
    FIXES,
    LATITUDE,
    LONGITUDE,
    ONE_BYTE,
    POSITION,
    SATELLITES,
    SPEED,
    VALID,
    varint,
)

__all__ = [
    "ALARM_IO",
    "NAMED_IO",
    "PROTOCOL",
    "TeltonikaSession",
    "crc16_ibm",
    "looks_like_teltonika",
]

log = structlog.get_logger("rastro.ingest.teltonika")

_NAME = "teltonika"
CODEC_8 = 0x08
CODEC_8E = 0x8E
CODEC_16 = 0x10
CODEC_12 = 0x0C

#: Replies to the IMEI frame.
ACCEPT = b"\x01"
REFUSE = b"\x00"
#: IMEIs are 15 digits; other device ids of 8 to 20 digits are accepted too.
_IMEI_LENGTHS = range(8, 21)
#: Preamble and data length before, CRC field after the data of a TCP frame.
_TCP_OVERHEAD = 12
#: Codec id, the two record counts: the shortest data field.
_MIN_DATA = 3
#: Jan 1st 2100 in Unix ms: a record time past it is refused.
_MAX_TIME_MS = 4_102_444_800_000

#: CRC-16/IBM, also called CRC-16/ARC: polynomial 0x8005 reflected, initial 0.
crc16_ibm: Callable[[bytes], int] = crcmod.mkCrcFun(
    0x18005, initCrc=0, rev=True, xorOut=0
)

_RECORD = struct.Struct(">QBiihHBH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_COUNTS = struct.Struct(">BB")
_UDP_HEADER = struct.Struct(">HHBBH")
_UDP_REPLY = struct.Struct(">HHBBB")
_NX_HEADER = struct.Struct(">HH")
_CODEC_12_ITEM = struct.Struct(">BI")


def _boolean(raw: int) -> str:
    return "true" if raw else "false"


def _thousandths(raw: int) -> str:
    return repr(raw / 1000)


def _tenths(raw: int) -> str:
    return repr(raw / 10)


def _metres(raw: int) -> str:
    return repr(float(raw))


#: IO ids also kept under a shared attribute name, and how the raw value becomes
#: that attribute's JSON text (``str`` of an int, ``repr`` of a float are what
#: ``json.dumps`` gives).  Ids, units and scales from Teltonika's public "FMB AVL
#: ID" lists (wiki pages "FMB120 Teltonika Data Sending Parameters ID" and
#: alike: 239 Ignition, 240 Movement, 21 GSM Signal 1-5, 66 External Voltage mV,
#: 67 Battery Voltage mV, 113 Battery Level %, 16 Total Odometer m, 181/182 GNSS
#: PDOP/HDOP x0.1, 1-3 Digital Inputs, 179/180 Digital Outputs; 199 Trip
#: Odometer stays ``io199``).
NAMED_IO: dict[int, tuple[str, Callable[[int], str]]] = {
    1: ("input1", _boolean),
    2: ("input2", _boolean),
    3: ("input3", _boolean),
    16: ("odometer", _metres),
    21: ("rssi", str),
    66: ("power", _thousandths),
    67: ("battery", _thousandths),
    113: ("batteryLevel", str),
    179: ("output1", _boolean),
    180: ("output2", _boolean),
    182: ("hdop", _tenths),
    239: ("ignition", _boolean),
    240: ("motion", _boolean),
}

#: Event IO ids that are alarms, by the value that raises each alarm, and only in
#: records they triggered (a periodic record repeating a state raises nothing).
#: 236 "Alarm" is the panic button (wiki page "Alarm event": the button generates
#: an event with IO ID 236); 247 is the crash event (FT platform features page;
#: 1 crash, 2 limited crash trace); 246 Towing, 249 Jamming (1 start) and 252
#: Unplug (1 unplugged, 0 plugged back) are eventual elements of the FMB AVL ID
#: lists.
ALARM_IO: dict[int, dict[int, str]] = {
    236: {1: "sos"},
    246: {1: "tamper"},
    247: {1: "accident", 2: "accident"},
    249: {1: "jamming"},
    252: {1: "powerCut", 0: "powerRestored"},
}


#: Value widths of the integer IO groups, in their order.
_WIDTHS = (1, 2, 4, 8)
#: Record shapes whose unpacker a layout keeps before it starts over, and the
#: most elements a kept shape may have (real records have a few dozen; larger
#: shapes are compiled for the record, so hostile ones cannot fill memory).
_SHAPE_LIMIT = 256
_SHAPE_ELEMENTS = 128


@dataclass(frozen=True)
class _IoLayout:
    """How one codec lays out a record's IO section.

    A record is read by one ``struct`` unpack: the fixed fields, the event id
    (and codec 16's generation type), the element count, then every integer
    element as raw bytes (id and value), the group counts skipped.  That
    unpacker depends on the four group counts (the record's shape); a device's
    records keep one shape, so unpackers are compiled once per shape.
    """

    #: ``struct`` codes of event id, [generation type,] element count.
    header: str
    count_width: int
    id_width: int
    #: Whether a group of variable-length values ends the section (8 Extended).
    variable: bool
    unpackers: dict[tuple[int, ...], struct.Struct] = field(
        default_factory=dict, compare=False
    )

    @cached_property
    def first_element(self) -> int:
        """Index of the first raw element in an unpacked record."""
        return 8 + len(self.header)

    @cached_property
    def first_count(self) -> int:
        """Offset of the first group count from the start of a record."""
        return _RECORD.size + struct.calcsize(">" + self.header)

    @cached_property
    def element_sizes(self) -> tuple[int, int, int, int]:
        """Bytes of one element (id and value) in each integer group."""
        one, two, four, eight = (self.id_width + width for width in _WIDTHS)
        return one, two, four, eight

    def shape(self, data: bytes, position: int) -> tuple[tuple[int, ...], int]:
        """The group counts of the record at ``position``, and where they end.

        Written out group by group: this runs for every record.
        """
        at = position + self.first_count
        one, two, four, eight = self.element_sizes
        if self.count_width == 1:
            ones = data[at]
            at += 1 + ones * one
            twos = data[at]
            at += 1 + twos * two
            fours = data[at]
            at += 1 + fours * four
            eights = data[at]
            at += 1 + eights * eight
        else:
            ones = data[at] << 8 | data[at + 1]
            at += 2 + ones * one
            twos = data[at] << 8 | data[at + 1]
            at += 2 + twos * two
            fours = data[at] << 8 | data[at + 1]
            at += 2 + fours * four
            eights = data[at] << 8 | data[at + 1]
            at += 2 + eights * eight
        counts = (ones, twos, fours, eights)
        if at > len(data):
            message = (
                f"IO groups of {list(counts)} elements run {at - len(data)} bytes "
                "past the records"
            )
            raise FrameError(message)
        return counts, at

    def compile_unpacker(self, counts: tuple[int, ...]) -> struct.Struct:
        """Compile and keep the ``struct`` that reads a whole record of a shape."""
        skip = "x" * self.count_width
        groups = (
            skip + f"{self.id_width + width}s" * count
            for width, count in zip(_WIDTHS, counts, strict=True)
        )
        unpacker = struct.Struct(_RECORD.format + self.header + "".join(groups))
        if sum(counts) > _SHAPE_ELEMENTS:
            return unpacker
        if len(self.unpackers) >= _SHAPE_LIMIT:
            self.unpackers.clear()
        self.unpackers[counts] = unpacker
        return unpacker


_LAYOUTS = {
    CODEC_8: _IoLayout("BB", count_width=1, id_width=1, variable=False),
    CODEC_8E: _IoLayout("HH", count_width=2, id_width=2, variable=True),
    CODEC_16: _IoLayout("HBB", count_width=1, id_width=2, variable=False),
}


class TeltonikaSession(TrackerSession):
    """Decoder state of one Teltonika connection, or of one UDP peer."""

    protocol = _NAME
    #: Teltonika caps an AVL packet at 1280 bytes (512 on the FM6 series); codec
    #: 8 Extended records with long variable-length values and codec 12 answers
    #: can be longer, so 16 KiB leaves ample room.
    max_frame_bytes = 16_384

    def split(self, buffer: bytearray) -> list[bytes]:
        """Cut complete IMEI and AVL frames off ``buffer``.

        Bytes that cannot start a frame raise :class:`FrameError`, but only once
        the complete frames before them were returned (on the next call), so
        records the device sent intact are still acknowledged.
        """
        return cut_frames(buffer, self._frame_end, keep=self.max_frame_bytes)

    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        """Decode the IMEI frame or one AVL data frame of a TCP stream."""
        if frame[:2] != b"\x00\x00":
            return self._identify(frame)
        if self.device is None:
            message = "AVL data arrived before the IMEI frame identified the device"
            raise FrameError(message)

        return _decode_data(_checked_data(frame), 0, self.device, server_time_ms)

    def decode_datagram(self, datagram: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one UDP datagram: its header names the device every time."""
        if len(datagram) < _UDP_HEADER.size:
            message = f"UDP datagram of {len(datagram)} bytes is shorter than a header"
            raise FrameError(message)
        length, packet_id, _unused, avl_id, imei_length = _UDP_HEADER.unpack_from(
            datagram
        )
        if length + 2 != len(datagram):
            message = (
                f"UDP length field says {length + 2} bytes, "
                f"the datagram has {len(datagram)}"
            )
            raise FrameError(message)

        start = _UDP_HEADER.size + imei_length
        self.device = _imei(datagram[_UDP_HEADER.size : start])
        decoded = _decode_data(datagram, start, self.device, server_time_ms)
        decoded.device = self.device
        if decoded.reply is not None:
            count = len(decoded.fixes)
            decoded.reply = _UDP_REPLY.pack(5, packet_id, 1, avl_id, count)
        return decoded

    def _identify(self, frame: bytes) -> Decoded:
        length = int.from_bytes(frame[:2], "big")
        if length + 2 != len(frame):
            message = (
                f"IMEI frame of {len(frame)} bytes does not match its length "
                f"field ({length} digits)"
            )
            raise FrameError(message)
        self.device = _imei(frame[2:])
        return Decoded(device=self.device, reply=ACCEPT, refusal=REFUSE)

    def _frame_end(self, buffer: bytearray, start: int) -> int | None:
        """Where the frame at ``start`` ends, ``None`` while incomplete."""
        available = len(buffer) - start
        if buffer[start] != 0:
            message = (
                f"frame must start with a zero byte (IMEI length or preamble), "
                f"got {bytes(buffer[start : start + 8]).hex()}"
            )
            raise FrameError(message)
        if available < 2:
            return None

        if buffer[start + 1] != 0:
            return _imei_frame_end(buffer, start, available)
        if available < 8:
            return None
        if buffer[start + 2] or buffer[start + 3]:
            message = (
                "AVL frame must start with 4 zero bytes, "
                f"got {bytes(buffer[start : start + 4]).hex()}"
            )
            raise FrameError(message)
        length = _U32.unpack_from(buffer, start + 4)[0]
        total = length + _TCP_OVERHEAD
        if length < _MIN_DATA or total > self.max_frame_bytes:
            message = (
                f"AVL data length {length} is outside {_MIN_DATA}.."
                f"{self.max_frame_bytes - _TCP_OVERHEAD} bytes"
            )
            raise FrameError(message)
        return start + total if available >= total else None


def _imei_frame_end(buffer: bytearray, start: int, available: int) -> int | None:
    length = buffer[start + 1]
    if length not in _IMEI_LENGTHS:
        message = (
            f"IMEI length must be {_IMEI_LENGTHS.start}-{_IMEI_LENGTHS.stop - 1} "
            f"digits, got {length}"
        )
        raise FrameError(message)
    end = start + 2 + length
    return end if available >= end - start else None


def _imei(raw: bytes) -> str:
    if len(raw) not in _IMEI_LENGTHS or not raw.isdigit():
        message = f"IMEI must be 8 to 20 ASCII digits, got {raw[:24]!r}"
        raise FrameError(message)
    return raw.decode("ascii")


def _checked_data(frame: bytes) -> bytes:
    """The data field of a TCP AVL frame, once its length and CRC check out."""
    if len(frame) < _TCP_OVERHEAD + _MIN_DATA:
        message = f"AVL frame of {len(frame)} bytes is shorter than its envelope"
        raise FrameError(message)
    if frame[:4] != b"\x00\x00\x00\x00":
        message = f"AVL frame must start with 4 zero bytes, got {frame[:8].hex()}"
        raise FrameError(message)
    length = _U32.unpack_from(frame, 4)[0]
    if length + _TCP_OVERHEAD != len(frame):
        message = (
            f"AVL data length {length} does not match a frame of {len(frame)} bytes"
        )
        raise FrameError(message)

    data = frame[8:-4]
    expected = crc16_ibm(data)
    sent = _U32.unpack_from(frame, len(frame) - 4)[0]
    if sent != expected:
        message = f"CRC field {sent:08x} does not match the data's CRC {expected:04x}"
        raise FrameError(message)
    return data


def _decode_data(data: bytes, start: int, device: str, server_time_ms: int) -> Decoded:
    """Decode the AVL data from ``start`` to the end of ``data``.

    The reply is the TCP one (the record count as 4 bytes); ``None`` for codec
    12, which expects none.
    """
    if len(data) - start < _MIN_DATA:
        message = f"AVL data of {len(data) - start} bytes is shorter than its counts"
        raise FrameError(message)
    codec, count = _COUNTS.unpack_from(data, start)
    if data[-1] != count:
        message = f"record counts differ: {count} before, {data[-1]} after"
        raise FrameError(message)
    if codec == CODEC_12:
        _log_command_response(data[start + 2 : -1], device)
        return Decoded()

    layout = _LAYOUTS.get(codec)
    if layout is None:
        message = f"codec 0x{codec:02X} is not supported (8, 8E, 16 and 12 are)"
        raise FrameError(message)
    wire = _PacketWire(device, server_time_ms, layout)
    try:
        decoded = wire.decode(data[start + 2 : -1], count)
    except (struct.error, IndexError) as error:
        message = f"AVL record is truncated: {error}"
        raise FrameError(message) from error
    decoded.reply = _U32.pack(count)
    return decoded


def _log_command_response(item: bytes, device: str) -> None:
    """Log the text of a codec 12 item: the device's answer to a command."""
    if len(item) < _CODEC_12_ITEM.size:
        message = f"codec 12 item of {len(item)} bytes is shorter than its header"
        raise FrameError(message)
    kind, size = _CODEC_12_ITEM.unpack_from(item)
    if _CODEC_12_ITEM.size + size != len(item):
        message = (
            f"codec 12 text of {size} bytes does not fill the "
            f"{len(item) - _CODEC_12_ITEM.size} bytes after its header"
        )
        raise FrameError(message)
    text = item[_CODEC_12_ITEM.size :].decode("ascii", errors="backslashreplace")
    log.info("teltonika_command_response", device=device, type=kind, text=text[:512])


# ------------------------------------------------------------ wire form of fixes
# Records become ``Fix`` wire bytes (see :mod:`.wire`); what repeats from record to
# record (IO elements, events, priorities) is encoded once and kept.

_VALID = bytes((VALID, 1))
_SATELLITES = [ONE_BYTE[SATELLITES] + varint(count) for count in range(256)]
#: Entries an element cache keeps before it starts over.
_CACHE_LIMIT = 8192
#: JSON texts of integer elements are at most 22 characters (an unsigned 64-bit
#: integer, or a float in exponent form).
_SHORT_TEXT = 24
#: ``io<id>`` keys whose entry heads are kept before starting over.
_KEY_LIMIT = 4096


def _entry_heads(key: str) -> list[bytes]:
    """All of an attribute entry but its JSON text, by the text's length."""
    prefix = wire.entry_prefix(key)
    return [
        wire.ATTRIBUTES + varint(len(prefix) + 1 + length) + prefix + ONE_BYTE[length]
        for length in range(_SHORT_TEXT)
    ]


_IO_HEADS: dict[int, list[bytes]] = {}
_NAMED_HEADS = {
    io_id: (_entry_heads(name), encode) for io_id, (name, encode) in NAMED_IO.items()
}


def _io_attributes(io_id: int, value: int) -> bytes:
    """The attributes one integer IO element gives: ``io<id>``, and its name."""
    heads = _IO_HEADS.get(io_id)
    if heads is None:
        if len(_IO_HEADS) >= _KEY_LIMIT:
            _IO_HEADS.clear()
        heads = _IO_HEADS[io_id] = _entry_heads(f"io{io_id}")
    text = str(value).encode()
    entries = heads[len(text)] + text

    named = _NAMED_HEADS.get(io_id)
    if named is not None:
        named_heads, encode = named
        text = encode(value).encode()
        entries += named_heads[len(text)] + text
    return entries


class _ElementCache(dict[bytes, bytes]):
    """Attribute bytes of IO elements, by the element's raw bytes (id and value).

    Records repeat most elements (ignition, signal, inputs), so their entries
    are built once, on the first lookup that misses; the cache starts over past
    :data:`_CACHE_LIMIT` entries.  One cache per id width, so that a raw slice
    means one element only.
    """

    def __init__(self, id_width: int) -> None:
        super().__init__()
        id_code = "B" if id_width == 1 else "H"
        #: Readers of (id, value), by the element's length.
        self.readers = {
            id_width + width: struct.Struct(">" + id_code + value_code)
            for width, value_code in zip(_WIDTHS, "BHIQ", strict=True)
        }

    def __missing__(self, raw: bytes) -> bytes:
        io_id, value = self.readers[len(raw)].unpack(raw)
        attributes = _io_attributes(io_id, value)
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        self[raw] = attributes
        return attributes


_ELEMENT_CACHES = {1: _ElementCache(1), 2: _ElementCache(2)}
_EVENT_ENTRIES: dict[int, bytes] = {}


def _event_attribute(event_id: int) -> bytes:
    entry = _EVENT_ENTRIES.get(event_id)
    if entry is None:
        entry = wire.attribute_entry("event", str(event_id))
        if len(_EVENT_ENTRIES) >= _CACHE_LIMIT:
            _EVENT_ENTRIES.clear()
        _EVENT_ENTRIES[event_id] = entry
    return entry


_PRIORITY = [b""] + [
    wire.attribute_entry("priority", str(level)) for level in range(1, 256)
]


class _PacketWire:
    """Turns the records of one AVL packet into fixes through their wire form."""

    def __init__(self, device: str, server_time_ms: int, layout: _IoLayout) -> None:
        self.head = wire.fix_head(device, server_time_ms, _NAME)
        self.layout = layout
        self.cache = _ELEMENT_CACHES[layout.id_width]

    def decode(self, records: bytes, count: int) -> Decoded:
        """Decode ``records``, which must hold exactly ``count`` records."""
        parts: list[bytes] = []
        alarms: list[tuple[int, str]] = []
        position = 0
        for index in range(count):
            body, alarm, position = self.record(records, position)
            parts += (FIXES, varint(len(body)), body)
            if alarm is not None:
                alarms.append((index, alarm))
        if position != len(records):
            message = (
                f"{len(records) - position} bytes follow the last of {count} records"
            )
            raise FrameError(message)

        return wire.decoded_batch(b"".join(parts), alarms)

    def record(self, data: bytes, position: int) -> tuple[bytes, str | None, int]:
        """One record's ``Fix`` wire bytes, its alarm, and where the next starts."""
        layout = self.layout
        counts, end = layout.shape(data, position)
        unpacker = layout.unpackers.get(counts) or layout.compile_unpacker(counts)
        fields = unpacker.unpack_from(data, position)
        time_ms, priority, lon, lat, altitude, angle, satellites, speed, event_id = (
            fields[:9]
        )
        _check_record(time_ms, lat, lon)

        parts = [
            self.head,
            FIX_TIME,
            varint(time_ms),
            POSITION.pack(
                LATITUDE,
                lat / 1e7,
                LONGITUDE,
                lon / 1e7,
                SPEED,
                speed,
                COURSE,
                angle,
                ALTITUDE,
                altitude,
            ),
            _SATELLITES[satellites],
            _VALID if satellites else b"",
            _PRIORITY[priority],
            _event_attribute(event_id) if event_id else b"",
        ]
        elements = fields[layout.first_element :]
        parts += map(self.cache.__getitem__, elements)
        if layout.variable:
            end = _variable_elements(data, end, parts)

        alarm = None
        if event_id in ALARM_IO:
            alarm = _alarm(event_id, elements, layout.id_width)
        return b"".join(parts), alarm, end


def _check_record(time_ms: int, lat: int, lon: int) -> None:
    if time_ms > _MAX_TIME_MS:
        message = f"record time {time_ms} ms is after 2100"
        raise FrameError(message)
    if not (-900_000_000 <= lat <= 900_000_000 and -1_800e6 <= lon <= 1_800e6):
        message = f"record coordinates out of range: {lat / 1e7}, {lon / 1e7}"
        raise FrameError(message)


def _variable_elements(data: bytes, position: int, parts: list[bytes]) -> int:
    """Codec 8 Extended's last group: values of any length, kept as hex text."""
    count = _U16.unpack_from(data, position)[0]
    position += _U16.size
    for _ in range(count):
        io_id, length = _NX_HEADER.unpack_from(data, position)
        position += _NX_HEADER.size
        if position + length > len(data):
            message = f"IO element {io_id} of {length} bytes runs past the records"
            raise FrameError(message)
        value = data[position : position + length].hex()
        parts.append(wire.attribute_entry(f"io{io_id}", f'"{value}"'))
        position += length
    return position


def _alarm(event_id: int, elements: tuple[bytes, ...], id_width: int) -> str | None:
    """The alarm a record triggered by ``event_id`` raises, if its value is one.

    The slow path, for the few records whose event may be an alarm; the last
    element with that id counts, as in the attributes.
    """
    value = None
    for raw in elements:
        if int.from_bytes(raw[:id_width], "big") == event_id:
            value = int.from_bytes(raw[id_width:], "big")
    return None if value is None else ALARM_IO[event_id].get(value)


def looks_like_teltonika(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes start a Teltonika IMEI frame.

    A connection must open with the IMEI: a zero byte, a length of 8 to 20, then
    that many ASCII digits (as many of them as were given).
    """
    if not first_bytes or first_bytes[0] != 0:
        return False
    if len(first_bytes) == 1:
        return True
    length = first_bytes[1]
    digits = first_bytes[2 : 2 + length]
    return length in _IMEI_LENGTHS and (not digits or digits.isdigit())


PROTOCOL = TrackerProtocol(
    name=_NAME,
    default_port=5027,
    session=TeltonikaSession,
    looks_like=looks_like_teltonika,
    tcp=True,
    udp=True,
    text=False,
)
