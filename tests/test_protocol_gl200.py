"""Queclink @Track (GL200/GL300/GV): real messages, framing, replies, hostile input.

Sources of the messages besides ``tests/data/protocol_samples.json``:

- Queclink's "GL300 @Tracker Air Interface Protocol", TRACGL300AN001: the
  examples of section 3.3.1.1 (GTFRI with two points, GTGEO, GTSPD, GTSOS, GTIGL),
  section 3.3.4 (GTEPF) and sections 3.4-3.5 (GTHBD heartbeat and the SACK
  replies).
- Traccar's decoder tests: repository traccar/traccar, ``src/test/java/org/
  traccar/protocol/Gl200TextProtocolDecoderTest.java`` (real devices' messages;
  the values asserted here are worked out from the @Track layout).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, ClassVar

import pytest
from hypothesis import strategies as st

from pipeline.ingest.protocols.base import Decoded, FrameError
from pipeline.ingest.protocols.gl200 import PROTOCOL, Gl200Session, looks_like_gl200
from pipeline.model import parse_time_ms
from tests.protocol_checks import (
    NOW_MS,
    FramingChecks,
    HostileInputChecks,
    Mutation,
    assert_deterministic,
    assert_registered,
    assert_sample,
    attribute_values,
    decode_one,
    decoding,
    others_first_bytes,
    report_throughput,
    shared_samples,
    split_chunks,
)

SAMPLES = list(shared_samples("gl200").values())

#: TRACGL300AN001 section 3.3.1.1: one GTFRI with two positions.
DOC_BLOCK = "4.3,92,70.0,121.354335,31.222073"
DOC_CELL = "0460,0000,18d8,6141,00"
DOC_TWO_POINTS = (
    f"+RESP:GTFRI,1A0102,135790246811220,,0,0,2,1,{DOC_BLOCK},20090214013254,"
    f"{DOC_CELL},0,{DOC_BLOCK},20090101000000,{DOC_CELL},,20090214093254,11F0$"
).encode()
DOC_HEARTBEAT = b"+ACK:GTHBD,1A0102,135790246811220,,20100214093254,11F0$"
DOC_IGL = (
    b"+RESP:GTIGL,1A0102,867844000125073,,,00,1,5,,,,117.201362,31.832724,"
    b"20120821032037,,,,,,,,000C$"
)
DOC_EPF = (
    f"+RESP:GTEPF,1A0102,135790246811220,0,,{DOC_BLOCK},20090214013254,"
    f"{DOC_CELL},20100214093254,11F0$"
).encode()
SOS = (
    b"+RESP:GTSOS,DF0200,868487004358800,cv100,,00,1,1,0.0,0,138.0,114.015465,"
    b"22.537372,20210714115224,0460,0001,25F8,061A7D02,,,20210714195224,"
    b"20210714195224,03A6$"
)
IGNITION_ON = (
    b"+RESP:GTIGN,BD0221,861778061565387,CV200,,0,140944,0,0.0,358,17.6,-2.223488,"
    b"51.882342,20251222020123,0234,0015,6093,000F830E,,,5810.9,20251222070035,"
    b"20251222070035,C60E$"
)
IGNITION_OFF = (
    b"+RESP:GTIGF,8020050502,867488060278727,,509,1,0.0,184,32.6,14.003446,"
    b"42.654554,20240219124629,0222,0001,0FAD,0497F715,00,,0.0,20240219124630,FD2F$"
)
VALID_FRAMES = [
    *(sample["payload_text"].encode() for sample in SAMPLES),
    DOC_TWO_POINTS,
    DOC_HEARTBEAT,
    DOC_IGL,
    DOC_EPF,
    SOS,
    IGNITION_ON,
    IGNITION_OFF,
    b"+RESP:GTPNA,710402,867292060140006,,2,20250516120427,0121$",
]


def _decode_one(frame: bytes, *, sack: bool = False) -> Decoded:
    return decode_one(Gl200Session(sack=sack), frame)


def _absurd_count(draw: st.DrawFn, data: bytearray) -> None:
    """Replace one whole field with an absurd count."""
    fields = bytes(data).split(b",")
    at = draw(st.integers(0, len(fields) - 1))
    fields[at] = str(draw(st.integers(0, 255)) * 99991).encode()
    data[:] = b",".join(fields)


class TestSharedSamples:
    @pytest.mark.parametrize("sample", SAMPLES, ids=[s["id"] for s in SAMPLES])
    def test_sample_every_value(self, sample: dict[str, Any]) -> None:
        """Each shared sample decodes to exactly its expected values, no reply."""
        decoded = _decode_one(sample["payload_text"].encode())

        assert_sample(decoded, sample)
        assert decoded.events == []
        assert decoded.fixes[0].latitude == sample["expected"]["latitude"]
        assert decoded.fixes[0].longitude == sample["expected"]["longitude"]

    @pytest.mark.parametrize("sample", SAMPLES, ids=[s["id"] for s in SAMPLES])
    def test_sample_sack_reply(self, sample: dict[str, Any]) -> None:
        """With server acknowledgements on, the reply is ``+SACK:<count>$``."""
        decoded = _decode_one(sample["payload_text"].encode(), sack=True)

        assert decoded.reply == sample["expected"]["ack_text_when_ack_enabled"].encode()

    @pytest.mark.parametrize(
        ("sample_id", "attributes"),
        [
            ("gl200-gtfri-10kmh", {"event": "GTFRI", "index": 0x1B0B, "hdop": 1.0}),
            ("gl200-gtfri-43kmh", {"event": "GTFRI", "index": 0x00B9, "hdop": 2.0}),
            # GPS accuracy 0: the position is not fresh, so no HDOP.
            ("gl200-gtrtl", {"event": "GTRTL", "index": 0x32CF}),
        ],
    )
    def test_sample_attributes(
        self, sample_id: str, attributes: dict[str, Any]
    ) -> None:
        """Report type, count number and HDOP of each sample."""
        [sample] = [s for s in SAMPLES if s["id"] == sample_id]

        [fix] = _decode_one(sample["payload_text"].encode()).fixes

        assert attribute_values(fix) == attributes


class TestReports:
    def test_two_points_two_fixes(self) -> None:
        """GTFRI with number 2: one fix per location block, in order."""
        decoded = _decode_one(DOC_TWO_POINTS)

        first, second = decoded.fixes
        assert first.fix_time_ms == parse_time_ms("2009-02-14T01:32:54Z")
        assert second.fix_time_ms == parse_time_ms("2009-01-01T00:00:00Z")
        for fix in (first, second):
            assert fix.device == "135790246811220"
            assert fix.latitude == 31.222073 and fix.longitude == 121.354335
            assert fix.speed_kmh == pytest.approx(4.3, abs=1e-5)
            assert fix.course == 92.0 and fix.altitude == 70.0
            assert fix.valid is True
        assert attribute_values(first) == {
            "event": "GTFRI",
            "index": 0x11F0,
            "hdop": 1.0,
        }
        assert attribute_values(second) == {"event": "GTFRI", "index": 0x11F0}
        assert decoded.events == [] and decoded.reply is None

    @pytest.mark.parametrize(
        ("report", "alarm"),
        [("GEO", "geofenceExit"), ("SPD", "overspeed"), ("SOS", "sos")],
    )
    def test_document_alarm_reports(self, report: str, alarm: str) -> None:
        """GTGEO (report type 0: left), GTSPD and GTSOS share GTFRI's layout."""
        frame = (
            f"+RESP:GT{report},1A0102,135790246811220,,0,0,1,1,{DOC_BLOCK},"
            f"20090214013254,{DOC_CELL},,20090214093254,11F0$"
        ).encode()

        decoded = _decode_one(frame)

        [fix] = decoded.fixes
        assert fix.fix_time_ms == parse_time_ms("2009-02-14T01:32:54Z")
        assert attribute_values(fix) == {
            "event": f"GT{report}",
            "index": 0x11F0,
            "hdop": 1.0,
            "alarm": alarm,
        }
        [event] = decoded.events
        assert event.type == "alarm" and event.device == "135790246811220"
        assert json.loads(event.attributes["alarm"]) == alarm
        assert event.event_time_ms == fix.fix_time_ms
        assert event.latitude == fix.latitude and event.longitude == fix.longitude

    def test_geofence_enter(self) -> None:
        """GTGEO with report type 1 is entering the fence."""
        frame = (
            f"+RESP:GTGEO,1A0102,135790246811220,,2,1,1,1,{DOC_BLOCK},"
            f"20090214013254,{DOC_CELL},,20090214093254,11F0$"
        ).encode()

        [fix] = _decode_one(frame).fixes

        assert attribute_values(fix)["alarm"] == "geofenceEnter"

    def test_sos_from_device(self) -> None:
        """A CV100's GTSOS: sos alarm and event at the block's GPS time."""
        decoded = _decode_one(SOS)

        [fix] = decoded.fixes
        assert fix.fix_time_ms == parse_time_ms("2021-07-14T11:52:24Z")
        assert fix.latitude == 22.537372 and fix.longitude == 114.015465
        assert fix.speed_kmh == 0.0 and fix.course == 0.0 and fix.altitude == 138.0
        assert attribute_values(fix) == {
            "event": "GTSOS",
            "index": 0x03A6,
            "hdop": 1.0,
            "alarm": "sos",
        }
        assert [json.loads(e.attributes["alarm"]) for e in decoded.events] == ["sos"]

    def test_ignition_on(self) -> None:
        """GTIGN sets ignition; the block is found after model-specific fields."""
        [fix] = _decode_one(IGNITION_ON).fixes

        assert fix.device == "861778061565387"
        assert fix.fix_time_ms == parse_time_ms("2025-12-22T02:01:23Z")
        assert fix.latitude == 51.882342 and fix.longitude == -2.223488
        assert fix.course == 358.0
        assert fix.altitude == pytest.approx(17.6, abs=1e-5)
        assert attribute_values(fix) == {
            "event": "GTIGN",
            "index": 0xC60E,
            "ignition": True,
        }

    def test_ignition_off(self) -> None:
        """GTIGF clears ignition."""
        [fix] = _decode_one(IGNITION_OFF).fixes

        assert fix.fix_time_ms == parse_time_ms("2024-02-19T12:46:29Z")
        assert fix.latitude == 42.654554 and fix.longitude == 14.003446
        assert fix.course == 184.0
        assert fix.altitude == pytest.approx(32.6, abs=1e-5)
        assert attribute_values(fix) == {
            "event": "GTIGF",
            "index": 0xFD2F,
            "ignition": False,
            "hdop": 1.0,
        }

    def test_location_without_motion_fields(self) -> None:
        """The document's GTIGL has no speed, azimuth or altitude."""
        [fix] = _decode_one(DOC_IGL).fixes

        assert fix.fix_time_ms == parse_time_ms("2012-08-21T03:20:37Z")
        assert fix.latitude == 31.832724 and fix.longitude == 117.201362
        assert not fix.HasField("speed_kmh") and not fix.HasField("course")
        assert not fix.HasField("altitude")
        assert attribute_values(fix) == {"event": "GTIGL", "index": 0x000C, "hdop": 5.0}

    @pytest.mark.parametrize(
        ("frame", "alarm"),
        [
            (DOC_EPF, "powerCut"),
            (DOC_EPF.replace(b"GTEPF", b"GTEPN"), "powerRestored"),
            (DOC_EPF.replace(b"GTEPF", b"GTMPF"), "powerCut"),
            (DOC_EPF.replace(b"GTEPF", b"GTMPN"), "powerRestored"),
        ],
    )
    def test_power_alarms(self, frame: bytes, alarm: str) -> None:
        """External (GL) or main (GV) power cut and restored, same layout."""
        decoded = _decode_one(frame)

        [fix] = decoded.fixes
        assert fix.fix_time_ms == parse_time_ms("2009-02-14T01:32:54Z")
        assert attribute_values(fix) == {
            "event": frame[6:11].decode(),
            "index": 0x11F0,
            "alarm": alarm,
        }
        assert [json.loads(e.attributes["alarm"]) for e in decoded.events] == [alarm]

    def test_buffered_report(self) -> None:
        """``+BUFF:`` is the same report, marked as sent from the buffer."""
        decoded = _decode_one(
            b"+BUFF:GTFRI,8020040200,866314060249032,,12194,10,1,3,0.0,0,20.1,"
            b"-71.596533,-33.524718,20230926200338,0730,0001,772A,052B253E,02,0,"
            b"0.0,,,,,0,420000,,,,20230926200340,1549$"
        )

        [fix] = decoded.fixes
        assert fix.device == "866314060249032"
        assert fix.fix_time_ms == parse_time_ms("2023-09-26T20:03:38Z")
        assert fix.latitude == -33.524718 and fix.longitude == -71.596533
        assert attribute_values(fix) == {
            "event": "GTFRI",
            "index": 0x1549,
            "buffered": True,
            "hdop": 3.0,
        }

    @pytest.mark.parametrize(
        "frame",
        [
            b"+RESP:GTPNA,710402,867292060140006,,2,20250516120427,0121$",
            b"+BUFF:GTIGF,840502,867963063190000,,0,0,,,,,,,0268,0006,22C4,13E5,00,,,"
            b"20250116170541,22D0$",
            b"+BUFF:GTFRI,2E0503,861106050005423,,,0,1,,,,,,,,,,,,0,0,,98,1,0,,,"
            b"20200101000001,0083$",
            b"+ACK:GTFRI,1A0102,135790246811220,,0007,20100310172830,11F0$",
        ],
    )
    def test_messages_without_position(self, frame: bytes) -> None:
        """Power on, blocks without a fix and command ACKs carry no fix."""
        decoded = _decode_one(frame)

        assert decoded.device == frame.split(b",")[2].decode()
        assert decoded.fixes == [] and decoded.events == [] and decoded.reply is None

    def test_sos_without_position(self) -> None:
        """An SOS before any GPS fix still raises its event, at the send time."""
        decoded = _decode_one(
            b"+RESP:GTSOS,1A0102,135790246811220,,0,0,1,0,,,,,,,0460,0000,18d8,6141,"
            b"00,,20090214093254,11F0$"
        )

        assert decoded.fixes == []
        [event] = decoded.events
        assert event.event_time_ms == parse_time_ms("2009-02-14T09:32:54Z")
        assert not event.HasField("latitude")
        assert json.loads(event.attributes["alarm"]) == "sos"


