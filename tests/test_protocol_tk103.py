"""TK103 ``(...)`` protocol: real packets, framing, replies, hostile input.

Packets not from ``tests/data/protocol_samples.json`` come from Traccar's decoder
tests: repository traccar/traccar, ``src/test/java/org/traccar/protocol/
Tk103ProtocolDecoderTest.java`` (the values asserted here are worked out from the
TK103 layout, not copied from Traccar).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.ingest.protocols.base import Decoded, FrameError
from pipeline.ingest.protocols.tk103 import PROTOCOL, Tk103Session, looks_like_tk103
from pipeline.model import parse_time_ms
from tests.protocol_checks import (
    NOW_MS,
    FramingChecks,
    HostileInputChecks,
    assert_refused_after_frames,
    assert_registered,
    assert_sample,
    attribute_values,
    decode_one,
    decoding,
    others_first_bytes,
    report_throughput,
    shared_samples,
)

SAMPLES = list(shared_samples("tk103").values())

HANDSHAKE = b"(027044702512BP00027044702512HSO01A4)"
SOS = (
    b"(013666666666BO012110925A1234.5678N01234.5678W000.0025948118.7200000000L000024DE)"
)
SPACED = (
    b"(027023361470BR00200617A4000.5775N 8415.4076W 46.0173725 87.3101000000L00000000)"
)
#: A command result whose free text, between ``$`` signs, holds parentheses.
COMMAND_RESULT = (
    b"(864555555555555,ZC03,191117,234207,$1 .Sensor sensitivity: 1\r\n"
    b"3 .Check interval is set to 240 minute(s).\r\n7 . Power: 95%$)"
)
VALID_FRAMES = [
    HANDSHAKE,
    SOS,
    SPACED,
    COMMAND_RESULT,
    b"(087073005534BP00HSO)",
    b"(864768011069660,ZC17,250517,A,3211.7118N,03452.8086E,0.68,115525,208.19,64.50,9)",
    b"(088047194605BZ00,510,010,36e6,932c,43,36e6,766b,36,36e6,7668,32)",
    *(sample["payload_text"].encode() for sample in SAMPLES),
]


def _decode_one(frame: bytes) -> Decoded:
    return decode_one(Tk103Session(), frame)


def _degrees(degrees: int, minutes: float) -> float:
    return degrees + minutes / 60


class TestSharedSamples:
    @pytest.mark.parametrize("sample", SAMPLES, ids=[s["id"] for s in SAMPLES])
    def test_sample_every_value(self, sample: dict[str, Any]) -> None:
        """Each shared sample decodes to exactly its expected values and reply."""
        decoded = _decode_one(sample["payload_text"].encode())

        assert_sample(decoded, sample)
        assert decoded.events == []

    @pytest.mark.parametrize(
        ("sample_id", "attributes"),
        [
            (
                "tk103-br00-west",
                {
                    "event": "BR00",
                    "ignition": False,
                    "status": 0,
                    "fuel": 0,
                    "odometer": float(0x01B0CF1C),
                },
            ),
            (
                "tk103-bp05-south-west",
                {
                    "event": "BP05",
                    "ignition": False,
                    "status": 0,
                    "fuel": 0,
                    "odometer": float(0x000450AC),
                },
            ),
            ("tk103-dw3b-comma", {"event": "DW3B"}),
        ],
    )
    def test_sample_attributes(
        self, sample_id: str, attributes: dict[str, Any]
    ) -> None:
        """Status flags, fuel and hex odometer (metres) of the fixed layout."""
        [sample] = [s for s in SAMPLES if s["id"] == sample_id]

        [fix] = _decode_one(sample["payload_text"].encode()).fixes

        assert attribute_values(fix) == attributes


class TestFixedLayout:
    @pytest.mark.parametrize(
        ("frame", "device"),
        [(HANDSHAKE, "027044702512"), (b"(087073005534BP00HSO)", "087073005534")],
    )
    def test_handshake_reply(self, frame: bytes, device: str) -> None:
        """BP00 identifies the device and is answered ``(<id>AP01HSO)``."""
        session = Tk103Session()

        decoded = session.decode(frame, server_time_ms=NOW_MS)

        assert decoded.device == device == session.device
        assert decoded.reply == f"({device}AP01HSO)".encode()
        assert decoded.fixes == [] and decoded.events == []

    def test_bo01_sos(self) -> None:
        """BO01 with alarm digit 2 is an SOS: attribute and event."""
        decoded = _decode_one(SOS)

        assert decoded.reply is None
        [fix] = decoded.fixes
        assert fix.device == "013666666666"
        assert fix.fix_time_ms == parse_time_ms("2011-09-25T02:59:48Z")
        assert fix.latitude == pytest.approx(_degrees(12, 34.5678), abs=1e-9)
        assert fix.longitude == pytest.approx(-_degrees(12, 34.5678), abs=1e-9)
        assert fix.speed_kmh == 0.0
        assert fix.course == pytest.approx(118.72, abs=1e-4)
        assert attribute_values(fix) == {
            "event": "BO01",
            "alarm": "sos",
            "ignition": False,
            "status": 0,
            "fuel": 0,
            "odometer": float(0x24DE),
        }
        [event] = decoded.events
        assert event.type == "alarm" and json.loads(event.attributes["alarm"]) == "sos"
        assert event.event_time_ms == fix.fix_time_ms
        assert event.latitude == fix.latitude

    def test_bq81_overspeed(self) -> None:
        """``BQ81,ALARM,1,...`` is an overspeed alarm; no status block follows."""
        decoded = _decode_one(
            b"(044027395704BQ81,ALARM,1,164,151101A2238.5237N11349.4571E0.703"
            b"1241010.0000,00000000)"
        )

        [fix] = decoded.fixes
        assert fix.fix_time_ms == parse_time_ms("2015-11-01T12:41:01Z")
        assert fix.latitude == pytest.approx(_degrees(22, 38.5237), abs=1e-9)
        assert fix.longitude == pytest.approx(_degrees(113, 49.4571), abs=1e-9)
        assert fix.speed_kmh == pytest.approx(0.703, abs=1e-6)
        assert fix.course == 0.0
        assert attribute_values(fix) == {"event": "BQ81", "alarm": "overspeed"}
        assert len(decoded.events) == 1

    def test_space_padded_fields(self) -> None:
        """Firmware that pads longitude, speed and course with spaces."""
        [fix] = _decode_one(SPACED).fixes

        assert fix.fix_time_ms == parse_time_ms("2020-06-17T17:37:25Z")
        assert fix.latitude == pytest.approx(_degrees(40, 0.5775), abs=1e-9)
        assert fix.longitude == pytest.approx(-_degrees(84, 15.4076), abs=1e-9)
        assert fix.speed_kmh == 46.0
        assert fix.course == pytest.approx(87.31, abs=1e-4)
        assert attribute_values(fix) == {
            "event": "BR00",
            "ignition": True,
            "status": 0,
            "fuel": 0,
            "odometer": 0.0,
        }

    def test_temperature_and_odometer(self) -> None:
        """A trailing ``+017.7`` is the temperature; ``L00BEB0D4`` hex metres."""
        decoded = _decode_one(
            b"(088046338039BP05000088046338039160727A3354.7768N03540.7258E000.0"
            b"140309065.1000000000L00BEB0D4+017.3)"
        )

        assert decoded.reply == b"(088046338039AP05)"
        [fix] = decoded.fixes
        assert fix.fix_time_ms == parse_time_ms("2016-07-27T14:03:09Z")
        assert fix.course == pytest.approx(65.1, abs=1e-4)
        assert attribute_values(fix) == {
            "event": "BP05",
            "ignition": False,
            "status": 0,
            "fuel": 0,
            "odometer": float(0x00BEB0D4),
            "temp1": 17.3,
        }

    def test_eleven_character_id(self) -> None:
        """Some firmware sends an 11-character id; an invalid (V) fix stays invalid."""
        [fix] = _decode_one(
            b"(01602009983BR00160830V1855.7022S4817.8731W000.0002729000.00"
            b"10000000L00000000)"
        ).fixes

        assert fix.device == "01602009983"
        assert fix.valid is False
        assert fix.fix_time_ms == parse_time_ms("2016-08-30T00:27:29Z")
        assert fix.latitude == pytest.approx(-_degrees(18, 55.7022), abs=1e-9)
        assert fix.longitude == pytest.approx(-_degrees(48, 17.8731), abs=1e-9)

    def test_fifteen_digit_id_without_comma(self) -> None:
        """``(<15 digits>BP02,G,2,...)``: the id runs up to the command."""
        [fix] = _decode_one(
            b"(357593060760397BP02,G,2,170304A6015.7466N01101.8460E001.609445591.048,7)"
        ).fixes

        assert fix.device == "357593060760397"
        assert fix.fix_time_ms == parse_time_ms("2017-03-04T09:44:55Z")
        assert fix.speed_kmh == pytest.approx(1.6, abs=1e-6)
        assert fix.course == pytest.approx(91.048, abs=1e-4)
        assert attribute_values(fix) == {"event": "BP02"}

    @pytest.mark.parametrize(
        "frame",
        [
            b"(088047194605BZ00,510,010,36e6,932c,43,36e6,766b,36,36e6,7668,32)",
            b"(027023361470BV005J6RW2H53HL066029)",
            b"(027028258309BQ86,0,05550c21b10d1d0f431008bd114c0ea5078400010007a1004"
            b"23932,161117005322,01000001)",
        ],
    )
    def test_frames_without_position(self, frame: bytes) -> None:
        """Cells, VIN and settings frames name the device and carry no fix."""
        decoded = _decode_one(frame)

        assert decoded.device == frame[1:13].decode()
        assert decoded.fixes == [] and decoded.events == [] and decoded.reply is None


class TestCommaLayout:
    def test_status_and_odometer(self) -> None:
        """The comma layout's date is ddmmyy; status and odometer may follow."""
        decoded = _decode_one(
            b"(013632782450,BP05,101201,A,2234.0297N,11405.9101E,000.0,040137,178.48,"
            b"00000000,L00000000)"
        )

        assert decoded.reply is None
        [fix] = decoded.fixes
        assert fix.device == "013632782450"
        assert fix.fix_time_ms == parse_time_ms("2001-12-10T04:01:37Z")
        assert fix.latitude == pytest.approx(_degrees(22, 34.0297), abs=1e-9)
        assert fix.longitude == pytest.approx(_degrees(114, 5.9101), abs=1e-9)
        assert attribute_values(fix) == {
            "event": "BP05",
            "ignition": False,
            "status": 0,
            "fuel": 0,
            "odometer": 0.0,
        }

    def test_removal_alarm(self) -> None:
        """ZC17 is the device-removed alarm."""
        decoded = _decode_one(VALID_FRAMES[5])

        [fix] = decoded.fixes
        assert fix.fix_time_ms == parse_time_ms("2017-05-25T11:55:25Z")
        assert fix.speed_kmh == pytest.approx(0.68, abs=1e-6)
        assert fix.course == pytest.approx(208.19, abs=1e-4)
        assert attribute_values(fix) == {"event": "ZC17", "alarm": "removing"}
        assert [json.loads(e.attributes["alarm"]) for e in decoded.events] == [
            "removing"
        ]

    def test_longitude_without_degrees(self) -> None:
        """``45.78950E`` is 0 degrees 45.7895 minutes (leading zeros dropped)."""
        [fix] = _decode_one(
            b"(868822040452227,DW3B,150421,A,4154.51607N,45.78950E,0.050,103142,"
            b"0.000,595.200,7,0)"
        ).fixes

        assert fix.fix_time_ms == parse_time_ms("2021-04-15T10:31:42Z")
        assert fix.latitude == pytest.approx(_degrees(41, 54.51607), abs=1e-9)
        assert fix.longitude == pytest.approx(45.7895 / 60, abs=1e-9)

    def test_cell_report_alarm_without_position(self) -> None:
        """DW51 (cells and Wi-Fi) gives no fix, but its movement alarm stands."""
        decoded = _decode_one(
            b"(864555555555555,DW51,200,1,3215,43370,2,58:F3:BB:3B:AA:82*-65*1,"
            b"1C:6A:BB:AA:81:95*-78*1,151117,154419)"
        )

        assert decoded.fixes == []
        [event] = decoded.events
        assert event.device == "864555555555555"
        assert event.event_time_ms == parse_time_ms("2017-11-15T15:44:19Z")
        assert not event.HasField("latitude")
        assert json.loads(event.attributes["alarm"]) == "movement"

    @pytest.mark.parametrize(
        "frame",
        [COMMAND_RESULT, b"(013632651491,ZC20,180716,144222,6,392,65535,255)"],
    )
    def test_frames_without_position(self, frame: bytes) -> None:
        """Command results and battery reports carry no fix."""
        decoded = _decode_one(frame)

        assert decoded.device is not None and decoded.device in frame.decode()
        assert decoded.fixes == [] and decoded.events == []


