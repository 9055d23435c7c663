"""GPS103 (Coban TK102/TK103-2 text): real packets, framing, replies, hostile input.

Packets not from ``tests/data/protocol_samples.json`` come from Traccar's decoder
tests: repository traccar/traccar, ``src/test/java/org/traccar/protocol/
Gps103ProtocolDecoderTest.java`` (the values asserted here are worked out from
the GPS103 layout, not copied from Traccar).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.ingest.protocols.base import Decoded, FrameError
from pipeline.ingest.protocols.gps103 import (
    KNOTS_TO_KMH,
    PROTOCOL,
    Gps103Session,
    looks_like_gps103,
)
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
    split_chunks,
)

SAMPLES = list(shared_samples("gps103").values())


def _terminated(text: str) -> bytes:
    """A sample as a stream frame: a newline ends it unless ``;`` or ``*`` does."""
    return text.encode() if text.endswith((";", "*")) else text.encode() + b"\n"


#: Traccar test packets (see the module docstring), each a real device's report.
HANDSHAKE = b"##,imei:359586015829802,A;"
HEARTBEAT = b"359586015829802;"
SOS_GPS = (
    b"imei:359586015829802,help me,0809231429,13554900601,F,062947.294,A,"
    b"2234.4026,N,11354.3277,E,0.00,\n"
)
SOS_CELL = b"imei:359710049075097,help me,,,L,,,113b,,558f,,,,,0,0,,,\n"
STARRED = (
    b"imei:861359038609986,Equipo 1,---,------,----,214734,241018,26,1,"
    b"-33.42317,-70.61930,067,229,0674,1.00,08,0,1,---,*"
)
FULL_REPORT = (
    b"imei:353451044508750,001,0809231929,13554900601,F,055403.000,A,"
    b"2233.1870,N,11354.3067,E,0.00,30.1,65.43,1,0,10.5%,0.0%,28;"
)
VALID_FRAMES = [
    HANDSHAKE,
    HEARTBEAT,
    SOS_GPS,
    SOS_CELL,
    STARRED,
    FULL_REPORT,
    *(_terminated(sample["payload_text"]) for sample in SAMPLES),
]


def _decode_one(frame: bytes) -> Decoded:
    return decode_one(Gps103Session(), frame)


class TestSharedSamples:
    @pytest.mark.parametrize("sample", SAMPLES, ids=[s["id"] for s in SAMPLES])
    def test_sample_every_value(self, sample: dict[str, Any]) -> None:
        """Each shared sample decodes to exactly its expected values, with no reply."""
        decoded = _decode_one(_terminated(sample["payload_text"]))

        assert_sample(decoded, sample)
        assert decoded.events == []
        [fix] = decoded.fixes
        assert fix.speed_kmh / KNOTS_TO_KMH == pytest.approx(
            sample["expected"]["speed_knots"], abs=1e-4
        )

    def test_sample_date_rollback_extras(self) -> None:
        """The +8 h sample also carries ignition, door and the first fuel level."""
        [sample] = [s for s in SAMPLES if s["id"] == "gps103-date-rollback"]

        [fix] = _decode_one(_terminated(sample["payload_text"])).fixes

        assert attribute_values(fix) == {
            "ignition": True,
            "door": False,
            "fuel1": 31.37,
        }
        assert not fix.HasField("altitude")

    def test_samples_without_extras_have_no_attributes(self) -> None:
        """Short reports carry nothing beyond the position."""
        for sample in SAMPLES:
            if sample["id"] == "gps103-date-rollback":
                continue

            [fix] = _decode_one(_terminated(sample["payload_text"])).fixes

            assert dict(fix.attributes) == {}


class TestSessionFrames:
    def test_handshake_answered_load(self) -> None:
        """``##,imei:...,A`` identifies the device and gets ``LOAD``."""
        session = Gps103Session()

        decoded = session.decode(HANDSHAKE, server_time_ms=NOW_MS)

        assert decoded.device == "359586015829802" == session.device
        assert decoded.reply == b"LOAD"
        assert decoded.fixes == [] and decoded.events == []

    def test_heartbeat_answered_on(self) -> None:
        """A bare IMEI is a heartbeat, answered ``ON``."""
        session = Gps103Session()

        decoded = session.decode(HEARTBEAT, server_time_ms=NOW_MS)

        assert decoded.device == "359586015829802" == session.device
        assert decoded.reply == b"ON"
        assert decoded.fixes == []

    def test_heartbeat_glued_to_report(self) -> None:
        """An IMEI glued before a report is answered ``ON`` and the report decoded."""
        frame = (
            b"359769031878322imei:359769031878322,tracker,1602160718,2,F,"
            b"221811.000,A,1655.2193,S,14546.6722,E,0.00,,\n"
        )

        decoded = _decode_one(frame)

        assert decoded.reply == b"ON"
        [fix] = decoded.fixes
        # Local 2016-02-16 07:18 at UTC 22:18:11: +9 h, so the 15th in UTC.
        assert fix.fix_time_ms == parse_time_ms("2016-02-15T22:18:11Z")
        assert fix.latitude == pytest.approx(-(16 + 55.2193 / 60), abs=1e-9)
        assert fix.longitude == pytest.approx(145 + 46.6722 / 60, abs=1e-9)
        assert fix.speed_kmh == 0.0
        assert not fix.HasField("course")

    def test_sos_report_alarm_and_reply(self) -> None:
        """``help me`` with a position: sos alarm, event, and the ``E`` answer."""
        decoded = _decode_one(SOS_GPS)

        assert decoded.reply == b"**,imei:359586015829802,E;"
        [fix] = decoded.fixes
        assert fix.fix_time_ms == parse_time_ms("2008-09-23T06:29:47.294Z")
        assert fix.latitude == pytest.approx(22 + 34.4026 / 60, abs=1e-9)
        assert fix.longitude == pytest.approx(113 + 54.3277 / 60, abs=1e-9)
        assert fix.valid is True
        assert fix.speed_kmh == 0.0
        assert attribute_values(fix) == {"event": "help me", "alarm": "sos"}
        [event] = decoded.events
        assert event.type == "alarm"
        assert event.device == "359586015829802"
        assert event.event_time_ms == fix.fix_time_ms
        assert event.latitude == fix.latitude and event.longitude == fix.longitude
        assert json.loads(event.attributes["alarm"]) == "sos"

    def test_cell_only_sos_no_fix_but_event(self) -> None:
        """An ``L`` (cell) report gives no fix; its sos still raises an event."""
        decoded = _decode_one(SOS_CELL)

        assert decoded.fixes == []
        assert decoded.device == "359710049075097"
        assert decoded.reply == b"**,imei:359710049075097,E;"
        [event] = decoded.events
        assert event.type == "alarm"
        assert event.event_time_ms == NOW_MS
        assert not event.HasField("latitude") and not event.HasField("longitude")
        assert json.loads(event.attributes["alarm"]) == "sos"
        assert json.loads(event.attributes["cellLocation"]) is True

    def test_cell_only_periodic_nothing(self) -> None:
        """A periodic ``L`` report names the device and produces nothing else."""
        decoded = _decode_one(b"imei:359586015829802,tracker,000000000,13554900601,L,;")

        assert decoded.device == "359586015829802"
        assert decoded.fixes == [] and decoded.events == [] and decoded.reply is None

    def test_starred_variant_every_value(self) -> None:
        """The ``*`` variant: UTC time, decimal degrees, km/h, hdop, satellites."""
        decoded = _decode_one(STARRED)

        [fix] = decoded.fixes
        assert fix.device == "861359038609986"
        assert fix.fix_time_ms == parse_time_ms("2018-10-24T21:47:34Z")
        assert fix.latitude == -33.42317 and fix.longitude == -70.6193
        assert fix.valid is True
        assert fix.speed_kmh == 67.0 and fix.course == 229.0 and fix.altitude == 674.0
        assert fix.satellites == 8
        assert attribute_values(fix) == {"rssi": 26, "hdop": 1.0, "ignition": False}
        assert decoded.events == [] and decoded.reply is None

    def test_full_report_extras(self) -> None:
        """Altitude, ignition, door, two fuel levels and a temperature."""
        [fix] = _decode_one(FULL_REPORT).fixes

        # Local 19:29 against UTC 05:54: wrapped to -10:25, the next day in UTC.
        assert fix.fix_time_ms == parse_time_ms("2008-09-24T05:54:03Z")
        assert fix.course == pytest.approx(30.1, abs=1e-4)
        assert fix.altitude == pytest.approx(65.43, abs=1e-4)
        assert attribute_values(fix) == {
            "event": "001",
            "ignition": True,
            "door": False,
            "fuel1": 10.5,
            "fuel2": 0.0,
            "temp1": 28.0,
        }

    @pytest.mark.parametrize(
        ("frame", "time_text"),
        [
            # Traccar's expected times for these two: local is +8 h and +3 h.
            (
                b"imei:359710045559474,tracker,151030080103,,F,000101.000,A,"
                b"5443.3834,N,02512.9071,E,0.00,0;",
                "2015-10-30T00:01:01Z",
            ),
            (
                b"imei:359710049092324,tracker,151027025958,,F,235957.000,A,"
                b"2429.5156,N,04424.5828,E,0.01,27.91,,0,0,,,;",
                "2015-10-26T23:59:57Z",
            ),
            # Slashed local date; fraction of a second kept.
            (
                b"imei:359710040656622,tracker,13/02/27 23:40,,F,125952.000,A,"
                b"3450.9430,S,13828.6753,E,0.00,0\n",
                "2013-02-27T12:59:52Z",
            ),
            (
                b"imei:012497000208821,tracker,1301072224,,F,142411.077,A,"
                b"2227.0739,S,06855.2912,,0,0,\n",
                "2013-01-07T14:24:11.077Z",
            ),
        ],
    )
    def test_local_time_to_utc(self, frame: bytes, time_text: str) -> None:
        """Local date and hh:mm plus UTC seconds, the offset wrapped to ±12 h."""
        [fix] = _decode_one(frame).fixes

        assert fix.fix_time_ms == parse_time_ms(time_text)

    def test_hemisphere_before_number(self) -> None:
        """Some firmware sends ``N,5306.64155,E,00700.77848``; the UTC field is odd."""
        frame = (
            b"imei:353552045403597,tracker,150420050648,53.0,F,0.0,A,"
            b"N,5306.64155,E,00700.77848,0.0,,1.0,;"
        )

        with pytest.raises(FrameError, match="UTC time must be hhmmss"):
            _decode_one(frame)

    def test_missing_east_west_means_east(self) -> None:
        """An empty hemisphere slot after the longitude reads as east."""
        [fix] = _decode_one(
            b"imei:863070010423167,tracker,1211051840,,F,104000.000,A,"
            b"2220.6483,N,11407.6377,,0,0,\n"
        ).fixes

        assert fix.longitude == pytest.approx(114 + 7.6377 / 60, abs=1e-9)
        assert fix.speed_kmh == 0.0 and fix.course == 0.0

    @pytest.mark.parametrize(
        ("keyword", "alarm"),
        [
            ("low battery", "lowBattery"),
            ("stockade", "geofenceExit"),
            ("move", "movement"),
            ("speed", "overspeed"),
            ("ac alarm", "powerCut"),
            ("door alarm", "door"),
            ("accident alarm", "accident"),
            ("sensor alarm", "vibration"),
            ("bonnet alarm", "general"),
            ("T:+28.0", "general"),
        ],
    )
    def test_keyword_alarms(self, keyword: str, alarm: str) -> None:
        """Alarm keywords become the ``alarm`` attribute and one event each."""
        frame = (
            f"imei:359586015829802,{keyword},0809231429,13554900601,F,062947.294,A,"
            "2234.4026,N,11354.3277,E,0.00,\n"
        ).encode()

        decoded = _decode_one(frame)

        [fix] = decoded.fixes
        assert attribute_values(fix) == {"event": keyword, "alarm": alarm}
        assert [json.loads(e.attributes["alarm"]) for e in decoded.events] == [alarm]
        assert decoded.reply is None

    def test_acc_on_sets_ignition(self) -> None:
        """``acc on`` with no ignition column still says the ignition is on."""
        [fix] = _decode_one(
            b"imei:359586015829802,acc on,0809231429,,F,062947.294,A,"
            b"2234.4026,N,11354.3277,E,0.00,\n"
        ).fixes

        assert attribute_values(fix) == {"event": "acc on", "ignition": True}

    @pytest.mark.parametrize(
        "frame",
        [
            b"imei:865328021049167,OBD,141118115036,,,0.0,,000,0.0%,+,0.0%,00000,,,,,\n",
            b"imei:864180034124375,vr,0c00fa011ea05a03d726977103ad0034c98ef49e6d30;",
            b"imei:123451234512345,L,*",
        ],
    )
    def test_frames_without_position(self, frame: bytes) -> None:
        """Engine data, photo chunks and an empty cell report carry no fix."""
        decoded = _decode_one(frame)

        assert decoded.device is not None and decoded.device in frame.decode()
        assert decoded.fixes == [] and decoded.events == [] and decoded.reply is None


