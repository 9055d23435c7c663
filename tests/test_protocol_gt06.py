"""GT06 / Concox: real packets decoded value by value, framing, hostile input, speed.

Packets come from tests/data/protocol_samples.json (Traccar's decoder tests) and
from tests/data/protocol_gt06_packets.json (the Concox protocol document's examples,
more of Traccar's test packets and a forum capture), each with its source.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pipeline.ingest.protocols.base import ALARMS, Decoded, FrameError
from pipeline.ingest.protocols.gt06 import (
    DEFAULT_PORT,
    PROTOCOL,
    Gt06Session,
    crc_itu,
    looks_like_gt06,
)
from pipeline.model import Fix, parse_time_ms
from tests.protocol_checks import (
    NOW_MS,
    SETTINGS,
    FramingChecks,
    HostileInputChecks,
    Mutation,
    assert_registered,
    assert_sample,
    attribute_values,
    data_packets,
    decoding,
    exercise,
    others_first_bytes,
    report_throughput,
    shared_samples,
)

SAMPLES = shared_samples("gt06")
PACKETS = data_packets("gt06")
DEVICE = "353419036066061"
LOGIN = bytes.fromhex(SAMPLES["gt06-0x16"]["session_context"][0]["payload_hex"])
LOGIN_ACK = bytes.fromhex("787805010003face0d0a")

# A 0x12 body (date 2011-08-30 01:46:16, GPS block and cell block) for built frames.
GPS_CELL_BODY = bytes.fromhex("0b081e012e10cf027ac7eb0c46584900148f01cc00287d001fb8")


def reference_crc(data: bytes) -> int:
    """CRC-16/X-25 bit by bit, as the protocol document defines it."""
    register = 0xFFFF
    for byte in data:
        register ^= byte
        for _ in range(8):
            register = register >> 1 ^ 0x8408 if register & 1 else register >> 1
    return register ^ 0xFFFF


def build_frame(
    kind: int, content: bytes, serial: int = 1, long: bool = False
) -> bytes:
    """A whole frame around ``content``, with a correct CRC."""
    length = 5 + len(content)
    head = length.to_bytes(2, "big") if long else bytes((length,))
    body = head + bytes((kind,)) + content + serial.to_bytes(2, "big")
    start = b"\x79\x79" if long else b"\x78\x78"
    return start + body + reference_crc(body).to_bytes(2, "big") + b"\r\n"


def logged_in() -> Gt06Session:
    """A session after the shared samples' login (IMEI 353419036066061)."""
    session = Gt06Session()
    decoded = session.decode(LOGIN, server_time_ms=NOW_MS)
    assert decoded.reply == LOGIN_ACK
    return session


def assert_fix(fix: Fix, expected: dict[str, Any], device: str = DEVICE) -> None:
    """Every value of ``expected`` (the shared samples' names) holds for ``fix``."""
    assert fix.device == device
    assert fix.protocol == "gt06"
    assert fix.server_time_ms == NOW_MS
    assert fix.fix_time_ms == parse_time_ms(expected["time"])
    assert round(fix.latitude, 6) == expected["latitude"]
    assert round(fix.longitude, 6) == expected["longitude"]
    assert fix.speed_kmh == pytest.approx(expected["speed_kmh"])
    assert fix.course == pytest.approx(expected["course"])
    assert fix.satellites == expected["satellites"]
    assert fix.valid is expected["valid"]
    assert not fix.HasField("altitude")
    if "accuracy" in expected:
        assert fix.accuracy == pytest.approx(expected["accuracy"])
    else:
        assert not fix.HasField("accuracy")
    if "ignition" in expected:
        assert json.loads(fix.attributes["ignition"]) is expected["ignition"]
    if "attributes" in expected:
        assert attribute_values(fix) == expected["attributes"]


