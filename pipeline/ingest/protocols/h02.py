"""H02: the protocol of Sinotrack and many clones, in text and binary form.

**Text** frames run from ``*`` to ``#``: ``*HQ,<id>,<type>,...#`` (the two letters
after ``*`` are a maker code; ``HQ`` and ``TH`` are common).  Reports that carry a
position (``V1``, ``V2``, ``VI1``, ``V19``, ``V4`` command answers) hold the block
``hhmmss,A|V,ddmm.mmmm,N|S,dddmm.mmmm,E|W,<speed knots>,<course>,[battery,]ddmmyy``
and then an 8-hex-digit status word.  Date and time are UTC.  Some firmware writes
coordinates as ``-dd-mm.mmmm``.

**Binary** frames start with ``$`` and have no terminator: 32 bytes with a 5-byte
BCD id (10 digits), 45 bytes with the same layout and extra data, or 42 bytes with
an 8-byte id (15 digits).  The layout after the id: BCD ``hhmmss ddmmyy``, BCD
latitude (``dd mm mmmm``), a battery byte, BCD longitude (``ddd mm mmmm``) whose
last nibble holds flags (bit 1 valid, bit 2 north, bit 3 east), 3 BCD digits of
speed in knots, 3 of course, and the 4-byte status word.  On a TCP stream the
frame length is learned from the first binary frame: the next frame's ``$`` or
``*`` right after 32, 42 or 45 bytes, or a read of exactly that many bytes (so a
first read of exactly 32 bytes is a 32-byte frame, as in Traccar, even if the
device sends 45: give ``binary_length`` when that matters).

The **status word** is active-low: bit 1 or bit 18 clear is SOS, bit 19 clear a
power cut, bit 2 clear overspeed, bit 0 clear vibration (one alarm is reported, in
that order); bit 10 set is ignition on.  Fixes carry ``status`` (the raw word),
``ignition``, ``alarm`` when one is raised, ``batteryLevel`` (%) from the binary
battery byte (levels 1-6, or a percentage up to 100), and ``odometer`` plus the
altitude when a text report appends ``odometer,temp,fuel,altitude,lac,cid``.

**Replies**: a text ``V1`` gets ``*HQ,<id>,V4,V1,<yyyyMMddHHmmss server UTC>#``; a
heartbeat (``V0``, ``HTBT``) is echoed up to its type field (``*HQ,<id>,V0#``);
``NBR`` (cell towers) gets ``*HQ,<id>,V4,NBR,<time>#``.  Binary reports and every
other type get none.  Speeds are knots on the wire and km/h in the fix.
"""

from __future__ import annotations

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

__all__ = [
    "BINARY_LENGTHS",
    "DEFAULT_PORT",
    "KNOTS_TO_KMH",
    "PROTOCOL",
    "H02Session",
    "looks_like_h02",
]

DEFAULT_PORT: Final = 5013
NAME: Final = "h02"
KNOTS_TO_KMH: Final = 1.852

#: The binary frame lengths a session recognises: short, 8-byte id, long.
BINARY_LENGTHS: Final = (32, 42, 45)
_SHORT_ID_LENGTHS: Final = (32, 45)
_LONG_ID_LENGTH: Final = 42

_TEXT_START: Final = ord("*")
_TEXT_END: Final = b"#"
_BINARY_START: Final = ord("$")
_FRAME_STARTS: Final = b"$*"
_LINE_BREAKS: Final = b"\r\n"
_MAX_ID_DIGITS: Final = 20

# BCD value of a byte, or -1 when a nibble is not a decimal digit.
_BCD: Final = tuple(
    (value >> 4) * 10 + (value & 0x0F) if value >> 4 < 10 and value & 0x0F < 10 else -1
    for value in range(256)
)
#: The bytes whose two nibbles are decimal digits.
_BCD_BYTES: Final = bytes(value for value in range(256) if _BCD[value] >= 0)
_STATUS: Final = struct.Struct(">I")

