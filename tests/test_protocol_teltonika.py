"""Teltonika codec 8, 8 Extended, 16 and 12, over TCP and UDP.

Real packets come from two places: ``tests/data/protocol_samples.json`` (each
sample names its source), and the examples of Teltonika's public wiki page
"Teltonika Data Sending Protocols" (wiki.teltonika-gps.com, formerly "Codec"):
codec 8 examples 1 to 3, the codec 8 Extended example, the codec 16 example, the
codec 12 response example and the codec 8 example sent over UDP, with the
server responses that page gives.  The expected values were worked out from the
layout the page documents.

Packets with chosen content are built by the small encoder below, written from
the same page, with its own bitwise CRC-16/IBM; the expected fixes are built
with :func:`~pipeline.ingest.protocols.base.new_fix`, so the decoder's own wire
encoding of fixes is checked against the reference construction.
"""

from __future__ import annotations

import random
import struct
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from pipeline.ingest.protocols import teltonika
from pipeline.ingest.protocols.base import Decoded, FrameError, alarm_event, new_fix
from pipeline.ingest.protocols.teltonika import (
    PROTOCOL,
    TeltonikaSession,
    looks_like_teltonika,
)
from pipeline.model import Fix
from tests import protocol_checks
from tests.protocol_checks import (
    NOW_MS,
    FramingChecks,
    HostileInputChecks,
    Mutation,
    assert_registered,
    assert_sample,
    attribute_values,
    decoding,
    exercise,
    mutated,
    others_first_bytes,
    report_throughput,
    shared_samples,
)

SAMPLES = list(shared_samples("teltonika").values())
IMEI = "356307042441013"
HANDSHAKE = bytes.fromhex("000f333536333037303432343431303133")

#: Teltonika wiki, "Teltonika Data Sending Protocols", Codec 8 examples 1 to 3.
WIKI_C8_1 = bytes.fromhex(
    "000000000000003608010000016B40D8EA30010000000000000000000000000000000105021503"
    "010101425E0F01F10000601A014E0000000000000000010000C7CF"
)
WIKI_C8_2 = bytes.fromhex(
    "000000000000002808010000016B40D9AD80010000000000000000000000000000000103021503"
    "010101425E100000010000F22A"
)
WIKI_C8_3 = bytes.fromhex(
    "000000000000004308020000016B40D57B48010000000000000000000000000000000101010100"
    "0000000000016B40D5C198010000000000000000000000000000000101010101000000020000252C"
)
#: The same page, the Codec 8 Extended example.
WIKI_C8E = bytes.fromhex(
    "000000000000004A8E010000016B412CEE00010000000000000000000000000000000001000500"
    "0100010100010011001D00010010015E2C880002000B000000003544C87A000E000000001DD7E0"
    "6A00000100002994"
)
#: The same page, the Codec 16 example.
WIKI_C16 = bytes.fromhex(
    "000000000000005F10020000016BDBC7833000000000000000000000000000000000000B050402"
    "00010000030002000B00270042563A00000000016BDBC78718000000000000000000000000000000"
    "00000B05040200010000030002000B00260042563A00000200005FB3"
)
#: The same page, Codec 12: the device's response to the ``getinfo`` command.
WIKI_C12_RESPONSE = bytes.fromhex(
    "00000000000000900C010600000088494E493A323031392F372F323220373A3232205254433A32"
    "3031392F372F323220373A3533205253543A32204552523A312053523A302042523A302043463A"
    "302046473A3020464C3A302054553A302F302055543A3020534D533A30204E4F4750533A303A33"
    "30204750533A31205341543A302052533A332052463A36352053463A31204D443A30010000C78F"
)
WIKI_C12_TEXT = (
    "INI:2019/7/22 7:22 RTC:2019/7/22 7:53 RST:2 ERR:1 SR:0 BR:0 CF:0 FG:0 FL:0 "
    "TU:0/0 UT:0 SMS:0 NOGPS:0:30 GPS:1 SAT:0 RS:3 RF:65 SF:1 MD:0"
)
#: The same page, "Codec 8 protocol sending over UDP": the packet and its answer.
WIKI_UDP = bytes.fromhex(
    "003DCAFE0105000F33353230393330383634303336353508010000016B4F815B30010000000000"
    "000000000000000000000103021503010101425DBC000001"
)
WIKI_UDP_REPLY = bytes.fromhex("0005CAFE010501")

VALID_FRAMES = [
    HANDSHAKE,
    WIKI_C8_1,
    WIKI_C8_2,
    WIKI_C8_3,
    WIKI_C8E,
    WIKI_C16,
    WIKI_C12_RESPONSE,
    *(bytes.fromhex(sample["payload_hex"]) for sample in SAMPLES),
]


# --------------------------------------------------------------- test encoder