class TestSharedSamples:
    @pytest.mark.parametrize("sample_id", ["gt06-0x16", "gt06-0x10-south-west"])
    def test_sample_decodes_to_its_expected_values(self, sample_id: str) -> None:
        """Each shared sample, after its login, gives its fix and its exact reply."""
        sample = SAMPLES[sample_id]
        session = Gt06Session()
        login = session.decode(LOGIN, server_time_ms=NOW_MS)

        decoded = session.decode(
            bytes.fromhex(sample["payload_hex"]), server_time_ms=NOW_MS
        )

        assert login.device == sample["expected"]["imei"] == session.device
        assert login.reply == LOGIN_ACK
        assert_sample(decoded, sample, names_device=False)
        assert not decoded.fixes[0].HasField("accuracy")
        assert decoded.events == []

    def test_sample_0x16_status_attributes(self) -> None:
        """The 0x16 sample's terminal byte 40, voltage 5 and GSM 4 become attributes."""
        session = logged_in()
        payload = bytes.fromhex(SAMPLES["gt06-0x16"]["payload_hex"])

        fix = session.decode(payload, server_time_ms=NOW_MS).fixes[0]

        assert attribute_values(fix) == {
            "status": 0x40,
            "ignition": False,
            "charge": False,
            "batteryLevel": 83.3,
            "rssi": 4,
        }

    def test_sample_0x12_carries_a_bad_crc(self) -> None:
        """The shared 0x12 sample fails its CRC: its satellite byte was edited.

        Traccar's test changed the document's CF to CC without updating the CRC
        (Traccar does not check it); the document's packet decodes (see
        ``doc-0x12``) and its CRC matches only with CF.
        """
        sample = bytes.fromhex(SAMPLES["gt06-0x12"]["payload_hex"])
        document = bytes.fromhex(PACKETS["doc-0x12"]["payload_hex"])
        session = logged_in()

        with pytest.raises(FrameError, match="bad CRC: frame carries 8081"):
            session.decode(sample, server_time_ms=NOW_MS)

        differing = [
            i for i, (a, b) in enumerate(zip(sample, document, strict=True)) if a != b
        ]
        assert differing == [10]
        assert session.decode(document, server_time_ms=NOW_MS).fixes