class TestReplies:
    def test_heartbeat_sack(self) -> None:
        """``+ACK:GTHBD`` is answered with its protocol version and count number."""
        session = Gl200Session()

        decoded = session.decode(DOC_HEARTBEAT, server_time_ms=NOW_MS)

        assert decoded.reply == b"+SACK:GTHBD,1A0102,11F0$"
        assert decoded.device == "135790246811220" == session.device
        assert decoded.fixes == []

    def test_heartbeat_sack_with_acknowledgements_on(self) -> None:
        """The heartbeat answer stays the same when every message is acknowledged."""
        decoded = _decode_one(DOC_HEARTBEAT, sack=True)

        assert decoded.reply == b"+SACK:GTHBD,1A0102,11F0$"

    def test_every_message_acknowledged(self) -> None:
        """With acknowledgements on, reports and ACKs get ``+SACK:<count>$``."""
        assert _decode_one(DOC_TWO_POINTS, sack=True).reply == b"+SACK:11F0$"
        assert _decode_one(IGNITION_ON, sack=True).reply == b"+SACK:C60E$"
        ack = b"+ACK:GTFRI,1A0102,135790246811220,,0007,20100310172830,11F0$"
        assert _decode_one(ack, sack=True).reply == b"+SACK:11F0$"


class TestRefusals:
    @pytest.mark.parametrize(
        ("frame", "reason"),
        [
            (b"+RESP:GTFRI,1A01,135790246811220,,0,0,1,1,4.3,92,70.0,121.354335,"
             b"31.222073,20090214013254,0460,0000,18d8,6141,00,,20090214093254,"
             b"11F0$", "protocol version must be"),
            (b"+RESP:GTFRI,1A0102,13579024681122X,,0,0,1,1,4.3,92,70.0,121.354335,"
             b"31.222073,20090214013254,0460,0000,18d8,6141,00,,20090214093254,"
             b"11F0$", "IMEI must be"),
            (b"+RESP:GTFRI,1A0102,135790246811220,,0,0,1,1,4.3,92,70.0,121.354335,"
             b"31.222073,20090214013254,0460,0000,18d8,6141,00,,20090214093254,"
             b"11G0$", "count number must be"),
            (b"+RESP:GTFRI,1A0102,135790246811220,,0,0,1,1,4.3,92,70.0,121.354335,"
             b"91.222073,20090214013254,0460,0000,18d8,6141,00,,20090214093254,"
             b"11F0$", "coordinates out of range"),
            (b"+RESP:GTFRI,1A0102,135790246811220,,0,0,1,1,4.3,92,70.0,121.354335,"
             b"31.222073,20091314013254,0460,0000,18d8,6141,00,,20090214093254,"
             b"11F0$", "time out of range"),
            (b"+RESP:GTFRI,1A0102,135790246811220,,0,0,1,1,4.3,392,70.0,121.354335,"
             b"31.222073,20090214013254,0460,0000,18d8,6141,00,,20090214093254,"
             b"11F0$", "azimuth must be 0 to 360"),
            (b"+RESP:GTFRI,1A0102,135790246811220,,0,0,1,1,4.3,92," + b"9" * 40
             + b",121.354335,31.222073,20090214013254,0460,0000,18d8,6141,00,,"
             b"20090214093254,11F0$", "altitude must be"),
            (b"+RESP:GTFRI,1A0102,135790246811220,,0,0,16,1,4.3,92,70.0,121.354335,"
             b"31.222073,20090214013254,0460,0000,18d8,6141,00,,20090214093254,"
             b"11F0$", "number of positions must be 1-15"),
            (b"+RESP:GTFRI,1A0102,135790246811220,,0,0,3,1,4.3,92,70.0,121.354335,"
             b"31.222073,20090214013254,0460,0000,18d8,6141,00,,20090214093254,"
             b"11F0$", "announces 3 positions but is too short"),
            (b"+RESP:GTFRI,1A0102,135790246811220,,0,0,2,1,4.3,92,70.0,121.354335,"
             b"31.222073,20090214013254,0460,0000,18d8,6141,00,0,4.3,92,70.0,"
             b"121.35,31.222073,20090101000000,0460,0000,18d8,6141,00,,"
             b"20090214093254,11F0$", "location block at field 19 does not parse"),
            (b"+RESP:GTFRI,1A0102,135790246811220$", "truncated"),
            (b"+RSP:GTFRI,1A0102,135790246811220,,0,0,1$", "must start '\\+RESP:GT'"),
            (b"+RESP:GTFRI,1A0102,135790246811220,\xff,11F0$", "not ASCII"),
            (b"+RESP:GTFRI," + b"1" * 5000 + b"$", "over-long"),
        ],
    )  # fmt: skip
    def test_decode_refuses(self, frame: bytes, reason: str) -> None:
        """Invalid content raises FrameError naming the reason."""
        with pytest.raises(FrameError, match=reason):
            Gl200Session().decode(frame, server_time_ms=NOW_MS)

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"GTFRI,1A0102$", "must start with"),  # anything but '+' first
            (b"+RESP:GTFRI," + b"1" * 4100, "exceeds 4096 bytes"),  # with no '$'
            (b"+RESP:GT\x9f", "non-ASCII"),  # in a pending message
        ],
    )
    def test_split_refuses(self, data: bytes, reason: str) -> None:
        """Bytes that can never be a message close the stream."""
        with pytest.raises(FrameError, match=reason):
            Gl200Session().split(bytearray(data))


