"""TK103: the classic ``(...)`` text protocol of TK103 vehicle trackers and clones.

Every frame is ASCII between ``(`` and ``)``.  Free text quoted between ``$``
signs (command results) may hold parentheses; a ``)`` inside an odd number of
``$`` does not end the frame.  Two layouts share the port:

- **Fixed width**, no separators: a 12-character device id (11 to 15 on some
  firmware), a 4-character command, then the body.  Commands that carry a
  position (``BP05`` login, ``BR00``/``BR01``/``BR02`` tracking, ``BO01`` alarm,
  ``BP02``, ``BQ81``) put a data prefix (the 15-digit IMEI for ``BP05``, the
  alarm digit for ``BO01``) before the position body: date ``yymmdd``, ``A|V``,
  latitude ``ddmm.mmmm`` + ``N|S``, longitude ``dddmm.mmmm`` + ``E|W``, speed in
  km/h (5 characters), time ``hhmmss`` (UTC), course (6 characters), then an
  8-character status (charge, ignition, 3 hex I/O digits, 3 hex fuel digits),
  ``L`` + the odometer in hex metres, and sometimes a ``+ddd.d`` temperature.
- **Comma separated**, with a 15-digit IMEI: ``(<imei>,<command>,<ddmmyy>,A|V,
  <lat>N,<lon>E,<speed km/h>,<hhmmss>,<course>,...)``.  ``DW5x``/``DW50`` report
  cells and Wi-Fi instead of a position, ``ZC20`` the battery, ``ZC03`` a
  command result: these produce no fix.

Replies (fixed layout only, as the devices expect them): the ``BP00`` handshake
is answered ``(<id>AP01HSO)`` and the ``BP05`` login ``(<id>AP05)``; nothing else
is answered.  Every frame names its device, so no login is required first.
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
    ddmmyy_hhmmss_ms,
    degrees_minutes,
    number_within,
    utc_ms,
)
from pipeline.ingest.protocols.frames import TextFraming
from pipeline.model import Fix

__all__ = ["PROTOCOL", "Tk103Session", "looks_like_tk103"]

_NAME = "tk103"
_MAX_FRAME_BYTES = 1024
#: No real report goes faster; beyond it the field is garbage.
_MAX_KMH = 4000.0

#: ``BO01`` alarm digit, from the TK103 GPRS protocol's alarm table: 0 vehicle
#: power off, 1 accident, 2 robbery (SOS), 3 anti-theft (vibration sensor),
#: 4 low speed, 5 overspeed, 6 out of geo-fence.
_BO01_ALARMS = {
    "0": "powerCut",
    "1": "accident",
    "2": "sos",
    "3": "vibration",
    "4": "general",
    "5": "overspeed",
    "6": "geofenceExit",
}
#: ``BQ81,ALARM,<n>`` codes that have a shared name (0 low battery, 1 overspeed).
_BQ81_ALARMS = {"0": "lowBattery", "1": "overspeed"}
#: Comma-layout commands that are alarms or ignition changes; the ``ZC``, ``DW3``
#: (GPS) and ``DW5`` (cells) spellings mean the same thing.
_COMMA_ALARMS = {
    **dict.fromkeys(("ZC11", "DW31", "DW51"), "movement"),
    **dict.fromkeys(("ZC12", "DW32", "DW52"), "lowBattery"),
    **dict.fromkeys(("ZC13", "DW33", "DW53"), "powerCut"),
    **dict.fromkeys(("ZC17", "DW37", "DW57"), "removing"),
    **dict.fromkeys(("ZC25", "DW3E", "DW5E"), "sos"),
    **dict.fromkeys(("ZC26", "DW3F", "DW5F"), "tamper"),
    **dict.fromkeys(("ZC27", "DW40", "DW60"), "lowPower"),
}
_COMMA_IGNITION = {
    **dict.fromkeys(("ZC15", "DW35", "DW55", "ZC29", "DW42", "DW62"), True),
    **dict.fromkeys(("ZC16", "DW36", "DW56"), False),
}

_FIXED_HEAD = re.compile(r"([0-9A-Za-z]{12})(B[A-Z]\d\d)")
_LOOSE_HEAD = re.compile(r"([0-9A-Za-z]{10,15}?)(B[A-Z]\d\d)")
_COMMA_HEAD = re.compile(r"(\d{10,20}),([0-9A-Z]{4})(?:,|$)")
_FIXED_POSITION = re.compile(
    r"(?P<data>.*?)(?P<date>\d{6}),?(?P<valid>[AV]),?"
    r" *(?P<lat>\d{2,4}\.\d+)(?P<ns>[NS]),?"
    r" *(?P<lon>\d{2,5}\.\d+)(?P<ew>[EW]),?"
    r"(?P<speed>[ \d.]{5})(?P<time>\d{6}),?(?P<course>[ \d.]{6})?,?"
    r"(?:(?P<status>[0-9A-Fa-f]{8}),?L(?P<odometer>[0-9A-Fa-f]{1,12}))?"
    r"(?P<tail>.*)",
    re.DOTALL,
)
_COMMA_LATITUDE = re.compile(r"(\d{2,4}\.\d+)([NS])")
_COMMA_LONGITUDE = re.compile(r"(\d{2,5}\.\d+)([EW])")
_STATUS = re.compile(r"[0-9A-Fa-f]{8}")
_ODOMETER = re.compile(r"L([0-9A-Fa-f]{1,12})")
_DECIMAL = re.compile(r"\d+(?:\.\d*)?")
_TEMPERATURE = re.compile(r"[-+]\d{3}\.\d")
_LOOKS_LIKE = re.compile(
    rb"\((?:[0-9A-Za-z]{10,15}B[A-Z]\d\d|\d{10,20},[0-9A-Z]{4}[,)])"
)


def looks_like_tk103(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes start a TK103 frame.

    ``(`` must be followed by a device id and a ``B..`` command (fixed layout)
    or by digits, a comma and a 4-character command (comma layout).
    """
    return _LOOKS_LIKE.match(first_bytes) is not None