class TestDocumentedPackets:
    @pytest.mark.parametrize("packet_id", sorted(PACKETS))
    def test_packet_decodes_to_its_expected_values(self, packet_id: str) -> None:
        """Every packet of the data file gives its fixes, alarms and exact reply."""
        packet = PACKETS[packet_id]
        expected = packet["expected"]
        session = Gt06Session() if "device" in expected else logged_in()

        decoded = session.decode(
            bytes.fromhex(packet["payload_hex"]), server_time_ms=NOW_MS
        )

        assert decoded.device == expected.get("device")
        assert len(decoded.fixes) == len(expected["fixes"])
        for fix, values in zip(decoded.fixes, expected["fixes"], strict=True):
            assert_fix(fix, values)
        alarms = [json.loads(event.attributes["alarm"]) for event in decoded.events]
        assert alarms == expected.get("alarms", [])
        for event in decoded.events:
            fix = decoded.fixes[0]
            assert event.type == "alarm"
            assert event.device == DEVICE
            assert event.event_time_ms == fix.fix_time_ms
            assert (event.latitude, event.longitude) == (fix.latitude, fix.longitude)
        ack = expected["ack_hex"]
        assert decoded.reply == (bytes.fromhex(ack) if ack else None)

    def test_every_alarm_is_in_the_shared_vocabulary(self) -> None:
        """Each alarm code of the status packets maps into ALARMS."""
        session = logged_in()
        found = set()
        for code in range(256):
            frame = build_frame(0x16, _status_content(alarm_code=code))
            fix = session.decode(frame, server_time_ms=NOW_MS).fixes[0]
            if "alarm" in fix.attributes:
                found.add(json.loads(fix.attributes["alarm"]))

        assert found <= ALARMS
        assert {"sos", "powerCut", "vibration", "lowBattery", "overspeed"} <= found
        assert {"geofenceEnter", "geofenceExit", "tamper"} <= found

    @pytest.mark.parametrize(
        ("terminal", "alarm_code", "alarm"),
        [
            (0b00_100_000, 0x00, "sos"),  # terminal bits 3-5 = 4
            (0b00_010_000, 0x00, "powerCut"),
            (0b00_111_000, 0x00, "removing"),
            (0b00_000_000, 0x13, "tamper"),
            (0b00_001_000, 0x06, "overspeed"),  # the alarm byte wins
            (0b00_000_000, 0x04, "geofenceEnter"),
            (0b00_000_000, 0x05, "geofenceExit"),
        ],
    )
    def test_alarm_becomes_attribute_and_event(
        self, terminal: int, alarm_code: int, alarm: str
    ) -> None:
        """An alarm from the terminal bits or alarm byte is an attribute and event."""
        frame = build_frame(0x26, _status_content(terminal, alarm_code))

        decoded = logged_in().decode(frame, server_time_ms=NOW_MS)

        assert json.loads(decoded.fixes[0].attributes["alarm"]) == alarm
        assert [json.loads(e.attributes["alarm"]) for e in decoded.events] == [alarm]
        assert json.loads(decoded.events[0].attributes["protocol"]) == "gt06"

    def test_unmapped_alarm_code_is_kept_as_event_code(self) -> None:
        """An alarm byte with no shared name (0x29, acceleration) stays in ``event``."""
        frame = build_frame(0x16, _status_content(alarm_code=0x29))

        decoded = logged_in().decode(frame, server_time_ms=NOW_MS)

        assert decoded.events == []
        assert "alarm" not in decoded.fixes[0].attributes
        assert decoded.fixes[0].attributes["event"] == "41"


def _status_content(terminal: int = 0x46, alarm_code: int = 0) -> bytes:
    """A 0x16/0x26 body: GPS block, 9-byte cell block, status and language."""
    status = bytes((terminal, 4, 3, alarm_code, 2))
    return GPS_CELL_BODY[:18] + b"\x09" + GPS_CELL_BODY[18:] + status


