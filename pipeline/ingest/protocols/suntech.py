"""Suntech text reports (SA200, ST300, ST340, ST4xx, ST500, ST600, ST910 and the
universal format), on port 5011 over TCP and UDP.

A report is one line of ``;``-separated fields, ended by ``\\r`` and/or ``\\n``
(a UDP datagram may also carry it without an ending).  The first field says the
layout:

- **Legacy** ``<model><type>``, e.g. ``SA200STT``, ``ST300ALT``, ``ST600EMG``:
  device id, [model number on ST3xx/ST500/ST600], firmware, ``yyyymmdd``,
  ``hh:mm:ss`` (UTC), [cell id except ST500; ST600 adds mcc, mnc, lac, rssi],
  latitude, longitude (signed decimal degrees), speed (km/h), course,
  satellites, fix (``1`` valid), distance (m), power (V), I/O digits (ignition,
  inputs 1-3, outputs 1-2), then by type: ``STT`` mode and message number,
  ``EMG`` emergency id, ``EVT`` event id, ``ALT`` alert id; then, where the
  firmware adds them, hour meter (minutes), backup battery (V) and message type.
- **ST4xx** (``ST410STT``): firmware, model, seven cell records, battery,
  archive flag, message number, status, then date, time and the position.
- **ST9xx** (``ST910;Location``, ``Emergency``, ``Alert``): device id,
  [firmware], date, time, [cell id], latitude, longitude, speed, course, fix.
  Emergency and alert reports are general alarms.
- **Universal** ``<type>;<id>;<hex mask>;...``: mask bits 1 to 21 enable, in
  order, model, firmware, real-time flag, date, time, cell id, mcc, mnc, lac,
  rssi, latitude, longitude, speed, course, satellites, fix, input bits, output
  bits, then mode, reason and message number (``STT``) or alert id, modifier
  and data (``ALT``); bit 23 adds an assignment mask whose fields become
  ``io<n>``.  ``BLE`` reports use a fixed mask.

Alert ids that are alarms (``ALT``, both layouts): 1 overspeed, 5/6 geofence
exit/enter, 14 vehicle battery very low, 15 shock, 16 collision, 40/41 main
power connected/disconnected, 42 SOS, 50 jamming, 132 door.  Emergency ids
(``EMG``): 1 SOS, 3 power cut, 5 and 6 door, 7 movement, 8 shock.  Suntech
devices expect no reply.  Keep-alives (``ALV``), command results (``RES``,
``Res``) and other report types name the device and carry no fix; the binary
Suntech formats are not decoded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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

__all__ = ["PROTOCOL", "SuntechSession"]

_NAME = "suntech"
_LINE_ENDS = re.compile(rb"[\r\n]")
_LEGACY = re.compile(r"(SA\d{3}|ST\d{3})([A-Z]{3})")
_UNIVERSAL_TYPES = frozenset(
    {"STT", "ALT", "UEX", "BLE", "RES", "EMG", "EVT", "ALV", "HTE", "CMD"}
)
_POSITION_TYPES = frozenset({"STT", "ALT", "EMG", "EVT", "UEX"})
#: The mask ``BLE`` reports imply: model, firmware, date, time, lat, lon.
_BLE_MASK = 0b1100000110110

#: Alert ids (``ALT``) that are alarms.
ALERT_ALARMS = {
    1: "overspeed",
    5: "geofenceExit",
    6: "geofenceEnter",
    14: "lowPower",
    15: "vibration",
    16: "accident",
    40: "powerRestored",
    41: "powerCut",
    42: "sos",
    50: "jamming",
    132: "door",
}
#: Emergency ids (``EMG``) that are alarms.
EMERGENCY_ALARMS = {
    1: "sos",
    3: "powerCut",
    5: "door",
    6: "door",
    7: "movement",
    8: "vibration",
}


@dataclass
class _Report:
    """What a report says, gathered field by field before it becomes a fix."""

    device: str
    time_ms: int | None = None
    latitude: float | None = None
    longitude: float | None = None
    valid: bool = False
    speed_kmh: float | None = None
    course: float | None = None
    satellites: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


class _Fields:
    """The fields of one report, read in order with named, checked conversions."""

    def __init__(self, values: list[str], start: int) -> None:
        self.values = values
        self.index = start

    def remaining(self) -> int:
        return len(self.values) - self.index

    def text(self, name: str) -> str:
        if self.index >= len(self.values):
            message = f"report ends before its {name} field"
            raise FrameError(message)
        value = self.values[self.index]
        self.index += 1
        return value

    def skip(self, count: int = 1) -> None:
        self.index += count

    def integer(self, name: str, *, base: int = 10) -> int:
        return integer(self.text(name), name, base=base)

    def number(self, name: str) -> float:
        return number(self.text(name), name)

    def degrees(self, name: str, limit: float) -> float:
        return degrees(self.text(name), name, limit)

    def time_ms(self) -> int:
        """``yyyymmdd`` and ``hh:mm:ss`` (UTC) as epoch milliseconds."""
        date, time = self.text("date"), self.text("time")
        if not (len(date) == 8 and date.isdigit() and _is_clock(time)):
            message = f"date and time must be yyyymmdd;hh:mm:ss, got {date!r};{time!r}"
            raise FrameError(message)
        year = int(date[:4])
        time_ms = utc_ms(
            year, int(date[4:6]), int(date[6:]),
            int(time[:2]), int(time[3:5]), int(time[6:]), "date and time",
        )  # fmt: skip
        if not 2000 <= year <= 2099:
            message = f"year must be within 2000-2099, got {year}"
            raise FrameError(message)
        return time_ms


class SuntechSession(TrackerSession):
    """Decoder state of one Suntech connection; every report names its device."""

    protocol = _NAME
    max_frame_bytes = 4096

    def split(self, buffer: bytearray) -> list[bytes]:
        """Cut complete lines off ``buffer``; empty lines are dropped."""
        frames = []
        start = 0
        while start < len(buffer):
            if buffer[start] in b"\r\n":
                start += 1
                continue
            if not 0x41 <= buffer[start] <= 0x5A:
                message = (
                    f"report must start with a capital letter, "
                    f"got {bytes(buffer[start : start + 8])!r}"
                )
                raise FrameError(message)
            match = _LINE_ENDS.search(buffer, start)
            if match is None:
                break
            frames.append(bytes(buffer[start : match.start()]))
            start = match.end()
        del buffer[:start]
        if len(buffer) > self.max_frame_bytes:
            message = f"report longer than {self.max_frame_bytes} bytes without an end"
            raise FrameError(message)
        return frames

    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one report; see the module docstring for the layouts."""
        values = _fields(frame)
        report = _report(values)
        self.device = report.device
        decoded = Decoded(device=report.device)
        if report.time_ms is None or report.latitude is None:
            return decoded
        if report.longitude is None:
            return decoded

        alarm = report.attributes.get("alarm")
        fix = new_fix(
            report.device,
            report.time_ms,
            report.latitude,
            report.longitude,
            protocol=_NAME,
            server_time_ms=server_time_ms,
            valid=report.valid,
            speed_kmh=report.speed_kmh,
            course=report.course,
            satellites=report.satellites,
            attributes=report.attributes,
        )
        decoded.fixes.append(fix)
        if alarm is not None:
            decoded.events.append(alarm_event(fix, alarm))
        return decoded

    def decode_datagram(self, datagram: bytes, *, server_time_ms: int) -> Decoded:
        """Decode a UDP datagram: one report or more, the line end optional."""
        merged = Decoded()
        for line in _LINE_ENDS.split(datagram):
            if not line:
                continue
            decoded = self.decode(line, server_time_ms=server_time_ms)
            merged.fixes.extend(decoded.fixes)
            merged.events.extend(decoded.events)
            merged.device = decoded.device or merged.device
        if merged.device is None:
            message = "datagram holds no Suntech report"
            raise FrameError(message)
        return merged


