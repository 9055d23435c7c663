"""GT06 / Concox: the binary protocol of GT06, GT06N, the JM and GT series and clones.

A frame is ``78 78``, a 1-byte length, the protocol number, its content, a 2-byte
serial number, the CRC-ITU (CRC-16/X-25) of length..serial, and ``0D 0A``.  Long
frames start ``79 79`` and carry a 2-byte length.  The length counts the protocol
number through the CRC, so it is at least 5.

What a session does with each protocol number:

- ``0x01`` login: an 8-byte BCD terminal id (the IMEI after a leading 0 nibble).
  The extended login adds a type id and a time-zone word (bits 15..4 the offset as
  a decimal ``hhmm`` number, bit 3 set for west); later GPS times are local times
  at that offset.  Without it they are UTC.
- ``0x10`` GPS, ``0x12`` GPS + cell, ``0x22`` GPS + cell + ACC, upload reason and
  re-upload flag, ``0x37`` the same plus modules, ``0x16``/``0x26``/``0x27`` GPS +
  cell + terminal status + alarm: one fix each.  The GPS block is date-time
  (``YY MM DD hh mm ss``), satellites (low nibble), latitude and longitude in
  1/1,800,000 degree, speed in **km/h**, and a word holding the course (bits
  0-9), north (bit 10), west (bit 11), GPS positioned (bit 12) and, on some
  models, ACC (bit 15, when bit 14 is set).
- ``0x13`` status and ``0x23`` heartbeat carry no position: they get their reply
  and produce no fix (so their terminal status, voltage and GSM level are dropped).
- ``0x8A`` time request: answered with the server's UTC time.
- ``0x15``/``0x21`` command answers, ``0x94`` information and ``0x80``-``0x82``
  produce nothing; every other protocol number of a short frame gets the plain
  acknowledgement, so the device stops resending it.

Attributes: ``ignition`` (ACC), from the course word when bit 14 says it is known,
from 0x22's ACC byte, or from bit 1 of the terminal-information byte; 0x22 adds
``event`` (upload reason), ``archive`` (only on re-uploaded records) and, when four
more bytes follow, ``odometer`` (m, as 0x12 does too); 0x37 adds ``odometer``,
``power`` (V) and the accuracy from its modules; 0x16/0x26/0x27 add
``status`` (the raw terminal byte), ``charge`` (bit 2), ``batteryLevel`` (voltage
level 0-6 as 0-100 %), ``rssi`` (GSM level 0-4), ``event`` (a non-zero alarm byte)
and ``alarm``: the alarm byte's meaning when it has one in
:data:`~pipeline.ingest.protocols.base.ALARMS`, else the terminal byte's alarm
code (bits 3-5).

Replies echo the packet's protocol number and serial number:
``78 78 05 <protocol> <serial> <CRC-ITU of 05..serial> 0D 0A`` (``79 79 00 05 ...``
for a long frame).  Every packet but the login needs a login first.
"""

from __future__ import annotations

import binascii
import struct
import time
from datetime import UTC, datetime
from typing import Final

from pipeline.ingest.protocols.base import (
    Decoded,
    FrameError,
    TrackerProtocol,
    TrackerSession,
    alarm_event,
    new_fix,
)
from pipeline.ingest.protocols.frames import cut_frames
from pipeline.model import Fix

__all__ = ["DEFAULT_PORT", "PROTOCOL", "Gt06Session", "crc_itu", "looks_like_gt06"]

DEFAULT_PORT: Final = 5023
NAME: Final = "gt06"

LOGIN: Final = 0x01
GPS: Final = 0x10
GPS_CELL: Final = 0x12
STATUS: Final = 0x13
GPS_CELL_STATUS: Final = 0x16
GPS_CELL_ACC: Final = 0x22
HEARTBEAT: Final = 0x23
ALARM: Final = 0x26
ALARM_FENCE: Final = 0x27
GPS_CELL_ACC_MODULES: Final = 0x37
TIME_REQUEST: Final = 0x8A

#: Packets that produce neither a fix nor a reply: command answers and information.
_SILENT: Final = frozenset({0x15, 0x21, 0x80, 0x81, 0x82, 0x94})
#: Packets without a position that are acknowledged in long frames too.
_ACKNOWLEDGED: Final = frozenset({STATUS, HEARTBEAT})