def crc16_ibm(data: bytes) -> int:
    """CRC-16/IBM bit by bit (polynomial 0x8005 reflected as 0xA001, initial 0)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@dataclass(frozen=True)
class Record:
    """One AVL record as a device would store it (coordinates in 1e-7 degree)."""

    time_ms: int
    latitude: int
    longitude: int
    altitude: int = 0
    angle: int = 0
    satellites: int = 0
    speed: int = 0
    priority: int = 0
    event_id: int = 0
    #: (value width in bytes, IO id, value), in any order.
    io: tuple[tuple[int, int, int], ...] = ()
    #: Variable-length values (codec 8 Extended only).
    variable: tuple[tuple[int, bytes], ...] = ()

    def integers(self) -> list[tuple[int, int, int]]:
        """The integer elements in wire order: by width, then as given."""
        return sorted(self.io, key=lambda element: element[0])


def encode_record(codec: int, record: Record) -> bytes:
    """A record in the codec's layout."""
    out = struct.pack(
        ">QBiihHBH",
        record.time_ms,
        record.priority,
        record.longitude,
        record.latitude,
        record.altitude,
        record.angle,
        record.satellites,
        record.speed,
    )
    id_format = "B" if codec == 0x08 else "H"
    count_format = "H" if codec == 0x8E else "B"
    total = len(record.io) + len(record.variable)
    if codec == 0x10:
        out += struct.pack(">HBB", record.event_id, 7, total)
    else:
        out += struct.pack(f">{id_format}{count_format}", record.event_id, total)

    for width, value_format in ((1, "B"), (2, "H"), (4, "I"), (8, "Q")):
        group = [(io_id, value) for size, io_id, value in record.io if size == width]
        out += struct.pack(f">{count_format}", len(group))
        for io_id, value in group:
            out += struct.pack(f">{id_format}{value_format}", io_id, value)
    if codec == 0x8E:
        out += struct.pack(">H", len(record.variable))
        for io_id, raw in record.variable:
            out += struct.pack(">HH", io_id, len(raw)) + raw
    return out


def avl_data(codec: int, records: list[Record]) -> bytes:
    """Codec id, record count, the records, the record count again."""
    body = b"".join(encode_record(codec, record) for record in records)
    return bytes((codec, len(records))) + body + bytes((len(records),))


def tcp_frame(data: bytes) -> bytes:
    """AVL data in a TCP frame: preamble, length, data, CRC field."""
    return (
        b"\x00" * 4
        + struct.pack(">I", len(data))
        + data
        + struct.pack(">I", crc16_ibm(data))
    )


def udp_datagram(
    data: bytes, imei: str = IMEI, packet_id: int = 0xCAFE, avl_id: int = 7
) -> bytes:
    """AVL data in a UDP datagram with its header."""
    body = struct.pack(">HBBH", packet_id, 1, avl_id, len(imei)) + imei.encode()
    body += data
    return struct.pack(">H", len(body)) + body


#: What the shared vocabulary calls the common IO elements (see the module's
#: NAMED_IO): how each raw value reads.
NAMES: dict[int, tuple[str, Any]] = {
    1: ("input1", bool),
    2: ("input2", bool),
    3: ("input3", bool),
    16: ("odometer", float),
    21: ("rssi", int),
    66: ("power", lambda raw: raw / 1000),
    67: ("battery", lambda raw: raw / 1000),
    113: ("batteryLevel", int),
    179: ("output1", bool),
    180: ("output2", bool),
    182: ("hdop", lambda raw: raw / 10),
    239: ("ignition", bool),
    240: ("motion", bool),
}
ALARMS = {
    (236, 1): "sos",
    (246, 1): "tamper",
    (247, 1): "accident",
    (247, 2): "accident",
    (249, 1): "jamming",
    (252, 1): "powerCut",
    (252, 0): "powerRestored",
}


def expected_attributes(record: Record) -> dict[str, Any]:
    """The attributes a record must give, alarm included."""
    attributes: dict[str, Any] = {}
    if record.priority:
        attributes["priority"] = record.priority
    if record.event_id:
        attributes["event"] = record.event_id
    values = {}
    for _width, io_id, value in record.integers():
        values[io_id] = value
        attributes[f"io{io_id}"] = value
        if io_id in NAMES:
            name, convert = NAMES[io_id]
            attributes[name] = convert(value)
    for io_id, raw in record.variable:
        attributes[f"io{io_id}"] = raw.hex()
    if record.event_id in values:
        alarm = ALARMS.get((record.event_id, values[record.event_id]))
        if alarm is not None:
            attributes["alarm"] = alarm
    return attributes


def expected_fix(record: Record, device: str = IMEI) -> Fix:
    """The fix :func:`new_fix` builds for a record."""
    return new_fix(
        device,
        record.time_ms,
        record.latitude / 1e7,
        record.longitude / 1e7,
        protocol="teltonika",
        server_time_ms=NOW_MS,
        valid=record.satellites > 0,
        speed_kmh=float(record.speed),
        course=float(record.angle),
        altitude=float(record.altitude),
        satellites=record.satellites,
        attributes=expected_attributes(record),
    )


def identified() -> TeltonikaSession:
    """A session that received the IMEI frame."""
    session = TeltonikaSession()
    session.decode(HANDSHAKE, server_time_ms=NOW_MS)
    return session


def decode_one(frame: bytes, session: TeltonikaSession | None = None) -> Decoded:
    """Frame ``frame`` alone (it must be one whole frame) and decode it."""
    return protocol_checks.decode_one(session or identified(), frame)


def position(fix: Fix) -> tuple[Any, ...]:
    """Time, latitude, longitude, speed, course, altitude, satellites, valid."""
    return (
        fix.fix_time_ms,
        pytest.approx(fix.latitude, abs=1e-7),
        pytest.approx(fix.longitude, abs=1e-7),
        fix.speed_kmh,
        fix.course,
        fix.altitude,
        fix.satellites,
        fix.valid,
    )


