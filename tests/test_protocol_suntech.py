"""Suntech: real reports decoded value by value, framing, hostile input, speed.

Reports come from tests/data/protocol_samples.json (Traccar's decoder tests) and
from tests/data/protocol_suntech_packets.json (more of Traccar's test reports: the
legacy SA200/ST300/ST500/ST600, ST4xx and ST910 layouts and the universal one),
each with its source.
"""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest.protocols.base import ALARMS, Decoded, FrameError
from pipeline.ingest.protocols.suntech import (
    ALERT_ALARMS,
    EMERGENCY_ALARMS,
    PROTOCOL,
    SuntechSession,
    looks_like,
)
from tests.protocol_checks import (
    NOW_MS,
    SETTINGS,
    FramingChecks,
    HostileInputChecks,
    assert_packet,
    assert_registered,
    assert_sample,
    data_packets,
    exercise,
    one_byte_chunks,
    others_first_bytes,
    report_throughput,
    shared_samples,
    split_chunks,
)

SAMPLES = shared_samples("suntech")
PACKETS = data_packets("suntech")
ST300 = SAMPLES["suntech-st300stt"]["payload_text"].encode()
UNIVERSAL = SAMPLES["suntech-universal-stt"]["payload_text"].encode()


def reports() -> list[bytes]:
    entries = [*SAMPLES.values(), *PACKETS.values()]
    return [entry["payload_text"].encode() for entry in entries]


def decode_one(report: bytes, ending: bytes = b"\r") -> Decoded:
    session = SuntechSession()
    assert split_chunks(session, [report + ending]) == [report]
    return session.decode(report, server_time_ms=NOW_MS)


class TestSharedSamples:
    @pytest.mark.parametrize("sample_id", sorted(SAMPLES))
    def test_sample_decodes_to_expected(self, sample_id: str) -> None:
        decoded = decode_one(SAMPLES[sample_id]["payload_text"].encode())

        assert_sample(decoded, SAMPLES[sample_id])
        assert decoded.events == []


class TestCapturedPackets:
    @pytest.mark.parametrize("packet_id", sorted(PACKETS))
    def test_packet_decodes_to_every_expected_value(self, packet_id: str) -> None:
        packet = PACKETS[packet_id]

        decoded = decode_one(packet["payload_text"].encode())

        assert_packet(decoded, packet["expected"])
        assert packet["expected"]["reply_text"] is None

    def test_alarm_tables_are_in_the_shared_vocabulary(self) -> None:
        assert set(ALERT_ALARMS.values()) <= ALARMS
        assert set(EMERGENCY_ALARMS.values()) <= ALARMS

    @pytest.mark.parametrize(
        ("alert", "alarm"),
        [(1, "overspeed"), (41, "powerCut"), (42, "sos"), (50, "jamming")],
    )
    def test_universal_alert_id_becomes_alarm(self, alert: int, alarm: str) -> None:
        report = (
            b"ALT;0950030205;3FFFFF;95;1.0.11;0;20221017;21:41:30;02F2F402;334;20;"
            b"0F1D;45;+25.791061;-100.170745;0.00;0.00;18;1;00000101;00000000;%d;2;"
        ) % alert

        decoded = decode_one(report)

        assert json.loads(decoded.fixes[0].attributes["alarm"]) == alarm
        assert [json.loads(e.attributes["alarm"]) for e in decoded.events] == [alarm]

    def test_mask_without_position_gives_no_fix(self) -> None:
        # Mask 000007: model, firmware and the real-time flag only.
        decoded = decode_one(b"STT;6009999006;000007;26;398;0")

        assert decoded.device == "6009999006"
        assert decoded.fixes == []


class TestFraming(FramingChecks):
    frames: ClassVar[list[bytes]] = reports()
    separator = b"\r"
    session_type = SuntechSession

    @pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
    def test_each_line_ending_splits(self, ending: bytes) -> None:
        data = ending.join(reports()) + ending

        assert split_chunks(SuntechSession(), one_byte_chunks(data)) == reports()

    def test_merged_reports_with_blank_lines_split_in_one_read(self) -> None:
        data = b"\r\n".join(reports() * 2) + b"\r\n"

        assert split_chunks(SuntechSession(), [data]) == reports() * 2

    def test_report_without_its_ending_stays_in_the_buffer(self) -> None:
        buffer = bytearray(ST300)

        assert SuntechSession().split(buffer) == []
        assert buffer == ST300

    @pytest.mark.parametrize("data", [b"\x00\x01garbage\r", b";ST300\r", b"st300\r"])
    def test_front_that_cannot_be_a_report_is_refused(self, data: bytes) -> None:
        with pytest.raises(FrameError, match="must start with a capital letter"):
            SuntechSession().split(bytearray(data))

    def test_line_that_never_ends_is_refused_at_the_limit(self) -> None:
        session = SuntechSession()
        buffer = bytearray(b"S" * session.max_frame_bytes)

        assert session.split(buffer) == []
        buffer += b"T"
        with pytest.raises(FrameError, match="longer than 4096 bytes"):
            session.split(buffer)

    def test_datagram_holds_one_report_with_or_without_ending(self) -> None:
        session = SuntechSession()

        bare = session.decode_datagram(ST300, server_time_ms=NOW_MS)
        ended = session.decode_datagram(UNIVERSAL + b"\r\n", server_time_ms=NOW_MS)

        assert [fix.device for fix in bare.fixes] == ["109002029"]
        assert [fix.device for fix in ended.fixes] == ["6009999006"]
        assert (bare.reply, ended.reply) == (None, None)

    def test_datagram_with_two_reports_gives_both(self) -> None:
        decoded = SuntechSession().decode_datagram(
            ST300 + b"\r" + UNIVERSAL, server_time_ms=NOW_MS
        )

        assert [fix.device for fix in decoded.fixes] == ["109002029", "6009999006"]

    def test_empty_datagram_is_refused(self) -> None:
        with pytest.raises(FrameError, match="holds no Suntech report"):
            SuntechSession().decode_datagram(b"\r\n", server_time_ms=NOW_MS)


