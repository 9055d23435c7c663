"""H02: real text and binary packets decoded value by value, framing, UDP, speed.

Packets come from tests/data/protocol_samples.json (Traccar's decoder tests) and
from tests/data/protocol_h02_packets.json (more of Traccar's test packets, and two
constructed heartbeats), each with its source.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pipeline.ingest.protocols.base import ALARMS, FrameError
from pipeline.ingest.protocols.h02 import (
    DEFAULT_PORT,
    KNOTS_TO_KMH,
    PROTOCOL,
    H02Session,
    looks_like_h02,
)
from pipeline.model import Fix, parse_time_ms
from tests.protocol_checks import (
    NOW_MS,
    SETTINGS,
    FramingChecks,
    HostileInputChecks,
    assert_registered,
    assert_sample,
    attribute_values,
    data_packets,
    decoding,
    exercise,
    one_byte_chunks,
    others_first_bytes,
    payload,
    random_chunks,
    report_throughput,
    shared_samples,
    split_chunks,
)

SAMPLES = shared_samples("h02")
PACKETS = data_packets("h02")
NOW_TEXT = "20251009085320"  # NOW_MS as yyyyMMddHHmmss, UTC

BINARY_32 = payload(SAMPLES["h02-binary-south-west"])
BINARY_42 = payload(PACKETS["binary-42-long-id"])
BINARY_45 = payload(PACKETS["binary-45-sos"])
TEXT_V1 = payload(SAMPLES["h02-v1-cell"])


def assert_fix(fix: Fix, expected: dict[str, Any], device: str) -> None:
    """Every value of ``expected`` holds for ``fix``."""
    assert fix.device == device
    assert fix.protocol == "h02"
    assert fix.server_time_ms == NOW_MS
    moment = expected["time"]
    assert fix.fix_time_ms == (NOW_MS if moment == "{now}" else parse_time_ms(moment))
    assert round(fix.latitude, 6) == expected["latitude"]
    assert round(fix.longitude, 6) == expected["longitude"]
    assert fix.speed_kmh == pytest.approx(expected["speed_kmh"], abs=1e-4)
    assert fix.course == pytest.approx(expected["course"])
    assert fix.valid is expected["valid"]
    assert not fix.HasField("satellites")
    if "altitude" in expected:
        assert fix.altitude == expected["altitude"]
    else:
        assert not fix.HasField("altitude")
    if "attributes" in expected:
        assert attribute_values(fix) == expected["attributes"]


class TestSharedSamples:
    @pytest.mark.parametrize("sample_id", ["h02-v1-cell", "h02-v1-west"])
    def test_text_sample(self, sample_id: str) -> None:
        """A text V1 sample gives its fix and the V4 reply at the server's time."""
        sample = SAMPLES[sample_id]
        expected = sample["expected"]
        session = H02Session()

        decoded = session.decode(payload(sample), server_time_ms=NOW_MS)

        assert_sample(decoded, sample)
        assert session.device == expected["imei"]
        [fix] = decoded.fixes
        assert fix.speed_kmh == pytest.approx(expected["speed_knots"] * KNOTS_TO_KMH)
        assert attribute_values(fix) == {"status": 0xFFFFFBFF, "ignition": False}
        assert decoded.events == []
        assert decoded.reply is not None and NOW_TEXT.encode() in decoded.reply

    def test_binary_sample(self) -> None:
        """The binary sample gives its fix and no reply."""
        sample = SAMPLES["h02-binary-south-west"]
        session = H02Session()

        decoded = session.decode(BINARY_32, server_time_ms=NOW_MS)

        assert_sample(decoded, sample)
        assert session.device == sample["expected"]["imei"]
        [fix] = decoded.fixes
        assert attribute_values(fix) == {"status": 0xFFFFF9FF, "ignition": False}


