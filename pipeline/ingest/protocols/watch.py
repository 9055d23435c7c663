"""The 3G watch protocol (SeTracker, Beesure and their clones), on TCP port 5093.

A frame is ``[<vendor>*<id>*<length>*<content>]``: a two-character vendor
(``3G``, ``SG``, ``CS``...), the device id, the content's length as 4 hex
digits, then the content ``TYPE[,field...]``.  Some vendors (``ZJ``) put a
4-hex-digit index between the id and the length.  Voice and photo chunks
(``TK``, ``JXTK``, ``img``) carry binary content in which ``}``, ``[``, ``]``,
``,`` and ``*`` travel escaped as ``}`` followed by 1 to 5; the length counts the
unescaped bytes.

A frame ends where its length field says when a ``]`` stands there (so a
Wi-Fi name may hold brackets).  Otherwise it ends at the ``]`` that balances its
``[`` -- as Traccar frames every watch -- once that ``]`` is followed by nothing
or by the next frame's ``[`` (or at once when the length field points past a
complete frame): captures from SG-firmware watches consistently carry a length
3 bytes short of their content, some ``LK`` frames one byte long, and those
watches must still be served.  Escaped binary content holds no raw bracket, so
its balancing ``]`` is its end.  A frame that closes within neither is refused
once :attr:`WatchSession.max_frame_bytes` are buffered.

Position reports (``UD``, ``UD2``, ``UD_LTE``, ``UD_WCDMA``..., ``AL``...,
``WT``) carry ``ddmmyy``, ``hhmmss`` (UTC), ``A``/``V``, latitude and its
``N``/``S``, longitude and its ``E``/``W`` (decimal degrees; a signed value keeps
its sign unless the letter is ``S`` or ``W``), speed (km/h), course, altitude
(m), satellites, GSM signal, battery (%), steps, tumbles, then a hex status
word, then cell and Wi-Fi lists that are not read.  Status bits that are alarms,
as Traccar reads them: 0 and 17 low battery, 1 and 18 geofence exit, 2 and 19
geofence enter, 14 power cut, 16 SOS, 20 removed from the wrist, 21 and 22 fall;
bit 4 is the motion flag.  An ``AL`` report with none of those bits is a general
alarm.

Replies echo vendor, id and index, with the 4-hex length of the reply content:
``LK`` -> ``LK``, ``AL...`` -> ``AL``, ``INIT`` -> ``INIT,1``, ``TKQ`` and
``TKQ2`` -> themselves, ``JXTK`` -> ``JXTKR,1``.  Position reports (``UD``...)
get no reply.  Link-keeping (``LK``), health readings and media chunks carry no
position and give no fix.
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
)
from pipeline.ingest.protocols.fields import (
    ascii_text,
    ddmmyy_hhmmss_ms,
    degrees,
    integer,
    number,
)

__all__ = ["PROTOCOL", "WatchSession"]

_NAME = "watch"
_OPEN = 0x5B
_CLOSE = 0x5D
_HEX = b"0123456789ABCDEFabcdef"

#: ``[vendor*id*hhhh*``: the header up to the first 4-hex field.
_HEADER = re.compile(rb"\[([0-9A-Za-z]{2})\*([0-9A-Za-z]{1,32})\*([0-9A-Fa-f]{4})\*")
#: Every prefix of such a header, to tell "not yet complete" from "never valid".
_HEADER_PREFIX = re.compile(
    rb"\[(?:[0-9A-Za-z](?:[0-9A-Za-z](?:\*(?:[0-9A-Za-z]{1,32}"
    rb"(?:\*(?:[0-9A-Fa-f]{1,4})?)?)?)?)?)?"
)
_BRACKETS = re.compile(rb"[\[\]]")
_UNESCAPED = {1: b"}", 2: b"[", 3: b"]", 4: b",", 5: b"*"}

#: Status bits that are alarms, in the order Traccar tries them.
STATUS_ALARMS = (
    (0, "lowBattery"),
    (1, "geofenceExit"),
    (2, "geofenceEnter"),
    (14, "powerCut"),
    (16, "sos"),
    (17, "lowBattery"),
    (18, "geofenceExit"),
    (19, "geofenceEnter"),
    (20, "removing"),
    (21, "fall"),
    (22, "fall"),
)
#: Content types answered with a fixed reply.
_REPLIES = {"LK": "LK", "INIT": "INIT,1", "TKQ": "TKQ", "TKQ2": "TKQ2"}
_POSITION_TYPES = ("UD", "AL", "WT")


class WatchSession(TrackerSession):
    """Decoder state of one watch connection; every frame names its device."""

    protocol = _NAME
    #: The length field allows 65,535 content bytes, up to twice that escaped.
    max_frame_bytes = 2 * 0xFFFF + 64

    def __init__(self) -> None:
        super().__init__()
        #: How far the bracket scan of the incomplete frame at the front of the
        #: buffer got, so that each read scans only the new bytes.
        self._scan: _BracketScan | None = None

    def split(self, buffer: bytearray) -> list[bytes]:
        """Cut complete frames off ``buffer``; see the module docstring."""
        frames = []
        start = 0
        scan = self._scan
        self._scan = None
        while start < len(buffer):
            scan = scan or _BracketScan(start)
            end = self._frame_end(buffer, scan)
            if end is None:
                scan.start -= start
                self._scan = scan
                break
            frames.append(bytes(buffer[start:end]))
            start, scan = end, None
        del buffer[:start]
        return frames

    def decode(self, frame: bytes, *, server_time_ms: int) -> Decoded:
        """Decode one frame; see the module docstring for each content type."""
        vendor, device, index, content = _frame_parts(frame)
        self.device = device
        kind = _content_type(content)

        decoded = Decoded(device=device)
        if kind.startswith(_POSITION_TYPES):
            _add_position(decoded, content, kind, server_time_ms)
        answer = _reply_content(kind)
        if answer is not None:
            decoded.reply = _frame(vendor, device, index, answer)
        return decoded

    def _frame_end(self, buffer: bytearray, scan: _BracketScan) -> int | None:
        """Where the frame at ``scan.start`` ends, ``None`` while incomplete."""
        header = _header_end(buffer, scan.start)
        if header is None:
            return None
        content_start, length = header

        by_length = content_start + length
        if by_length < len(buffer) and buffer[by_length] == _CLOSE:
            return by_length + 1
        by_brackets = scan.end(buffer)
        if by_brackets is not None and (
            by_length < len(buffer)  # the length field is wrong: trust brackets
            or by_brackets == len(buffer)
            or buffer[by_brackets] == _OPEN
        ):
            return by_brackets
        if len(buffer) - scan.start > self.max_frame_bytes:
            message = f"no ']' closes a frame within {self.max_frame_bytes} bytes"
            raise FrameError(message)
        return None


class _BracketScan:
    """Finds the ``]`` that balances a frame's ``[``, resuming where it stopped.

    Escaped binary content holds no raw bracket, so this is the true end of
    every frame but those whose text (a Wi-Fi name) has unbalanced brackets.
    """

    def __init__(self, start: int) -> None:
        #: Where the frame starts in the buffer (moves when the buffer is cut).
        self.start = start
        self.scanned = 0
        self.depth = 0
        self.found: int | None = None

    def end(self, buffer: bytearray) -> int | None:
        """The offset just past the balancing ``]``, ``None`` if not yet seen."""
        if self.found is not None:
            return self.start + self.found
        for match in _BRACKETS.finditer(buffer, self.start + self.scanned):
            self.depth += 1 if match.group() == b"[" else -1
            if self.depth == 0:
                self.found = match.end() - self.start
                return match.end()
        self.scanned = len(buffer) - self.start
        return None


def _header_end(buffer: bytearray, start: int) -> tuple[int, int] | None:
    """Content start and length of the frame at ``start``; ``None`` if incomplete."""
    match = _HEADER.match(buffer, start)
    if match is None:
        tail = bytes(buffer[start : start + 40])
        if _HEADER_PREFIX.fullmatch(tail):
            return None
        message = f"frame must start with '[vendor*id*length*', got {tail[:40]!r}"
        raise FrameError(message)

    after = match.end()
    following = bytes(buffer[after : after + 5])
    if len(following) == 5 and _is_hex(following[:4]) and following[4:] == b"*":
        return after + 5, int(following[:4], 16)
    if len(following) < 5 and _is_hex(following[:4]):
        return None  # the index of the ZJ form, or the content: not yet known
    return after, int(match.group(3), 16)


def _is_hex(data: bytes) -> bool:
    return all(byte in _HEX for byte in data)


def _frame_parts(frame: bytes) -> tuple[str, str, str | None, bytes]:
    """Vendor, device id, index (or ``None``) and unescaped content of a frame."""
    match = _HEADER.match(frame)
    if match is None or frame[-1:] != b"]":
        message = f"frame must be '[vendor*id*length*content]', got {frame[:40]!r}"
        raise FrameError(message)
    vendor, device, length_field = (part.decode() for part in match.groups())

    index = None
    content_start = match.end()
    following = frame[content_start : content_start + 5]
    if len(following) == 5 and _is_hex(following[:4]) and following[4:] == b"*":
        index, length_field = length_field, following[:4].decode()
        content_start += 5

    content = frame[content_start:-1]
    length = int(length_field, 16)
    if len(content) != length and b"}" in content:
        unescaped = _unescape(content)
        if unescaped is not None and len(unescaped) == length:
            content = unescaped
    return vendor, device, index, content


def _unescape(content: bytes) -> bytes | None:
    """Undo the ``}`` escaping of binary content; ``None`` if it is not escaped."""
    parts = content.split(b"}")
    pieces = [parts[0]]
    for part in parts[1:]:
        if not part or part[0] not in _UNESCAPED:
            return None
        pieces.append(_UNESCAPED[part[0]] + part[1:])
    return b"".join(pieces)


def _content_type(content: bytes) -> str:
    """The ``TYPE`` before the first comma; printable ASCII or refused."""
    kind = content.split(b",", 1)[0]
    if not (kind.isascii() and kind.decode().isprintable()):
        message = f"content type must be printable ASCII, got {kind[:16]!r}"
        raise FrameError(message)
    return kind.decode()


def _reply_content(kind: str) -> str | None:
    if kind.startswith("AL"):
        return "AL"
    if kind == "JXTK":
        return "JXTKR,1"
    return _REPLIES.get(kind)


def _frame(vendor: str, device: str, index: str | None, content: str) -> bytes:
    """A frame to the device, echoing its vendor, id and index."""
    middle = f"{index}*" if index is not None else ""
    return f"[{vendor}*{device}*{middle}{len(content):04X}*{content}]".encode()


def _add_position(
    decoded: Decoded, content: bytes, kind: str, server_time_ms: int
) -> None:
    """Append the fix (and alarm event) of a position report."""
    raw_fields = content.split(b",", 17)[1:17]
    if len(raw_fields) < 16:
        message = f"{kind} report must have 16 position fields, got {len(raw_fields)}"
        raise FrameError(message)
    fields = [ascii_text(field, f"{kind} position fields") for field in raw_fields]

    status = integer(fields[15], "status", base=16)
    attributes: dict[str, Any] = {
        "rssi": integer(fields[11], "GSM signal"),
        "batteryLevel": integer(fields[12], "battery"),
        "steps": integer(fields[13], "steps"),
        "status": status,
        "motion": bool(status >> 4 & 1),
    }
    alarm = next((name for bit, name in STATUS_ALARMS if status >> bit & 1), None)
    if alarm is None and kind.startswith("AL"):
        alarm = "general"
    if alarm is not None:
        attributes["alarm"] = alarm

    if fields[2] not in ("A", "V"):
        message = f"validity must be 'A' or 'V', got {fields[2]!r}"
        raise FrameError(message)
    fix = new_fix(
        decoded.device or "",
        ddmmyy_hhmmss_ms(fields[0], fields[1], "date and time"),
        _coordinate(fields[3], fields[4], "latitude", 90.0),
        _coordinate(fields[5], fields[6], "longitude", 180.0),
        protocol=_NAME,
        server_time_ms=server_time_ms,
        valid=fields[2] == "A",
        speed_kmh=number(fields[7], "speed"),
        course=number(fields[8], "course"),
        altitude=number(fields[9], "altitude"),
        satellites=integer(fields[10], "satellites"),
        attributes=attributes,
    )
    decoded.fixes.append(fix)
    if alarm is not None:
        decoded.events.append(alarm_event(fix, alarm))


def _coordinate(text: str, hemisphere: str, name: str, limit: float) -> float:
    """Signed degrees; ``S`` and ``W`` make the value negative whatever its sign."""
    if hemisphere not in ("", "N", "S", "E", "W"):
        message = f"{name} hemisphere must be N, S, E or W, got {hemisphere!r}"
        raise FrameError(message)
    value = degrees(text.strip(), name, limit)
    return -abs(value) if hemisphere in ("S", "W") else value


def looks_like(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes start a watch frame.

    Needs at least ``[`` and the two-character vendor with its ``*``; whatever
    more was given must continue a valid header.
    """
    if len(first_bytes) < 4:
        return False
    if _HEADER.match(first_bytes):
        return True
    return _HEADER_PREFIX.fullmatch(first_bytes) is not None


PROTOCOL = TrackerProtocol(
    name=_NAME,
    default_port=5093,
    session=WatchSession,
    looks_like=looks_like,
    tcp=True,
    udp=False,
    text=True,
)