class TestRefusals:
    @pytest.mark.parametrize(
        ("frame", "reason"),
        [
            # Traccar's test packet from the TK103 document: date 06-18-30.
            (b"(013612345678BO012061830A2934.0133N10627.2544E040.0080331309.62"
             b"00000000L000770AD)", "date-time out of range: 2006-18-30"),
            (b"(087072009461BR00000007V0000.0000N00000.0000E000.00014039900000000"
             b"L00000000)", "date-time out of range"),
            (b"(013666666666BO019110925A1234.5678N01234.5678W000.0025948118.72"
             b"00000000L000024DE)", "alarm digit must be 0-6"),
            (b"(088045133878BR00130228A9124.5526N00117.7152W000.0233614352.22"
             b"00000000L01B0CF1C)", "coordinate out of range"),
            (b"(088045133878BR00130228A5124.5526N00117.7152W0x0.0233614352.22"
             b"00000000L01B0CF1C)", "BR00 body does not parse"),
            (b"(088045133878BR00130228A5124.5526N00117.7152W000.0233614952.22"
             b"00000000L01B0CF1C)", "course must be 0 to 360"),
            (b"(864555555555555,DW3B,131117,A,5544.02870N,01315.08194E,"
             + b"9" * 30 + b",223707,291.65)", "speed must be 0 to 4000"),
            (b"(864555555555555,DW3B,131117,A,5544.02870Q,01315.08194E,1.5,"
             b"223707,291.65)", "coordinate must be"),
            (b"(864555555555555,DW3B,131117,A,5544.02870N,01315.08194E,1.5,"
             b"22:37:07,291.65)", "date and time must be"),
            (b"(hello world)", "no device id and command"),
            (b"(088045133878BR00\xe9)", "not ASCII"),
            (b"088045133878BR00", "must be '\\(...\\)'"),
            (b"(" + b"1" * 1100 + b")", "over-long"),
        ],
    )  # fmt: skip
    def test_decode_refuses(self, frame: bytes, reason: str) -> None:
        """Invalid content raises FrameError naming the reason."""
        with pytest.raises(FrameError, match=reason):
            Tk103Session().decode(frame, server_time_ms=NOW_MS)

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"+RESP:GTFRI,", "must start with"),  # anything but blanks before '('
            (b"(" + b"1" * 1100, "exceeds 1024 bytes"),  # with no ')'
            (b"(0880451\x80", "non-ASCII"),  # in a pending frame
        ],
    )
    def test_split_refuses(self, data: bytes, reason: str) -> None:
        """Bytes that can never be a frame close the stream."""
        with pytest.raises(FrameError, match=reason):
            Tk103Session().split(bytearray(data))

    def test_split_keeps_good_frames_before_garbage(self) -> None:
        """Frames before the garbage come out first; the garbage fails next time."""
        assert_refused_after_frames(
            Tk103Session(), [HANDSHAKE], b"garbage", "must start with"
        )