_SOS_BITS: Final = 1 << 1 | 1 << 18
_POWER_CUT_BIT: Final = 1 << 19
_OVERSPEED_BIT: Final = 1 << 2
_VIBRATION_BIT: Final = 1 << 0
_IGNITION_BIT: Final = 1 << 10
_ALARM_BITS: Final = _SOS_BITS | _POWER_CUT_BIT | _OVERSPEED_BIT | _VIBRATION_BIT

_JSON_BOOL: Final = ("false", "true")


def _battery_percent(value: int) -> str | None:
    """The binary battery byte as a JSON percentage: levels 1-6, or 7-100 as is."""
    if value == 0 or value > 100:
        return None
    if value <= 3:
        return str((value - 1) * 10)
    if value <= 6:
        return str((value - 1) * 20)
    return str(value)


_JSON_BATTERY: Final = tuple(_battery_percent(value) for value in range(256))


def looks_like_h02(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes start an H02 frame.

    Text: ``*``, two letters and a comma.  Binary: ``$`` then a BCD id and a BCD
    time and date where a 5- or 8-byte id puts them (so Meitrack's ``$$`` and NMEA
    sentences are not claimed).
    """
    if first_bytes[:1] == b"*":
        return (
            len(first_bytes) >= 4
            and first_bytes[1:3].isalpha()
            and first_bytes[3:4] == b","
        )
    if first_bytes[:1] != b"$" or len(first_bytes) < 12:
        return False
    if _bcd_clock_at(first_bytes, 6):
        return min(_BCD[value] for value in first_bytes[1:6]) >= 0
    return len(first_bytes) >= 15 and _bcd_clock_at(first_bytes, 9)


class H02Session(TrackerSession):
    """Decoder state of one H02 connection: the device and the binary frame length.

    Parameters
    ----------
    binary_length
        The length of the device's binary frames when known in advance (one of
        :data:`BINARY_LENGTHS`); ``None`` learns it from the first binary frame.
    """

    protocol = NAME
    max_frame_bytes = 1024

    def __init__(self, binary_length: int | None = None) -> None:
        super().__init__()
        if binary_length is not None and binary_length not in BINARY_LENGTHS:
            message = f"binary_length must be one of {BINARY_LENGTHS}, "
            message += f"got {binary_length!r}"
            raise ValueError(message)
        #: Length of this device's binary frames, once known.
        self.binary_length = binary_length

    def split(self, buffer: bytearray) -> list[bytes]:
        """Remove the complete frames at the front of ``buffer`` and return them.

        Line breaks between frames are dropped.  When bad bytes follow good
        frames, the good frames are returned and the bad bytes stay at the front
        (at most :attr:`max_frame_bytes` of them), so the next call raises.
        """
        return cut_frames(
            buffer, self._frame_end, keep=self.max_frame_bytes, skip=_LINE_BREAKS
        )

    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one text or binary frame."""
        if frame[:1] == b"$":
            return self._decode_binary(frame, server_time_ms)
        if frame[:1] == b"*":
            return self._decode_text(frame, server_time_ms)
        message = f"h02 frame must start with '*' or '$', got {frame[:1]!r}"
        raise FrameError(message)

    def _frame_end(self, buffer: bytearray, position: int) -> int | None:
        """Where the frame at ``position`` ends; ``None`` while it is incomplete."""
        available = len(buffer) - position
        marker = buffer[position]

        if marker == _TEXT_START:
            limit = position + self.max_frame_bytes
            end = buffer.find(_TEXT_END, position, limit)
            if end >= 0:
                return end + 1
            if available >= self.max_frame_bytes:
                message = f"h02 text frame has no '#' in {self.max_frame_bytes} bytes"
                raise FrameError(message)
            return None
        if marker == _BINARY_START:
            size = self._binary_size(buffer, position, available)
            return None if size is None else position + size

        message = f"h02 frame must start with '*' or '$', got {marker:02X}"
        raise FrameError(message)

    def _binary_size(
        self, buffer: bytearray, position: int, available: int
    ) -> int | None:
        """Size of the binary frame at ``position``, learning it on first sight."""
        if self.binary_length is not None:
            return self.binary_length if available >= self.binary_length else None
        if available < 15:
            return None

        short_id = _bcd_clock_at(buffer, position + 6)
        candidates: tuple[int, ...] = _SHORT_ID_LENGTHS if short_id else ()
        if _bcd_clock_at(buffer, position + 9):
            candidates += (_LONG_ID_LENGTH,)
        if not candidates:
            message = "h02 binary frame has no BCD time and date after its id"
            raise FrameError(message)

        for size in candidates:
            if available > size and buffer[position + size] in _FRAME_STARTS:
                self.binary_length = size
                return size
        if available in candidates:
            self.binary_length = available
            return available
        if available > max(candidates):
            message = f"h02 binary frame is none of {BINARY_LENGTHS} bytes long"
            raise FrameError(message)
        return None

    def _decode_binary(self, frame: bytes, server_time_ms: int) -> Decoded:
        """One fix from a 32-, 42- or 45-byte binary report (no reply)."""
        size = len(frame)
        if size == _LONG_ID_LENGTH:
            device, at = frame[1:9].hex()[:15], 9
        elif size in _SHORT_ID_LENGTHS:
            device, at = frame[1:6].hex(), 6
        else:
            message = f"h02 binary frame of {size} bytes; expected {BINARY_LENGTHS}"
            raise FrameError(message)
        if not device.isdigit():
            message = f"h02 binary id must be BCD digits, got {device!r}"
            raise FrameError(message)

        if (
            frame[at : at + 10].translate(None, _BCD_BYTES)
            or frame[at + 11 : at + 15].translate(None, _BCD_BYTES)
            or frame[at + 16 : at + 19].translate(None, _BCD_BYTES)
            or frame[at + 15] > 0x9F
        ):
            raise FrameError(_bcd_error(frame, at))

        fix_time_ms = _binary_time_ms(frame, at)
        latitude, longitude, valid = _binary_position(frame, at + 6)
        speed_knots, course = _binary_motion(frame, at + 16)
        status = _STATUS.unpack_from(frame, at + 19)[0]

        fix = new_fix(
            device,
            fix_time_ms,
            latitude,
            longitude,
            protocol=NAME,
            server_time_ms=server_time_ms,
            valid=valid,
            speed_kmh=speed_knots * KNOTS_TO_KMH,
            course=float(course),
        )
        battery = _JSON_BATTERY[frame[at + 10]]
        if battery is not None:
            fix.attributes["batteryLevel"] = battery
        self.device = device
        return _report(fix, status, device, None)

    def _decode_text(self, frame: bytes, server_time_ms: int) -> Decoded:
        """A text report: heartbeat, cell report, position report or other."""
        fields = _text_fields(frame)
        device = fields[1] or self.device
        if device is None:
            message = "h02 text frame names no device and none was identified"
            raise FrameError(message)
        if not device.isdigit() or len(device) > _MAX_ID_DIGITS:
            message = f"h02 device id must be 1-{_MAX_ID_DIGITS} digits, got {device!r}"
            raise FrameError(message)
        self.device = device
        kind = fields[2]

        if kind in ("V0", "HTBT"):
            echo = ",".join(fields[:3]) + "#"
            return Decoded(device=device, reply=echo.encode("ascii"))
        if kind == "NBR":
            return Decoded(device=device, reply=_v4_reply(fields, server_time_ms))

        reply = _v4_reply(fields, server_time_ms) if kind == "V1" else None
        block = _position_block(fields)
        if block is None or not fields[block + 2] or not fields[block + 4]:
            return Decoded(device=device, reply=reply)
        fix, status = _text_fix(fields, block, device, server_time_ms)
        return _report(fix, status, device, reply)