class TestLogin:
    @pytest.mark.parametrize(
        ("zone_word", "offset_s"),
        [
            (800 << 4, 8 * 3600),  # GMT+8:00, the document's example zone
            (530 << 4 | 0x08, -(5 * 3600 + 30 * 60)),  # GMT-5:30 (bit 3: west)
            (0, 0),
        ],
    )
    def test_extended_login_zone_applies_to_later_times(
        self, zone_word: int, offset_s: int
    ) -> None:
        """Local GPS times after an extended login are read at the login's offset."""
        session = Gt06Session()
        login = build_frame(
            0x01,
            bytes.fromhex("0353419036066061") + b"\x36\x08" + zone_word.to_bytes(2),
        )

        decoded_login = session.decode(login, server_time_ms=NOW_MS)
        fix = session.decode(
            build_frame(0x12, GPS_CELL_BODY), server_time_ms=NOW_MS
        ).fixes[0]

        local_ms = parse_time_ms("2011-08-30T01:46:16Z")
        assert decoded_login.device == DEVICE
        assert session.zone_offset_ms == offset_s * 1000
        assert fix.fix_time_ms == local_ms - offset_s * 1000

    def test_login_without_zone_resets_to_utc(self) -> None:
        """A later plain login drops the zone an earlier extended login set."""
        session = Gt06Session()
        extended = bytes.fromhex("0353419036066061") + b"\x36\x08\x32\x00"
        session.decode(build_frame(0x01, extended), server_time_ms=NOW_MS)

        session.decode(LOGIN, server_time_ms=NOW_MS)

        assert session.zone_offset_ms == 0

    @pytest.mark.parametrize(("hhmm", "shown"), [(4000, "40:00"), (1275, "12:75")])
    def test_absurd_zone_is_refused(self, hhmm: int, shown: str) -> None:
        """A zone of 40 hours or of 75 minutes is not a time zone."""
        login = build_frame(0x01, bytes(8) + b"\x00\x00" + (hhmm << 4).to_bytes(2))

        with pytest.raises(FrameError, match=f"time zone {shown} is out of range"):
            Gt06Session().decode(login, server_time_ms=NOW_MS)

    def test_terminal_id_must_be_bcd(self) -> None:
        """A terminal id with hex digits above 9 is refused, and no device is set."""
        session = Gt06Session()

        with pytest.raises(FrameError, match="terminal id must be BCD"):
            session.decode(build_frame(0x01, bytes.fromhex("0a" * 8)), server_time_ms=0)
        assert session.device is None

    def test_short_login_is_refused(self) -> None:
        """A login with fewer than 8 id bytes is refused."""
        with pytest.raises(FrameError, match="needs an 8-byte id"):
            Gt06Session().decode(build_frame(0x01, b"\x01\x23"), server_time_ms=0)

    @pytest.mark.parametrize("kind", [0x10, 0x12, 0x13, 0x16, 0x22, 0x23, 0x8A])
    def test_packet_before_login_is_refused(self, kind: int) -> None:
        """Locations, statuses and requests need a login first."""
        frame = build_frame(kind, _status_content())

        with pytest.raises(FrameError, match=f"packet 0x{kind:02X} before login"):
            Gt06Session().decode(frame, server_time_ms=NOW_MS)

    def test_protocol_entry(self) -> None:
        """PROTOCOL names gt06 on port 5023, TCP only, binary."""
        assert_registered(
            PROTOCOL, "gt06", Gt06Session, port=5023, tcp=True, udp=False, text=False
        )
        assert DEFAULT_PORT == 5023


