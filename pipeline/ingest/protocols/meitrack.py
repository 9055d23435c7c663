"""Meitrack GPRS protocol (MVT, T and P series), on TCP port 5020.

Every frame, text or binary, has the same envelope::

    $$<flag><length>,<imei>,<command>,<data>*<checksum>\\r\\n

``flag`` is a data identifier (one byte, ``A`` to ``z``) that replies echo;
``length`` is the decimal count of bytes from the first comma through the final
``\\r\\n``; ``checksum`` is the byte sum, modulo 256, of everything up to and
including ``*``, as two hex digits (upper case in text frames, either case in
binary ones).  Frames are cut by the length field, never by line: the ``CCC``
and ``CCE`` data is binary and may hold ``\\r\\n``.

Commands decoded here:

- ``AAA``: one text report.  Event code, latitude and longitude (signed decimal
  degrees), ``yymmddhhmmss`` UTC, ``A``/``V``, satellites, GSM signal, speed
  (km/h), course, HDOP, altitude (m), odometer (m), run time (s),
  ``mcc|mnc|lac|ci``, the I/O word (4 hex digits: inputs 1-8 in the high byte,
  outputs 1-8 in the low byte), the analog field, then model-specific fields
  that are not read.  The analog field is either decimal volts
  (``battery|power|rtc|mcu|gps``) or hex ``adc1|adc2|adc3|battery|power``
  counts, kept raw as ``adc1``-``adc5``: their scale depends on the model
  (12-bit counts x 6.6 / 4096 V on T1-era firmware, hundredths of a volt on
  newer ones) and the frame does not name the model.  No reply.
- ``CCC``: buffered reports, binary.  After ``CCC,`` come the format version
  (uint16), the record size (uint16, 52 here), the records still cached
  (uint32), then fixed 52-byte little-endian records: event, latitude and
  longitude (int32, 1e-6 degree), seconds since 2000-01-01 UTC (uint32), fix
  flag, satellites, GSM signal, speed (km/h), course, HDOP (x10), altitude (m),
  odometer (m), run time (s), mcc, mnc, lac, cell id, status word, ADC, battery
  (0.01 V), power (0.01 V), geofence (MEITRACK T622 GPRS Protocol, section
  3.45).  The device deletes what the reply confirms:
  ``@@<flag><length>,<imei>,CCC,<records>*<checksum>\\r\\n``.
- ``CCE``: buffered reports as tag-value lists (remaining cache uint32, record
  count uint16; per record a length, an index and four lists of 1-, 2-, 4-byte
  and variable-length values).  No reply.
- ``AAC``: answered with ``@@z<length>,<imei>,AAC,1*<checksum>\\r\\n``.

Other commands (answers to server commands, photo chunks) name the device and
carry no fix.  Event codes that are alarms: 1 SOS, 17 low battery, 18 low
external power, 19 speeding, 20/21 geofence enter/exit, 22/23 external power
restored/cut (MEITRACK T622 GPRS Protocol, section 1.5), 44 GSM jamming and
78 collision (as Traccar maps them).
"""

from __future__ import annotations

import struct
from typing import Any

from pipeline.ingest.protocols import wire
from pipeline.ingest.protocols.base import (
    Decoded,
    FrameError,
    TrackerProtocol,
    TrackerSession,
    alarm_event,
    new_fix,
)
from pipeline.ingest.protocols.fields import (
    ascii_text,
    degrees,
    integer,
    number,
    utc_ms,
)
from pipeline.ingest.protocols.wire import (
    ALTITUDE,
    ATTRIBUTES,
    COURSE,
    FIXES,
    LATITUDE,
    LONGITUDE,
    POSITION,
    SATELLITES,
    SPEED,
    VALID,
)
from pipeline.model import Fix

__all__ = ["PROTOCOL", "MeitrackSession"]

_NAME = "meitrack"
_DOLLAR = 0x24
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
#: Digits the length field may have; 5 already allows more than any frame.
_LENGTH_DIGITS = 5
#: The shortest body after the length field: ``,<imei>,<cmd>*XX\r\n``.
_MIN_LENGTH = 10
#: Unix time of 2000-01-01T00:00:00Z, the epoch of the binary reports.
_EPOCH_2000_S = 946_684_800