class TestRefusals:
    @pytest.mark.parametrize(
        ("frame", "reason"),
        [
            (b"imei:359586015829802,tracker,0809231429,,F,062947,A,9134.4026,N,"
             b"11354.3277,E,0.00,\n", "latitude out of range"),
            (b"imei:359586015829802,tracker,0809231429,,F,062947,A,2234.4026,N,"
             b"11364.3277,E,0.00,\n", "longitude out of range"),
            (b"imei:359586015829802,tracker,0813231429,,F,062947,A,2234.4026,N,"
             b"11354.3277,E,0.00,\n", "date-time out of range"),
            (b"imei:359586015829802,tracker,0809231429,,F,062947,X,2234.4026,N,"
             b"11354.3277,E,0.00,\n", "validity must be"),
            (b"imei:359586015829802,tracker,0809231429,,F,062947,A,2234.4026,N,"
             b"11354.3277,E,fast,\n", "speed must be a number"),
            (b"imei:359586015829802,tracker,0809231429,,Q,062947,A,2234.4026,N,"
             b"11354.3277,E,0.00,\n", "source must be 'F'"),
            (b"imei:359586015829802,tracker,0809231429;", "truncated"),
            (b"imei:35958,tracker;", "must start 'imei:<imei>"),
            (b"##,imei:359586015829802,B;", "handshake must be"),
            (b"3595860158298021234567;", "heartbeat must be the bare IMEI"),
            (b"imei:359586015829802,tracker,\xc3\xa9;", "not ASCII"),
            (b"imei:" + b"1" * 3000 + b";", "over-long"),
        ],
    )  # fmt: skip
    def test_decode_refuses(self, frame: bytes, reason: str) -> None:
        """Invalid content raises FrameError naming the reason."""
        with pytest.raises(FrameError, match=reason):
            Gps103Session().decode(frame, server_time_ms=NOW_MS)

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"GET / HTTP/1.1\r\n", "cannot start with"),  # not a frame's first byte
            (b"imei:3595\xff", "non-ASCII"),  # in a pending frame
            (b"imei:" + b"1" * 2100, "exceeds 2048 bytes"),  # with no terminator
        ],
    )
    def test_split_refuses(self, data: bytes, reason: str) -> None:
        """Bytes that can never be a frame close the stream."""
        with pytest.raises(FrameError, match=reason):
            Gps103Session().split(bytearray(data))

    def test_split_keeps_good_frames_before_garbage(self) -> None:
        """Frames before the garbage come out first; the garbage fails next time."""
        assert_refused_after_frames(
            Gps103Session(), [HEARTBEAT], b"\x00\x01garbage;", "cannot start with"
        )