# ------------------------------------------------------------ shared samples


class TestSharedSamples:
    """The Teltonika packets of samples.json, every record and the reply."""

    @pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: sample["id"])
    def test_sample_decodes_as_expected(self, sample: dict[str, Any]) -> None:
        """Each record's position and validity, the count, the exact reply."""
        expected = sample["expected"]
        session = TeltonikaSession()
        handshake = bytes.fromhex(sample["session_context"][0]["payload_hex"])

        login = decode_one(handshake, session)
        decoded = decode_one(bytes.fromhex(sample["payload_hex"]), session)

        assert login.device == expected["imei"] == session.device
        assert (login.reply, login.refusal) == (b"\x01", b"\x00")
        assert_sample(decoded, sample, names_device=False)

    def test_codec8_io_elements(self) -> None:
        """All 15 IO elements of the 83 km/h record, raw and named."""
        decoded = decode_one(bytes.fromhex(SAMPLES[0]["payload_hex"]))

        (fix,) = decoded.fixes
        assert attribute_values(fix) == {
            "io240": 1,
            "motion": True,
            "io21": 3,
            "rssi": 3,
            "io200": 0,
            "io1": 1,
            "input1": True,
            "io29": 0,
            "io252": 0,
            "io66": 14233,
            "power": 14.233,
            "io24": 83,
            "io205": 63501,
            "io206": 17007,
            "io67": 3976,
            "battery": 3.976,
            "io25": 3000,
            "io86": 3000,
            "io241": 23201,
            "io16": 2656224,
            "odometer": 2656224.0,
        }
        assert decoded.events == []

    def test_codec8e_panic_button_is_sos_alarm(self) -> None:
        """Record 1 is triggered by IO 236 = 1 (the alarm button): an SOS alarm."""
        # This packet found a bug: the variable-length group's count was read
        # as 4 bytes instead of 2, so every codec 8E packet was "truncated".
        sample = next(s for s in SAMPLES if s["id"] == "teltonika-c8e-2rec-south")

        decoded = decode_one(bytes.fromhex(sample["payload_hex"]))

        first, second = decoded.fixes
        common = {
            "priority": 1,
            "io240": 0,
            "motion": False,
            "io21": 0,
            "rssi": 0,
            "io200": 0,
            "io69": 2,
            "io113": 1,
            "batteryLevel": 1,
            "io116": 0,
            "io263": 1,
            "io250": 0,
            "io181": 0,
            "io24": 0,
            "io67": 3414,
            "battery": 3.414,
            "io68": 0,
            "io25": 0,
            "io241": 0,
        }
        assert attribute_values(first) == {
            **common,
            "event": 236,
            "io236": 1,
            "alarm": "sos",
        }
        assert attribute_values(second) == {**common, "event": 389, "io389": 17}
        assert decoded.events == [alarm_event(first, "sos")]

    def test_six_records_with_outputs_and_trip(self) -> None:
        """The six-record packet: outputs, inputs, trip odometer, movement event."""
        sample = next(s for s in SAMPLES if s["id"] == "teltonika-c8-6rec")

        decoded = decode_one(bytes.fromhex(sample["payload_hex"]))

        third = decoded.fixes[2]
        assert attribute_values(third) == {
            "event": 240,
            "io1": 1,
            "input1": True,
            "io2": 0,
            "input2": False,
            "io179": 0,
            "output1": False,
            "io180": 0,
            "output2": False,
            "io240": 0,
            "motion": False,
            "io66": 26844,
            "power": 26.844,
            "io70": 247,
            "io24": 0,
            "io199": 29,
        }
        powers = [attribute_values(fix)["power"] for fix in decoded.fixes]
        assert powers == [26.791, 26.804, 26.844, 26.59, 26.707, 26.706]


# -------------------------------------------------------------- wiki examples