def _fields(frame: bytes) -> list[str]:
    """The ``;``-separated fields of a report; printable ASCII only."""
    text = ascii_text(frame.rstrip(b"\r\n"), "report")
    if not text.isprintable():
        message = f"report must be printable ASCII, got {text[:32]!r}"
        raise FrameError(message)
    values = text.split(";")
    if len(values) < 2:
        message = f"report must have ';'-separated fields, got {text[:32]!r}"
        raise FrameError(message)
    return values


def _report(values: list[str]) -> _Report:
    """Read a report with the layout its first field names."""
    prefix = values[0]
    legacy = _LEGACY.fullmatch(prefix)
    if prefix.startswith("ST9") and len(prefix) == 5:
        return _st9_report(values)
    if legacy is not None and prefix.startswith("ST4"):
        return _st4_report(values, legacy.group(2))
    if legacy is not None:
        return _legacy_report(values, legacy.group(1), legacy.group(2))
    if prefix in _UNIVERSAL_TYPES:
        return _universal_report(values)
    message = f"unknown Suntech report type {prefix[:16]!r}"
    raise FrameError(message)


def _device(fields: _Fields) -> str:
    device = fields.text("device id")
    if not (1 <= len(device) <= 20 and device.isalnum()):
        message = f"device id must be 1-20 letters or digits, got {device!r}"
        raise FrameError(message)
    return device