_CCC_HEADER = struct.Struct("<HHI")
_CCC_RECORD = struct.Struct("<BiiIBBBHHHhIIHHHHHHHHI")
_CCE_HEADER = struct.Struct("<IH")
_U16 = struct.Struct("<H")

#: Event codes that are alarms, onto :data:`~.base.ALARMS`.
EVENT_ALARMS = {
    1: "sos",
    17: "lowBattery",
    18: "lowPower",
    19: "overspeed",
    20: "geofenceEnter",
    21: "geofenceExit",
    22: "powerRestored",
    23: "powerCut",
    44: "jamming",
    78: "accident",
}


class MeitrackSession(TrackerSession):
    """Decoder state of one Meitrack connection; every frame names its IMEI."""

    protocol = _NAME
    #: Photo chunks (``D00``) are the longest frames, about 1 KiB of data each.
    max_frame_bytes = 16_384

    def split(self, buffer: bytearray) -> list[bytes]:
        """Cut complete frames off ``buffer`` by their length field."""
        frames = []
        start = 0
        while (end := self._frame_end(buffer, start)) is not None:
            frames.append(bytes(buffer[start:end]))
            start = end
        del buffer[:start]
        return frames

    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one frame; see the module docstring for what each command gives."""
        comma = _check_envelope(frame)
        imei, command, data_start = _frame_header(frame, comma)
        self.device = imei

        if command == b"AAA":
            return _decode_aaa(frame, data_start, imei, server_time_ms)
        if command == b"CCC":
            return _decode_ccc(frame, data_start, imei, server_time_ms)
        if command == b"CCE":
            return _decode_cce(frame, data_start, imei, server_time_ms)
        if command == b"AAC":
            return Decoded(device=imei, reply=_server_command("z", imei, "AAC,1"))
        return Decoded(device=imei)

    def _frame_end(self, buffer: bytearray, start: int) -> int | None:
        """Where the frame starting at ``start`` ends, ``None`` while incomplete."""
        available = len(buffer) - start
        if available <= 0:
            return None
        _check_start(buffer, start, available)
        if available < 4:
            return None

        limit = start + 3 + _LENGTH_DIGITS + 1
        comma = buffer.find(b",", start + 3, limit)
        if comma < 0:
            digits = bytes(buffer[start + 3 : limit])
            if len(digits) > _LENGTH_DIGITS or not digits.isdigit():
                message = f"length field must be 1-5 digits, got {digits[:8]!r}"
                raise FrameError(message)
            return None

        digits = bytes(buffer[start + 3 : comma])
        if not digits.isdigit():
            message = f"length field must be decimal digits, got {digits!r}"
            raise FrameError(message)
        total = comma - start + int(digits)
        if int(digits) < _MIN_LENGTH or total > self.max_frame_bytes:
            message = (
                f"frame length {total} is outside 1..{self.max_frame_bytes} bytes "
                f"(length field {digits.decode()})"
            )
            raise FrameError(message)
        return start + total if available >= total else None


def _check_start(buffer: bytearray, start: int, available: int) -> None:
    """Refuse a buffer whose front cannot start a frame (``$$`` and a flag)."""
    head = bytes(buffer[start : start + 3])
    if head[0] != _DOLLAR or (available > 1 and head[1] != _DOLLAR):
        message = f"frame must start with '$$', got {bytes(buffer[start:][:8])!r}"
        raise FrameError(message)
    if available > 2 and not 0x41 <= head[2] <= 0x7A:
        message = f"data identifier must be a byte from 'A' to 'z', got {head[2:3]!r}"
        raise FrameError(message)


def _check_envelope(frame: bytes) -> int:
    """Check start, length field, trailer and checksum; return the first comma."""
    if len(frame) < 3 + 1 + _MIN_LENGTH or frame[:2] != b"$$":
        message = f"frame must start with '$$' and hold a header, got {frame[:16]!r}"
        raise FrameError(message)
    comma = frame.find(b",", 3, 3 + _LENGTH_DIGITS + 1)
    digits = frame[3:comma] if comma > 0 else b""
    if not digits.isdigit() or comma + int(digits) != len(frame):
        message = (
            f"length field {digits!r} does not match a frame of {len(frame)} bytes"
        )
        raise FrameError(message)
    if frame[-5] != 0x2A or frame[-2:] != b"\r\n":
        message = f"frame must end with '*XX\\r\\n', got {frame[-5:]!r}"
        raise FrameError(message)

    expected = sum(frame[:-4]) & 0xFF
    digits = frame[-4:-2]
    if not _HEX_DIGITS.issuperset(digits) or int(digits, 16) != expected:
        message = f"checksum {frame[-4:-2]!r} does not match {expected:02X}"
        raise FrameError(message)
    return comma


def _frame_header(frame: bytes, comma: int) -> tuple[str, bytes, int]:
    """The IMEI, the 3-character command and where the command's data starts."""
    imei_end = frame.find(b",", comma + 1, comma + 32)
    imei = frame[comma + 1 : imei_end] if imei_end > 0 else b""
    if not 1 <= len(imei) <= 20 or not imei.isdigit():
        message = f"IMEI must be 1-20 digits, got {frame[comma + 1 : comma + 24]!r}"
        raise FrameError(message)

    command = frame[imei_end + 1 : imei_end + 4]
    separator = frame[imei_end + 4 : imei_end + 5]
    if not (command.isalnum() and command.isascii()) or separator not in b",*":
        message = f"command must be 3 letters or digits, got {command!r}"
        raise FrameError(message)
    return imei.decode(), command, imei_end + 5