class TestReplies:
    def test_time_request_gets_server_utc_time(self) -> None:
        """0x8A is answered with the server's UTC date-time and the packet's serial."""
        server_ms = parse_time_ms("2025-03-04T05:06:07Z")

        decoded = logged_in().decode(
            build_frame(0x8A, b"", serial=0x0102), server_time_ms=server_ms
        )

        assert decoded.fixes == []
        assert decoded.reply == build_frame(0x8A, bytes([25, 3, 4, 5, 6, 7]), 0x0102)

    def test_long_frame_location_is_answered_in_a_long_frame(self) -> None:
        """A location in a 79 79 frame decodes alike and gets a 79 79 reply."""
        decoded = logged_in().decode(
            build_frame(0x12, GPS_CELL_BODY, serial=7, long=True),
            server_time_ms=NOW_MS,
        )

        assert decoded.fixes[0].fix_time_ms == parse_time_ms("2011-08-30T01:46:16Z")
        assert decoded.reply == build_frame(0x12, b"", serial=7, long=True)

    @pytest.mark.parametrize("kind", [0x15, 0x21, 0x80, 0x81, 0x82, 0x94])
    def test_command_answers_and_information_get_no_reply(self, kind: int) -> None:
        """Command answers and information packets produce nothing."""
        decoded = logged_in().decode(build_frame(kind, b"OK"), server_time_ms=NOW_MS)

        assert decoded == Decoded()

    def test_unknown_short_packet_gets_the_plain_ack(self) -> None:
        """An unknown protocol number in a short frame is acknowledged, no fix."""
        decoded = logged_in().decode(
            build_frame(0x99, b"\x01\x02", serial=9), server_time_ms=NOW_MS
        )

        assert decoded.fixes == []
        assert decoded.reply == build_frame(0x99, b"", serial=9)

    def test_unknown_long_packet_gets_no_reply(self) -> None:
        """An unknown protocol number in a long frame is not answered."""
        decoded = logged_in().decode(
            build_frame(0x99, b"\x01", long=True), server_time_ms=NOW_MS
        )

        assert decoded == Decoded()

    def test_gps_cell_mileage_becomes_odometer(self) -> None:
        """Four bytes after the cell block of 0x12 are the mileage in metres."""
        content = GPS_CELL_BODY + (123_456).to_bytes(4, "big")

        fix = logged_in().decode(build_frame(0x12, content), server_time_ms=0).fixes[0]

        assert fix.attributes["odometer"] == "123456"

    def test_gps_cell_acc_mileage_becomes_odometer(self) -> None:
        """Four bytes after 0x22's ACC, mode and re-upload are the mileage."""
        content = GPS_CELL_BODY + b"\x01\x00\x00" + (7_000).to_bytes(4, "big")

        fix = logged_in().decode(build_frame(0x22, content), server_time_ms=0).fixes[0]

        assert fix.attributes["odometer"] == "7000"
        assert fix.attributes["ignition"] == "true"

    def test_modules_give_power_and_skip_unknown_ones(self) -> None:
        """0x37 modules: 0027 is external power (0.01 V); unknown ones are skipped."""
        modules = bytes.fromhex("00990301020300270204b0")  # 0x0099 3 bytes, 12.00 V
        content = GPS_CELL_BODY + b"\x01\x00\x00" + modules

        fix = logged_in().decode(build_frame(0x37, content), server_time_ms=0).fixes[0]

        assert fix.attributes["power"] == "12.0"
        assert fix.attributes["ignition"] == "true"
        assert not fix.HasField("accuracy")

    def test_module_past_the_content_is_refused(self) -> None:
        """A module whose length runs past the content is refused."""
        content = GPS_CELL_BODY + b"\x01\x00\x00" + bytes.fromhex("002e0400")

        with pytest.raises(FrameError, match="module 0x002E runs 3 bytes past"):
            logged_in().decode(build_frame(0x37, content), server_time_ms=0)

    def test_two_byte_mnc_is_skipped(self) -> None:
        """MCC bit 15 announces a 2-byte MNC, so ACC is read one byte later."""
        cell = b"\x81\xcc\x00\x01\x28\x7d\x00\x1f\xb8"  # MCC 460 | 0x8000, MNC 0001
        content = GPS_CELL_BODY[:18] + cell + b"\x01\x05\x00"

        fix = logged_in().decode(build_frame(0x22, content), server_time_ms=0).fixes[0]

        assert fix.attributes["ignition"] == "true"
        assert fix.attributes["event"] == "5"


class TestMalformed:
    def test_bad_crc(self) -> None:
        """A frame whose CRC does not match its content is refused."""
        frame = bytearray(build_frame(0x12, GPS_CELL_BODY))
        frame[-3] ^= 0x01

        with pytest.raises(FrameError, match="bad CRC"):
            logged_in().decode(bytes(frame), server_time_ms=0)

    @pytest.mark.parametrize(
        ("index", "value", "reason"),
        [
            (1, 13, "date 2011-13-30 is not a date"),
            (2, 0, "date 2011-08-00 is not a date"),
            (0, 100, "year byte 100 is beyond 99"),
            (3, 24, "time 24:46:16 is not a time"),
            (5, 60, "time 01:46:60 is not a time"),
            (7, 0xFF, "latitude .* is out of range"),
            (16, 0x17, "course 911 is out of range"),
        ],
    )
    def test_out_of_range_values(self, index: int, value: int, reason: str) -> None:
        """Dates, times, coordinates and courses out of range are refused."""
        content = bytearray(GPS_CELL_BODY)
        content[index] = value

        with pytest.raises(FrameError, match=reason):
            logged_in().decode(build_frame(0x12, bytes(content)), server_time_ms=0)

    @pytest.mark.parametrize(
        ("kind", "content", "reason"),
        [
            (0x10, GPS_CELL_BODY[:17], "needs 18 for its GPS block"),
            (0x12, GPS_CELL_BODY[:22], "cell block runs 4 bytes past"),
            (0x22, GPS_CELL_BODY, "needs 3 \\(ACC, upload mode, re-upload\\)"),
            (0x37, GPS_CELL_BODY + b"\x00", "ends 1 bytes after its cell block"),
            (0x16, GPS_CELL_BODY[:18] + b"\x09" + GPS_CELL_BODY[18:], "needs 4"),
        ],
    )
    def test_truncated_content(self, kind: int, content: bytes, reason: str) -> None:
        """Content shorter than its packet type needs is refused with the reason."""
        with pytest.raises(FrameError, match=reason):
            logged_in().decode(build_frame(kind, content), server_time_ms=0)

    def test_length_field_must_match_the_frame(self) -> None:
        """decode checks the frame it is given, not only split's output."""
        frame = build_frame(0x12, GPS_CELL_BODY)

        with pytest.raises(FrameError, match="does not match a 35-byte frame"):
            logged_in().decode(frame[:-3] + frame[-2:], server_time_ms=0)
        with pytest.raises(FrameError, match="must start with 78 78 or 79 79"):
            logged_in().decode(b"\x78\x79" + frame[2:], server_time_ms=0)