class TestFraming(FramingChecks):
    frames = VALID_FRAMES
    separator = b"\r\n"
    session_type = Tk103Session

    def test_parenthesis_inside_free_text(self) -> None:
        """A ``)`` between ``$`` signs does not end the frame; the next one does."""
        session = Tk103Session()
        buffer = bytearray(COMMAND_RESULT[:-10])

        assert session.split(buffer) == []
        buffer += COMMAND_RESULT[-10:]
        assert session.split(buffer) == [COMMAND_RESULT]


class TestHostileInput(HostileInputChecks):
    valid_frames = VALID_FRAMES
    session_type = Tk103Session

    @pytest.mark.parametrize("data", [b"(" + b"$" * 1500, b"(1)" * 10])
    def test_known_hostile_inputs(self, data: bytes) -> None:
        """Endless free text and tiny frames only raise FrameError."""
        self.check(data)


class TestDetection:
    @pytest.mark.parametrize(
        "first",
        [
            HANDSHAKE,
            SOS[:30],
            b"(864555555555555,DW3B,131117,A,",
            b"(357593060760397BP02,G,2,",
            b"(BALLESTEROS3BR00190408A4113.5700N",
        ],
    )
    def test_claims_own_frames(self, first: bytes) -> None:
        """Fixed and comma layouts' openings are TK103."""
        assert looks_like_tk103(first)

    @pytest.mark.parametrize("first", [*others_first_bytes("tk103"), b"(hello)", b"("])
    def test_leaves_other_protocols(self, first: bytes) -> None:
        """Other protocols' first bytes (and too little to tell) are not claimed."""
        assert not looks_like_tk103(first)

    def test_protocol_description(self) -> None:
        """TK103 listens on port 5002 over TCP only, and is a text protocol."""
        assert_registered(
            PROTOCOL, "tk103", Tk103Session, port=5002, tcp=True, udp=False, text=True
        )
        assert PROTOCOL.looks_like is looks_like_tk103


def test_decode_benchmark(benchmark: Any) -> None:
    """Throughput of decoding a BR00 report (one fix with five attributes)."""
    [sample] = [s for s in SAMPLES if s["id"] == "tk103-br00-west"]
    run = decoding(Tk103Session(), [sample["payload_text"].encode()] * 1000)

    report_throughput(benchmark, run, records=1000, label="tk103")