class TestPackets:
    @pytest.mark.parametrize("packet_id", sorted(PACKETS))
    def test_packet_decodes_to_its_expected_values(self, packet_id: str) -> None:
        """Every packet of the data file gives its fixes, alarms and exact reply."""
        packet = PACKETS[packet_id]
        expected = packet["expected"]

        decoded = H02Session().decode(payload(packet), server_time_ms=NOW_MS)

        assert decoded.device == expected["device"]
        assert len(decoded.fixes) == len(expected["fixes"])
        for fix, values in zip(decoded.fixes, expected["fixes"], strict=True):
            assert_fix(fix, values, expected["device"])
        alarms = [json.loads(event.attributes["alarm"]) for event in decoded.events]
        assert alarms == expected.get("alarms", [])
        for event in decoded.events:
            assert event.type == "alarm"
            assert event.device == expected["device"]
            assert event.event_time_ms == decoded.fixes[0].fix_time_ms
            assert json.loads(event.attributes["protocol"]) == "h02"
        reply = expected["reply"]
        if reply is None:
            assert decoded.reply is None
        else:
            assert decoded.reply == reply.replace("{now}", NOW_TEXT).encode("ascii")

    @pytest.mark.parametrize(
        ("status", "alarm"),
        [
            ("FFFFFFFE", "vibration"),  # bit 0
            ("FFFFFFFD", "sos"),  # bit 1
            ("FFFBFFFF", "sos"),  # bit 18
            ("FFFFFFFB", "overspeed"),  # bit 2
            ("FFF7FFFF", "powerCut"),  # bit 19
            ("FFF7FFFC", "sos"),  # several: SOS first
            ("FFF7FFFA", "powerCut"),  # power cut before overspeed and vibration
        ],
    )
    def test_active_low_status_bits_raise_alarms(self, status: str, alarm: str) -> None:
        """A cleared alarm bit becomes the fix's alarm and one alarm event."""
        text = (
            f"*HQ,4106012736,V1,224434,A,1827.3855,N,06705.7577,W,0,0,100117,{status}#"
        )

        decoded = H02Session().decode(text.encode(), server_time_ms=NOW_MS)

        assert alarm in ALARMS
        assert json.loads(decoded.fixes[0].attributes["alarm"]) == alarm
        assert [json.loads(e.attributes["alarm"]) for e in decoded.events] == [alarm]

    def test_report_without_id_uses_the_session_device(self) -> None:
        """``*HQ,,V1,...`` belongs to the device the connection identified before."""
        session = H02Session()
        session.decode(TEXT_V1, server_time_ms=NOW_MS)
        text = b"*HQ,,V1,173212,A,2225.78879,S,02829.19021,E,0.00,0,290418,FFFFFBFF#"

        decoded = session.decode(text, server_time_ms=NOW_MS)

        assert decoded.device == "4970105243"
        assert decoded.fixes[0].device == "4970105243"
        assert round(decoded.fixes[0].latitude, 6) == -22.429813
        assert decoded.reply == f"*HQ,,V4,V1,{NOW_TEXT}#".encode()

    def test_report_without_any_id_is_refused(self) -> None:
        """An id-less report on a fresh connection names no device."""
        text = b"*HQ,,V1,173212,A,2225.78879,S,02829.19021,E,0.00,0,290418,FFFFFBFF#"

        with pytest.raises(FrameError, match="names no device"):
            H02Session().decode(text, server_time_ms=NOW_MS)

    def test_protocol_entry(self) -> None:
        """PROTOCOL names h02 on port 5013, TCP and UDP, text."""
        assert_registered(
            PROTOCOL, "h02", H02Session, port=5013, tcp=True, udp=True, text=True
        )
        assert DEFAULT_PORT == 5013

    def test_binary_length_must_be_known(self) -> None:
        """A session refuses a binary frame length the protocol does not have."""
        with pytest.raises(ValueError, match="binary_length must be one of"):
            H02Session(binary_length=33)


V1_HEAD = "*HQ,4106012736,V1,"


