"""The shared pieces of every tracker protocol: fixes, attributes, alarm events,
the wire form of fixes, text fields, and cutting frames off a stream."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest.protocols import fields, frames, wire
from pipeline.ingest.protocols.base import (
    FrameError,
    alarm_event,
    encode_attribute,
    new_fix,
    positionless_alarm_event,
)
from pipeline.model import Fix, FixBatch

_SCALARS = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.none(),
)


class TestEncodeAttribute:
    @given(_SCALARS)
    def test_encode_attribute_matches_json_dumps(self, value: Any) -> None:
        assert encode_attribute(value) == json.dumps(value)

    @pytest.mark.parametrize(
        "value", ['say "hi"', "back\\slash", "tab\there", "é", "\x00"]
    )
    def test_encode_attribute_escapes_like_json(self, value: str) -> None:
        assert json.loads(encode_attribute(value)) == value


class TestNewFix:
    def test_new_fix_sets_only_given_optionals(self) -> None:
        fix = new_fix(
            "861001000719969",
            1_700_000_000_000,
            48.1,
            11.5,
            protocol="gt06",
            server_time_ms=1_700_000_001_000,
            speed_kmh=42.0,
            attributes={"ignition": True, "odometer": 1200.5},
        )

        assert fix.HasField("speed_kmh")
        assert not fix.HasField("altitude")
        assert not fix.HasField("satellites")
        assert dict(fix.attributes) == {"ignition": "true", "odometer": "1200.5"}

    def test_alarm_event_carries_alarm_and_place(self) -> None:
        fix = new_fix("123", 5_000, 1.0, 2.0, protocol="h02", server_time_ms=6_000)

        event = alarm_event(fix, "sos")

        assert (event.device, event.type, event.event_time_ms) == (
            "123",
            "alarm",
            5_000,
        )
        assert (event.latitude, event.longitude) == (1.0, 2.0)
        assert json.loads(event.attributes["alarm"]) == "sos"

    def test_alarm_event_unknown_alarm_refused(self) -> None:
        fix = new_fix("123", 5_000, 1.0, 2.0, protocol="h02", server_time_ms=6_000)

        with pytest.raises(ValueError, match=r"alarm must be one of .* got 'meteor'"):
            alarm_event(fix, "meteor")

    def test_positionless_alarm_event_has_no_place(self) -> None:
        """A cell-only report's alarm: its time, no coordinates, the cell mark."""
        event = positionless_alarm_event(
            "123", "sos", 7_000, protocol="gps103", cell_location=True
        )

        assert (event.device, event.type, event.event_time_ms) == (
            "123",
            "alarm",
            7_000,
        )
        assert not event.HasField("latitude") and not event.HasField("longitude")
        assert dict(event.attributes) == {
            "alarm": '"sos"',
            "protocol": '"gps103"',
            "cellLocation": "true",
        }

    def test_positionless_alarm_event_unknown_alarm_refused(self) -> None:
        with pytest.raises(ValueError, match="got 'meteor'"):
            positionless_alarm_event("123", "meteor", 7_000, protocol="gl200")


class TestWire:
    @given(st.integers(1, 2**63 - 1))
    def test_varint_as_protobuf_writes_it(self, value: int) -> None:
        """Every positive int64 value is written as the C encoder writes it."""
        written = Fix(server_time_ms=value).SerializeToString()

        assert written == wire.tag(Fix, "server_time_ms", 0) + wire.varint(value)

    @given(
        st.text(min_size=1, max_size=300),
        st.integers(0, 2**62),
        st.dictionaries(st.text(max_size=200), st.text(max_size=200), max_size=3),
    )
    def test_hand_written_fix_parses_to_new_fix(
        self, device: str, server_time_ms: int, attributes: dict[str, str]
    ) -> None:
        """Head and attribute entries parse to the fix new_fix builds."""
        body = wire.fix_head(device, server_time_ms, "teltonika") + b"".join(
            wire.attribute_entry(key, value) for key, value in attributes.items()
        )
        batch = wire.length_delimited(wire.FIXES, body)

        [fix] = FixBatch.FromString(batch).fixes

        expected = Fix(device=device, server_time_ms=server_time_ms)
        expected.protocol = "teltonika"
        expected.attributes.update(attributes)
        assert fix == expected

    def test_decoded_batch_raises_the_alarms(self) -> None:
        """The indexed fixes get the alarm attribute and an event at their time."""
        head = wire.fix_head("123", 9, "meitrack")
        batch = wire.length_delimited(wire.FIXES, head) * 3

        decoded = wire.decoded_batch(batch, [(1, "sos")], [1_000, 2_000, 3_000])

        assert [fix.fix_time_ms for fix in decoded.fixes] == [1_000, 2_000, 3_000]
        assert [dict(fix.attributes) for fix in decoded.fixes] == [
            {},
            {"alarm": '"sos"'},
            {},
        ]
        assert decoded.events == [alarm_event(decoded.fixes[1], "sos")]
        assert decoded.events[0].event_time_ms == 2_000