def _server_command(flag: str, imei: str, body: str) -> bytes:
    """A ``@@`` frame to the device, its length and checksum computed."""
    length = len(imei) + len(body) + 2 + 5
    head = f"@@{flag}{length},{imei},{body}*".encode()
    return head + f"{sum(head) & 0xFF:02X}\r\n".encode()


# ---------------------------------------------------------------- AAA (text)


def _decode_aaa(frame: bytes, start: int, imei: str, server_time_ms: int) -> Decoded:
    fields = ascii_text(frame[start:-5], "AAA report").split(",")
    if len(fields) < 16:
        message = f"AAA report must have at least 16 fields, got {len(fields)}"
        raise FrameError(message)

    fix = _aaa_fix(fields, imei, server_time_ms)
    decoded = Decoded(fixes=[fix], device=imei)
    alarm = EVENT_ALARMS.get(integer(fields[0], "event"))
    if alarm is not None:
        decoded.events.append(alarm_event(fix, alarm))
    return decoded


def _aaa_fix(fields: list[str], imei: str, server_time_ms: int) -> Fix:
    event = integer(fields[0], "event")
    latitude = degrees(fields[1], "latitude", 90.0)
    longitude = degrees(fields[2], "longitude", 180.0)
    fix_time_ms = _yymmddhhmmss_ms(fields[3])
    if fields[4] not in ("A", "V"):
        message = f"validity must be 'A' or 'V', got {fields[4]!r}"
        raise FrameError(message)

    attributes: dict[str, Any] = {
        "event": event,
        "rssi": integer(fields[6], "GSM signal"),
        "hdop": number(fields[9], "HDOP"),
        "odometer": float(integer(fields[11], "odometer")),
        "hours": float(integer(fields[12], "run time")),
    }
    attributes.update(_io_attributes(fields[14]))
    attributes.update(_analog_attributes(fields[15]))
    alarm = EVENT_ALARMS.get(event)
    if alarm is not None:
        attributes["alarm"] = alarm

    return new_fix(
        imei,
        fix_time_ms,
        latitude,
        longitude,
        protocol=_NAME,
        server_time_ms=server_time_ms,
        valid=fields[4] == "A",
        speed_kmh=number(fields[7], "speed"),
        course=number(fields[8], "course"),
        altitude=number(fields[10], "altitude"),
        satellites=integer(fields[5], "satellites"),
        attributes=attributes,
    )


def _io_attributes(field: str) -> dict[str, bool]:
    """``input1``-``input8`` from the high byte, ``output1``-``output8`` the low."""
    if len(field) != 4:
        message = f"I/O status must be 4 hex digits, got {field!r}"
        raise FrameError(message)
    word = integer(field, "I/O status", base=16)
    attributes = {f"input{bit + 1}": bool(word >> (8 + bit) & 1) for bit in range(8)}
    attributes |= {f"output{bit + 1}": bool(word >> bit & 1) for bit in range(8)}
    return attributes