class TestMalformedText:
    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            (b"*HQ,4106012736,V1,\xff#", "non-ASCII"),
            (b"*HQ,4106012736,V1,224434", "must end with '#'"),
            (b"*H1,4106012736,V1#", "must start"),
            (b"*HQ#", "must start"),
            (b"*HQ,41060A2736,V1#", "device id must be 1-20 digits, got '41060A2736'"),
            (b"HQ,4106012736,V1#", "must start with"),
        ],
    )
    def test_bad_envelope(self, text: bytes, reason: str) -> None:
        """Non-ASCII bytes, a missing end, a bad maker or id are refused."""
        with pytest.raises(FrameError, match=reason):
            H02Session().decode(text, server_time_ms=NOW_MS)

    @pytest.mark.parametrize(
        ("fields", "reason"),
        [
            ("224434,A,1860.0000,N,06705.7577,W,0,0,100117", "out of range"),
            ("224434,A,9100.0000,N,06705.7577,W,0,0,100117", "out of range"),
            ("224434,A,1827.3855,N,18100.0000,W,0,0,100117", "out of range"),
            ("224434,A,18x7.3855,N,06705.7577,W,0,0,100117", "not ddmm.mmmm"),
            ("224434,A,1827.3855,N,06705.7577,W,1e5,0,100117", "speed must be"),
            ("224434,A,1827.3855,N,06705.7577,W,nan,0,100117", "speed must be"),
            ("224434,A,1827.3855,N,06705.7577,W,0,361,100117", "course 361.0 is out"),
            ("254434,A,1827.3855,N,06705.7577,W,0,0,100117", "time 254434 is not"),
            ("22443,A,1827.3855,N,06705.7577,W,0,0,100117", "hhmmss, got '22443'"),
            ("224434,A,1827.3855,N,06705.7577,W,0,0,320117", "date 320117 is not"),
            ("224434,A,1827.3855,N,06705.7577,W,0,0,101317", "date 101317 is not"),
        ],
    )
    def test_bad_position(self, fields: str, reason: str) -> None:
        """Out-of-range coordinates, times, dates and non-numbers are refused."""
        text = f"{V1_HEAD}{fields},FFFFFBFF#".encode()

        with pytest.raises(FrameError, match=reason):
            H02Session().decode(text, server_time_ms=NOW_MS)


class TestMalformedBinary:
    @pytest.mark.parametrize(
        ("index", "value", "reason"),
        [
            (1, 0x2A, "binary id must be BCD digits"),
            (6, 0x24, "time 24:32:14 is not a time"),
            (7, 0x1A, "binary time .* is not BCD"),
            (10, 0x13, "date 181314 is not a date"),
            (9, 0x00, "date 000414 is not a date"),
            (13, 0x60, "coordinate 23 deg 60.7879 min is out of range"),
            (12, 0x91, "coordinate 91 deg .* is out of range"),
            (15, 0xA0, "binary coordinates .* are not BCD"),
            (21, 0xF2, "binary coordinates .* are not BCD"),
            (23, 0x07, "course 756 is out of range"),
            (22, 0x0B, "speed and course .* are not BCD"),
        ],
    )
    def test_bad_field(self, index: int, value: int, reason: str) -> None:
        """Non-BCD digits and out-of-range values are refused with the reason."""
        frame = bytearray(BINARY_32)
        frame[index] = value

        with pytest.raises(FrameError, match=reason):
            H02Session().decode(bytes(frame), server_time_ms=NOW_MS)

    @pytest.mark.parametrize("size", [31, 33, 46])
    def test_unknown_length(self, size: int) -> None:
        """Only 32-, 42- and 45-byte binary frames decode."""
        frame = (BINARY_32 + bytes(20))[:size]

        with pytest.raises(FrameError, match=f"binary frame of {size} bytes"):
            H02Session().decode(frame, server_time_ms=NOW_MS)

    def test_neither_marker(self) -> None:
        """A frame must start with '*' or '$'."""
        with pytest.raises(FrameError, match="must start with '\\*' or '\\$'"):
            H02Session().decode(b"#HQ,1#", server_time_ms=NOW_MS)