class TestFraming(FramingChecks):
    frames = VALID_FRAMES
    separator = b"\r\n"
    session_type = Gl200Session

    def test_newline_instead_of_dollar(self) -> None:
        """Firmware that ends lines with a newline instead of ``$`` still frames."""
        frame = DOC_HEARTBEAT.rstrip(b"$") + b"\r\n"

        [decoded_frame] = split_chunks(Gl200Session(), [frame])
        decoded = Gl200Session().decode(decoded_frame, server_time_ms=NOW_MS)

        assert decoded.reply == b"+SACK:GTHBD,1A0102,11F0$"

    def test_datagram_without_dollar(self) -> None:
        """A UDP datagram may leave out the ``$``."""
        decoded = Gl200Session().decode_datagram(
            DOC_TWO_POINTS.rstrip(b"$"), server_time_ms=NOW_MS
        )

        assert len(decoded.fixes) == 2

    def test_datagram_acknowledged(self) -> None:
        """A datagram gets the same SACK as a TCP message."""
        decoded = Gl200Session(sack=True).decode_datagram(
            IGNITION_OFF, server_time_ms=NOW_MS
        )

        assert decoded.reply == b"+SACK:FD2F$"
        assert len(decoded.fixes) == 1


class TestHostileInput(HostileInputChecks):
    valid_frames = VALID_FRAMES
    #: Acknowledging every message, so that replies are built from hostile input.
    session_type = partial(Gl200Session, sack=True)
    mutations: ClassVar[dict[str, Mutation]] = {"number": _absurd_count}

    @pytest.mark.parametrize(
        "data",
        [
            b"+" + b"," * 4500,
            b"+RESP:GTFRI,1A0102,135790246811220" + b",1.000000" * 30 + b"$",
        ],
    )
    def test_known_hostile_inputs(self, data: bytes) -> None:
        """Endless empty fields and coordinates everywhere only raise FrameError."""
        self.check(data)

    def test_decode_without_acknowledgements_is_deterministic(self) -> None:
        """Without SACK too, every valid message decodes the same twice."""
        for frame in VALID_FRAMES:
            assert_deterministic(Gl200Session, frame)