def _report(fix: Fix, status: int | None, device: str, reply: bytes | None) -> Decoded:
    """The decoded report of a fix, with the attributes and alarm of its status."""
    if status is None:
        return Decoded(fixes=[fix], device=device, reply=reply)
    attributes = fix.attributes
    attributes["status"] = str(status)
    attributes["ignition"] = _JSON_BOOL[status & _IGNITION_BIT != 0]

    if status & _ALARM_BITS == _ALARM_BITS:
        return Decoded(fixes=[fix], device=device, reply=reply)
    alarm = _status_alarm(status)
    if alarm is None:
        return Decoded(fixes=[fix], device=device, reply=reply)
    attributes["alarm"] = f'"{alarm}"'
    events = [alarm_event(fix, alarm)]
    return Decoded(fixes=[fix], events=events, device=device, reply=reply)


def _status_alarm(status: int) -> str | None:
    """The alarm an active-low status word raises, most urgent first."""
    if status & _SOS_BITS != _SOS_BITS:
        return "sos"
    if not status & _POWER_CUT_BIT:
        return "powerCut"
    if not status & _OVERSPEED_BIT:
        return "overspeed"
    if not status & _VIBRATION_BIT:
        return "vibration"
    return None


def _bcd_clock_at(data: bytes | bytearray, at: int) -> bool:
    """Whether six bytes at ``at`` read as BCD ``hhmmss ddmmyy``."""
    if len(data) < at + 6:
        return False
    hour, minute, second, day, month, year = (
        _BCD[value] for value in data[at : at + 6]
    )
    return (
        0 <= hour < 24
        and 0 <= minute < 60
        and 0 <= second < 60
        and 1 <= day <= 31
        and 1 <= month <= 12
        and year >= 0
    )