class TestFraming(FramingChecks):
    TEXT_STREAM: ClassVar[list[bytes]] = [
        payload(SAMPLES["h02-v1-cell"]),
        payload(PACKETS["text-nbr"]),
        payload(SAMPLES["h02-v1-west"]),
        payload(PACKETS["text-v0"]),
    ]
    #: Text and 32-byte binary frames interleaved (no line break after binary).
    frames: ClassVar[list[bytes]] = [
        BINARY_32,
        *TEXT_STREAM[:2],
        BINARY_32,
        BINARY_32,
        *TEXT_STREAM[2:],
    ]
    session_type = H02Session

    def test_text_with_line_breaks_one_byte_at_a_time(self) -> None:
        """Text frames with CR LF between them, fed byte by byte, come out whole."""
        data = b"\r\n".join(self.TEXT_STREAM) + b"\r\n"

        frames = split_chunks(H02Session(), one_byte_chunks(data))

        assert frames == self.TEXT_STREAM

    def test_binary_32_one_byte_at_a_time(self) -> None:
        """32-byte binary frames fed byte by byte: the length is learned as 32."""
        session = H02Session()
        data = BINARY_32 * 3

        frames = split_chunks(session, one_byte_chunks(data))

        assert frames == [BINARY_32] * 3
        assert session.binary_length == 32

    def test_binary_42_one_byte_at_a_time(self) -> None:
        """42-byte frames (8-byte id) fed byte by byte come out whole."""
        data = BINARY_42 * 3

        assert split_chunks(H02Session(), one_byte_chunks(data)) == [BINARY_42] * 3

    @pytest.mark.parametrize("seed", range(10))
    def test_binary_45_learned_from_the_next_marker(self, seed: int) -> None:
        """A first read holding a 45-byte frame and the next '$' fixes the length."""
        session = H02Session()
        data = BINARY_45 * 4
        chunks = [data[:46], *random_chunks(data[46:], seed)]

        assert split_chunks(session, chunks) == [BINARY_45] * 4
        assert session.binary_length == 45

    def test_binary_45_learned_from_an_exact_read(self) -> None:
        """A read of exactly 45 bytes is taken as one 45-byte frame."""
        session = H02Session()

        assert (
            split_chunks(session, [BINARY_45, BINARY_45[:7], BINARY_45[7:]])
            == [BINARY_45] * 2
        )

    def test_binary_45_configured_splits_anywhere(self) -> None:
        """A session told the length splits 45-byte frames at any byte."""
        data = BINARY_45 * 3

        frames = split_chunks(H02Session(binary_length=45), one_byte_chunks(data))

        assert frames == [BINARY_45] * 3

    def test_first_45_byte_frame_cut_at_32_bytes_is_misread(self) -> None:
        """Known limit: a first binary read ending at byte 32 is taken as 32 bytes.

        Without a configured length, 32 and 45 are both possible there; the
        session takes 32 (as Traccar does), so a 45-byte device whose first
        frame arrives in pieces of 32 and 13 bytes is cut off.
        """
        session = H02Session()
        buffer = bytearray(BINARY_45[:32])

        assert session.split(buffer) == [BINARY_45[:32]]
        buffer += BINARY_45[32:]
        with pytest.raises(FrameError, match="must start with"):
            session.split(buffer)

    def test_incomplete_frames_wait(self) -> None:
        """Unfinished text and binary frames stay in the buffer."""
        session = H02Session()
        buffer = bytearray(TEXT_V1 + TEXT_V1[:30])

        assert session.split(buffer) == [TEXT_V1]
        assert buffer == TEXT_V1[:30]
        binary = bytearray(BINARY_32[:20])
        assert H02Session().split(binary) == []
        assert binary == BINARY_32[:20]

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"GET / HTTP/1.1\r\n", "must start with '\\*' or '\\$', got 47"),
            (b"*HQ," + b"1" * 1100, "no '#' in 1024 bytes"),
            (b"$" + bytes(40), "no BCD time and date"),
            (BINARY_32[:32] + b"\x00" * 30, "none of \\(32, 42, 45\\) bytes long"),
        ],
    )
    def test_bad_front_raises(self, data: bytes, reason: str) -> None:
        """Garbage, endless text and unframeable binary bytes raise."""
        with pytest.raises(FrameError, match=reason):
            H02Session().split(bytearray(data))

    def test_garbage_after_good_frames(self) -> None:
        """Good frames before garbage are returned; the next call raises."""
        session = H02Session()
        buffer = bytearray(TEXT_V1 + b"\x00" * 3000)

        assert session.split(buffer) == [TEXT_V1]
        assert len(buffer) == session.max_frame_bytes
        with pytest.raises(FrameError, match="got 00"):
            session.split(buffer)