class TestFraming(FramingChecks):
    frames: ClassVar[list[bytes]] = [
        LOGIN,
        bytes.fromhex(SAMPLES["gt06-0x16"]["payload_hex"]),
        bytes.fromhex(PACKETS["traccar-0x22-archive"]["payload_hex"]),
        bytes.fromhex(PACKETS["traccar-0x94-long"]["payload_hex"]),
        bytes.fromhex(SAMPLES["gt06-0x10-south-west"]["payload_hex"]),
        build_frame(0x12, GPS_CELL_BODY + b"\x0d\x0a\x0d\x0a"),  # 0D 0A inside
    ]
    session_type = Gt06Session

    def test_incomplete_frame_stays_in_the_buffer(self) -> None:
        """Bytes of an unfinished frame wait for the next read."""
        buffer = bytearray(LOGIN + self.frames[1][:20])

        frames = Gt06Session().split(buffer)

        assert frames == [LOGIN]
        assert buffer == self.frames[1][:20]

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"GET / HTTP/1.1\r\n", "must start with 78 78 or 79 79, got 47"),
            (b"\x78\x77\x05", "starts with 78 then 77"),
            (b"\x78\x78\x04\x01\x00\x01", "length field 4 is below the minimum"),
            (b"\x79\x79\xff\xff\x01", "length field 65535 makes a 65541-byte frame"),
            (b"\x78\x78\x05\x01\x00\x01\xd9\xdc\x0d\x0b", "does not end with 0D 0A"),
        ],
    )
    def test_bad_front_raises(self, data: bytes, reason: str) -> None:
        """Garbage, bad markers, bad lengths and a missing stop raise at once."""
        buffer = bytearray(data)

        with pytest.raises(FrameError, match=reason):
            Gt06Session().split(buffer)

    def test_garbage_after_good_frames(self) -> None:
        """Good frames before garbage are returned; the next call raises."""
        session = Gt06Session()
        buffer = bytearray(LOGIN + b"\x00" * 5000)

        frames = session.split(buffer)

        assert frames == [LOGIN]
        assert len(buffer) == session.max_frame_bytes
        with pytest.raises(FrameError, match="got 00"):
            session.split(buffer)