class TestFields:
    @pytest.mark.parametrize(
        ("text", "limit", "degrees"),
        [("4530.0000", 90.0, 45.5), ("00030.0", 180.0, 0.5), ("45.789", 90, 0.76315)],
    )
    def test_degrees_minutes(self, text: str, limit: float, degrees: float) -> None:
        """Degrees before the last two digits ahead of the point; none is 0."""
        assert fields.degrees_minutes(text, limit, "x") == pytest.approx(degrees)

    @pytest.mark.parametrize("text", ["9100.0000", "4560.0000", "18100.0"])
    def test_degrees_minutes_out_of_range(self, text: str) -> None:
        with pytest.raises(FrameError, match=f"latitude out of range: '{text}'"):
            fields.degrees_minutes(text, 90.0 if len(text) < 10 else 180.0, "latitude")

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("1e5", "speed must be a number, got '1e5'"),
            ("nan", "speed must be a number"),
            ("361", "speed must be 0 to 360, got '361'"),
        ],
    )
    def test_number_within_refuses(self, text: str, reason: str) -> None:
        with pytest.raises(FrameError, match=reason):
            fields.number_within(text, "speed", 0.0, 360.0)

    def test_number_within_empty_is_none(self) -> None:
        assert fields.number_within("", "speed", 0.0, 360.0) is None

    def test_number_refuses_infinity(self) -> None:
        with pytest.raises(FrameError, match="course must be finite, got 'inf'"):
            fields.number("inf", "course")

    def test_utc_ms_refuses_a_date_that_does_not_exist(self) -> None:
        reason = "out of range: 2024-02-30 10:00:00 is not a valid UTC time"
        with pytest.raises(FrameError, match=reason):
            fields.utc_ms(2024, 2, 30, 10, 0, 0, "time")

    def test_ddmmyy_hhmmss_ms(self) -> None:
        assert fields.ddmmyy_hhmmss_ms("290224", "235959", "t") == 1_709_251_199_000
        with pytest.raises(FrameError, match="t must be ddmmyy,hhmmss"):
            fields.ddmmyy_hhmmss_ms("30022", "235959", "t")

    def test_ascii_text_names_the_byte(self) -> None:
        with pytest.raises(FrameError, match="report must be ASCII, got byte 0xc3"):
            fields.ascii_text("é".encode(), "report")


#: Frames ended by ``;``.
_END = frames.terminated_by(re.compile(rb";"))


class TestCutFrames:
    def test_frames_before_garbage_come_out_first(self) -> None:
        """Complete frames are returned; the garbage stays, cut to ``keep`` bytes."""

        def end(buffer: bytearray, start: int) -> int | None:
            if buffer[start] != ord("a"):
                raise FrameError("must start with 'a'")
            return _END(buffer, start)

        buffer = bytearray(b"\r\na1;a2;" + b"x" * 50)

        assert frames.cut_frames(buffer, end, keep=10, skip=b"\r\n") == [
            b"a1;",
            b"a2;",
        ]
        assert buffer == b"x" * 10
        with pytest.raises(FrameError, match="must start with 'a'"):
            frames.cut_frames(buffer, end, keep=10)

    def test_incomplete_frame_waits(self) -> None:
        buffer = bytearray(b"a1;a2")

        assert frames.cut_frames(buffer, _END, keep=10) == [b"a1;"]
        assert buffer == b"a2"

    def test_text_framing_refuses_what_is_never_a_frame(self) -> None:
        framing = frames.TextFraming("t frame", b"a", "'a'", _END, limit=8)

        with pytest.raises(FrameError, match="cannot start with b'b;'; it must"):
            framing.split(bytearray(b"b;"))
        with pytest.raises(FrameError, match="t frame holds a non-ASCII byte"):
            framing.split(bytearray(b"a\xff"))
        with pytest.raises(FrameError, match="t frame exceeds 8 bytes"):
            framing.split(bytearray(b"a" * 9))
        with pytest.raises(FrameError, match="t frame is over-long or not ASCII"):
            framing.text(b"a" * 9)