def _analog_attributes(field: str) -> dict[str, Any]:
    """Battery and power volts (decimal form), or the raw ADC counts (hex form)."""
    parts = field.split("|")
    if "." in field:
        names = ("battery", "power")
        pairs = zip(names, parts[:2], strict=False)
        return {name: number(part, name) for name, part in pairs if part}

    return {
        f"adc{position + 1}": integer(part, "analog value", base=16)
        for position, part in enumerate(parts[:5])
        if part
    }


# ---------------------------------------------------------------- CCC (binary)


def _decode_ccc(frame: bytes, start: int, imei: str, server_time_ms: int) -> Decoded:
    end = len(frame) - 5
    if end - start < _CCC_HEADER.size:
        message = f"CCC report is {end - start} bytes, shorter than its 8-byte header"
        raise FrameError(message)
    _version, record_size, _remaining = _CCC_HEADER.unpack_from(frame, start)
    body = end - start - _CCC_HEADER.size
    if record_size != _CCC_RECORD.size or body % _CCC_RECORD.size:
        message = (
            f"CCC records must be {_CCC_RECORD.size} bytes each; header says "
            f"{record_size} and the frame holds {body} bytes of records"
        )
        raise FrameError(message)

    records = memoryview(frame)[start + _CCC_HEADER.size : end]
    encoder = _CccWire(imei, server_time_ms)
    batch = encoder.batch(records)
    decoded = wire.decoded_batch(batch, encoder.alarms, encoder.times)
    decoded.device = imei
    decoded.reply = _server_command(chr(frame[2]), imei, f"CCC,{len(encoder.times)}")
    return decoded


def _attribute_format(name: str) -> tuple[bytes, int]:
    """A ``%``-format of the map entry of ``name``, and its length overhead.

    The format takes the entry length, the value length (one-byte varints: the
    values are short numbers) and the value; the entry length is the overhead
    plus the value length.
    """
    prefix = wire.entry_prefix(name)
    return ATTRIBUTES + b"%c" + prefix.replace(b"%", b"%%") + b"%c%b", len(prefix) + 1


#: The position, then satellites and valid (varints of one byte: satellites are
#: checked < 128).
_FIX_BODY = struct.Struct(POSITION.format + "BBBB")
if len(ATTRIBUTES) != 1 or len(FIXES) != 1:
    message = "the CCC encoder writes one-byte keys: Fix field numbers must stay < 16"
    raise RuntimeError(message)
_FIX_IN_BATCH = FIXES[0]
_ODOMETER, _ODOMETER_OVERHEAD = _attribute_format("odometer")
_HOURS, _HOURS_OVERHEAD = _attribute_format("hours")
#: Sets of the attributes that repeat from record to record (event, GSM
#: signal, HDOP, status, ADC, battery, power) kept before the cache starts over.
_CACHE_LIMIT = 4096
_steady_cache: dict[tuple[int, ...], bytes] = {}


def _steady_entries(steady: tuple[int, ...]) -> bytes:
    """The map entries of the steady attributes, built once per distinct set.

    ``str`` of an integer and ``repr`` of a float are what ``json.dumps`` writes.
    """
    event, rssi, hdop, status, adc1, battery, power = steady
    entries = b"".join(
        (
            wire.attribute_entry("event", str(event)),
            wire.attribute_entry("rssi", str(rssi)),
            wire.attribute_entry("hdop", repr(hdop / 10)),
            wire.attribute_entry("status", str(status)),
            wire.attribute_entry("adc1", str(adc1)),
            wire.attribute_entry("battery", repr(battery / 100)),
            wire.attribute_entry("power", repr(power / 100)),
        )
    )
    if len(_steady_cache) >= _CACHE_LIMIT:
        _steady_cache.clear()
    _steady_cache[steady] = entries
    return entries


