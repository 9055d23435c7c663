"""``rastro decode``: what the server makes of a device's packets, without a server.

Each ``--hex``, ``--text`` or ``--file`` option is one packet as it arrives on one
connection (or one UDP datagram with ``--udp``), in the order given.  Packets go
through exactly the server's path: a :class:`~pipeline.ingest.trackers.TrackerStream`
over the protocol's session, then the session's ``decode``.  The device is taken as
accepted.  For every packet the output is one JSON line per decoded position (the
JSON ingest endpoint's field names, without ``serverTime``), then ``reply: HEX``,
the bytes the server would answer once Kafka acknowledged (``reply: none``).

The HTTP protocols read ``--text`` as the request target (``/?id=...&lat=...``) or
the JSON body, and answer ``reply: HTTP 200``.

Bad input (not hexadecimal, a frame the protocol refuses, bytes left that never
complete a frame) raises :class:`DecodeInputError`; the command prints it as one
line and exits with 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pipeline.ingest.framing import TrackerStream, now_ms
from pipeline.ingest.protocols import PROTOCOL_MODULES, tracker_protocol
from pipeline.ingest.protocols.base import Decoded, FrameError
from pipeline.model import Fix, FixError, fix_to_json, parse_time_ms

__all__ = [
    "HTTP_DECODERS",
    "PROTOCOL_NAMES",
    "DecodeInputError",
    "Packet",
    "add_decode_arguments",
    "decode_lines",
    "decode_packets",
]


class DecodeInputError(ValueError):
    """Input ``rastro decode`` cannot decode; the message says which and why."""


#: ``decoder(text, server_time_ms)`` of an HTTP protocol: the fixes of one request,
#: given its target (``/?id=...``) or its JSON body.  Raises ``ValueError``.
HttpDecoder = Callable[[str, int], list[Fix]]


def _osmand_fixes(text: str, server_time_ms: int) -> list[Fix]:
    # Imported here: the OsmAnd server module brings Starlette and Hypercorn along,
    # which every other use of the command line can do without.
    from pipeline.ingest.osmand import (
        OsmandError,
        fix_from_osmand_params,
        fixes_from_osmand_json,
    )

    body = text.strip()
    if body.startswith("{"):
        try:
            document = json.loads(body)
        except json.JSONDecodeError as error:
            message = f"body is not valid JSON: {error}"
            raise OsmandError(message) from error
        return fixes_from_osmand_json(document, server_time_ms=server_time_ms)

    params = dict(parse_qsl(urlsplit(body).query, keep_blank_values=True))
    return [fix_from_osmand_params(params, server_time_ms=server_time_ms)]


def _owntracks_fixes(text: str, server_time_ms: int) -> list[Fix]:
    """An OwnTracks JSON message, as its HTTP mode posts it (``topic`` names it)."""
    from pipeline.ingest.owntracks import decode_owntracks

    return decode_owntracks(text, server_time_ms=server_time_ms, device=None).fixes


#: The HTTP protocols ``rastro decode`` reads.
HTTP_DECODERS: dict[str, HttpDecoder] = {
    "osmand": _osmand_fixes,
    "owntracks": _owntracks_fixes,
}

#: Every protocol name ``--protocol`` takes.
PROTOCOL_NAMES = (*PROTOCOL_MODULES, "osmand", "owntracks")
_DECODABLE = {*PROTOCOL_MODULES, *HTTP_DECODERS}

_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|[rnt\\])")
_ESCAPED = {"r": b"\r", "n": b"\n", "t": b"\t", "\\": b"\\"}


@dataclass(frozen=True)
class Packet:
    """One packet of the command line: ``kind`` is ``hex``, ``text`` or ``file``."""

    kind: str
    value: str

    def payload(self, *, escapes: bool = True) -> bytes:
        """The packet's bytes; ``escapes`` reads ``\\r \\n \\t \\\\ \\xHH`` in text."""
        if self.kind == "hex":
            return _from_hex(self.value)
        if self.kind == "file":
            return _read_file(self.value)
        if not escapes:
            return self.value.encode("utf-8")
        return _unescaped(self.value)


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``decode`` command's options; packets keep their command-line order."""
    parser.add_argument(
        "--protocol",
        required=True,
        metavar="NAME",
        help=f"one of: {', '.join(PROTOCOL_NAMES)}",
    )
    for kind, help_text in (
        ("hex", "a packet as hexadecimal bytes (spaces allowed)"),
        ("text", r"a packet as text (\r \n \t \\ \xHH understood)"),
        ("file", "a packet: the whole content of a file"),
    ):
        parser.add_argument(
            f"--{kind}",
            dest="packets",
            action="append",
            type=functools.partial(Packet, kind),
            metavar=kind.upper(),
            help=f"{help_text}; repeat for the next packets of the session",
        )
    parser.add_argument(
        "--udp",
        action="store_true",
        help="each packet is one UDP datagram (protocols that speak UDP)",
    )
    parser.add_argument(
        "--server-time",
        default=None,
        metavar="ISO",
        help="the receive time replies and fixes use (ISO-8601; default now)",
    )