def _bcd_error(frame: bytes, at: int) -> str:
    """Which field of a binary report holds a nibble that is not a decimal digit."""
    if frame[at : at + 6].translate(None, _BCD_BYTES):
        return f"h02 binary time {frame[at : at + 6].hex()} is not BCD"
    if frame[at + 16 : at + 19].translate(None, _BCD_BYTES):
        return (
            f"h02 binary speed and course {frame[at + 16 : at + 19].hex()} are not BCD"
        )
    return f"h02 binary coordinates {frame[at + 6 : at + 16].hex()} are not BCD"


def _binary_time_ms(frame: bytes, at: int) -> int:
    """Epoch ms of the BCD ``hhmmss ddmmyy`` at ``at`` (UTC), digits checked."""
    bcd = _BCD
    hour, minute, second = bcd[frame[at]], bcd[frame[at + 1]], bcd[frame[at + 2]]
    if hour > 23 or minute > 59 or second > 59:
        message = f"h02 time {hour:02d}:{minute:02d}:{second:02d} is not a time"
        raise FrameError(message)

    date = frame[at + 3 : at + 6]
    day_start_ms = _DAY_STARTS.get(date)
    if day_start_ms is None:
        day_start_ms = _day_start_ms(bcd[date[2]], bcd[date[1]], bcd[date[0]])
        _DAY_STARTS[date] = day_start_ms
    return day_start_ms + ((hour * 60 + minute) * 60 + second) * 1000


def _binary_position(frame: bytes, at: int) -> tuple[float, float, bool]:
    """Latitude, longitude (degrees) and validity from the BCD block at ``at``.

    Latitude is ``dd mm mmmm`` (4 bytes), then a battery byte, then longitude
    ``ddd mm mmmm`` plus a flag nibble (5 bytes); the digits are checked.
    """
    bcd = _BCD
    lat_degrees, lat_minutes = bcd[frame[at]], bcd[frame[at + 1]]
    lat_fraction = bcd[frame[at + 2]] * 100 + bcd[frame[at + 3]]
    second, third, last = frame[at + 6], frame[at + 7], frame[at + 9]
    lon_degrees = bcd[frame[at + 5]] * 10 + (second >> 4)
    lon_minutes = (second & 0x0F) * 10 + (third >> 4)
    lon_fraction = (third & 0x0F) * 1000 + bcd[frame[at + 8]] * 10 + (last >> 4)
    if lat_minutes > 59 or lon_minutes > 59 or lat_degrees > 89 or lon_degrees > 179:
        _degrees(lat_degrees, lat_minutes + lat_fraction / 10_000, 90)
        _degrees(lon_degrees, lon_minutes + lon_fraction / 10_000, 180)

    latitude = lat_degrees + (lat_minutes + lat_fraction / 10_000) / 60
    longitude = lon_degrees + (lon_minutes + lon_fraction / 10_000) / 60
    flags = last & 0x0F
    latitude = latitude if flags & 0x04 else -latitude
    longitude = longitude if flags & 0x08 else -longitude
    return latitude, longitude, flags & 0x02 != 0