class _CccWire:
    """Encodes CCC records straight into a ``FixBatch`` in wire format.

    Buffered uploads are the hot path: see :mod:`.wire`.  These bytes hold
    exactly what :func:`~.base.new_fix` would set (the tests compare the two),
    but for the fix time, which is cheaper to set on the parsed message.
    """

    def __init__(self, imei: str, server_time_ms: int) -> None:
        head = wire.fix_head(imei, server_time_ms, _NAME)
        #: The fix without its time: head, body, steady attributes, odometer
        #: and hours (each: entry length, value length, value).
        self.format = head.replace(b"%", b"%%") + b"%b%b" + _ODOMETER + _HOURS
        #: Fix time (ms) of every record, in order.
        self.times: list[int] = []
        #: Record index and alarm of every record whose event is an alarm.
        self.alarms: list[tuple[int, str]] = []

    def batch(self, records: memoryview) -> bytes:
        """The ``FixBatch`` of every 52-byte record in ``records``."""
        return b"".join(map(self.fix, _CCC_RECORD.iter_unpack(records)))

    def fix(self, record: tuple[int, ...]) -> bytes:
        """The ``FixBatch.fixes`` entry of one unpacked record."""
        (event, lat, lon, seconds, fix_flag, satellites, rssi, speed, course, hdop,
         altitude, odometer, runtime, _mcc, _mnc, _lac, _cell, status, adc1,
         battery, power, _fence) = record  # fmt: skip
        if not -90_000_000 <= lat <= 90_000_000 or not -180e6 <= lon <= 180e6:
            message = f"CCC record coordinates out of range: {lat / 1e6}, {lon / 1e6}"
            raise FrameError(message)
        if satellites > 0x7F:
            message = f"CCC record satellites must be below 128, got {satellites}"
            raise FrameError(message)
        if event in EVENT_ALARMS:
            self.alarms.append((len(self.times), EVENT_ALARMS[event]))
        self.times.append((seconds + _EPOCH_2000_S) * 1000)

        steady = (event, rssi, hdop, status, adc1, battery, power)
        odometer_text = b"%d.0" % odometer
        hours_text = b"%d.0" % runtime
        body = self.format % (
            _FIX_BODY.pack(
                LATITUDE, lat / 1e6, LONGITUDE, lon / 1e6, SPEED, speed,
                COURSE, course, ALTITUDE, altitude, SATELLITES, satellites,
                VALID, fix_flag == 1,
            ),
            _steady_cache.get(steady) or _steady_entries(steady),
            _ODOMETER_OVERHEAD + len(odometer_text), len(odometer_text),
            odometer_text,
            _HOURS_OVERHEAD + len(hours_text), len(hours_text), hours_text,
        )  # fmt: skip
        size = len(body)
        if size < 0x80:
            return bytes((_FIX_IN_BATCH, size)) + body
        return bytes((_FIX_IN_BATCH, size & 0x7F | 0x80, size >> 7)) + body


# ---------------------------------------------------------------- CCE (binary)


def _decode_cce(frame: bytes, start: int, imei: str, server_time_ms: int) -> Decoded:
    end = len(frame) - 5
    frame = frame[:end]  # reads past the data fail instead of reading the trailer
    try:
        _remaining, count = _CCE_HEADER.unpack_from(frame, start)
        position = start + _CCE_HEADER.size
        decoded = Decoded(device=imei)
        for _ in range(count):
            length = _U16.unpack_from(frame, position)[0]
            record_end = position + 2 + length
            if record_end > end:
                message = f"CCE record of {length} bytes runs past the frame"
                raise FrameError(message)
            values = _cce_values(frame, position + 4, record_end)
            _add_cce_fix(decoded, values, imei, server_time_ms)
            position = record_end
    except (struct.error, IndexError) as error:
        message = f"CCE report is truncated: {error}"
        raise FrameError(message) from error
    return decoded


def _cce_values(frame: bytes, position: int, end: int) -> dict[int, int]:
    """The tag values of one CCE record (variable-length ones are skipped)."""
    values: dict[int, int] = {}
    for width in (1, 2, 4):
        count = frame[position]
        position += 1
        for _ in range(count):
            tag, position = _cce_tag(frame, position)
            values[tag] = int.from_bytes(frame[position : position + width], "little")
            position += width
        _check_inside(position, end)

    count = frame[position]
    position += 1
    for _ in range(count):
        _tag, position = _cce_tag(frame, position)
        position += 1 + frame[position]
    _check_inside(position, end)
    return values


