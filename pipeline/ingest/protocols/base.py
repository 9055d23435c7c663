"""What a tracker protocol module provides, and what the servers ask of it.

A tracker protocol is two things: how its bytes split into frames on a TCP stream
(or arrive one per UDP datagram), and what one frame says.  Each protocol module in
this package (``teltonika``, ``gt06``, ...) defines a :class:`TrackerSession`
subclass that does both, and a module-level ``PROTOCOL`` (a :class:`TrackerProtocol`)
that names it and gives its default port.

A session is the decoder state of one TCP connection, or of one UDP peer: the bytes
not yet framed, the device once it identified itself, its time zone where a login
gives one.  It does no I/O: the server (``pipeline.ingest.trackers``) and
``rastro decode`` feed it bytes and act on what it returns, so both run exactly the
same decoding.

What a frame says is a :class:`Decoded`: the fixes and events it carries, the
device it names, and the reply the device expects.  The server sends that reply only
after the fixes and events are durable in Kafka, and sends none when Kafka failed,
so the device keeps its records and sends them again.

Attribute names shared by every protocol, so that alerts and dashboards read one
vocabulary (values in SI units unless the name says otherwise):

==================  =========================================================
``ignition``        bool, engine / ACC on
``motion``          bool, the device's own movement flag
``alarm``           str, one of :data:`ALARMS` (also raised as an event)
``event``           int or str, the protocol's own event or report code
``battery``         float, internal battery voltage (V)
``batteryLevel``    float, internal battery charge (%)
``power``           float, external (vehicle) voltage (V)
``odometer``        float, total distance (m) as the device counts it
``hours``           float, engine hours (s) as the device counts it
``rssi``            int, GSM signal as the protocol reports it
``hdop``            float, horizontal dilution of precision
``input1`` ...      bool, digital inputs; ``output1`` ... digital outputs
``index``           int, the device's message or record counter
``io<id>``          the raw value of a numbered IO element (Teltonika and alike)
``status``          int, a raw status word, kept when it is not fully named
``cellLocation``    bool, the position comes from cell or Wi-Fi, not GNSS
==================  =========================================================
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.model import Event, Fix

__all__ = [
    "ALARMS",
    "Decoded",
    "FrameError",
    "TrackerProtocol",
    "TrackerSession",
    "alarm_event",
    "encode_attribute",
    "new_fix",
    "positionless_alarm_event",
]

#: Alarm names every protocol maps its own codes onto.
ALARMS = frozenset(
    {
        "sos",
        "powerCut",
        "powerRestored",
        "lowBattery",
        "lowPower",
        "tamper",
        "jamming",
        "overspeed",
        "vibration",
        "movement",
        "geofenceEnter",
        "geofenceExit",
        "accident",
        "fall",
        "door",
        "removing",
        "general",
    }
)


class FrameError(ValueError):
    """Bytes that are not a valid frame of the protocol; the message says why.

    Raised for a bad checksum, a truncated or over-long frame, a length field
    beyond the protocol's limit, or content that does not parse.  The server logs
    it once with the protocol and the remote address: from :meth:`TrackerSession.split`
    it closes the connection (the stream cannot be trusted any more); from
    :meth:`TrackerSession.decode` it drops that frame and goes on.
    """


@dataclass
class Decoded:
    """What one frame said, and what to answer.

    ``device`` is the identifier the frame names (a login, or an id carried in every
    report), ``None`` when the frame relies on the session's login.  ``reply`` is
    sent once ``fixes`` and ``events`` are durable (``None``: the protocol expects
    no answer).  ``refusal`` is sent instead, before closing, when the device is
    not accepted (Teltonika's ``00``); ``None`` means close without a word.
    """

    fixes: list[Fix] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    device: str | None = None
    reply: bytes | None = None
    refusal: bytes | None = None


class TrackerSession(ABC):
    """Decoder state of one TCP connection (or one UDP peer) of one protocol.

    Subclasses set :attr:`protocol` and :attr:`max_frame_bytes` and implement
    :meth:`split` and :meth:`decode`; protocols that also speak UDP override
    :meth:`decode_datagram`.
    """

    #: The protocol's name, as in the README's port table and ``Fix.protocol``.
    protocol: ClassVar[str]
    #: The longest frame the protocol allows; a buffer holding more bytes without
    #: completing a frame is refused, so memory per connection stays bounded.
    max_frame_bytes: ClassVar[int] = 4096

    def __init__(self) -> None:
        #: The identifier the device gave (login or inline), once it gave one.
        self.device: str | None = None

    @abstractmethod
    def split(self, buffer: bytearray) -> list[bytes]:
        """Remove the complete frames at the front of ``buffer`` and return them.

        Bytes of an incomplete frame stay in ``buffer`` for the next read.  Raises
        :class:`FrameError` when the front of ``buffer`` can never become a frame
        (a bad start marker, a length beyond :attr:`max_frame_bytes`).
        """

    @abstractmethod
    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one frame returned by :meth:`split`.

        ``server_time_ms`` is the receive time: it becomes ``Fix.server_time_ms``
        and serves replies that carry the server's clock.  Raises
        :class:`FrameError` when the frame's content is invalid.
        """

    def decode_datagram(self, datagram: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one UDP datagram; by default, every frame it holds in turn."""
        buffer = bytearray(datagram)
        frames = self.split(buffer)
        if buffer:
            message = f"datagram has {len(buffer)} trailing bytes after its frames"
            raise FrameError(message)

        merged = Decoded()
        replies = []
        for frame in frames:
            decoded = self.decode(frame, server_time_ms=server_time_ms)
            merged.fixes.extend(decoded.fixes)
            merged.events.extend(decoded.events)
            merged.device = decoded.device or merged.device
            merged.refusal = decoded.refusal or merged.refusal
            if decoded.reply is not None:
                replies.append(decoded.reply)
        merged.reply = b"".join(replies) if replies else None
        return merged


@dataclass(frozen=True)
class TrackerProtocol:
    """A protocol as the servers and ``rastro decode`` know it.

    ``looks_like`` answers, from the first bytes a connection sent (at least one,
    at most 64), whether they could start a frame of this protocol; the
    detection port uses it to hand the connection over.
    """

    name: str
    default_port: int
    session: Callable[[], TrackerSession]
    looks_like: Callable[[bytes], bool]
    tcp: bool = True
    udp: bool = False
    text: bool = False


def new_fix(
    device: str,
    fix_time_ms: int,
    latitude: float,
    longitude: float,
    *,
    protocol: str,
    server_time_ms: int,
    valid: bool = True,
    speed_kmh: float | None = None,
    course: float | None = None,
    altitude: float | None = None,
    accuracy: float | None = None,
    satellites: int | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Fix:
    """Build a :class:`Fix`; attribute values are JSON-encoded, as on every tier.

    Examples
    --------
    >>> fix = new_fix("123", 0, 1.5, 2.5, protocol="gt06", server_time_ms=0,
    ...               attributes={"ignition": True})
    >>> fix.attributes["ignition"]
    'true'
    """
    fix = Fix(
        device=device,
        fix_time_ms=fix_time_ms,
        server_time_ms=server_time_ms,
        latitude=latitude,
        longitude=longitude,
        valid=valid,
        protocol=protocol,
    )
    if speed_kmh is not None:
        fix.speed_kmh = speed_kmh
    if course is not None:
        fix.course = course
    if altitude is not None:
        fix.altitude = altitude
    if accuracy is not None:
        fix.accuracy = accuracy
    if satellites is not None:
        fix.satellites = satellites
    if attributes:
        fix.attributes.update(
            {key: encode_attribute(value) for key, value in attributes.items()}
        )
    return fix


def encode_attribute(value: Any) -> str:
    """JSON text of one attribute value, as ``json.dumps`` writes it, but faster.

    Decoders build a fix per record on the hot path; ``json.dumps`` costs about
    2 µs per value, most of it for values that need no escaping at all.

    Examples
    --------
    >>> [encode_attribute(v) for v in (True, 12, 3.5, "on", None)]
    ['true', '12', '3.5', '"on"', 'null']
    """
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float and math.isfinite(value):
        return repr(value)
    if kind is str and value.isascii() and value.isprintable():
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
    return json.dumps(value)


def alarm_event(fix: Fix, alarm: str) -> Event:
    """The ``alarm`` event of a fix that reports ``alarm`` (one of :data:`ALARMS`)."""
    event = positionless_alarm_event(
        fix.device, alarm, fix.fix_time_ms, protocol=fix.protocol
    )
    event.latitude = fix.latitude
    event.longitude = fix.longitude
    return event


def positionless_alarm_event(
    device: str,
    alarm: str,
    event_time_ms: int,
    *,
    protocol: str,
    cell_location: bool = False,
) -> Event:
    """The ``alarm`` event of a report that raised ``alarm`` but has no position.

    ``event_time_ms`` is the report's time, or the receive time when it has none;
    ``cell_location`` marks reports that located the device by its cell instead.
    """
    if alarm not in ALARMS:
        message = f"alarm must be one of {sorted(ALARMS)}, got {alarm!r}"
        raise ValueError(message)
    event = Event(device=device, event_time_ms=event_time_ms, type="alarm")
    event.attributes["alarm"] = json.dumps(alarm)
    event.attributes["protocol"] = json.dumps(protocol)
    if cell_location:
        event.attributes["cellLocation"] = "true"
    return event