class TestWikiExamples:
    """The examples of Teltonika's "Teltonika Data Sending Protocols" page."""

    def test_codec8_example_1(self) -> None:
        """One record, five IO elements; the server answers 00000001."""
        decoded = decode_one(WIKI_C8_1)

        (fix,) = decoded.fixes
        assert position(fix) == (1560161086000, 0.0, 0.0, 0, 0, 0, 0, False)
        assert attribute_values(fix) == {
            "priority": 1,
            "event": 1,
            "io21": 3,
            "rssi": 3,
            "io1": 1,
            "input1": True,
            "io66": 24079,
            "power": 24.079,
            "io241": 24602,
            "io78": 0,
        }
        assert decoded.reply == bytes.fromhex("00000001")

    def test_codec8_example_2(self) -> None:
        """One record, three IO elements."""
        decoded = decode_one(WIKI_C8_2)

        (fix,) = decoded.fixes
        assert position(fix) == (1560161136000, 0.0, 0.0, 0, 0, 0, 0, False)
        assert attribute_values(fix) == {
            "priority": 1,
            "event": 1,
            "io21": 3,
            "rssi": 3,
            "io1": 1,
            "input1": True,
            "io66": 24080,
            "power": 24.08,
        }
        assert decoded.reply == bytes.fromhex("00000001")

    def test_codec8_example_3_two_records(self) -> None:
        """Two records, input 1 off then on; the server answers 00000002."""
        decoded = decode_one(WIKI_C8_3)

        first, second = decoded.fixes
        assert position(first) == (1560160861000, 0.0, 0.0, 0, 0, 0, 0, False)
        assert position(second) == (1560160879000, 0.0, 0.0, 0, 0, 0, 0, False)
        base = {"priority": 1, "event": 1}
        assert attribute_values(first) == {**base, "io1": 0, "input1": False}
        assert attribute_values(second) == {**base, "io1": 1, "input1": True}
        assert decoded.reply == bytes.fromhex("00000002")

    def test_codec8_extended_example(self) -> None:
        """2-byte ids and counts, an empty variable-length group."""
        decoded = decode_one(WIKI_C8E)

        (fix,) = decoded.fixes
        assert position(fix) == (1560166592000, 0.0, 0.0, 0, 0, 0, 0, False)
        assert attribute_values(fix) == {
            "priority": 1,
            "event": 1,
            "io1": 1,
            "input1": True,
            "io17": 29,
            "io16": 22949000,
            "odometer": 22949000.0,
            "io11": 893700218,
            "io14": 500686954,
        }
        assert decoded.reply == bytes.fromhex("00000001")

    def test_codec16_example(self) -> None:
        """2-byte ids, 1-byte counts, a generation type after the event id."""
        decoded = decode_one(WIKI_C16)

        first, second = decoded.fixes
        assert position(first) == (1562760414000, 0.0, 0.0, 0, 0, 0, 0, False)
        assert position(second) == (1562760415000, 0.0, 0.0, 0, 0, 0, 0, False)
        base = {"event": 11, "io1": 0, "input1": False, "io3": 0, "input3": False}
        assert attribute_values(first) == {
            **base,
            "io11": 39,
            "io66": 22074,
            "power": 22.074,
        }
        assert attribute_values(second) == {
            **base,
            "io11": 38,
            "io66": 22074,
            "power": 22.074,
        }
        assert decoded.reply == bytes.fromhex("00000002")

    def test_codec12_response_is_logged_not_answered(self) -> None:
        """A command response gives no fix and no reply; its text is logged."""
        with capture_logs() as logs:
            decoded = decode_one(WIKI_C12_RESPONSE)

        assert (decoded.fixes, decoded.events, decoded.reply) == ([], [], None)
        assert decoded.device is None
        assert logs == [
            {
                "event": "teltonika_command_response",
                "log_level": "info",
                "device": IMEI,
                "type": 6,
                "text": WIKI_C12_TEXT,
            }
        ]

    def test_codec8_over_udp(self) -> None:
        """The UDP example: IMEI in the header, the answer the page gives."""
        session = TeltonikaSession()

        decoded = session.decode_datagram(WIKI_UDP, server_time_ms=NOW_MS)

        assert decoded.reply == WIKI_UDP_REPLY
        assert decoded.device == "352093086403655" == session.device
        (fix,) = decoded.fixes
        assert fix.device == "352093086403655"
        assert position(fix) == (1560407006000, 0.0, 0.0, 0, 0, 0, 0, False)
        assert attribute_values(fix) == {
            "priority": 1,
            "event": 1,
            "io21": 3,
            "rssi": 3,
            "io1": 1,
            "input1": True,
            "io66": 23996,
            "power": 23.996,
        }


# ------------------------------------------------------- encoded round trips

CODECS = (0x08, 0x8E, 0x10)
#: Ids the decoder treats specially, so the strategies pick them often.
SPECIAL_IDS = sorted({*NAMES, *(io_id for io_id, _value in ALARMS), 199})


@st.composite
def records(draw: st.DrawFn, codec: int) -> Record:
    """A record of ``codec`` with random position and IO elements."""
    max_id = 0xFF if codec == 0x08 else 0xFFFF
    io_id = st.one_of(st.sampled_from(SPECIAL_IDS), st.integers(0, max_id))
    width = st.sampled_from((1, 2, 4, 8))
    elements = draw(st.lists(st.tuples(width, io_id), max_size=12))
    io = tuple(
        (size, identifier, draw(st.integers(0, (1 << 8 * size) - 1)))
        for size, identifier in elements
    )
    variable: tuple[tuple[int, bytes], ...] = ()
    if codec == 0x8E:
        variable = tuple(
            draw(st.lists(st.tuples(io_id, st.binary(max_size=20)), max_size=3))
        )
    used = [identifier for _size, identifier in elements]
    return Record(
        time_ms=draw(st.integers(0, 4_102_444_800_000)),
        latitude=draw(st.integers(-900_000_000, 900_000_000)),
        longitude=draw(st.integers(-1_800_000_000, 1_800_000_000)),
        altitude=draw(st.integers(-32768, 32767)),
        angle=draw(st.integers(0, 0xFFFF)),
        satellites=draw(st.integers(0, 0xFF)),
        speed=draw(st.integers(0, 0xFFFF)),
        priority=draw(st.integers(0, 2)),
        event_id=draw(st.one_of(st.sampled_from([0, *used]), io_id)),
        io=io,
        variable=variable,
    )


@st.composite
def packets(draw: st.DrawFn) -> tuple[int, list[Record]]:
    codec = draw(st.sampled_from(CODECS))
    return codec, draw(st.lists(records(codec), min_size=1, max_size=4))


