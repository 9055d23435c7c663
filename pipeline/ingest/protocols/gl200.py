"""Queclink GL200/GL300/GV family: the @Track text protocol.

Every message is one ASCII line of comma-separated fields ended by ``$`` (UDP
datagrams and some firmware leave it out):

``+RESP:GT<type>,<protocol version>,<imei>,<device name>,...,<send time
yyyymmddhhmmss>,<count number 4 hex>$``

``+RESP:`` is a live report, ``+BUFF:`` the same report sent later from the
device's buffer, ``+ACK:`` the answer to a command or a heartbeat.

Positions come in *location blocks* of 12 fields: GPS accuracy (HDOP, 0 when
the position is not fresh), speed km/h, azimuth, altitude m, **longitude then
latitude** in signed decimal degrees, GPS UTC time ``yyyymmddhhmmss``, MCC, MNC,
LAC, cell id and one reserved or mileage field.  Which fields precede the first
block differs between models and firmware (external power, report id and type,
VIN, ...), so the first block is found by its shape: a longitude and latitude
with six decimals followed by a 14-digit time.  In the reports that may carry
several positions (``GTFRI`` and the types sharing its layout, see
:data:`MULTI_POSITION_TYPES`), the field before the first block is their
number, 1 to 15, and every block becomes a fix; other reports carry one block.
A block without coordinates (no fix since power-on) becomes no fix.  Following
the devices' meaning, a fix is valid whenever its block has coordinates.

Report types that set attributes or raise alarms: ``GTSOS`` sos, ``GTSPD``
overspeed, ``GTGEO`` geofenceExit or geofenceEnter (report type 0 or 1),
``GTMPN``/``GTEPN`` powerRestored and ``GTMPF``/``GTEPF`` powerCut (main or
external power connected/cut), ``GTBPL`` lowBattery, ``GTJDR``/``GTJDS`` jamming,
``GTIGN``/``GTVGN`` ignition on and ``GTIGF``/``GTVGF`` off, ``GTNMR`` motion.
``GTPNA``/``GTPFA`` (device power on/off) carry no position and produce
nothing but the device.  An alarm report without a position still raises its
event, without coordinates, at the send time.

Replies: the ``+ACK:GTHBD`` heartbeat is answered ``+SACK:GTHBD,<protocol
version>,<count number>$``.  Devices configured to wait for server
acknowledgements (``AT+GTSRI`` with SACK enabled) expect ``+SACK:<count
number>$`` for every other message and resend buffered reports until they get
it: create the session with ``sack=True`` for those.
"""

from __future__ import annotations

import json
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
from pipeline.ingest.protocols.fields import number_within, utc_ms
from pipeline.ingest.protocols.frames import TextFraming, terminated_by
from pipeline.model import Event, Fix

__all__ = ["MULTI_POSITION_TYPES", "PROTOCOL", "Gl200Session", "looks_like_gl200"]

#: Report types whose number field may announce up to 15 location blocks.
MULTI_POSITION_TYPES = frozenset(
    {"FRI", "GEO", "SPD", "SOS", "RTL", "PNL", "NMR", "DIS", "DOG", "IGL", "ERI", "HBM"}
)

_NAME = "gl200"
_MAX_FRAME_BYTES = 4096
#: Bounds no real report exceeds (the documents allow 999.9 km/h, ±99999.9 m).
_MAX_KMH = 1000.0
_MAX_ALTITUDE = 100_000.0
_BLOCK_FIELDS = 12
_MAX_BLOCKS = 15

_TYPE_ALARMS = {
    "SOS": "sos",
    "SPD": "overspeed",
    "MPN": "powerRestored",
    "EPN": "powerRestored",
    "MPF": "powerCut",
    "EPF": "powerCut",
    "BPL": "lowBattery",
    "JDR": "jamming",
    "JDS": "jamming",
}
_TYPE_IGNITION = {"IGN": True, "VGN": True, "IGF": False, "VGF": False}

_FRAMING = TextFraming(
    noun="gl200 message",
    starts=b"+",
    expected="'+'",
    end=terminated_by(re.compile(rb"[$\n]")),
    limit=_MAX_FRAME_BYTES,
)
_HEADER = re.compile(r"\+(RESP|BUFF|ACK):GT([0-9A-Z]{3})")
_VERSION = re.compile(r"[0-9A-Fa-f]{6}(?:[0-9A-Fa-f]{4})?")
_IMEI = re.compile(r"\d{15}|[0-9A-Fa-f]{14}")
_COUNT = re.compile(r"[0-9A-Fa-f]{4}")
_LONGITUDE = re.compile(r"-?\d{1,3}\.\d{6}")
_LATITUDE = re.compile(r"-?\d{1,2}\.\d{6}")
_TIMESTAMP = re.compile(r"\d{14}")
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")
_LOOKS_LIKE = re.compile(rb"\+(?:RESP|BUFF|ACK):GT[0-9A-Z]{3},")


