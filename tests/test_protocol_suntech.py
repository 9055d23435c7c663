"""Suntech: real reports decoded value by value, framing, hostile input, speed.

Reports come from /work/shared/protocols/samples.json (Traccar's decoder tests) and
from tests/data/protocol_suntech_packets.json (more of Traccar's test reports: the
legacy SA200/ST300/ST500/ST600, ST4xx and ST910 layouts and the universal one),
each with its source.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.ingest.protocols.base import ALARMS, FrameError
from pipeline.ingest.protocols.suntech import (
    ALERT_ALARMS,
    EMERGENCY_ALARMS,
    PROTOCOL,
    SuntechSession,
    looks_like,
)
from pipeline.model import Fix, fix_to_json, parse_time_ms

SHARED = Path(__file__).parents[1].parent / "shared" / "protocols"
SAMPLES = {
    sample["id"]: sample
    for sample in json.loads((SHARED / "samples.json").read_text())
    if sample["protocol"] == "suntech"
}
PACKETS_FILE = Path(__file__).parent / "data" / "protocol_suntech_packets.json"
PACKETS = {p["id"]: p for p in json.loads(PACKETS_FILE.read_text())["packets"]}
NOW_MS = 1_760_000_000_000
ST300 = SAMPLES["suntech-st300stt"]["payload_text"].encode()
UNIVERSAL = SAMPLES["suntech-universal-stt"]["payload_text"].encode()

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def reports() -> list[bytes]:
    entries = [*SAMPLES.values(), *PACKETS.values()]
    return [entry["payload_text"].encode() for entry in entries]


def split_all(session: SuntechSession, data: bytes, sizes: list[int]) -> list[bytes]:
    buffer = bytearray()
    frames = []
    position = 0
    for size in sizes:
        buffer += data[position : position + size]
        position += size
        frames += session.split(buffer)
    buffer += data[position:]
    frames += session.split(buffer)
    assert not buffer
    return frames


def decode_one(report: bytes, ending: bytes = b"\r") -> Any:
    session = SuntechSession()
    buffer = bytearray(report + ending)
    frames = session.split(buffer)
    assert frames == [report]
    assert not buffer
    return session.decode(frames[0], server_time_ms=NOW_MS)


def fix_view(fix: Fix) -> dict[str, Any]:
    view = fix_to_json(fix)
    del view["serverTime"], view["uniqueId"]
    return view


class TestSharedSamples:
    @pytest.mark.parametrize("sample_id", sorted(SAMPLES))
    def test_sample_decodes_to_expected(self, sample_id: str) -> None:
        expected = SAMPLES[sample_id]["expected"]

        decoded = decode_one(SAMPLES[sample_id]["payload_text"].encode())

        [fix] = decoded.fixes
        assert decoded.device == fix.device == expected["imei"]
        assert fix.fix_time_ms == parse_time_ms(expected["time"])
        assert fix.latitude == pytest.approx(expected["latitude"], abs=1e-6)
        assert fix.longitude == pytest.approx(expected["longitude"], abs=1e-6)
        assert fix.speed_kmh == pytest.approx(expected["speed_kmh"], abs=1e-3)
        assert fix.course == pytest.approx(expected["course"])
        assert fix.valid is expected["valid"]
        if "satellites" in expected:
            assert fix.satellites == expected["satellites"]
        assert (fix.protocol, fix.server_time_ms) == ("suntech", NOW_MS)
        assert expected["ack_expected"] is False
        assert decoded.reply is None
        assert decoded.events == []


class TestCapturedPackets:
    @pytest.mark.parametrize("packet_id", sorted(PACKETS))
    def test_packet_decodes_to_every_expected_value(self, packet_id: str) -> None:
        packet = PACKETS[packet_id]
        expected = packet["expected"]

        decoded = decode_one(packet["payload_text"].encode())

        assert decoded.device == expected["device"]
        assert [fix_view(fix) for fix in decoded.fixes] == expected["fixes"]
        alarms = [json.loads(event.attributes["alarm"]) for event in decoded.events]
        assert alarms == expected["alarms"]
        assert expected["reply_text"] is None
        assert decoded.reply is None

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


class TestFraming:
    @pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n"])
    def test_each_line_ending_splits(self, ending: bytes) -> None:
        data = ending.join(reports()) + ending

        assert split_all(SuntechSession(), data, [1] * len(data)) == reports()

    @pytest.mark.parametrize("seed", range(5))
    def test_random_chunks_give_the_same_frames(self, seed: int) -> None:
        data = b"\r".join(reports()) + b"\r"
        chance = random.Random(seed)
        sizes = [chance.randint(1, 80) for _ in range(len(data) // 20)]

        assert split_all(SuntechSession(), data, sizes) == reports()

    def test_merged_reports_split_in_one_read(self) -> None:
        buffer = bytearray(b"\r\n".join(reports() * 2) + b"\r\n")

        assert SuntechSession().split(buffer) == reports() * 2
        assert not buffer

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


@st.composite
def mutated_reports(draw: st.DrawFn) -> bytes:
    """A valid report with bytes flipped, inserted or removed."""
    report = bytearray(draw(st.sampled_from(reports())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(report)))
        operation = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if operation == "flip" and at < len(report):
            report[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "insert":
            report[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del report[at : at + draw(st.integers(1, 8))]
        else:
            del report[at:]
    return bytes(report)


class TestProperties:
    @SETTINGS
    @given(data=st.binary(max_size=600), cut=st.integers(0, 600))
    @example(data=b"ST910;Location;1;\r", cut=0)
    def test_random_bytes_raise_only_frame_error(self, data: bytes, cut: int) -> None:
        session = SuntechSession()
        buffer = bytearray()
        try:
            for chunk in (data[:cut], data[cut:]):
                buffer += chunk
                for each in session.split(buffer):
                    session.decode(each, server_time_ms=NOW_MS)
                assert len(buffer) <= session.max_frame_bytes
            session.decode_datagram(data, server_time_ms=NOW_MS)
        except FrameError:
            pass

    @SETTINGS
    @given(report=mutated_reports())
    def test_mutated_reports_raise_only_frame_error(self, report: bytes) -> None:
        session = SuntechSession()
        try:
            first = session.decode(report, server_time_ms=NOW_MS)
        except FrameError:
            return
        assert session.decode(report, server_time_ms=NOW_MS) == first

    @SETTINGS
    @given(
        mask=st.integers(0, 0xFFFFFF),
        fields=st.lists(st.sampled_from(["1", "0", "+4.5", "FFFF", ""]), max_size=30),
    )
    def test_any_universal_mask_raises_only_frame_error(
        self, mask: int, fields: list[str]
    ) -> None:
        report = ";".join(["STT", "1", f"{mask:06X}", *fields]).encode()
        try:
            SuntechSession().decode(report, server_time_ms=NOW_MS)
        except FrameError:
            pass


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
            b"*HQ,865205030330012,V1,145452,A,2240.55181,N,11358.32389,E,0.00,0.00,",
            b"##,imei:359586015829802,A;",
            b"imei:359586015829802,tracker,1008281456,,F,",
            b"(027028641389BP05000027028641389110905A3114.5366N12126.5862E",
            b"+RESP:GTFRI,060228,862894020180553,,0,0,1,1,4.3,92,70.0,121.354335,",
            b"$$T143,869013024733944,AAA,1,18.459575,-69.947161,170220142912,A,5,",
            b"[3G*2104326058*00E9*UD_LTE,300621,135101,A,32.162652,N,34.888748,E",
            bytes.fromhex("000000000000003608010000016b40d8ea30010000000000000000"),
            bytes.fromhex("78780d010123456789012345000139b40d0a"),
            b"ST910;Parked;1",
            b"STX;1;2",
            b"ST300STT",
            b"",
        ],
    )
    def test_other_protocols_are_not_claimed(self, data: bytes) -> None:
        assert not looks_like(data)

    def test_protocol_is_registered_with_its_port(self) -> None:
        assert (PROTOCOL.name, PROTOCOL.default_port) == ("suntech", 5011)
        assert (PROTOCOL.tcp, PROTOCOL.udp, PROTOCOL.text) == (True, True, True)
        assert isinstance(PROTOCOL.session(), SuntechSession)


def test_benchmark_decode(benchmark: Any) -> None:
    """Split and decode legacy and universal reports; print records per second."""
    stream = (ST300 + b"\r" + UNIVERSAL + b"\r") * 2_000

    def split_and_decode() -> int:
        session = SuntechSession()
        buffer = bytearray(stream)
        decode = session.decode
        frames = session.split(buffer)
        return sum(len(decode(f, server_time_ms=NOW_MS).fixes) for f in frames)

    started = time.perf_counter()
    records = benchmark.pedantic(split_and_decode, rounds=3, iterations=1)
    elapsed = time.perf_counter() - started

    assert records == 4_000
    if not benchmark.disabled:
        mean_s = benchmark.stats.stats.mean
        print(f"\nsuntech split+decode: {records / mean_s:,.0f} records/s (mean of 3)")
    else:
        print(f"\nsuntech (one untimed round): {records / elapsed:,.0f} rec/s")