_SHORT_START: Final = 0x78
_LONG_START: Final = 0x79
_STOP: Final = b"\r\n"
_MIN_LENGTH: Final = 5  # protocol number, serial and CRC
_GPS_BYTES: Final = 18
_STATUS_BYTES: Final = 4  # terminal info, voltage level, GSM level, alarm
_MILEAGE_BYTES: Final = 4
_RAW_PER_DEGREE: Final = 1_800_000.0  # minutes x 30,000

# date, time, satellites, latitude, longitude, speed, course/status word
_GPS_BLOCK: Final = struct.Struct(">3s3BBIIBH")
_WORD: Final = struct.Struct(">H")
_MILEAGE: Final = struct.Struct(">I")

_COURSE_MASK: Final = 0x03FF
_NORTH: Final = 0x0400
_WEST: Final = 0x0800
_POSITIONED: Final = 0x1000
_ACC_KNOWN: Final = 0x4000
_ACC_ON: Final = 0x8000

# The alarm byte of 0x16/0x26/0x27 (Concox documents; Traccar reads the same codes).
_ALARM_CODES: Final = {
    0x01: "sos",
    0x02: "powerCut",
    0x03: "vibration",
    0x04: "geofenceEnter",
    0x05: "geofenceExit",
    0x06: "overspeed",
    0x09: "vibration",
    0x0E: "lowBattery",
    0x0F: "lowBattery",
    0x13: "tamper",
    0x14: "door",
    0x23: "fall",
    0x2C: "accident",
}
# Bits 3-5 of the terminal-information byte.
_TERMINAL_ALARMS: Final = {
    1: "vibration",
    2: "powerCut",
    3: "lowBattery",
    4: "sos",
    7: "removing",
}

# Attribute values are JSON inside the fix; these are the encodings used per record.
_JSON_BOOL: Final = ("false", "true")
_JSON_INT: Final = tuple(str(value) for value in range(256))
# Voltage level 0 (no power) .. 6 (very high), as a charge percentage.
_JSON_LEVEL_PERCENT: Final = tuple(str(round(level * 100 / 6, 1)) for level in range(7))

_REVERSED_BITS: Final = bytes(int(f"{value:08b}"[::-1], 2) for value in range(256))
_ONE_BYTE: Final = tuple(bytes((value,)) for value in range(256))


def crc_itu(data: bytes) -> int:
    """CRC-ITU as GT06 uses it: CRC-16/X-25 (reflected 0x1021, init and xorout 0xFFFF).

    ``binascii.crc_hqx`` computes the same polynomial unreflected, in C; reversing
    the bits of every input byte and of the result turns it into the reflected
    CRC without a Python loop per byte.

    Examples
    --------
    >>> hex(crc_itu(b"123456789"))
    '0x906e'
    """
    return _register(data, 0xFFFF) ^ 0xFFFF