def _cce_tag(frame: bytes, position: int) -> tuple[int, int]:
    """A CCE tag (one byte, or two when the first is ``FE``) and what follows."""
    if frame[position] == 0xFE:
        return 0xFE00 | frame[position + 1], position + 2
    return frame[position], position + 1


def _check_inside(position: int, end: int) -> None:
    if position > end:
        message = "CCE record's tag lists run past its length"
        raise FrameError(message)


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


#: CCE tags kept as attributes: tag -> (name, divisor or None for an integer).
_CCE_ATTRIBUTES: dict[int, tuple[str, float | None]] = {
    0x07: ("rssi", None),
    0x0A: ("hdop", 10.0),
    0x0C: ("odometer", 1.0),
    0x0D: ("hours", 1.0),
    0x16: ("adc1", 100.0),
    0x17: ("adc2", 100.0),
    0x19: ("battery", 100.0),
    0x1A: ("power", 100.0),
}


def _add_cce_fix(
    decoded: Decoded, values: dict[int, int], imei: str, server_time_ms: int
) -> None:
    """Append the fix of one CCE record; a record with no position adds none."""
    if not {0x02, 0x03, 0x04} <= values.keys():
        return
    latitude = _signed(values[0x02], 32) / 1e6
    longitude = _signed(values[0x03], 32) / 1e6
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        message = f"CCE record coordinates out of range: {latitude}, {longitude}"
        raise FrameError(message)

    event = values.get(0x01, values.get(0x40))
    attributes: dict[str, Any] = {}
    if event is not None:
        attributes["event"] = event
    for tag, (name, divisor) in _CCE_ATTRIBUTES.items():
        if tag in values:
            raw = values[tag]
            attributes[name] = raw if divisor is None else raw / divisor
    if 0x15 in values:
        attributes |= {
            f"input{bit + 1}": bool(values[0x15] >> bit & 1) for bit in range(8)
        }
    if 0x14 in values:
        attributes |= {
            f"output{bit + 1}": bool(values[0x14] >> bit & 1) for bit in range(8)
        }
    alarm = EVENT_ALARMS.get(event) if event is not None else None
    if alarm is not None:
        attributes["alarm"] = alarm

    fix = new_fix(
        imei,
        (values[0x04] + _EPOCH_2000_S) * 1000,
        latitude,
        longitude,
        protocol=_NAME,
        server_time_ms=server_time_ms,
        valid=values.get(0x05, 0) > 0,
        speed_kmh=values.get(0x08),
        course=values.get(0x09),
        altitude=_signed(values[0x0B], 16) if 0x0B in values else None,
        satellites=values.get(0x06),
        attributes=attributes,
    )
    decoded.fixes.append(fix)
    if alarm is not None:
        decoded.events.append(alarm_event(fix, alarm))


def _yymmddhhmmss_ms(text: str) -> int:
    if len(text) != 12 or not text.isdigit():
        message = f"date and time must be yymmddhhmmss, got {text!r}"
        raise FrameError(message)
    year, month, day, hour, minute, second = (
        int(text[i : i + 2]) for i in range(0, 12, 2)
    )
    return utc_ms(2000 + year, month, day, hour, minute, second, "date and time")


def looks_like(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes start a Meitrack frame.

    Needs at least ``$$``, the data identifier and one length digit; whatever
    more was given (the rest of the length, the IMEI) must fit too.
    """
    if len(first_bytes) < 4 or first_bytes[:2] != b"$$":
        return False
    if not 0x41 <= first_bytes[2] <= 0x7A:
        return False
    length, comma, rest = first_bytes[3:].partition(b",")
    if not length.isdigit() or len(length) > _LENGTH_DIGITS:
        return False
    if not comma:
        return True
    imei, comma, rest = rest.partition(b",")
    if not (imei.isdigit() or (not imei and not comma)) or len(imei) > 20:
        return False
    return not comma or rest[:3].isalnum() or len(rest) < 3


PROTOCOL = TrackerProtocol(
    name=_NAME,
    default_port=5020,
    session=MeitrackSession,
    looks_like=looks_like,
    tcp=True,
    udp=False,
    text=False,
)