# ---------------------------------------------------------------- legacy layout


def _legacy_report(values: list[str], model: str, kind: str) -> _Report:
    fields = _Fields(values, 1)
    if values[1] == "Res":
        fields.skip()
    report = _Report(_device(fields))
    if kind not in _POSITION_TYPES or values[1] == "Res":
        return report

    if model.startswith("ST3") or model in ("ST500", "ST600"):
        fields.skip()  # model number
    fields.skip()  # firmware
    report.time_ms = fields.time_ms()
    if model != "ST500":
        fields.skip()  # cell id
    if model == "ST600":
        fields.skip(3)  # mcc, mnc, lac
        report.attributes["rssi"] = fields.integer("rssi")
    _read_position(fields, report)
    report.attributes["odometer"] = float(fields.integer("distance"))
    report.attributes["power"] = fields.number("power")
    report.attributes |= _io_digits(fields.text("I/O"))

    _LEGACY_TAILS[kind](fields, report)
    if model != "ST500":
        _read_maintenance(fields, report)
    return report


def _read_position(fields: _Fields, report: _Report) -> None:
    """Latitude, longitude, speed, course, satellites and the fix flag."""
    report.latitude = fields.degrees("latitude", 90.0)
    report.longitude = fields.degrees("longitude", 180.0)
    report.speed_kmh = fields.number("speed")
    report.course = fields.number("course")
    report.satellites = fields.integer("satellites")
    report.valid = fields.text("fix") == "1"


def _io_digits(io: str) -> dict[str, bool]:
    """Ignition, inputs 1-3 and outputs 1-2 from the legacy I/O digits."""
    if len(io) < 6:
        return {}
    if not set(io) <= {"0", "1"}:
        message = f"I/O must be 0/1 digits, got {io!r}"
        raise FrameError(message)
    names = ("ignition", "input1", "input2", "input3", "output1", "output2")
    return {name: digit == "1" for name, digit in zip(names, io, strict=False)}


def _status_tail(fields: _Fields, report: _Report) -> None:
    fields.skip()  # mode
    report.attributes["index"] = fields.integer("message number")


def _emergency_tail(fields: _Fields, report: _Report) -> None:
    _read_event(fields, report, "emergency id", EMERGENCY_ALARMS)


def _event_tail(fields: _Fields, report: _Report) -> None:
    _read_event(fields, report, "event id", {})


def _alert_tail(fields: _Fields, report: _Report) -> None:
    _read_event(fields, report, "alert id", ALERT_ALARMS)


def _serial_tail(fields: _Fields, report: _Report) -> None:
    fields.skip(fields.remaining())  # serial data of the attached accessory