class TestUdp:
    def test_text_datagram(self) -> None:
        """A V1 datagram decodes and gets the V4 reply."""
        session = H02Session()

        decoded = session.decode_datagram(TEXT_V1, server_time_ms=NOW_MS)

        assert decoded.device == "4970105243"
        assert len(decoded.fixes) == 1
        assert decoded.reply == f"*HQ,4970105243,V4,V1,{NOW_TEXT}#".encode()

    @pytest.mark.parametrize("frame", [BINARY_32, BINARY_42, BINARY_45])
    def test_binary_datagram(self, frame: bytes) -> None:
        """A binary datagram of any of the three lengths is one fix, no reply."""
        decoded = H02Session().decode_datagram(frame, server_time_ms=NOW_MS)

        assert len(decoded.fixes) == 1
        assert decoded.reply is None

    def test_two_frames_in_one_datagram(self) -> None:
        """Two reports in one datagram give two fixes and both replies."""
        second = payload(SAMPLES["h02-v1-west"])

        decoded = H02Session().decode_datagram(
            TEXT_V1 + b"\r\n" + second, server_time_ms=NOW_MS
        )

        assert [fix.device for fix in decoded.fixes] == ["4970105243", "4106012736"]
        assert decoded.reply == (
            f"*HQ,4970105243,V4,V1,{NOW_TEXT}#*HQ,4106012736,V4,V1,{NOW_TEXT}#".encode()
        )

    def test_trailing_garbage_fails_that_datagram_only(self) -> None:
        """A datagram with trailing garbage is refused; the next one decodes."""
        session = H02Session()

        with pytest.raises(FrameError, match="trailing bytes"):
            session.decode_datagram(TEXT_V1 + b"junk", server_time_ms=NOW_MS)
        assert session.decode_datagram(TEXT_V1, server_time_ms=NOW_MS).fixes


class TestLooksLike:
    @pytest.mark.parametrize(
        "first_bytes",
        [TEXT_V1, b"*HQ,", b"*TH,2020916012,V1", BINARY_32, BINARY_42, BINARY_45],
    )
    def test_h02_frames_are_claimed(self, first_bytes: bytes) -> None:
        """Text and binary H02 frames are claimed."""
        assert looks_like_h02(first_bytes[:64])

    @pytest.mark.parametrize(
        "first_bytes",
        [
            *others_first_bytes("h02"),
            b"*HQ",
            b"$" + bytes.fromhex("2705170308"),  # too short to see a time
        ],
    )
    def test_other_bytes_are_not_claimed(self, first_bytes: bytes) -> None:
        """Other protocols' first bytes and short prefixes are not H02."""
        assert not looks_like_h02(first_bytes[:64])


VALID_FRAMES = [payload(p) for p in PACKETS.values()] + [
    payload(sample) for sample in SAMPLES.values()
]


TEXT_FIELD = st.text(alphabet="0123456789.-,ABVNSEWF ", max_size=14)


class TestProperties(HostileInputChecks):
    valid_frames = VALID_FRAMES
    session_type = H02Session
    #: The bytes H02 frames are made of, and one that is never in them.
    inserted = st.sampled_from([bytes((c,)) for c in b",.-#*$0123456789AVNSEW\xff"])

    def test_known_hostile_inputs(self) -> None:
        """15 bytes after '$': enough to check both id widths, then fail cleanly."""
        self.check(b"$" + bytes(14))

    @SETTINGS
    @given(
        st.sampled_from(["V1", "V2", "V4", "V19", "NBR", "HTBT", "V0", "LINK"]),
        st.lists(TEXT_FIELD, max_size=16),
    )
    @example("V1", ["", "A", "-", "N", "1.1", "E", "0", "0", "010101"])
    @example("V1", ["000000", "A", "0.5", "N", "100.5", "E", "", "", "010101"])
    def test_text_fields_raise_only_frame_errors(
        self, kind: str, fields: list[str]
    ) -> None:
        """Any fields after a valid head decode or fail with FrameError."""
        frame = ",".join(["*HQ", "4106012736", kind, *fields]) + "#"

        for decoded in exercise(H02Session(), frame.encode()):
            for fix in decoded.fixes:
                assert -90 <= fix.latitude <= 90
                assert -180 <= fix.longitude <= 180

    @SETTINGS
    @given(st.sampled_from([32, 42, 45]), st.binary(min_size=45, max_size=45))
    def test_binary_content_raises_only_frame_errors(
        self, size: int, content: bytes
    ) -> None:
        """Any bytes after '$' of a known binary length decode or fail cleanly."""
        frame = b"$" + content[: size - 1]

        try:
            decoded = H02Session().decode(frame, server_time_ms=NOW_MS)
        except FrameError:
            return
        assert -90 <= decoded.fixes[0].latitude <= 90
        assert -180 <= decoded.fixes[0].longitude <= 180


@pytest.mark.parametrize(
    ("name", "frame"), [("binary 32-byte", BINARY_32), ("text V1", TEXT_V1)]
)
def test_benchmark_decode(benchmark: Any, name: str, frame: bytes) -> None:
    """Decode a report repeatedly; print records per second."""
    run = decoding(H02Session(), [frame] * 10_000)

    report_throughput(benchmark, run, records=10_000, label=f"h02 {name} decode")
