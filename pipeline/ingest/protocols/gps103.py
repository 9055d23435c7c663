"""GPS103: the comma-separated text protocol of Coban TK102/TK103-2 trackers.

Frames are ASCII lines ended by ``;`` (older firmware sends a newline instead, and
one variant ends with ``*``); the terminator stays on the frame so that
:meth:`Gps103Session.decode` knows which layout it reads.  What a device sends:

- ``##,imei:<imei>,A``: the handshake, answered ``LOAD``.
- ``<imei>``: a heartbeat, answered ``ON``.  Some firmware glues a report to it
  (``<imei>imei:<imei>,tracker,...``): the report is decoded as well.
- ``imei:<imei>,<keyword>,<local yymmddhhmm[ss]>,<phone or rfid>,F,<utc
  hhmmss.sss>,A|V,<lat ddmm.mmmm>,N|S,<lon dddmm.mmmm>,E|W,<speed knots>,<course>
  [,<altitude m>,<ignition>,<door>,<fuel % 1>,<fuel % 2>,<temperature>]``: a
  position.  The keyword names why it was sent (``tracker`` for a periodic
  report, ``help me`` for SOS, ...): alarm keywords become the ``alarm``
  attribute and an event, and every keyword but ``tracker`` becomes the
  ``event`` attribute.  ``help me`` is answered ``**,imei:<imei>,E;`` (the device
  repeats the SOS until then); other reports get no answer.
- The same with ``L`` instead of ``F`` and the cell's LAC/CID instead of a
  position: cell-only reports.  They produce **no fix** (a fix needs
  coordinates, and the cell is not resolved here); an alarm keyword still raises
  its event, without a position, at the receive time (the report's local clock
  has no known zone).
- ``imei:<imei>,OBD,...`` (engine data) and ``imei:<imei>,vr,...`` (photo chunks)
  carry no position and produce nothing but the device.
- ``imei:<imei>,<name>,<event>,<sensor id>,<sensor V>,<hhmmss>,<ddmmyy>,<rssi>,
  <fix 0|1>,<lat>,<lon>,<speed km/h>,<course>,<altitude m>,<hdop>,<satellites>,
  <ignition>,<charge>,<error>,*``: the ``*``-terminated variant, in UTC with
  signed decimal degrees.

Fix time of the common layout: the device sends its *local* date and hh:mm, and
the UTC time of the fix without a date.  The offset local - UTC, in minutes, is
wrapped into (-12 h, +12 h] and subtracted from local date + hh:mm + the UTC
seconds, which also moves the date across midnight where needed.  A report whose
UTC field is not a time (seen on some clones) is refused: its local time alone
cannot be placed in UTC.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.ingest.protocols.base import (
    Decoded,
    FrameError,
    TrackerProtocol,
    TrackerSession,
    alarm_event,
    new_fix,
    positionless_alarm_event,
)
from pipeline.ingest.protocols.fields import (
    DECIMAL,
    ddmmyy_hhmmss_ms,
    degrees_minutes,
    number_within,
    utc_ms,
)
from pipeline.ingest.protocols.frames import TextFraming, terminated_by
from pipeline.model import Fix

__all__ = ["KNOTS_TO_KMH", "PROTOCOL", "Gps103Session", "looks_like_gps103"]

#: The wire speed is in knots; fixes carry km/h.
KNOTS_TO_KMH = 1.852

_NAME = "gps103"
_MAX_FRAME_BYTES = 2048
#: Bounds that no real report exceeds; beyond them a field is garbage.
_MAX_KNOTS = 2000.0
_MAX_ALTITUDE = 100_000.0
_HANDSHAKE_REPLY = b"LOAD"
_HEARTBEAT_REPLY = b"ON"

#: Keywords that are alarms.  ``stockade`` is Coban's geo-fence, which alarms on
#: leaving the fenced area; bonnet and foot-brake alarms have no shared name.
_KEYWORD_ALARMS = {
    "help me": "sos",
    "low battery": "lowBattery",
    "move": "movement",
    "speed": "overspeed",
    "stockade": "geofenceExit",
    "ac alarm": "powerCut",
    "door alarm": "door",
    "accident alarm": "accident",
    "sensor alarm": "vibration",
    "bonnet alarm": "general",
    "footbrake alarm": "general",
}
#: Keywords that carry no position at all.
_NO_POSITION_KEYWORDS = frozenset({"OBD", "vr"})

_FRAMING = TextFraming(
    noun="gps103 frame",
    starts=b"#i0123456789",
    expected="'#', 'i' or a digit",
    end=terminated_by(re.compile(rb"[;*\n]")),
    limit=_MAX_FRAME_BYTES,
)
_HANDSHAKE = re.compile(r"##,imei:(\d{10,20}),A")
_HEARTBEAT = re.compile(r"(\d{10,20})(imei:.*)?", re.DOTALL)
_IMEI = re.compile(r"imei:(\d{10,20})")
_LOCAL_TIME = re.compile(r"(\d\d)/?(\d\d)/?(\d\d) ?(\d\d):?(\d\d)(?:\d\d)?")
_UTC_TIME = re.compile(r"(\d\d)(\d\d)(\d\d)(?:\.(\d{1,9}))?")
_DEGREES_MINUTES = re.compile(r"\d{3,5}\.\d+")
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)%")
_SATELLITES = re.compile(r"\d{1,3}")
_TEMPERATURE = re.compile(r"[-+]?\d{1,3}(?:\.\d+)?")
_LOOKS_LIKE = re.compile(rb"##,imei:\d|imei:\d|\d{14,17}(?:[;\r\n]|imei:|$)")


def looks_like_gps103(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes start a GPS103 frame.

    Only the handshake (``##,imei:``), a report (``imei:``) or a bare IMEI
    heartbeat qualify, so no other text protocol's first line is claimed.
    """
    return _LOOKS_LIKE.match(first_bytes) is not None