def decode_lines(arguments: argparse.Namespace) -> Iterator[str]:
    """The command's output lines for parsed ``arguments``."""
    packets: list[Packet] = arguments.packets or []
    if not packets:
        message = "give at least one packet with --hex, --text or --file"
        raise DecodeInputError(message)
    server_time_ms = now_ms()
    if arguments.server_time is not None:
        try:
            server_time_ms = parse_time_ms(arguments.server_time)
        except FixError as error:
            raise DecodeInputError(f"--server-time: {error}") from error
    yield from decode_packets(
        arguments.protocol, packets, server_time_ms=server_time_ms, udp=arguments.udp
    )


def decode_packets(
    protocol: str,
    packets: Sequence[Packet],
    *,
    server_time_ms: int,
    udp: bool = False,
) -> Iterator[str]:
    """Decode ``packets`` of one session; yield each packet's lines in turn."""
    if protocol in HTTP_DECODERS:
        yield from _decode_http(HTTP_DECODERS[protocol], packets, server_time_ms)
        return
    if protocol not in PROTOCOL_MODULES:
        known = [name for name in PROTOCOL_NAMES if name in _DECODABLE]
        message = f"cannot decode protocol {protocol!r}; known: {', '.join(known)}"
        raise DecodeInputError(message)
    yield from _decode_tracker(protocol, packets, server_time_ms, udp)


def fix_line(fix: Fix) -> str:
    """A fix as one JSON line: the ingest endpoint's fields, no ``serverTime``."""
    document: dict[str, Any] = fix_to_json(fix)
    document.pop("serverTime", None)
    return json.dumps(document, ensure_ascii=False)


def _decode_tracker(
    name: str, packets: Sequence[Packet], server_time_ms: int, udp: bool
) -> Iterator[str]:
    protocol = tracker_protocol(name)
    if udp and not protocol.udp:
        message = f"protocol {name!r} does not speak UDP; leave out --udp"
        raise DecodeInputError(message)
    session = protocol.session()
    stream = TrackerStream(session)

    for number, packet in enumerate(packets, start=1):
        data = _payload(number, packet, escapes=True)
        try:
            if udp:
                decoded = [session.decode_datagram(data, server_time_ms=server_time_ms)]
            else:
                decoded = [
                    session.decode(frame, server_time_ms=server_time_ms)
                    for frame in stream.feed(data)
                ]
        except FrameError as error:
            raise DecodeInputError(f"packet {number}: {error}") from error
        yield from _packet_lines(decoded)

    if stream.buffer:
        message = (
            f"{len(stream.buffer)} bytes at the end do not complete a {name} frame: "
            f"{bytes(stream.buffer[:64]).hex()}"
        )
        raise DecodeInputError(message)


def _packet_lines(decoded: list[Decoded]) -> Iterator[str]:
    replies = []
    for one in decoded:
        yield from (fix_line(fix) for fix in one.fixes)
        if one.reply is not None:
            replies.append(one.reply)
    yield f"reply: {b''.join(replies).hex()}" if replies else "reply: none"


def _decode_http(
    decoder: HttpDecoder, packets: Sequence[Packet], server_time_ms: int
) -> Iterator[str]:
    for number, packet in enumerate(packets, start=1):
        data = _payload(number, packet, escapes=False)
        try:
            fixes = decoder(data.decode("utf-8"), server_time_ms)
        except UnicodeDecodeError as error:
            message = f"packet {number}: not UTF-8 text: {error.reason}"
            raise DecodeInputError(message) from error
        except ValueError as error:  # OsmandError, FixError and their kin
            raise DecodeInputError(f"packet {number}: {error}") from error
        yield from (fix_line(fix) for fix in fixes)
        yield "reply: HTTP 200"


def _payload(number: int, packet: Packet, *, escapes: bool) -> bytes:
    try:
        data = packet.payload(escapes=escapes)
    except ValueError as error:
        raise DecodeInputError(f"packet {number}: {error}") from error
    if not data:
        raise DecodeInputError(f"packet {number}: is empty")
    return data


def _from_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError as error:
        message = f"--hex {text[:40]!r} is not hexadecimal bytes: {error}"
        raise ValueError(message) from None


def _read_file(name: str) -> bytes:
    try:
        return Path(name).read_bytes()
    except OSError as error:
        message = f"--file {name!r} cannot be read: {error.strerror}"
        raise ValueError(message) from None


def _unescaped(text: str) -> bytes:
    """UTF-8 bytes of ``text`` with its escapes read; ``\\xHH`` is one byte."""
    data = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        data += text[position : match.start()].encode("utf-8")
        code = match.group(1)
        data += bytes([int(code[1:], 16)]) if code.startswith("x") else _ESCAPED[code]
        position = match.end()
    data += text[position:].encode("utf-8")
    return bytes(data)