def _binary_motion(frame: bytes, at: int) -> tuple[int, int]:
    """Speed (knots) and course (degrees): 3 + 3 BCD digits at ``at``, checked."""
    middle = frame[at + 1]
    course = (middle & 0x0F) * 100 + _BCD[frame[at + 2]]
    if course > 360:
        message = f"h02 course {course} is out of range"
        raise FrameError(message)
    return _BCD[frame[at]] * 10 + (middle >> 4), course


def _degrees(degrees: int, minutes: float, limit: int) -> float:
    """Degrees and minutes as decimal degrees, checked against ``limit``."""
    value = degrees + minutes / 60
    if minutes >= 60 or value > limit:
        message = f"h02 coordinate {degrees} deg {minutes:.4f} min is out of range"
        raise FrameError(message)
    return value


def _text_fields(frame: bytes) -> list[str]:
    """The comma-separated fields of ``*XX,<id>,<type>,...#``, without ``*``/``#``."""
    try:
        sentence = frame.decode("ascii")
    except UnicodeDecodeError as error:
        message = "h02 text frame holds non-ASCII bytes"
        raise FrameError(message) from error
    if not sentence.endswith("#"):
        message = "h02 text frame must end with '#'"
        raise FrameError(message)

    fields = sentence[:-1].split(",")
    maker = fields[0]
    if len(fields) < 3 or len(maker) != 3 or not maker[1:].isalpha():
        message = f"h02 text frame must start '*XX,<id>,<type>', got {sentence[:24]!r}"
        raise FrameError(message)
    return fields