class Gps103Session(TrackerSession):
    """Decoder state of one GPS103 connection or UDP peer."""

    protocol = _NAME
    max_frame_bytes = _MAX_FRAME_BYTES

    def split(self, buffer: bytearray) -> list[bytes]:
        """Cut ``;``-, newline- or ``*``-terminated frames off ``buffer``.

        The terminator stays on the frame; blank bytes between frames are
        dropped.  A frame that starts with anything but ``#``, ``i`` or a digit,
        or holds a non-ASCII byte, raises :class:`FrameError` once the good
        frames before it have been returned.
        """
        return _FRAMING.split(buffer)

    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one frame; the module docstring describes the layouts."""
        text = _FRAMING.text(frame)
        starred = text.rstrip("\r\n ").endswith("*")
        body = text.rstrip(";*\r\n ")
        if body.startswith("##"):
            return self._decode_handshake(body)
        if body[:1].isdigit():
            return self._decode_heartbeat(body, starred, server_time_ms)
        if body.startswith("imei:"):
            return self._decode_report(body, starred, server_time_ms)

        message = f"gps103 frame is no handshake, heartbeat or report: {body[:40]!r}"
        raise FrameError(message)

    def decode_datagram(self, datagram: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one UDP datagram, whose last frame may lack its terminator."""
        if not datagram.rstrip(b" \r\n").endswith((b";", b"*")):
            datagram += b"\n"
        return super().decode_datagram(datagram, server_time_ms=server_time_ms)

    def _decode_handshake(self, body: str) -> Decoded:
        match = _HANDSHAKE.fullmatch(body)
        if match is None:
            message = f"gps103 handshake must be '##,imei:<imei>,A', got {body[:40]!r}"
            raise FrameError(message)

        self.device = match.group(1)
        return Decoded(device=self.device, reply=_HANDSHAKE_REPLY)

    def _decode_heartbeat(
        self, body: str, starred: bool, server_time_ms: int
    ) -> Decoded:
        match = _HEARTBEAT.fullmatch(body)
        if match is None:
            message = f"gps103 heartbeat must be the bare IMEI, got {body[:40]!r}"
            raise FrameError(message)

        self.device = match.group(1)
        if match.group(2) is None:
            return Decoded(device=self.device, reply=_HEARTBEAT_REPLY)

        decoded = self._decode_report(match.group(2), starred, server_time_ms)
        decoded.reply = _HEARTBEAT_REPLY + (decoded.reply or b"")
        return decoded

    def _decode_report(self, body: str, starred: bool, server_time_ms: int) -> Decoded:
        fields = body.split(",")
        match = _IMEI.fullmatch(fields[0])
        if match is None or len(fields) < 2:
            message = (
                f"gps103 report must start 'imei:<imei>,<keyword>', got {body[:40]!r}"
            )
            raise FrameError(message)

        device = self.device = match.group(1)
        keyword = fields[1]
        if keyword in _NO_POSITION_KEYWORDS or (starred and keyword == "L"):
            return Decoded(device=device)
        if starred:
            return _fix_decoded(_starred_fix(device, fields, server_time_ms), None)
        if len(fields) < 5:
            message = f"gps103 report is truncated after {len(fields)} fields"
            raise FrameError(message)

        alarm = _keyword_alarm(keyword)
        reply = f"**,imei:{device},E;".encode() if keyword == "help me" else None
        if fields[4] == "L":
            events = []
            if alarm is not None:
                events.append(
                    positionless_alarm_event(
                        device,
                        alarm,
                        server_time_ms,
                        protocol=_NAME,
                        cell_location=True,
                    )
                )
            return Decoded(events=events, device=device, reply=reply)
        if fields[4] != "F":
            source = fields[4][:10]
            message = (
                f"gps103 report source must be 'F' (GPS) or 'L' (cell), got {source!r}"
            )
            raise FrameError(message)

        decoded = _fix_decoded(_gps_fix(device, fields, alarm, server_time_ms), alarm)
        decoded.reply = reply
        return decoded