_LEGACY_TAILS: dict[str, Callable[[_Fields, _Report], None]] = {
    "STT": _status_tail,
    "EMG": _emergency_tail,
    "EVT": _event_tail,
    "ALT": _alert_tail,
    "UEX": _serial_tail,
}


def _read_maintenance(fields: _Fields, report: _Report) -> None:
    """Hour meter (minutes) and backup battery (V), where the firmware adds them."""
    if fields.remaining() < 3:
        return
    hours, battery, kind = fields.values[fields.index : fields.index + 3]
    if hours.isdigit() and _is_decimal(battery) and kind in ("0", "1"):
        report.attributes["hours"] = int(hours) * 60.0
        report.attributes["battery"] = float(battery)


def _read_event(
    fields: _Fields, report: _Report, name: str, alarms: dict[int, str]
) -> None:
    """An event id, kept as ``event``, and the alarm it is in ``alarms``."""
    event = fields.integer(name)
    report.attributes["event"] = event
    if event in alarms:
        report.attributes["alarm"] = alarms[event]


# ---------------------------------------------------------------- ST4xx and ST9xx


def _st4_report(values: list[str], kind: str) -> _Report:
    fields = _Fields(values, 1)
    report = _Report(_device(fields))
    if kind not in _POSITION_TYPES:
        return report

    fields.skip()  # firmware
    model = fields.integer("model")
    if model == 41:
        fields.skip()  # variant
    fields.skip(7 * 6)  # seven cell records of six fields
    report.attributes["battery"] = fields.number("battery")
    fields.skip()  # archive flag
    report.attributes["index"] = fields.integer("message number")
    report.attributes["status"] = fields.integer("status")
    if fields.remaining() and len(fields.values[fields.index]) == 3:
        fields.skip()  # collaborative network
    if model == 41:
        fields.skip(2)  # collaborative network, temperature
        report.attributes["motion"] = fields.integer("motion") == 2
    if fields.remaining() and fields.values[fields.index]:
        report.time_ms = fields.time_ms()
        _read_position(fields, report)
    return report


def _st9_report(values: list[str]) -> _Report:
    kind = values[1]
    fields = _Fields(values, 2)
    report = _Report(_device(fields))
    if kind not in ("Location", "Emergency", "Alert"):
        return report

    if not _is_date(fields.values, fields.index):
        fields.skip()  # firmware (the newer Alert layout leaves it out)
    report.time_ms = fields.time_ms()
    with_cell = fields.remaining() > 0 and "." not in fields.values[fields.index]
    if with_cell:
        fields.skip()  # cell id
    report.latitude = fields.degrees("latitude", 90.0)
    report.longitude = fields.degrees("longitude", 180.0)
    report.speed_kmh = fields.number("speed")
    report.course = fields.number("course")
    report.valid = fields.text("fix") == "1"
    if with_cell:
        report.attributes["odometer"] = float(fields.integer("distance"))
    if kind != "Location":
        report.attributes["alarm"] = "general"
    return report


def _is_date(values: list[str], index: int) -> bool:
    """Whether ``values[index]`` and the next field are a date and a time."""
    if index + 1 >= len(values):
        return False
    date, time = values[index], values[index + 1]
    return len(date) == 8 and date.isdigit() and _is_clock(time)


def _is_clock(text: str) -> bool:
    return (
        len(text) == 8 and text[2] == text[5] == ":" and text.replace(":", "").isdigit()
    )


def _is_decimal(text: str) -> bool:
    whole, point, fraction = text.partition(".")
    return bool(point) and whole.isdigit() and fraction.isdigit()


# ---------------------------------------------------------------- universal layout