class TestDetection:
    @pytest.mark.parametrize(
        "first",
        [DOC_TWO_POINTS[:64], DOC_HEARTBEAT[:20], b"+BUFF:GTIGF,840502,8679"],
    )
    def test_claims_own_frames(self, first: bytes) -> None:
        """``+RESP:``, ``+BUFF:`` and ``+ACK:`` openings are @Track."""
        assert looks_like_gl200(first)

    @pytest.mark.parametrize(
        "first", [*others_first_bytes("gl200"), b"+SACK:11F0$", b"+RSP", b"+"]
    )
    def test_leaves_other_protocols(self, first: bytes) -> None:
        """Other protocols' first bytes (and too little to tell) are not claimed."""
        assert not looks_like_gl200(first)

    def test_protocol_description(self) -> None:
        """GL200 listens on port 5004, TCP and UDP, and is a text protocol."""
        assert_registered(
            PROTOCOL, "gl200", Gl200Session, port=5004, tcp=True, udp=True, text=True
        )
        assert PROTOCOL.looks_like is looks_like_gl200
        assert PROTOCOL.session().sack is False


def _five_point_report() -> bytes:
    """A GTFRI with five positions, in the document's layout, 30 s apart."""
    times = ("013054", "013124", "013154", "013224", "013254")
    blocks = ",".join(
        f"1,{40 + point}.5,{90 + point},70.0,121.35{point}335,31.22{point}073,"
        f"20090214{clock},{DOC_CELL}"
        for point, clock in enumerate(times)
    )
    return (
        f"+RESP:GTFRI,1A0102,135790246811220,,0,0,5,{blocks},,20090214093254,11F0$"
    ).encode()


def test_decode_benchmark(benchmark: Any) -> None:
    """Throughput of decoding a five-position GTFRI (five fixes per message)."""
    run = decoding(Gl200Session(), [_five_point_report()] * 200)

    report_throughput(benchmark, run, records=1000, label="gl200")
