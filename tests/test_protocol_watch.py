"""3G watch protocol: real frames decoded value by value, framing, hostile input, speed.

Frames come from tests/data/protocol_samples.json (Traccar's decoder tests) and
from tests/data/protocol_watch_packets.json (more of Traccar's decoder and frame
decoder test frames), each with its source.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest.protocols.base import ALARMS, Decoded, FrameError
from pipeline.ingest.protocols.watch import (
    PROTOCOL,
    STATUS_ALARMS,
    WatchSession,
    looks_like,
)
from tests import protocol_checks
from tests.protocol_checks import (
    NOW_MS,
    SETTINGS,
    FramingChecks,
    HostileInputChecks,
    assert_deterministic,
    assert_packet,
    assert_registered,
    assert_sample,
    data_packets,
    exercise,
    mutate,
    one_byte_chunks,
    others_first_bytes,
    payload,
    random_chunks,
    report_throughput,
    shared_samples,
    split_chunks,
)

SAMPLES = shared_samples("watch")
PACKETS = data_packets("watch")


def frame(content: bytes, head: bytes = b"[3G*1234567890*") -> bytes:
    """A frame around ``content`` with its length field right."""
    return head + b"%04X*" % len(content) + content + b"]"


def position(status: str = "00000000", kind: bytes = b"UD") -> bytes:
    """A position report with the given status word."""
    fields = b"220414,134652,A,22.571707,N,113.8613968,E,0.1,0.0,100,7,60,90,1000,50,"
    return kind + b"," + fields + status.encode() + b",4,1,460,0"


def decode_one(data: bytes) -> Decoded:
    return protocol_checks.decode_one(WatchSession(), data)


class TestSharedSamples:
    @pytest.mark.parametrize("sample_id", sorted(SAMPLES))
    def test_sample_decodes_to_expected(self, sample_id: str) -> None:
        decoded = decode_one(payload(SAMPLES[sample_id]))

        assert_sample(decoded, SAMPLES[sample_id])


class TestCapturedPackets:
    @pytest.mark.parametrize("packet_id", sorted(PACKETS))
    def test_packet_decodes_to_every_expected_value(self, packet_id: str) -> None:
        packet = PACKETS[packet_id]

        decoded = decode_one(payload(packet))

        assert_packet(decoded, packet["expected"])

    def test_status_alarms_are_in_the_shared_vocabulary(self) -> None:
        assert {alarm for _, alarm in STATUS_ALARMS} <= ALARMS


class TestStatusAndReplies:
    @pytest.mark.parametrize(
        ("status", "alarm"),
        [
            ("00010000", "sos"),
            ("00100000", "removing"),
            ("00200000", "fall"),
            ("00400000", "fall"),
            ("00020000", "lowBattery"),
            ("00040000", "geofenceExit"),
            ("00080000", "geofenceEnter"),
            ("00004000", "powerCut"),
            ("00110000", "sos"),  # two alarm bits: the first in Traccar's order wins
        ],
    )
    def test_status_bit_becomes_alarm_and_event(self, status: str, alarm: str) -> None:
        decoded = decode_one(frame(position(status)))

        [fix] = decoded.fixes
        assert json.loads(fix.attributes["alarm"]) == alarm
        assert [json.loads(e.attributes["alarm"]) for e in decoded.events] == [alarm]
        assert decoded.events[0].event_time_ms == fix.fix_time_ms

    def test_motion_bit_sets_motion(self) -> None:
        decoded = decode_one(frame(position("00000010")))

        assert decoded.fixes[0].attributes["motion"] == "true"
        assert decoded.events == []

    @pytest.mark.parametrize(
        ("content", "reply"),
        [
            (b"LK", b"[3G*1234567890*0002*LK]"),
            (b"LK,50,100,100", b"[3G*1234567890*0002*LK]"),
            (b"INIT,13800138000,1,1,LA,1", b"[3G*1234567890*0006*INIT,1]"),
            (b"TKQ", b"[3G*1234567890*0003*TKQ]"),
            (b"TKQ2", b"[3G*1234567890*0004*TKQ2]"),
            (position(kind=b"AL"), b"[3G*1234567890*0002*AL]"),
            (b"JXTK,0,a,1,6,\x00\x01", b"[3G*1234567890*0007*JXTKR,1]"),
        ],
    )
    def test_reply_echoes_vendor_and_id(self, content: bytes, reply: bytes) -> None:
        assert decode_one(frame(content)).reply == reply

    def test_reply_echoes_the_zj_index(self) -> None:
        decoded = decode_one(b"[ZJ*014111001350304*0034*0009*LK,0,0,19]")

        assert decoded.reply == b"[ZJ*014111001350304*0034*0002*LK]"

    @pytest.mark.parametrize(
        "content", [position(), b"heart,71", b"TK,#!AMR\x00\xff", b"UNKNOWN,1"]
    )
    def test_no_reply_where_none_is_expected(self, content: bytes) -> None:
        assert decode_one(frame(content)).reply is None


class TestFraming(FramingChecks):
    frames: ClassVar[list[bytes]] = [
        payload(p) for p in [*PACKETS.values(), *SAMPLES.values()]
    ]
    session_type = WatchSession

    def test_brackets_in_a_wifi_name_do_not_end_the_frame(self) -> None:
        content = position() + b",1,[Cafe]]Guest,aa:bb:cc:dd:ee:ff,-60,1.5"
        data = frame(content)

        frames = split_chunks(WatchSession(), random_chunks(data + data, 10))

        assert frames == [data, data]

    def test_escaped_binary_splits_and_unescapes(self) -> None:
        # Traccar's frame decoder test: } [ ] , * travel as }01 }02 }03 }04 }05.
        data = payload(PACKETS["traccar-tk-escaped"])

        frames = split_chunks(WatchSession(), one_byte_chunks(data * 3))

        assert frames == [data] * 3

    def test_sg_length_three_bytes_short_still_splits(self) -> None:
        # Captures from SG-firmware watches: the length field is 3 bytes short.
        data = payload(PACKETS["traccar-ud-sg-no-hemisphere"])

        frames = split_chunks(WatchSession(), random_chunks(data + data, 7))

        assert frames == [data, data]

    def test_lk_length_one_byte_long_is_answered_at_once(self) -> None:
        # The watch waits for the answer: a frame whose length field overstates
        # its content must not wait for bytes that never come.
        session = WatchSession()
        buffer = bytearray(b"[SG*9081000548*0009*LK,0,100]")

        frames = session.split(buffer)

        assert frames == [b"[SG*9081000548*0009*LK,0,100]"]
        assert session.decode(frames[0], server_time_ms=NOW_MS).reply == (
            b"[SG*9081000548*0002*LK]"
        )

    def test_incomplete_frame_stays_in_the_buffer(self) -> None:
        data = payload(SAMPLES["watch-ud-lte"])
        buffer = bytearray(data[:-1])

        assert WatchSession().split(buffer) == []
        assert buffer == data[:-1]

    def test_zj_header_waits_for_the_index_or_length(self) -> None:
        session = WatchSession()
        buffer = bytearray(b"[ZJ*014111001350304*0034*00")

        assert session.split(buffer) == []
        buffer += b"09*LK,0,0,19]"
        assert session.split(buffer) == [b"[ZJ*014111001350304*0034*0009*LK,0,0,19]"]

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"GET / HTTP/1.1\r\n", "must start with"),
            (b"[3G*12345*00G1*LK]", "must start with"),
            (b"[3G#12345*0002*LK]", "must start with"),
            (b"[3G*" + b"1" * 40 + b"*0002*LK]", "must start with"),
            (b"]" + b"[3G*1*0002*LK]", "must start with"),
        ],
    )
    def test_front_that_cannot_be_a_frame_is_refused(
        self, data: bytes, reason: str
    ) -> None:
        with pytest.raises(FrameError, match=reason):
            WatchSession().split(bytearray(data))

    def test_frame_that_never_closes_is_refused_at_the_limit(self) -> None:
        session = WatchSession()
        buffer = bytearray(b"[3G*1*FFFF*TK,")

        buffer += b"\x00" * (session.max_frame_bytes - len(buffer))
        assert session.split(buffer) == []
        buffer += b"\x00"
        with pytest.raises(FrameError, match="no '\\]' closes a frame"):
            session.split(buffer)

    def test_bracket_scan_resumes_instead_of_rescanning(self) -> None:
        # A hostile peer sending '[' a byte at a time must not make each read
        # rescan the whole buffer: 60,000 reads finish in well under a minute.
        session = WatchSession()
        buffer = bytearray(b"[3G*1*FFFF*")
        started = time.perf_counter()

        for _ in range(60_000):
            buffer += b"["
            assert session.split(buffer) == []

        assert time.perf_counter() - started < 30


class TestBadInput:
    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            (b"UD,1,2,3", "must have 16 position fields"),
            (position().replace(b"220414", b"320414"), "not a valid UTC time"),
            (position().replace(b"220414", b"22041"), "ddmmyy,hhmmss"),
            (position().replace(b",A,", b",X,"), "validity must be"),
            (position().replace(b"22.571707", b"91.5"), "latitude must be within"),
            (position().replace(b"113.8613968", b"-181"), "longitude must be within"),
            (position().replace(b"113.8613968", b"inf"), "longitude must be finite"),
            (position().replace(b",N,", b",Q,"), "hemisphere must be"),
            (position().replace(b",0.1,", b",fast,"), "speed must be a number"),
            (position("0000000G"), "status must be an integer"),
            (position().replace(b"22.571707", b"22.5\xc3\xa9"), "must be ASCII"),
            (b"L\xffK", "content type must be printable ASCII"),
        ],
    )
    def test_bad_content_is_refused(self, content: bytes, reason: str) -> None:
        with pytest.raises(FrameError, match=reason):
            WatchSession().decode(frame(content), server_time_ms=NOW_MS)

    def test_signed_coordinates_follow_their_letters(self) -> None:
        content = position().replace(b"22.571707,N", b"-22.5,N")
        content = content.replace(b"113.8613968,E", b"113.5,W")

        [fix] = decode_one(frame(content)).fixes

        assert (fix.latitude, fix.longitude) == (-22.5, -113.5)

    def test_non_ascii_wifi_name_is_not_read(self) -> None:
        content = position() + ",1,Café,aa:bb:cc:dd:ee:ff,-60".encode()

        [fix] = decode_one(frame(content)).fixes

        assert fix.latitude == pytest.approx(22.571707)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with bytes flipped, inserted or removed, length field reset."""
    data = draw(st.sampled_from([payload(p) for p in PACKETS.values()]))
    content = mutate(draw, data[data.index(b"*", data.index(b"*", 4) + 1) + 1 : -1])
    if draw(st.booleans()):
        return frame(content)
    return data[: data.index(b"*", 4) + 1] + b"0010*" + content + b"]"