def _universal_report(values: list[str]) -> _Report:
    kind = values[0]
    fields = _Fields(values, 1)
    report = _Report(_device(fields))
    if kind not in ("STT", "ALT", "UEX", "BLE"):
        return report
    mask = _BLE_MASK if kind == "BLE" else fields.integer("field mask", base=16)

    def has(bit: int) -> bool:
        return bool(mask >> bit & 1)

    fields.skip(has(1) + has(2) + has(3))  # model, firmware, real-time flag
    if not (has(4) and has(5) and has(11) and has(12)):
        return report
    report.time_ms = fields.time_ms()
    fields.skip(has(6) + has(7) + has(8) + has(9))  # cell id, mcc, mnc, lac
    if has(10):
        report.attributes["rssi"] = fields.integer("rssi")
    report.latitude = fields.degrees("latitude", 90.0)
    report.longitude = fields.degrees("longitude", 180.0)
    if kind == "BLE":
        report.valid = True
        return report

    _read_motion(fields, report, has)
    _read_bits(fields, report, has)
    _read_universal_tail(fields, report, kind, has)
    return report


def _read_motion(fields: _Fields, report: _Report, has: Callable[[int], bool]) -> None:
    """Speed, course, satellites and fix, each where the mask has it."""
    if has(13):
        report.speed_kmh = fields.number("speed")
    if has(14):
        report.course = fields.number("course")
    if has(15):
        report.satellites = fields.integer("satellites")
    if has(16):
        report.valid = fields.text("fix") == "1"


def _read_bits(fields: _Fields, report: _Report, has: Callable[[int], bool]) -> None:
    """Ignition, inputs 1-3 and outputs 1-2 from the input and output bit strings."""
    if has(17):
        bits = _bit_string(fields.text("input"), "input")
        report.attributes["ignition"] = bits[0]
        for number, bit in enumerate(bits[1:4], start=1):
            report.attributes[f"input{number}"] = bit
    if has(18):
        bits = _bit_string(fields.text("output"), "output")
        for number, bit in enumerate(bits[:2], start=1):
            report.attributes[f"output{number}"] = bit


def _bit_string(text: str, name: str) -> list[bool]:
    """A ``0``/``1`` string, least significant bit first."""
    if not text or not set(text) <= {"0", "1"}:
        message = f"{name} must be 0/1 digits, got {text!r}"
        raise FrameError(message)
    return [digit == "1" for digit in reversed(text)]


def _read_universal_tail(
    fields: _Fields, report: _Report, kind: str, has: Callable[[int], bool]
) -> None:
    """Alert id (``ALT``) or mode, reason and message number (``STT``), then IO."""
    if kind == "UEX":
        return
    if kind == "ALT":
        if has(19):
            _alert_tail(fields, report)
        fields.skip(has(20) + has(21))  # modifier, data
    else:
        fields.skip(has(19) + has(20))  # mode, reason
        if has(21):
            report.attributes["index"] = fields.integer("message number")
    fields.skip(has(22))  # reserved
    if has(23):
        assigned = fields.integer("assignment mask", base=16)
        for bit in range(31):
            if assigned >> bit & 1:
                report.attributes[f"io{bit + 1}"] = fields.text(f"io{bit + 1}")


def looks_like(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes start a Suntech report.

    Needs the whole first field and its ``;``: a legacy ``<model><type>``
    (``ST300STT``), ``ST9xx`` followed by its report name, or a universal type;
    whatever follows must start a device id (or the ST9xx report name).
    """
    head, separator, rest = first_bytes.partition(b";")
    if not separator or not head.isascii():
        return False
    prefix = head.decode()
    if prefix.startswith("ST9") and len(prefix) == 5 and prefix[3:].isdigit():
        name, ended, _ = rest.partition(b";")
        names = (b"Location", b"Emergency", b"Alert")
        if ended:
            return name in names
        return any(known.startswith(name) for known in names)
    if not (_LEGACY.fullmatch(prefix) or prefix in _UNIVERSAL_TYPES):
        return False
    return not rest or rest[:1].isalnum()


PROTOCOL = TrackerProtocol(
    name=_NAME,
    default_port=5011,
    session=SuntechSession,
    looks_like=looks_like,
    tcp=True,
    udp=True,
    text=True,
)