class TestEncodedPackets:
    """Packets built by the test encoder decode to exactly what new_fix builds."""

    @settings(max_examples=150, deadline=None)
    @given(packets())
    def test_tcp_round_trip_matches_new_fix(
        self, packet: tuple[int, list[Record]]
    ) -> None:
        """Every record of codec 8, 8E and 16 equals the new_fix reference."""
        codec, items = packet

        decoded = decode_one(tcp_frame(avl_data(codec, items)))

        assert decoded.fixes == [expected_fix(record) for record in items]
        alarms = [
            alarm_event(fix, attribute_values(fix)["alarm"])
            for fix in decoded.fixes
            if "alarm" in fix.attributes
        ]
        assert decoded.events == alarms
        assert decoded.reply == struct.pack(">I", len(items))

    @settings(max_examples=60, deadline=None)
    @given(packets(), st.integers(0, 0xFFFF), st.integers(0, 0xFF))
    def test_udp_round_trip_and_reply(
        self, packet: tuple[int, list[Record]], packet_id: int, avl_id: int
    ) -> None:
        """UDP gives the same fixes; the reply echoes both ids and the count."""
        codec, items = packet
        datagram = udp_datagram(
            avl_data(codec, items), "123456789012", packet_id, avl_id
        )

        decoded = TeltonikaSession().decode_datagram(datagram, server_time_ms=NOW_MS)

        assert decoded.fixes == [
            expected_fix(record, "123456789012") for record in items
        ]
        assert decoded.device == "123456789012"
        assert decoded.reply == struct.pack(
            ">HHBBB", 5, packet_id, 1, avl_id, len(items)
        )

    @pytest.mark.parametrize(
        ("event_id", "value", "alarm"),
        [
            (236, 1, "sos"),
            (246, 1, "tamper"),
            (247, 1, "accident"),
            (247, 2, "accident"),
            (249, 1, "jamming"),
            (252, 1, "powerCut"),
            (252, 0, "powerRestored"),
        ],
    )
    def test_alarm_events(self, event_id: int, value: int, alarm: str) -> None:
        """A record triggered by an alarm IO with its alarm value raises it."""
        record = Record(
            time_ms=1_700_000_000_000,
            latitude=540_000_000,
            longitude=250_000_000,
            satellites=9,
            event_id=event_id,
            io=((1, event_id, value), (1, 239, 1)),
        )

        decoded = decode_one(tcp_frame(avl_data(0x08, [record])))

        (fix,) = decoded.fixes
        assert attribute_values(fix)["alarm"] == alarm
        assert decoded.events == [alarm_event(fix, alarm)]
        assert decoded.events[0].event_time_ms == 1_700_000_000_000

    @pytest.mark.parametrize(
        ("event_id", "io"),
        [
            (236, ((1, 236, 0),)),  # the button released
            (249, ((1, 249, 0),)),  # jamming ended
            (0, ((1, 236, 1), (1, 252, 1))),  # alarm states in a periodic record
            (252, ((1, 239, 1),)),  # the event's own value missing
        ],
    )
    def test_no_alarm_without_alarm_value(
        self, event_id: int, io: tuple[tuple[int, int, int], ...]
    ) -> None:
        """Alarm IO states in records they did not trigger raise nothing."""
        record = Record(
            time_ms=1_700_000_000_000, latitude=0, longitude=0, event_id=event_id, io=io
        )

        decoded = decode_one(tcp_frame(avl_data(0x08, [record])))

        assert "alarm" not in decoded.fixes[0].attributes
        assert decoded.events == []

    def test_variable_length_values_are_hex(self) -> None:
        """Codec 8 Extended variable-length values stay as lower-case hex text."""
        record = Record(
            time_ms=1_700_000_000_000,
            latitude=1,
            longitude=-1,
            satellites=4,
            variable=((385, bytes.fromhex("0A1B2C")), (10000, b"")),
        )

        decoded = decode_one(tcp_frame(avl_data(0x8E, [record])))

        assert attribute_values(decoded.fixes[0]) == {"io385": "0a1b2c", "io10000": ""}

    def test_zero_records_are_acknowledged(self) -> None:
        """A packet with no record is answered with a count of 0."""
        decoded = decode_one(tcp_frame(avl_data(0x08, [])))

        assert (decoded.fixes, decoded.reply) == ([], bytes(4))

    def test_element_cache_stays_bounded(self) -> None:
        """Thousands of distinct odometer values do not grow the cache past its cap."""
        session = identified()
        for start in range(0, 12_000, 200):
            items = [
                Record(
                    time_ms=1_700_000_000_000 + n,
                    latitude=0,
                    longitude=0,
                    io=((4, 16, n),),
                )
                for n in range(start, start + 200)
            ]
            session.decode(tcp_frame(avl_data(0x08, items)), server_time_ms=NOW_MS)

        for cache in teltonika._ELEMENT_CACHES.values():
            assert len(cache) <= teltonika._CACHE_LIMIT

    def test_record_shapes_stay_bounded(self) -> None:
        """Many shapes, and huge ones, do not grow the unpacker cache past its cap."""
        session = identified()
        huge = Record(
            time_ms=1, latitude=0, longitude=0, io=tuple((1, n, 1) for n in range(200))
        )
        session.decode(tcp_frame(avl_data(0x8E, [huge])), server_time_ms=NOW_MS)
        for ones in range(40):
            items = [
                Record(
                    time_ms=1,
                    latitude=0,
                    longitude=0,
                    io=((1, 1, 1),) * ones + ((2, 66, 1),) * twos,
                )
                for twos in range(10)
            ]
            session.decode(tcp_frame(avl_data(0x8E, items)), server_time_ms=NOW_MS)

        unpackers = teltonika._LAYOUTS[0x8E].unpackers
        assert len(unpackers) <= teltonika._SHAPE_LIMIT
        assert (200, 0, 0, 0) not in unpackers