def looks_like_gt06(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes start a GT06 frame.

    Needs the start marker and a plausible length; when the whole first frame is
    there, its stop bytes and CRC must hold too.
    """
    if len(first_bytes) < 4 or first_bytes[0] != first_bytes[1]:
        return False
    if first_bytes[0] == _SHORT_START:
        length, header = first_bytes[2], 3
    elif first_bytes[0] == _LONG_START:
        length, header = _WORD.unpack_from(first_bytes, 2)[0], 4
    else:
        return False
    total = header + length + 2
    if length < _MIN_LENGTH or total > Gt06Session.max_frame_bytes:
        return False
    if len(first_bytes) < total:
        return True
    frame = first_bytes[:total]
    return frame.endswith(_STOP) and _carried_crc(frame) == crc_itu(frame[2:-4])


class Gt06Session(TrackerSession):
    """Decoder state of one GT06 connection: the login and its time zone."""

    protocol = NAME
    max_frame_bytes = 2048

    def __init__(self) -> None:
        super().__init__()
        #: Offset of the device's clock from UTC (ms), from an extended login.
        self.zone_offset_ms = 0

    def split(self, buffer: bytearray) -> list[bytes]:
        """Remove the complete frames at the front of ``buffer`` and return them.

        When bad bytes follow good frames, the good frames are returned and the
        bad bytes stay at the front (at most :attr:`max_frame_bytes` of them), so
        the next call raises the reason.
        """
        return cut_frames(buffer, self._frame_end, keep=self.max_frame_bytes)

    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one frame: a login, a location, a status or a request."""
        header = _checked_header(frame)
        kind = frame[header]
        start, end = header + 1, len(frame) - 6

        if kind == LOGIN:
            return self._login(frame, start, end, header)
        if self.device is None:
            message = f"gt06 packet 0x{kind:02X} before login"
            raise FrameError(message)

        if kind in _LOCATIONS:
            return self._location(frame, kind, start, end, header, server_time_ms)
        if kind == TIME_REQUEST:
            clock = time.gmtime(server_time_ms // 1000)
            content = bytes((clock.tm_year - 2000, *clock[1:6]))
            return Decoded(reply=_reply(frame, header, content))
        if kind in _SILENT:
            return Decoded()
        if kind in _ACKNOWLEDGED or header == 3:
            return Decoded(reply=_plain_reply(frame, header))
        return Decoded()

    def _frame_end(self, buffer: bytearray, position: int) -> int | None:
        """Where the frame at ``position`` ends; ``None`` while it is incomplete."""
        available = len(buffer) - position
        marker = buffer[position]
        if marker != _SHORT_START and marker != _LONG_START:
            message = f"gt06 frame must start with 78 78 or 79 79, got {marker:02X}"
            raise FrameError(message)
        if available < 4:
            if available >= 2 and buffer[position + 1] != marker:
                message = f"gt06 frame starts with {marker:02X} then "
                message += f"{buffer[position + 1]:02X}"
                raise FrameError(message)
            return None

        if buffer[position + 1] != marker:
            message = f"gt06 frame starts with {marker:02X} {buffer[position + 1]:02X}"
            raise FrameError(message)
        if marker == _SHORT_START:
            length = buffer[position + 2]
            size = length + 5
        else:
            length = buffer[position + 2] << 8 | buffer[position + 3]
            size = length + 6
        if length < _MIN_LENGTH:
            message = f"gt06 length field {length} is below the minimum of 5"
            raise FrameError(message)
        if size > self.max_frame_bytes:
            message = f"gt06 length field {length} makes a {size}-byte frame, "
            message += f"over the {self.max_frame_bytes}-byte limit"
            raise FrameError(message)

        if available < size:
            return None
        if buffer[position + size - 2 : position + size] != _STOP:
            message = f"gt06 frame of {size} bytes does not end with 0D 0A"
            raise FrameError(message)
        return position + size

    def _login(self, frame: bytes, start: int, end: int, header: int) -> Decoded:
        """Identify the device; an extended login also gives its time zone."""
        if end - start < 8:
            message = f"gt06 login carries {end - start} bytes, needs an 8-byte id"
            raise FrameError(message)
        digits = frame[start : start + 8].hex()[1:]
        if not digits.isdigit():
            message = f"gt06 terminal id must be BCD digits, got {digits!r}"
            raise FrameError(message)

        zone_offset_ms = 0
        if end - start >= 12:
            zone_offset_ms = _zone_offset_ms(_WORD.unpack_from(frame, start + 10)[0])
        self.zone_offset_ms = zone_offset_ms
        self.device = digits
        return Decoded(device=digits, reply=_plain_reply(frame, header))

    def _location(
        self,
        frame: bytes,
        kind: int,
        start: int,
        end: int,
        header: int,
        server_time_ms: int,
    ) -> Decoded:
        """One fix from a GPS block and whatever follows it in this packet type."""
        if end - start < _GPS_BYTES:
            message = f"gt06 packet 0x{kind:02X} carries {end - start} bytes, "
            message += f"needs {_GPS_BYTES} for its GPS block"
            raise FrameError(message)
        (date, hour, minute, second, satellites, raw_latitude, raw_longitude, speed,
         word) = _GPS_BLOCK.unpack_from(frame, start)  # fmt: skip

        day_start_ms = _DAY_STARTS.get(date)
        if day_start_ms is None:
            day_start_ms = _day_start_ms(date)
        if hour > 23 or minute > 59 or second > 59:
            message = f"gt06 time {hour:02d}:{minute:02d}:{second:02d} is not a time"
            raise FrameError(message)
        seconds = (hour * 60 + minute) * 60 + second
        fix_time_ms = day_start_ms + seconds * 1000 - self.zone_offset_ms

        latitude = raw_latitude / _RAW_PER_DEGREE
        longitude = raw_longitude / _RAW_PER_DEGREE
        course = word & _COURSE_MASK
        if latitude > 90.0 or longitude > 180.0 or course > 360:
            message = f"gt06 latitude {latitude:.6f}, longitude {longitude:.6f} "
            message += f"or course {course} is out of range"
            raise FrameError(message)

        fix = new_fix(
            self.device or "",
            fix_time_ms,
            latitude if word & _NORTH else -latitude,
            -longitude if word & _WEST else longitude,
            protocol=NAME,
            server_time_ms=server_time_ms,
            valid=word & _POSITIONED != 0,
            speed_kmh=float(speed),
            course=float(course),
            satellites=satellites & 0x0F,
        )
        if word & _ACC_KNOWN:
            fix.attributes["ignition"] = _JSON_BOOL[word & _ACC_ON != 0]

        alarm = _LOCATIONS[kind](fix, frame, start + _GPS_BYTES, end)
        reply = _plain_reply(frame, header)
        if alarm is None:
            return Decoded(fixes=[fix], reply=reply)
        return Decoded(fixes=[fix], events=[alarm_event(fix, alarm)], reply=reply)


def _after_gps(fix: Fix, frame: bytes, start: int, end: int) -> str | None:
    """0x10: the GPS block is all that is read."""
    return None


def _after_gps_cell(fix: Fix, frame: bytes, start: int, end: int) -> str | None:
    """0x12: a cell block, then on some models the mileage (metres)."""
    tail = _cell_end(frame, start, end)
    if end - tail == _MILEAGE_BYTES:
        odometer = _MILEAGE.unpack_from(frame, tail)[0]
        fix.attributes["odometer"] = str(odometer)
    return None


def _after_gps_cell_acc(fix: Fix, frame: bytes, start: int, end: int) -> str | None:
    """0x22: a cell block, ACC, the upload reason, the re-upload flag, [mileage]."""
    tail = _acc_end(fix, frame, _cell_end(frame, start, end), end)
    if end - tail == _MILEAGE_BYTES:
        fix.attributes["odometer"] = str(_MILEAGE.unpack_from(frame, tail)[0])
    return None


def _after_gps_cell_acc_modules(
    fix: Fix, frame: bytes, start: int, end: int
) -> str | None:
    """0x37: as 0x22, then modules of a 2-byte type, a 1-byte length and a value.

    Read: 0x0027 external power (0.01 V), 0x002E mileage (m), 0x003B accuracy
    (0.01 m); other modules are skipped.
    """
    position = _acc_end(fix, frame, _cell_end(frame, start, end), end)
    while position + 3 <= end:
        module, size = _WORD.unpack_from(frame, position)[0], frame[position + 2]
        value, position = position + 3, position + 3 + size
        if position > end:
            message = f"gt06 module 0x{module:04X} runs {position - end} bytes past "
            message += "the content"
            raise FrameError(message)
        if module == 0x0027 and size == 2:
            volts = _WORD.unpack_from(frame, value)[0] / 100
            fix.attributes["power"] = str(volts)
        elif module == 0x002E and size == 4:
            fix.attributes["odometer"] = str(_MILEAGE.unpack_from(frame, value)[0])
        elif module == 0x003B and size == 2:
            fix.accuracy = _WORD.unpack_from(frame, value)[0] / 100
    return None


def _acc_end(fix: Fix, frame: bytes, tail: int, end: int) -> int:
    """Read ACC, the upload reason and the re-upload flag at ``tail``; their end.

    ``archive`` is set only on re-uploaded (buffered) records.
    """
    if end - tail < 3:
        message = f"gt06 packet ends {end - tail} bytes after its cell block, "
        message += "needs 3 (ACC, upload mode, re-upload)"
        raise FrameError(message)
    attributes = fix.attributes
    attributes["ignition"] = _JSON_BOOL[frame[tail] != 0]
    attributes["event"] = _JSON_INT[frame[tail + 1]]
    if frame[tail + 2]:
        attributes["archive"] = "true"
    return tail + 3


def _after_gps_cell_status(fix: Fix, frame: bytes, start: int, end: int) -> str | None:
    """0x16/0x26/0x27: a length-prefixed cell block, terminal status and alarm."""
    cell_length = frame[start] if start < end else 0
    tail = start + max(cell_length, 1)
    if end - tail < _STATUS_BYTES:
        message = f"gt06 status packet ends {end - tail} bytes after its cell block, "
        message += f"needs {_STATUS_BYTES}"
        raise FrameError(message)

    terminal, voltage, gsm, code = frame[tail : tail + 4]
    attributes = fix.attributes
    attributes["status"] = _JSON_INT[terminal]
    attributes["ignition"] = _JSON_BOOL[terminal >> 1 & 0x01]
    attributes["charge"] = _JSON_BOOL[terminal >> 2 & 0x01]
    if voltage <= 6:
        attributes["batteryLevel"] = _JSON_LEVEL_PERCENT[voltage]
    attributes["rssi"] = _JSON_INT[gsm]
    if code:
        attributes["event"] = _JSON_INT[code]

    alarm = _ALARM_CODES.get(code) or _TERMINAL_ALARMS.get(terminal >> 3 & 0x07)
    if alarm is not None:
        attributes["alarm"] = f'"{alarm}"'
    return alarm


_LOCATIONS: Final = {
    GPS: _after_gps,
    GPS_CELL: _after_gps_cell,
    GPS_CELL_ACC: _after_gps_cell_acc,
    GPS_CELL_ACC_MODULES: _after_gps_cell_acc_modules,
    GPS_CELL_STATUS: _after_gps_cell_status,
    ALARM: _after_gps_cell_status,
    ALARM_FENCE: _after_gps_cell_status,
}


def _cell_end(frame: bytes, start: int, end: int) -> int:
    """End of a cell block without a length byte.

    The block is MCC (2 bytes, bit 15 set when the MNC takes 2 bytes), MNC, LAC
    (2 bytes) and cell id (3 bytes).
    """
    if end - start < 2:
        message = f"gt06 cell block needs its MCC, got {end - start} bytes"
        raise FrameError(message)
    mnc_bytes = 2 if frame[start] & 0x80 else 1
    tail = start + 2 + mnc_bytes + 2 + 3
    if tail > end:
        message = f"gt06 cell block runs {tail - end} bytes past the content"
        raise FrameError(message)
    return tail


def _checked_header(frame: bytes) -> int:
    """Header size (3 or 4) of a whole frame whose length, stop bytes and CRC hold."""
    size = len(frame)
    if size >= 10 and frame[0] == _SHORT_START and frame[1] == _SHORT_START:
        header, length = 3, frame[2]
    elif size >= 11 and frame[0] == _LONG_START and frame[1] == _LONG_START:
        header, length = 4, frame[2] << 8 | frame[3]
    else:
        message = f"gt06 frame must start with 78 78 or 79 79, got {frame[:2].hex()}"
        raise FrameError(message)
    if header + length + 2 != size or length < _MIN_LENGTH:
        message = f"gt06 length field {length} does not match a {size}-byte frame"
        raise FrameError(message)
    if frame[-2] != 0x0D or frame[-1] != 0x0A:
        message = "gt06 frame does not end with 0D 0A"
        raise FrameError(message)

    carried, computed = frame[-4] << 8 | frame[-3], crc_itu(frame[2:-4])
    if carried != computed:
        message = f"gt06 bad CRC: frame carries {carried:04X}, content gives "
        message += f"{computed:04X}"
        raise FrameError(message)
    return header


def _carried_crc(frame: bytes) -> int:
    """The CRC a whole frame carries before its stop bytes."""
    return frame[-4] << 8 | frame[-3]


def _reply(frame: bytes, header: int, content: bytes = b"") -> bytes:
    """The reply to ``frame`` with ``content``: its protocol number and serial."""
    kind_and_content = _ONE_BYTE[frame[header]] + content
    serial = frame[-6:-4]
    length = _MIN_LENGTH + len(content)
    if header == 3:
        body = _ONE_BYTE[length] + kind_and_content + serial
        start = b"\x78\x78"
    else:
        body = _WORD.pack(length) + kind_and_content + serial
        start = b"\x79\x79"
    return start + body + _WORD.pack(crc_itu(body)) + _STOP


def _register(data: bytes, initial: int) -> int:
    """The CRC-ITU register after ``data`` from ``initial``, before the final XOR."""
    reflected = binascii.crc_hqx(data.translate(_REVERSED_BITS), initial)
    low, high = _REVERSED_BITS[reflected & 0xFF], _REVERSED_BITS[reflected >> 8]
    return low << 8 | high


# A plain reply differs only by protocol number and serial.  The CRC is linear, so
# its value is a per-protocol-number constant XOR one term per serial byte.
_SERIAL_HIGH_TERMS: Final = tuple(_register(bytes((b, 0)), 0) for b in range(256))
_SERIAL_LOW_TERMS: Final = tuple(_register(bytes((0, b)), 0) for b in range(256))
_SHORT_REPLY_BASES: Final = tuple(
    _register(b"\x05" + kind + b"\x00\x00", 0xFFFF) ^ 0xFFFF for kind in _ONE_BYTE
)
_LONG_REPLY_BASES: Final = tuple(
    _register(b"\x00\x05" + kind + b"\x00\x00", 0xFFFF) ^ 0xFFFF for kind in _ONE_BYTE
)
_SHORT_REPLY_HEADS: Final = tuple(b"\x78\x78\x05" + kind for kind in _ONE_BYTE)
_LONG_REPLY_HEADS: Final = tuple(b"\x79\x79\x00\x05" + kind for kind in _ONE_BYTE)


def _plain_reply(frame: bytes, header: int) -> bytes:
    """The content-less reply to ``frame`` (same bytes as ``_reply(frame, header)``)."""
    kind = frame[header]
    crc = _SERIAL_HIGH_TERMS[frame[-6]] ^ _SERIAL_LOW_TERMS[frame[-5]]
    if header == 3:
        crc ^= _SHORT_REPLY_BASES[kind]
        head = _SHORT_REPLY_HEADS[kind]
    else:
        crc ^= _LONG_REPLY_BASES[kind]
        head = _LONG_REPLY_HEADS[kind]
    return head + frame[-6:-4] + _WORD.pack(crc) + _STOP


#: Epoch ms of the start of each GT06 date seen (3 raw bytes: year, month, day).
#: Bounded: only valid dates of years 2000-2099 are stored.
_DAY_STARTS: dict[bytes, int] = {}


def _day_start_ms(date: bytes) -> int:
    """Epoch ms of the start of a GT06 date (2-digit year since 2000), UTC."""
    year, month, day = date
    if year > 99:
        message = f"gt06 year byte {year} is beyond 99"
        raise FrameError(message)
    try:
        moment = datetime(2000 + year, month, day, tzinfo=UTC)
    except ValueError as error:
        message = f"gt06 date 20{year:02d}-{month:02d}-{day:02d} is not a date"
        raise FrameError(message) from error
    start_ms = int(moment.timestamp()) * 1000
    _DAY_STARTS[date] = start_ms
    return start_ms


def _zone_offset_ms(word: int) -> int:
    """The clock offset (ms, east positive) of a login's time-zone/language word."""
    hours, minutes = divmod(word >> 4, 100)
    if hours > 14 or minutes > 59:
        message = f"gt06 time zone {hours:02d}:{minutes:02d} is out of range"
        raise FrameError(message)
    offset_ms = (hours * 60 + minutes) * 60_000
    return -offset_ms if word & 0x08 else offset_ms


PROTOCOL: Final = TrackerProtocol(
    name=NAME,
    default_port=DEFAULT_PORT,
    session=Gt06Session,
    looks_like=looks_like_gt06,
    tcp=True,
    udp=False,
    text=False,
)