class TestProperties(HostileInputChecks):
    valid_frames: ClassVar[list[bytes]] = [payload(p) for p in PACKETS.values()]
    session_type = WatchSession

    def test_known_hostile_inputs(self) -> None:
        """A frame with empty content only raises FrameError."""
        self.check(b"[3G*1*0000*]")

    @SETTINGS
    @given(data=mutated_frames(), cut=st.integers(1, 64))
    def test_mutated_content_of_any_length_raises_only_frame_error(
        self, data: bytes, cut: int
    ) -> None:
        """Mutated content under a right or a wrong length field, then a valid
        frame, only raises FrameError."""
        exercise(WatchSession(), data[:cut], data[cut:] + payload(SAMPLES["watch-al"]))
        with suppress(FrameError):
            assert_deterministic(WatchSession, data)

    @SETTINGS
    @given(
        length=st.integers(0, 0xFFFF),
        filler=st.binary(max_size=300).filter(lambda b: b"]" not in b),
    )
    def test_absurd_length_fields_never_hold_more_than_the_limit(
        self, length: int, filler: bytes
    ) -> None:
        session = WatchSession()
        buffer = bytearray(b"[SG*1*%04X*" % length + filler)
        try:
            assert session.split(buffer) == []
        except FrameError:
            return
        assert len(buffer) <= session.max_frame_bytes


class TestLooksLike:
    @pytest.mark.parametrize(
        "data", [payload(p) for p in [*SAMPLES.values(), *PACKETS.values()]]
    )
    def test_own_frames_are_claimed(self, data: bytes) -> None:
        assert looks_like(data[:64])
        assert looks_like(data[:4])

    @pytest.mark.parametrize(
        "data",
        [*others_first_bytes("watch"), b"[3G", b"[3G*1*00Z", b"[", b""],
    )
    def test_other_protocols_are_not_claimed(self, data: bytes) -> None:
        assert not looks_like(data)

    def test_protocol_is_registered_with_its_port(self) -> None:
        assert_registered(
            PROTOCOL, "watch", WatchSession, port=5093, tcp=True, udp=False, text=True
        )


def test_benchmark_decode(benchmark: Any) -> None:
    """Split and decode UD_LTE and AL reports repeatedly; print records per second."""
    data = payload(SAMPLES["watch-ud-lte"]) + payload(SAMPLES["watch-al"])
    stream = data * 2_000

    def split_and_decode() -> int:
        decoded = exercise(WatchSession(), stream)
        return sum(len(each.fixes) for each in decoded)

    report_throughput(
        benchmark, split_and_decode, records=4_000, label="watch split+decode"
    )