def _v4_reply(fields: list[str], server_time_ms: int) -> bytes:
    """``*HQ,<id>,V4,<type>,<yyyyMMddHHmmss>#`` at the server's UTC time."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(server_time_ms // 1000))
    return f"*HQ,{fields[1]},V4,{fields[2]},{stamp}#".encode("ascii")


def _position_block(fields: list[str]) -> int | None:
    """Index of ``hhmmss,validity,lat,N|S,lon,E|W`` after the type, if any."""
    for index in range(3, len(fields) - 5):
        if fields[index + 3] in ("N", "S") and fields[index + 5] in ("E", "W"):
            return index
    return None


def _text_fix(
    fields: list[str], block: int, device: str, server_time_ms: int
) -> tuple[Fix, int | None]:
    """The fix of a text position block at ``block``, and the status word after it."""
    latitude = _text_coordinate(fields[block + 2], fields[block + 3], 90)
    longitude = _text_coordinate(fields[block + 4], fields[block + 5], 180)
    validity = fields[block + 1]
    speed_knots = _text_number(fields, block + 6, "speed") or 0.0
    course = _text_number(fields, block + 7, "course")
    if course is not None and course > 360:
        message = f"h02 course {course} is out of range"
        raise FrameError(message)

    date_index = _date_index(fields, block + 8)
    fix_time_ms = server_time_ms
    if date_index is not None and fields[block]:
        fix_time_ms = _text_time_ms(fields[block], fields[date_index])
    after = block + 8 if date_index is None else date_index + 1
    status_index = next(
        (i for i in range(after, len(fields)) if _is_status(fields[i])), None
    )

    fix = new_fix(
        device,
        fix_time_ms,
        latitude,
        longitude,
        protocol=NAME,
        server_time_ms=server_time_ms,
        valid=validity == "A" or validity.isdigit(),
        speed_kmh=speed_knots * KNOTS_TO_KMH,
        course=course,
    )
    if status_index is None:
        return fix, None
    _read_extension(fix, fields[status_index + 1 :])
    return fix, int(fields[status_index], 16)


def _text_coordinate(value: str, hemisphere: str, limit: int) -> float:
    """``ddmm.mmmm`` (any number of degree digits), ``-dd-mm.mmmm`` or ``ddmmmmmm``."""
    if value.startswith("-"):
        degrees, _, minutes = value[1:].partition("-")
    elif "." in value:
        dot = value.index(".")
        degrees, minutes = value[: max(dot - 2, 0)], value[max(dot - 2, 0) :]
    else:
        degrees, minutes = value[:-6], f"{value[-6:-4]}.{value[-4:]}"
    whole, _, fraction = minutes.partition(".")
    if not (degrees or "0").isdigit() or not (whole + fraction).isdigit():
        message = f"h02 coordinate {value!r} is not ddmm.mmmm"
        raise FrameError(message)

    decimal = _degrees(int(degrees or "0"), float(minutes), limit)
    return -decimal if hemisphere in ("S", "W") else decimal


def _text_number(fields: list[str], index: int, name: str) -> float | None:
    """A decimal field (digits and one dot); ``None`` when absent or empty."""
    if index >= len(fields) or not fields[index].strip():
        return None
    text = fields[index].strip()
    if not text.replace(".", "", 1).isdigit():
        message = f"h02 {name} must be a decimal number, got {text!r}"
        raise FrameError(message)
    return float(text)


def _date_index(fields: list[str], index: int) -> int | None:
    """Where ``ddmmyy`` is: at ``index``, or after a battery field."""
    for candidate in (index, index + 1):
        if candidate < len(fields) and _is_date(fields[candidate]):
            if candidate == index + 1 and not fields[index].isdigit():
                return None
            return candidate
    return None


def _is_date(text: str) -> bool:
    return len(text) == 6 and text.isdigit()


def _is_status(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text)


def _text_time_ms(clock: str, date: str) -> int:
    """Epoch ms of ``hhmmss`` and ``ddmmyy`` (UTC)."""
    if len(clock) != 6 or not clock.isdigit():
        message = f"h02 time must be hhmmss, got {clock!r}"
        raise FrameError(message)
    hour, minute, second = int(clock[:2]), int(clock[2:4]), int(clock[4:])
    if hour > 23 or minute > 59 or second > 59:
        message = f"h02 time {clock} is not a time"
        raise FrameError(message)
    day_ms = _day_start_ms(int(date[4:]), int(date[2:4]), int(date[:2]))
    return day_ms + ((hour * 60 + minute) * 60 + second) * 1000


def _read_extension(fix: Fix, extra: list[str]) -> None:
    """Odometer and altitude of the 6-field extension some firmware appends.

    The layout is ``odometer,temperature,fuel,altitude,lac,cid``; other
    extensions (cell ids, SIM data) are left out.
    """
    if len(extra) != 6 or "." not in extra[2]:
        return
    odometer, altitude = extra[0], extra[3]
    if odometer.isdigit():
        fix.attributes["odometer"] = str(int(odometer))
    if altitude.lstrip("-").isdigit():
        fix.altitude = float(altitude)


#: Epoch ms of the start of each binary date seen (3 raw BCD bytes: dd mm yy).
#: Bounded: only valid dates of years 2000-2099 are stored.
_DAY_STARTS: dict[bytes, int] = {}


def _day_start_ms(year: int, month: int, day: int) -> int:
    """Epoch ms of the start of an H02 date (2-digit year since 2000), UTC."""
    try:
        moment = datetime(2000 + year, month, day, tzinfo=UTC)
    except ValueError as error:
        message = f"h02 date {day:02d}{month:02d}{year:02d} is not a date"
        raise FrameError(message) from error
    return int(moment.timestamp()) * 1000


PROTOCOL: Final = TrackerProtocol(
    name=NAME,
    default_port=DEFAULT_PORT,
    session=H02Session,
    looks_like=looks_like_h02,
    tcp=True,
    udp=True,
    text=True,
)