# --------------------------------------------------------------------- framing


class TestFraming(FramingChecks):
    """The TCP stream is cut into the same frames however it is read."""

    frames: ClassVar[list[bytes]] = [
        HANDSHAKE,
        WIKI_C8_1,
        WIKI_C8E,
        WIKI_C16,
        WIKI_C12_RESPONSE,
        WIKI_C8_3,
    ]
    session_type = TeltonikaSession

    def test_incomplete_frame_stays_in_buffer(self) -> None:
        """A partial frame waits; the rest completes it."""
        session = TeltonikaSession()
        buffer = bytearray(WIKI_C8_1[:30])

        assert session.split(buffer) == []
        assert buffer == WIKI_C8_1[:30]
        buffer += WIKI_C8_1[30:] + WIKI_C8_2[:5]
        assert session.split(buffer) == [WIKI_C8_1]
        assert buffer == WIKI_C8_2[:5]

    def test_whole_stream_decodes(self) -> None:
        """Decoding the stream's frames in order gives all records."""
        session = TeltonikaSession()

        decoded = [
            session.decode(frame, server_time_ms=NOW_MS) for frame in self.frames
        ]

        assert [len(item.fixes) for item in decoded] == [0, 1, 1, 2, 0, 2]
        assert [item.reply for item in decoded] == [
            b"\x01",
            struct.pack(">I", 1),
            struct.pack(">I", 1),
            struct.pack(">I", 2),
            None,
            struct.pack(">I", 2),
        ]

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"\x01\x0f356307042441013", "must start with a zero byte"),
            (b"GET / HTTP/1.1\r\n", "must start with a zero byte"),
            (b"\x00\x03123", "IMEI length must be 8-20 digits, got 3"),
            (b"\x00\xff" + b"1" * 255, "IMEI length must be 8-20 digits, got 255"),
            (bytes.fromhex("0000000100000010"), "must start with 4 zero bytes"),
            (bytes.fromhex("00000000ffffffff"), "AVL data length 4294967295"),
            (bytes.fromhex("0000000000004000"), "AVL data length 16384"),
            (bytes.fromhex("0000000000000002"), "AVL data length 2 is outside"),
        ],
    )
    def test_stream_that_cannot_be_framed(self, data: bytes, reason: str) -> None:
        """Garbage at the front or an absurd length ends the stream."""
        with pytest.raises(FrameError, match=reason):
            TeltonikaSession().split(bytearray(data))

    def test_garbage_after_a_frame(self) -> None:
        """The intact frame before garbage is returned; the next split refuses."""
        session = TeltonikaSession()
        buffer = bytearray(WIKI_C8_1 + b"\xffjunk")

        assert session.split(buffer) == [WIKI_C8_1]
        assert buffer == b"\xffjunk"
        with pytest.raises(FrameError, match="must start with a zero byte"):
            session.split(buffer)


# ---------------------------------------------------------------- bad frames


def with_crc(frame: bytes) -> bytes:
    """``frame`` with its CRC field recomputed over its data."""
    return frame[:-4] + struct.pack(">I", crc16_ibm(frame[8:-4]))