class TestFraming(FramingChecks):
    frames = VALID_FRAMES
    session_type = Gps103Session

    def test_crlf_between_frames(self) -> None:
        """CR LF after a ``;`` is a separator, not a frame."""
        stream = [HEARTBEAT + b"\r\n" + HANDSHAKE + b"\r\n"]

        assert split_chunks(Gps103Session(), stream) == [HEARTBEAT, HANDSHAKE]

    def test_datagram_without_terminator(self) -> None:
        """A UDP datagram may leave out the final terminator."""
        decoded = Gps103Session().decode_datagram(
            SOS_GPS.rstrip(b"\n"), server_time_ms=NOW_MS
        )

        assert len(decoded.fixes) == 1
        assert decoded.reply == b"**,imei:359586015829802,E;"

    def test_datagram_with_two_frames(self) -> None:
        """Two frames in one datagram: both decoded, both replies sent in order."""
        decoded = Gps103Session().decode_datagram(
            HANDSHAKE + SOS_GPS, server_time_ms=NOW_MS
        )

        assert decoded.reply == b"LOAD**,imei:359586015829802,E;"
        assert len(decoded.fixes) == 1 and len(decoded.events) == 1


class TestHostileInput(HostileInputChecks):
    valid_frames = VALID_FRAMES
    session_type = Gps103Session

    @pytest.mark.parametrize("data", [b"imei:" + b"9" * 2100, b"1" * 20 + b"imei:1;"])
    def test_known_hostile_inputs(self, data: bytes) -> None:
        """An over-long report and digits glued to a report only raise FrameError."""
        self.check(data)


class TestDetection:
    @pytest.mark.parametrize(
        "first",
        [HANDSHAKE, HEARTBEAT, SOS_GPS[:64], STARRED[:20], b"359586015829802"],
    )
    def test_claims_own_frames(self, first: bytes) -> None:
        """Handshake, heartbeat and report openings are GPS103."""
        assert looks_like_gps103(first)

    @pytest.mark.parametrize("first", [*others_first_bytes("gps103"), b"1", b"imei:"])
    def test_leaves_other_protocols(self, first: bytes) -> None:
        """Other protocols' first bytes (and too little to tell) are not claimed."""
        assert not looks_like_gps103(first)

    def test_protocol_description(self) -> None:
        """GPS103 listens on port 5001, TCP and UDP, and is a text protocol."""
        assert_registered(
            PROTOCOL, "gps103", Gps103Session, port=5001, tcp=True, udp=True, text=True
        )
        assert PROTOCOL.looks_like is looks_like_gps103


def test_decode_benchmark(benchmark: Any) -> None:
    """Throughput of decoding a full report (one fix with six attributes)."""
    run = decoding(Gps103Session(), [FULL_REPORT] * 1000)

    report_throughput(benchmark, run, records=1000, label="gps103")
