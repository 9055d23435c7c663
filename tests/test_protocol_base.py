"""The shared pieces of every tracker protocol: fixes, attributes, alarm events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest.protocols.base import alarm_event, encode_attribute, new_fix

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