def _keyword_alarm(keyword: str) -> str | None:
    alarm = _KEYWORD_ALARMS.get(keyword)
    if alarm is None and keyword.startswith(("T:", "oil")):
        # Temperature and fuel-leak alarms: there is no shared name for either.
        return "general"
    return alarm


def _fix_decoded(fix: Fix, alarm: str | None) -> Decoded:
    events = [] if alarm is None else [alarm_event(fix, alarm)]
    return Decoded(fixes=[fix], events=events, device=fix.device)


def _gps_fix(
    device: str, fields: list[str], alarm: str | None, server_time_ms: int
) -> Fix:
    if len(fields) < 10:
        message = f"gps103 GPS report has {len(fields)} fields, needs at least 10"
        raise FrameError(message)

    fix_time_ms = _fix_time_ms(fields[2], fields[5])
    valid = _validity(fields[6])
    latitude, longitude, index = _coordinates(fields, 7)
    speed = number_within(_field(fields, index), "gps103 speed", 0.0, _MAX_KNOTS)
    course = number_within(_field(fields, index + 1), "gps103 course", 0.0, 360.0)
    altitude = number_within(
        _field(fields, index + 2), "gps103 altitude", -_MAX_ALTITUDE, _MAX_ALTITUDE
    )

    keyword = fields[1]
    attributes = _extras(fields[index + 3 : index + 8])
    if keyword in ("acc on", "acc off"):
        attributes.setdefault("ignition", keyword == "acc on")
    if keyword == "rfid" and fields[3]:
        attributes["rfid"] = fields[3]
    if keyword != "tracker":
        attributes["event"] = keyword
    if alarm is not None:
        attributes["alarm"] = alarm
    return new_fix(
        device,
        fix_time_ms,
        latitude,
        longitude,
        protocol=_NAME,
        server_time_ms=server_time_ms,
        valid=valid,
        speed_kmh=None if speed is None else speed * KNOTS_TO_KMH,
        course=course,
        altitude=altitude,
        attributes=attributes,
    )


def _fix_time_ms(local: str, utc: str) -> int:
    local_match = _LOCAL_TIME.fullmatch(local)
    if local_match is None:
        message = f"gps103 local time must be yymmddhhmm[ss], got {local!r}"
        raise FrameError(message)
    utc_match = _UTC_TIME.fullmatch(utc)
    if utc_match is None:
        message = f"gps103 UTC time must be hhmmss[.sss], got {utc!r}"
        raise FrameError(message)

    year, month, day, local_hour, local_minute = map(int, local_match.groups())
    utc_hour, utc_minute, second = map(int, utc_match.groups()[:3])
    if utc_hour > 23 or utc_minute > 59:
        message = f"gps103 UTC time out of range: {utc!r}"
        raise FrameError(message)

    offset = (local_hour - utc_hour) * 60 + local_minute - utc_minute
    if offset <= -720:
        offset += 1440
    elif offset > 720:
        offset -= 1440
    local_ms = utc_ms(
        2000 + year, month, day, local_hour, local_minute, second, "gps103 date-time"
    )
    fraction = utc_match.group(4) or "0"
    return local_ms + int(fraction[:3].ljust(3, "0")) - offset * 60_000


def _validity(flag: str) -> bool:
    if flag == "A":
        return True
    if flag == "V":
        return False
    message = f"gps103 validity must be 'A' or 'V', got {flag!r}"
    raise FrameError(message)