def looks_like_gl200(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes start an @Track message (``+RESP:GT...,``)."""
    return _LOOKS_LIKE.match(first_bytes) is not None


class Gl200Session(TrackerSession):
    """Decoder state of one @Track connection or UDP peer.

    Parameters
    ----------
    sack
        Answer every report with ``+SACK:<count number>$``, for devices set to
        wait for server acknowledgements; heartbeats are answered either way.
    """

    protocol = _NAME
    max_frame_bytes = _MAX_FRAME_BYTES

    def __init__(self, *, sack: bool = False) -> None:
        super().__init__()
        self.sack = sack

    def split(self, buffer: bytearray) -> list[bytes]:
        """Cut ``$``- or newline-terminated messages off ``buffer``.

        The terminator stays on the frame; blank bytes between frames are
        dropped.  A frame that does not start with ``+`` or holds a non-ASCII
        byte raises :class:`FrameError` once the good frames before it have
        been returned.
        """
        return _FRAMING.split(buffer)

    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one message; the module docstring describes the layout."""
        fields = _FRAMING.text(frame).rstrip("$\r\n ").split(",")
        header = _HEADER.fullmatch(fields[0])
        if header is None:
            message = (
                "gl200 message must start '+RESP:GT', '+BUFF:GT' or '+ACK:GT', "
                f"got {fields[0][:20]!r}"
            )
            raise FrameError(message)
        if len(fields) < 5:
            message = f"gl200 message is truncated after {len(fields)} fields"
            raise FrameError(message)
        kind, report = header.groups()
        version, device, count = _identity(fields)

        self.device = device
        if kind == "ACK":
            return self._decode_ack(report, version, device, count)
        decoded = _decode_report(fields, report, device, kind == "BUFF", server_time_ms)
        if self.sack:
            decoded.reply = f"+SACK:{count}$".encode()
        return decoded

    def decode_datagram(self, datagram: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one UDP datagram, whose message may lack its ``$``."""
        if not datagram.rstrip(b" \r\n").endswith(b"$"):
            datagram += b"\n"
        return super().decode_datagram(datagram, server_time_ms=server_time_ms)

    def _decode_ack(
        self, report: str, version: str, device: str, count: str
    ) -> Decoded:
        if report == "HBD":
            return Decoded(
                device=device, reply=f"+SACK:GTHBD,{version},{count}$".encode()
            )
        # Command acknowledgements carry no position.
        reply = f"+SACK:{count}$".encode() if self.sack else None
        return Decoded(device=device, reply=reply)


def _identity(fields: list[str]) -> tuple[str, str, str]:
    """Protocol version, IMEI and count number, each checked for its form."""
    version, device, count = fields[1], fields[2], fields[-1]
    if _VERSION.fullmatch(version) is None:
        message = f"gl200 protocol version must be 6 or 10 hex digits, got {version!r}"
        raise FrameError(message)
    if _IMEI.fullmatch(device) is None:
        message = f"gl200 IMEI must be 15 digits, got {device!r}"
        raise FrameError(message)
    if _COUNT.fullmatch(count) is None:
        message = f"gl200 count number must be 4 hex digits, got {count!r}"
        raise FrameError(message)
    return version, device, count


def _decode_report(
    fields: list[str], report: str, device: str, buffered: bool, server_time_ms: int
) -> Decoded:
    start = _first_block(fields)
    starts = [] if start is None else _block_starts(fields, report, start)
    attributes = _report_attributes(fields, report, start, buffered)
    # Encoded once per message, not once per fix: new_fix would redo it per block.
    shared = {key: json.dumps(value) for key, value in attributes.items()}

    fixes = [
        fix
        for block in starts
        if (fix := _block_fix(fields, block, device, shared, server_time_ms))
        is not None
    ]
    alarm = attributes.get("alarm")
    if alarm is None:
        events: list[Event] = []
    elif fixes:
        events = [alarm_event(fix, alarm) for fix in fixes]
    else:
        event_time_ms = _send_time_ms(fields, server_time_ms)
        events = [
            positionless_alarm_event(device, alarm, event_time_ms, protocol=_NAME)
        ]
    return Decoded(fixes=fixes, events=events, device=device)


def _first_block(fields: list[str]) -> int | None:
    """Index of the first field of the first block with coordinates, or ``None``."""
    for index in range(7, len(fields) - 4):
        longitude = fields[index]
        if (
            len(longitude) > 7
            and _LONGITUDE.fullmatch(longitude)
            and _LATITUDE.fullmatch(fields[index + 1])
            and _TIMESTAMP.fullmatch(fields[index + 2])
        ):
            return index - 4
    return None


def _block_starts(fields: list[str], report: str, start: int) -> list[int]:
    """First-field indexes of every block of the report."""
    if report not in MULTI_POSITION_TYPES:
        return [start]

    number = fields[start - 1]
    if not number.isdigit() or not 1 <= int(number) <= _MAX_BLOCKS:
        message = f"gl200 GT{report} number of positions must be 1-15, got {number!r}"
        raise FrameError(message)
    count = int(number)
    if start + _BLOCK_FIELDS * (count - 1) + 7 > len(fields) - 2:
        message = f"gl200 GT{report} announces {count} positions but is too short"
        raise FrameError(message)
    return [start + _BLOCK_FIELDS * block for block in range(count)]


def _report_attributes(
    fields: list[str], report: str, start: int | None, buffered: bool
) -> dict[str, Any]:
    """Attributes shared by every fix of the report, the alarm among them."""
    attributes: dict[str, Any] = {"event": f"GT{report}", "index": int(fields[-1], 16)}
    if buffered:
        attributes["buffered"] = True

    alarm = _TYPE_ALARMS.get(report)
    if report in _TYPE_IGNITION:
        attributes["ignition"] = _TYPE_IGNITION[report]
    elif report in ("GEO", "NMR") and start is not None:
        # The report type before the number: its low hex digit, 0 or 1.
        kind = fields[start - 2][-1:]
        if report == "NMR" and kind in ("0", "1"):
            attributes["motion"] = kind == "1"
        elif report == "GEO" and kind in ("0", "1"):
            alarm = "geofenceEnter" if kind == "1" else "geofenceExit"
    if alarm is not None:
        attributes["alarm"] = alarm
    return attributes


def _block_fix(
    fields: list[str],
    start: int,
    device: str,
    shared: dict[str, str],
    server_time_ms: int,
) -> Fix | None:
    """The fix of the block at ``start``, ``None`` when it has no coordinates.

    ``shared`` holds the report's attributes, already JSON-encoded.
    """
    longitude, latitude, when = fields[start + 4 : start + 7]
    if not (longitude or latitude or when):
        return None
    if not (
        _LONGITUDE.fullmatch(longitude)
        and _LATITUDE.fullmatch(latitude)
        and _TIMESTAMP.fullmatch(when)
    ):
        block = ",".join(fields[start : start + 7])
        message = f"gl200 location block at field {start} does not parse: {block!r}"
        raise FrameError(message)

    lon, lat = float(longitude), float(latitude)
    if abs(lat) > 90.0 or abs(lon) > 180.0:
        message = f"gl200 coordinates out of range: {latitude}, {longitude}"
        raise FrameError(message)
    accuracy = number_within(fields[start], "gl200 GPS accuracy", 0.0, 100.0, _DECIMAL)
    speed = number_within(fields[start + 1], "gl200 speed", 0.0, _MAX_KMH, _DECIMAL)
    course = number_within(fields[start + 2], "gl200 azimuth", 0.0, 360.0, _DECIMAL)
    altitude = number_within(
        fields[start + 3], "gl200 altitude", -_MAX_ALTITUDE, _MAX_ALTITUDE, _DECIMAL
    )

    fix = new_fix(
        device,
        _timestamp_ms(when),
        lat,
        lon,
        protocol=_NAME,
        server_time_ms=server_time_ms,
        valid=True,
        speed_kmh=speed,
        course=course,
        altitude=altitude,
        attributes={"hdop": accuracy} if accuracy else None,
    )
    fix.attributes.update(shared)
    return fix


def _timestamp_ms(text: str) -> int:
    """``yyyymmddhhmmss`` (UTC) to epoch milliseconds."""
    return utc_ms(
        int(text[:4]), int(text[4:6]), int(text[6:8]),
        int(text[8:10]), int(text[10:12]), int(text[12:]), "gl200 time",
    )  # fmt: skip


def _send_time_ms(fields: list[str], default_ms: int) -> int:
    send_time = fields[-2]
    if _TIMESTAMP.fullmatch(send_time) is None:
        return default_ms
    return _timestamp_ms(send_time)


PROTOCOL = TrackerProtocol(
    name=_NAME,
    default_port=5004,
    session=Gl200Session,
    looks_like=looks_like_gl200,
    tcp=True,
    udp=True,
    text=True,
)