class TestBadFrames:
    """Invalid frames are refused with a reason; nothing else is raised."""

    @pytest.mark.parametrize(
        ("frame", "reason"),
        [
            (WIKI_C8_1[:-1] + b"\x00", "CRC field 0000c700 does not match"),
            (with_crc(WIKI_C8_1[:-5] + b"\x02" + WIKI_C8_1[-4:]), "counts differ"),
            (with_crc(WIKI_C8_1[:8] + b"\x07" + WIKI_C8_1[9:]), "codec 0x07"),
            (with_crc(WIKI_C8_1[:8] + b"\x0d" + WIKI_C8_1[9:]), "codec 0x0D"),
            (WIKI_C8_1[:20], "does not match a frame of 20 bytes"),
            (b"\x00\x00\x00\x00", "4 bytes is shorter than its envelope"),
            (b"\x00\x00\x01" + WIKI_C8_1[3:], "must start with 4 zero bytes"),
        ],
    )
    def test_invalid_avl_frame(self, frame: bytes, reason: str) -> None:
        """Bad CRC, count mismatch, unknown codec, truncation."""
        with pytest.raises(FrameError, match=reason):
            identified().decode(frame, server_time_ms=NOW_MS)

    def test_truncated_record_with_valid_crc(self) -> None:
        """Counts saying more elements than the record holds."""
        data = avl_data(0x08, [Record(time_ms=1, latitude=0, longitude=0)])
        broken = data[:-2] + b"\x05" + data[-1:]  # 5 eight-byte elements announced

        with pytest.raises(FrameError, match=r"IO groups of \[0, 0, 0, 5\] elements"):
            identified().decode(tcp_frame(broken), server_time_ms=NOW_MS)

    def test_bytes_after_the_last_record(self) -> None:
        """Data left between the last record and the closing count."""
        data = avl_data(0x08, [Record(time_ms=1, latitude=0, longitude=0)])

        with pytest.raises(FrameError, match="3 bytes follow the last of 1 records"):
            identified().decode(
                tcp_frame(data[:-1] + b"abc" + data[-1:]), server_time_ms=NOW_MS
            )

    def test_more_records_announced_than_sent(self) -> None:
        """A record count beyond the records is a truncated packet."""
        data = avl_data(0x08, [Record(time_ms=1, latitude=0, longitude=0)])
        broken = b"\x08\x02" + data[2:-1] + b"\x02"

        with pytest.raises(FrameError, match="truncated"):
            identified().decode(tcp_frame(broken), server_time_ms=NOW_MS)

    @pytest.mark.parametrize(
        ("record", "reason"),
        [
            (Record(time_ms=1, latitude=900_000_001, longitude=0), "out of range"),
            (Record(time_ms=1, latitude=0, longitude=-1_800_000_001), "out of range"),
            (
                Record(time_ms=4_102_444_800_001, latitude=0, longitude=0),
                "after 2100",
            ),
        ],
    )
    def test_impossible_record(self, record: Record, reason: str) -> None:
        """Coordinates off the globe or a time past 2100."""
        with pytest.raises(FrameError, match=reason):
            identified().decode(
                tcp_frame(avl_data(0x08, [record])), server_time_ms=NOW_MS
            )

    def test_data_before_imei(self) -> None:
        """AVL data on a connection that has not identified itself."""
        with pytest.raises(FrameError, match="before the IMEI frame"):
            TeltonikaSession().decode(WIKI_C8_1, server_time_ms=NOW_MS)

    @pytest.mark.parametrize(
        ("frame", "reason"),
        [
            (b"\x00\x0f35630704244101X", "IMEI must be 8 to 20 ASCII digits"),
            (b"\x00\x0f35630704244101", "16 bytes does not match .*15 digits"),
            (b"\x00\x0f" + "३५६३०७०४२४४१०१".encode()[:15], "IMEI must be"),
            (b"\x00", "1 bytes does not match its length field"),
        ],
    )
    def test_invalid_imei_frame(self, frame: bytes, reason: str) -> None:
        """Non-digits (also non-ASCII digits) and a wrong length are refused."""
        session = TeltonikaSession()

        with pytest.raises(FrameError, match=reason):
            session.decode(frame, server_time_ms=NOW_MS)
        assert session.device is None

    def test_codec12_with_wrong_text_size(self) -> None:
        """A codec 12 size field that does not fill the frame."""
        data = bytes.fromhex("0c01060000000548690d0a01")  # says 5, holds 4

        with pytest.raises(FrameError, match="codec 12 text of 5 bytes"):
            identified().decode(tcp_frame(data), server_time_ms=NOW_MS)

    @pytest.mark.parametrize(
        ("datagram", "reason"),
        [
            (WIKI_UDP[:-1], "length field says 63 bytes, the datagram has 62"),
            (WIKI_UDP[:5], "shorter than a header"),
            (b"\x00\x08\xca\xfe\x01\x05\x00\x0f12", "IMEI must be"),
            (udp_datagram(bytes.fromhex("0801")), "shorter than its counts"),
        ],
    )
    def test_invalid_udp_datagram(self, datagram: bytes, reason: str) -> None:
        """Wrong length, truncated header, IMEI or data."""
        with pytest.raises(FrameError, match=reason):
            TeltonikaSession().decode_datagram(datagram, server_time_ms=NOW_MS)

    def test_udp_reply_echoes_packet_id(self) -> None:
        """Another packet id comes back in the reply, as the device checks it."""
        datagram = WIKI_UDP[:2] + b"\x00\x01" + WIKI_UDP[4:]

        decoded = TeltonikaSession().decode_datagram(datagram, server_time_ms=NOW_MS)

        assert decoded.reply == bytes.fromhex("00050001010501")

    def test_codec12_over_udp_gets_no_reply(self) -> None:
        """A command response by UDP: no fix, no reply, the device named."""
        datagram = udp_datagram(bytes.fromhex("0c010600000002686901"))

        with capture_logs() as logs:
            decoded = TeltonikaSession().decode_datagram(datagram, server_time_ms=1)

        assert (decoded.fixes, decoded.reply, decoded.device) == ([], None, IMEI)
        assert logs[0]["text"] == "hi"


# ------------------------------------------------------------ hostile input


def _absurd_length(draw: st.DrawFn, data: bytearray) -> None:
    """Set the AVL data length field to any value, absurd ones included."""
    data[4:8] = draw(st.binary(min_size=4, max_size=4))