def _coordinates(fields: list[str], index: int) -> tuple[float, float, int]:
    """Latitude, longitude and the index after them.

    A hemisphere letter usually trails its number but some firmware puts it
    first; a missing one means north or east.
    """
    count = len(fields)
    north_south = ""
    if fields[index] in ("N", "S"):
        north_south = fields[index]
        index += 1
    latitude = _degrees_minutes(_field(fields, index), 90.0, "gps103 latitude")
    index += 1
    if not north_south and index < count and fields[index] in ("N", "S"):
        north_south = fields[index]
        index += 1

    east_west = ""
    if index < count and fields[index] in ("E", "W"):
        east_west = fields[index]
        index += 1
    longitude = _degrees_minutes(_field(fields, index), 180.0, "gps103 longitude")
    index += 1
    if not east_west and index < count and fields[index] in ("E", "W", ""):
        east_west = fields[index]
        index += 1

    if north_south == "S":
        latitude = -latitude
    if east_west == "W":
        longitude = -longitude
    return latitude, longitude, index


def _field(fields: list[str], index: int) -> str:
    return fields[index] if index < len(fields) else ""


def _degrees_minutes(text: str, limit: float, name: str) -> float:
    if _DEGREES_MINUTES.fullmatch(text) is None:
        message = f"{name} must be (d)ddmm.mmmm, got {text!r}"
        raise FrameError(message)

    return degrees_minutes(text, limit, name)


def _extras(values: list[str]) -> dict[str, Any]:
    """Ignition, door, two fuel percentages and a temperature, where present.

    Firmware fills these inconsistently (an odometer where the second fuel level
    belongs, nothing at all): a value of the wrong form is left out.
    """
    attributes: dict[str, Any] = {}
    for name, value in zip(("ignition", "door"), values[:2], strict=False):
        if value in ("0", "1"):
            attributes[name] = value == "1"
    for name, value in zip(("fuel1", "fuel2"), values[2:4], strict=False):
        match = _PERCENT.fullmatch(value)
        if match is not None:
            attributes[name] = float(match.group(1))
    if len(values) == 5 and _TEMPERATURE.fullmatch(values[4]):
        attributes["temp1"] = float(values[4])
    return attributes


def _starred_fix(device: str, fields: list[str], server_time_ms: int) -> Fix:
    if len(fields) < 19:
        message = f"gps103 '*' report has {len(fields)} fields, needs 19"
        raise FrameError(message)

    fix_time_ms = ddmmyy_hhmmss_ms(fields[6], fields[5], "gps103 '*' report time")

    attributes: dict[str, Any] = {}
    if _SATELLITES.fullmatch(fields[7]):
        attributes["rssi"] = int(fields[7])
    hdop = number_within(_field(fields, 14), "gps103 hdop", 0.0, 100.0)
    if hdop is not None:
        attributes["hdop"] = hdop
    if fields[16] in ("0", "1"):
        attributes["ignition"] = fields[16] == "1"
    if fields[2].strip("-"):
        attributes["event"] = fields[2]
    return new_fix(
        device,
        fix_time_ms,
        _signed_degrees(fields[9], 90.0, "latitude"),
        _signed_degrees(fields[10], 180.0, "longitude"),
        protocol=_NAME,
        server_time_ms=server_time_ms,
        valid=fields[8] not in ("", "0"),
        speed_kmh=number_within(
            _field(fields, 11), "gps103 speed", 0.0, _MAX_KNOTS * KNOTS_TO_KMH
        ),
        course=number_within(_field(fields, 12), "gps103 course", 0.0, 360.0),
        altitude=number_within(
            _field(fields, 13), "gps103 altitude", -_MAX_ALTITUDE, _MAX_ALTITUDE
        ),
        satellites=int(fields[15]) if _SATELLITES.fullmatch(fields[15]) else None,
        attributes=attributes,
    )


def _signed_degrees(text: str, limit: float, name: str) -> float:
    if DECIMAL.fullmatch(text) is None:
        message = f"gps103 {name} must be signed decimal degrees, got {text!r}"
        raise FrameError(message)
    value = float(text)
    if abs(value) > limit:
        message = f"gps103 {name} out of range: {text!r}"
        raise FrameError(message)
    return value


PROTOCOL = TrackerProtocol(
    name=_NAME,
    default_port=5001,
    session=Gps103Session,
    looks_like=looks_like_gps103,
    tcp=True,
    udp=True,
    text=True,
)