class TestLooksLike:
    @pytest.mark.parametrize(
        "first_bytes",
        [
            LOGIN,
            LOGIN[:4],
            LOGIN + bytes.fromhex(SAMPLES["gt06-0x16"]["payload_hex"]),
            bytes.fromhex(PACKETS["traccar-0x94-long"]["payload_hex"]),
        ],
    )
    def test_gt06_frames_are_claimed(self, first_bytes: bytes) -> None:
        """A login, its first 4 bytes, merged frames and a long frame are GT06."""
        assert looks_like_gt06(first_bytes[:64])

    @pytest.mark.parametrize(
        "first_bytes",
        [
            *others_first_bytes("gt06"),
            b"\x78",
            b"\x78\x78\x02\x01",
            LOGIN[:-3] + b"\x00\x0d\x0a",  # a whole frame with a bad CRC
        ],
    )
    def test_other_bytes_are_not_claimed(self, first_bytes: bytes) -> None:
        """Other protocols, short prefixes and broken frames are not GT06."""
        assert not looks_like_gt06(first_bytes)


VALID_FRAMES = [
    bytes.fromhex(packet["payload_hex"])
    for packet in PACKETS.values()
    if "device" not in packet["expected"]
] + [bytes.fromhex(SAMPLES["gt06-0x16"]["payload_hex"])]


def _absurd_length(draw: st.DrawFn, data: bytearray) -> None:
    """Set the (long frame's) length field to an absurd value."""
    if len(data) >= 4:
        data[2:4] = draw(st.sampled_from([b"\x00\x00", b"\xff\xff", b"\x04\x7f"]))


class TestProperties(HostileInputChecks):
    valid_frames = VALID_FRAMES
    session_type = staticmethod(logged_in)
    mutations: ClassVar[dict[str, Mutation]] = {"length": _absurd_length}

    def test_known_hostile_inputs(self) -> None:
        """A long frame's header alone waits for more bytes, then fails cleanly."""
        self.check(b"\x79\x79\x00\x05")

    @SETTINGS
    @given(
        st.sampled_from(
            [0x01, 0x10, 0x12, 0x13, 0x16, 0x22, 0x23, 0x26, 0x27, 0x37, 0x8A]
        ),
        st.binary(max_size=60),
        st.booleans(),
    )
    @example(0x16, GPS_CELL_BODY[:18] + b"\xff", False)  # cell length past the end
    @example(0x16, GPS_CELL_BODY[:18], False)  # no cell block at all
    def test_resealed_hostile_content_raises_only_frame_errors(
        self, kind: int, content: bytes, long: bool
    ) -> None:
        """Any content under a correct CRC decodes or fails with FrameError."""
        session = logged_in()
        frame = build_frame(kind, content, long=long)

        for decoded in exercise(session, frame):
            for fix in decoded.fixes:
                assert -90 <= fix.latitude <= 90
                assert -180 <= fix.longitude <= 180
                assert 0 <= fix.course <= 360

    @SETTINGS
    @given(st.sampled_from([0x13, 0x23]), st.integers(0, 0xFFFF), st.booleans())
    def test_reply_echoes_any_serial(self, kind: int, serial: int, long: bool) -> None:
        """Status and heartbeat replies carry the serial and its CRC, both framings."""
        frame = build_frame(kind, b"\x40\x04\x04\x00\x01", serial, long)

        decoded = logged_in().decode(frame, server_time_ms=NOW_MS)

        assert decoded.reply == build_frame(kind, b"", serial, long)

    @SETTINGS
    @given(st.binary(max_size=200))
    def test_crc_matches_the_bitwise_definition(self, data: bytes) -> None:
        """The fast CRC equals the bit-by-bit CRC-16/X-25 on any bytes."""
        assert crc_itu(data) == reference_crc(data)


def test_benchmark_decode(benchmark: Any) -> None:
    """Decode 0x22 and 0x16 packets repeatedly; print records per second."""
    frames = [
        bytes.fromhex(PACKETS["traccar-0x22-acc-on"]["payload_hex"]),
        bytes.fromhex(SAMPLES["gt06-0x16"]["payload_hex"]),
    ] * 5_000

    report_throughput(
        benchmark, decoding(logged_in(), frames), records=10_000, label="gt06 decode"
    )