class TestHostileInput(HostileInputChecks):
    """Random and mutated bytes raise FrameError or decode, nothing else."""

    valid_frames = VALID_FRAMES[1:]
    session_type = staticmethod(identified)
    mutations: ClassVar[dict[str, Mutation]] = {"length": _absurd_length}

    @pytest.mark.parametrize(
        "data",
        [
            b"\x00",  # one byte: an IMEI frame that cannot be read
            b"\x00\x00",
            bytes.fromhex("000000000000000308000000000000"),
            WIKI_UDP,
        ],
    )
    def test_known_hostile_inputs(self, data: bytes) -> None:
        """Through a fresh session as well as an identified one."""
        self.check(data)
        exercise(TeltonikaSession(), data)
        with suppress(FrameError):
            TeltonikaSession().decode(data, server_time_ms=NOW_MS)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400))
    def test_random_bytes_before_the_imei(self, data: bytes) -> None:
        """Random bytes on a connection that has not identified itself."""
        exercise(TeltonikaSession(), data)
        with suppress(FrameError):
            TeltonikaSession().decode(data, server_time_ms=NOW_MS)

    @settings(
        max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(mutated(st.sampled_from(VALID_FRAMES[1:])), st.booleans())
    def test_mutated_packets_under_a_valid_crc(
        self, frame: bytes, fix_crc: bool
    ) -> None:
        """With ``fix_crc`` the CRC is recomputed, so the damage reaches the record
        parser instead of stopping at the checksum."""
        if fix_crc and len(frame) >= 12:
            frame = with_crc(frame)

        self.check(frame)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(min_size=1, max_size=3000), max_size=12))
    def test_split_keeps_bounded_buffer(self, chunks: list[bytes]) -> None:
        """However bytes arrive, the buffer never holds more than a frame's worth."""
        exercise(TeltonikaSession(), HANDSHAKE, *chunks)

    @pytest.mark.parametrize("frame", VALID_FRAMES[1:6])
    def test_decode_is_deterministic_whatever_the_caches(self, frame: bytes) -> None:
        """The same frame decodes to equal results, whatever the caches hold."""
        first = identified().decode(frame, server_time_ms=NOW_MS)
        for cache in teltonika._ELEMENT_CACHES.values():
            cache.clear()

        second = identified().decode(frame, server_time_ms=NOW_MS)

        assert first == second


# ------------------------------------------------------------- detection


class TestDetection:
    """looks_like picks Teltonika from the IMEI frame, and only from it."""

    @pytest.mark.parametrize(
        "first",
        [HANDSHAKE, HANDSHAKE[:1], HANDSHAKE[:2], HANDSHAKE[:9], b"\x00\x0812345678"],
    )
    def test_claims_imei_frames(self, first: bytes) -> None:
        """The IMEI frame, whole or any prefix of it."""
        assert looks_like_teltonika(first)

    @pytest.mark.parametrize(
        "first",
        [
            *others_first_bytes("teltonika"),
            b"\x00\x0f35630704244101X",
            b"\x00\x07123456",
            b"\x00\x15" + b"1" * 21,
            b"\x00\x00\x00\x00\x00\x00\x00\x36",
            b"",
        ],
    )
    def test_leaves_other_protocols(self, first: bytes) -> None:
        """Other protocols' first bytes, wrong lengths, non-digits."""
        assert not looks_like_teltonika(first)

    def test_protocol_description(self) -> None:
        """Teltonika listens on port 5027, TCP and UDP, binary."""
        assert_registered(
            PROTOCOL, "teltonika", TeltonikaSession, port=5027, tcp=True, udp=True,
            text=False,
        )  # fmt: skip
        assert PROTOCOL.looks_like is looks_like_teltonika

    def test_crc_matches_reference(self) -> None:
        """The module's CRC-16/IBM agrees with the bitwise one (check 0xBB3D)."""
        assert teltonika.crc16_ibm(b"123456789") == 0xBB3D == crc16_ibm(b"123456789")
        assert teltonika.crc16_ibm(WIKI_C8E[8:-4]) == 0x2994


# ------------------------------------------------------------- throughput


def fleet_packets(count: int, records_per_packet: int = 12) -> list[bytes]:
    """Codec 8 packets as an FMB120 sends them: 12 records, 13 IO elements each.

    Position, speed, voltages, odometers and signal change from record to record,
    so the element caches see what a real fleet gives them.
    """
    rng = random.Random(120)
    packets_out = []
    odometer = 12_345_678
    for packet in range(count):
        items = []
        for index in range(records_per_packet):
            odometer += rng.randint(0, 400)
            speed = rng.randint(0, 110)
            items.append(
                Record(
                    time_ms=1_760_000_000_000 + (packet * 12 + index) * 30_000,
                    latitude=540_000_000 + rng.randint(-(10**6), 10**6),
                    longitude=250_000_000 + rng.randint(-(10**6), 10**6),
                    altitude=rng.randint(90, 160),
                    angle=rng.randint(0, 359),
                    satellites=rng.randint(6, 14),
                    speed=speed,
                    event_id=0,
                    io=(
                        (1, 239, 1),
                        (1, 240, int(speed > 0)),
                        (1, 21, rng.randint(3, 5)),
                        (1, 200, 0),
                        (1, 69, 1),
                        (1, 1, 1),
                        (2, 181, rng.randint(8, 20)),
                        (2, 182, rng.randint(6, 15)),
                        (2, 66, rng.randint(13_800, 14_400)),
                        (2, 67, rng.randint(4_000, 4_100)),
                        (2, 24, speed),
                        (4, 16, odometer),
                        (4, 199, rng.randint(0, 90_000)),
                    ),
                )
            )
        packets_out.append(tcp_frame(avl_data(0x08, items)))
    return packets_out


def test_decode_benchmark(benchmark: Any) -> None:
    """Records per second decoding 100 realistic 12-record codec 8 packets."""
    decode_all = decoding(identified(), fleet_packets(100))

    def cold_caches() -> int:
        for cache in teltonika._ELEMENT_CACHES.values():
            cache.clear()
        return decode_all()

    report_throughput(
        benchmark, cold_caches, records=1200, label="teltonika", rounds=10
    )