class TestBadInput:
    @pytest.mark.parametrize(
        ("report", "reason"),
        [
            (b"HELLO", "';'-separated fields"),
            (b"XY123;1;2", "unknown Suntech report type"),
            (b"ST300STT;1;08", "report ends before its firmware|date"),
            (ST300.replace(b"20190220", b"20191320"), "not a valid UTC time"),
            (ST300.replace(b"20190220", b"19990220"), "year must be within"),
            (ST300.replace(b"13:00:55", b"13-00-55"), "yyyymmdd;hh:mm:ss"),
            (ST300.replace(b"+04.645710", b"+94.645710"), "latitude must be within"),
            (ST300.replace(b"-074.078525", b"-181.0"), "longitude must be within"),
            (ST300.replace(b"-074.078525", b"nan"), "longitude must be finite"),
            (ST300.replace(b"007.760", b"fast"), "speed must be a number"),
            (ST300.replace(b";10;1;", b";ten;1;"), "satellites must be an integer"),
            (ST300.replace(b"100100", b"100200"), "I/O must be 0/1 digits"),
            (ST300.replace(b"109002029", b"1090-2029"), "device id must be"),
            (UNIVERSAL.replace(b"3FFFFF", b"3FFFFG"), "field mask must be an integer"),
            (UNIVERSAL.replace(b"00000001", b"00000002"), "input must be 0/1 digits"),
            (ST300.replace(b"13:00:55", "13:00:5é".encode()), "must be ASCII"),
            (ST300.replace(b";08;", b";\t;"), "printable ASCII"),
        ],
    )
    def test_bad_report_is_refused(self, report: bytes, reason: str) -> None:
        with pytest.raises(FrameError, match=reason):
            SuntechSession().decode(report, server_time_ms=NOW_MS)

    @pytest.mark.parametrize(
        "report",
        [b"SA200ALV;317652", b"ST300CMD;Res;511848119;319H;Disable1", b"RES;1;04;02"],
    )
    def test_reports_without_position_name_the_device(self, report: bytes) -> None:
        decoded = SuntechSession().decode(report, server_time_ms=NOW_MS)

        assert decoded.device is not None
        assert (decoded.fixes, decoded.events, decoded.reply) == ([], [], None)


class TestProperties(HostileInputChecks):
    valid_frames: ClassVar[list[bytes]] = reports()
    session_type = SuntechSession

    def test_known_hostile_inputs(self) -> None:
        """An ST910 location report that stops after its device id only raises
        FrameError."""
        self.check(b"ST910;Location;1;\r")

    @SETTINGS
    @given(
        mask=st.integers(0, 0xFFFFFF),
        fields=st.lists(st.sampled_from(["1", "0", "+4.5", "FFFF", ""]), max_size=30),
    )
    def test_any_universal_mask_raises_only_frame_error(
        self, mask: int, fields: list[str]
    ) -> None:
        report = ";".join(["STT", "1", f"{mask:06X}", *fields]).encode()
        with suppress(FrameError):
            SuntechSession().decode(report, server_time_ms=NOW_MS)


class TestLooksLike:
    @pytest.mark.parametrize("data", reports())
    def test_own_reports_are_claimed(self, data: bytes) -> None:
        assert looks_like(data[:64])

    @pytest.mark.parametrize(
        "data", [b"ST910;", b"ST910;Loc", b"ST300STT;", b"STT;", b"ALT;1"]
    )
    def test_a_distinctive_start_is_enough(self, data: bytes) -> None:
        assert looks_like(data)

    @pytest.mark.parametrize(
        "data",
        [
            *others_first_bytes("suntech"),
            b"ST910;Parked;1",
            b"STX;1;2",
            b"ST300STT",
            b"",
        ],
    )
    def test_other_protocols_are_not_claimed(self, data: bytes) -> None:
        assert not looks_like(data)

    def test_protocol_is_registered_with_its_port(self) -> None:
        assert_registered(
            PROTOCOL, "suntech", SuntechSession, port=5011, tcp=True, udp=True,
            text=True,
        )  # fmt: skip


def test_benchmark_decode(benchmark: Any) -> None:
    """Split and decode legacy and universal reports; print records per second."""
    stream = (ST300 + b"\r" + UNIVERSAL + b"\r") * 2_000

    def split_and_decode() -> int:
        decoded = exercise(SuntechSession(), stream)
        return sum(len(each.fixes) for each in decoded)

    report_throughput(
        benchmark, split_and_decode, records=4_000, label="suntech split+decode"
    )