class Tk103Session(TrackerSession):
    """Decoder state of one TK103 connection."""

    protocol = _NAME
    max_frame_bytes = _MAX_FRAME_BYTES

    def split(self, buffer: bytearray) -> list[bytes]:
        """Cut ``(...)`` frames off ``buffer``; blank bytes between them are dropped.

        Anything else before a ``(``, or a non-ASCII byte, raises
        :class:`FrameError` once the good frames before it have been returned.
        """
        return _FRAMING.split(buffer)

    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one ``(...)`` frame; the module docstring gives the layouts."""
        text = _FRAMING.text(frame)
        if len(text) < 3 or text[0] != "(" or text[-1] != ")":
            message = f"tk103 frame must be '(...)', got {text[:40]!r}"
            raise FrameError(message)

        inner = text[1:-1]
        comma = _COMMA_HEAD.match(inner)
        if comma is not None:
            return self._decode_comma(
                inner, comma.group(1), comma.group(2), server_time_ms
            )
        head = _FIXED_HEAD.match(inner) or _LOOSE_HEAD.match(inner)
        if head is None:
            message = f"tk103 frame has no device id and command: {text[:40]!r}"
            raise FrameError(message)
        return self._decode_fixed(
            inner[head.end() :], head.group(1), head.group(2), server_time_ms
        )

    def _decode_fixed(
        self, body: str, device: str, command: str, server_time_ms: int
    ) -> Decoded:
        self.device = device
        if command == "BP00":
            return Decoded(device=device, reply=f"({device}AP01HSO)".encode())

        reply = f"({device}AP05)".encode() if command == "BP05" else None
        match = _FIXED_POSITION.fullmatch(body)
        if match is None:
            if command in ("BP05", "BR00", "BR01", "BR02", "BO01"):
                message = f"tk103 {command} body does not parse: {body[:60]!r}"
                raise FrameError(message)
            # Cells (BZ00), VIN (BV00), settings (BQ86, ...): no position.
            return Decoded(device=device, reply=reply)

        alarm = _fixed_alarm(command, match.group("data"))
        fix = _fixed_fix(device, command, match, alarm, server_time_ms)
        events = [] if alarm is None else [alarm_event(fix, alarm)]
        return Decoded(fixes=[fix], events=events, device=device, reply=reply)

    def _decode_comma(
        self, inner: str, device: str, command: str, server_time_ms: int
    ) -> Decoded:
        self.device = device
        fields = inner.split(",")
        alarm = _COMMA_ALARMS.get(command)
        if len(fields) >= 9 and fields[3] in ("A", "V"):
            fix = _comma_fix(device, command, fields, alarm, server_time_ms)
            events = [] if alarm is None else [alarm_event(fix, alarm)]
            return Decoded(fixes=[fix], events=events, device=device)

        if alarm is not None and command.startswith("DW5"):
            # Cells and Wi-Fi instead of a position: the alarm still stands.
            event_time_ms = _trailing_time_ms(fields, server_time_ms)
            event = positionless_alarm_event(
                device, alarm, event_time_ms, protocol=_NAME, cell_location=True
            )
            return Decoded(events=[event], device=device)
        return Decoded(device=device)


def _frame_end(buffer: bytearray, start: int) -> int | None:
    """Index after the ``)`` closing the frame at ``start``; ``None`` until it came."""
    search = start + 1
    while True:
        close = buffer.find(b")", search)
        if close < 0:
            return None
        if buffer.count(b"$", start, close) % 2 == 0:
            return close + 1
        search = close + 1


_FRAMING = TextFraming(
    noun="tk103 frame",
    starts=b"(",
    expected="'('",
    end=_frame_end,
    limit=_MAX_FRAME_BYTES,
)


def _fixed_alarm(command: str, data: str) -> str | None:
    if command == "BO01":
        alarm = _BO01_ALARMS.get(data[:1])
        if alarm is None:
            message = f"tk103 BO01 alarm digit must be 0-6, got {data[:1]!r}"
            raise FrameError(message)
        return alarm
    if command == "BQ81":
        parts = data.split(",")
        if len(parts) > 2 and parts[1] == "ALARM":
            return _BQ81_ALARMS.get(parts[2])
    return None


def _fixed_fix(
    device: str,
    command: str,
    match: re.Match[str],
    alarm: str | None,
    server_time_ms: int,
) -> Fix:
    date, clock = match.group("date"), match.group("time")
    fix_time_ms = utc_ms(
        2000 + int(date[:2]), int(date[2:4]), int(date[4:]),
        int(clock[:2]), int(clock[2:4]), int(clock[4:]), "tk103 date-time",
    )  # fmt: skip
    latitude = _degrees_minutes(match.group("lat"), match.group("ns") == "S", 90.0)
    longitude = _degrees_minutes(match.group("lon"), match.group("ew") == "W", 180.0)

    attributes: dict[str, Any] = {"event": command}
    status = match.group("status")
    if status is not None:
        _set_status(attributes, status, match.group("odometer"))
    temperature = _TEMPERATURE.search(match.group("tail"))
    if temperature is not None:
        attributes["temp1"] = float(temperature.group())
    if alarm is not None:
        attributes["alarm"] = alarm
    course = match.group("course")
    return new_fix(
        device,
        fix_time_ms,
        latitude,
        longitude,
        protocol=_NAME,
        server_time_ms=server_time_ms,
        valid=match.group("valid") == "A",
        speed_kmh=_number(match.group("speed"), "tk103 speed", _MAX_KMH),
        course=None if course is None else _number(course, "tk103 course", 360.0),
        attributes=attributes,
    )


def _set_status(attributes: dict[str, Any], status: str, odometer: str) -> None:
    """The 8-character status: charge, ignition, 3 I/O digits, 3 fuel digits."""
    attributes["ignition"] = status[1] == "1"
    attributes["status"] = int(status[2:5], 16)
    attributes["fuel"] = int(status[5:], 16)
    attributes["odometer"] = float(int(odometer, 16))


def _comma_fix(
    device: str,
    command: str,
    fields: list[str],
    alarm: str | None,
    server_time_ms: int,
) -> Fix:
    fix_time_ms = ddmmyy_hhmmss_ms(fields[2], fields[7], "tk103 date and time")
    latitude = _comma_coordinate(_COMMA_LATITUDE, fields[4], "NS", 90.0)
    longitude = _comma_coordinate(_COMMA_LONGITUDE, fields[5], "EW", 180.0)

    attributes: dict[str, Any] = {"event": command}
    if len(fields) > 10 and _STATUS.fullmatch(fields[9]):
        odometer = _ODOMETER.fullmatch(fields[10])
        if odometer is not None:
            _set_status(attributes, fields[9], odometer.group(1))
    if command in _COMMA_IGNITION:
        attributes["ignition"] = _COMMA_IGNITION[command]
    if alarm is not None:
        attributes["alarm"] = alarm
    return new_fix(
        device,
        fix_time_ms,
        latitude,
        longitude,
        protocol=_NAME,
        server_time_ms=server_time_ms,
        valid=fields[3] == "A",
        speed_kmh=_number(fields[6], "tk103 speed", _MAX_KMH),
        course=_number(fields[8], "tk103 course", 360.0),
        attributes=attributes,
    )


def _comma_coordinate(
    pattern: re.Pattern[str], text: str, hemispheres: str, limit: float
) -> float:
    match = pattern.fullmatch(text)
    if match is None:
        message = f"tk103 coordinate must be (d)ddmm.mmmm{hemispheres}, got {text!r}"
        raise FrameError(message)
    return _degrees_minutes(match.group(1), match.group(2) == hemispheres[1], limit)


def _degrees_minutes(text: str, negative: bool, limit: float) -> float:
    """``(d)ddmm.mmmm`` to degrees; some firmware drops zero degrees (``45.789``)."""
    degrees = degrees_minutes(text, limit, "tk103 coordinate")
    return -degrees if negative else degrees


def _number(text: str, name: str, high: float) -> float | None:
    """The number in ``text``, ``None`` when blank; refused beyond 0 to ``high``.

    Fixed-width fields are padded with spaces in front.
    """
    if not text.strip():
        return None
    return number_within(text.lstrip(" "), name, 0.0, high, _DECIMAL)


def _trailing_time_ms(fields: list[str], default_ms: int) -> int:
    """The ``ddmmyy,hhmmss`` that ends cell reports, or ``default_ms``."""
    date, clock = fields[-2], fields[-1]
    if len(date) == len(clock) == 6 and date.isdigit() and clock.isdigit():
        return ddmmyy_hhmmss_ms(date, clock, "tk103 date-time")
    return default_ms


PROTOCOL = TrackerProtocol(
    name=_NAME,
    default_port=5002,
    session=Tk103Session,
    looks_like=looks_like_tk103,
    tcp=True,
    udp=False,
    text=True,
)
