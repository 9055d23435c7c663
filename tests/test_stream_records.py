"""What the streaming job does to one fix: pipeline.stream.records, without Flink."""

from __future__ import annotations

import json

import h3
import pytest

from pipeline.model import Fix, fix_to_json
from pipeline.stream.records import (
    FIELD_NAMES,
    MALFORMED,
    Accepted,
    accept,
    judge,
    position_signature,
)

SERVER_MS = 1_700_000_000_000


def _fix(**changes: object) -> Fix:
    fix = Fix(
        device="truck-7",
        fix_time_ms=SERVER_MS - 2_000,
        server_time_ms=SERVER_MS,
        latitude=38.7223,
        longitude=-9.1393,
        valid=True,
        protocol="osmand",
    )
    for name, value in changes.items():
        setattr(fix, name, value)
    return fix


def _accepted(fix: Fix, resolution: int = 9) -> Accepted:
    outcome = accept(fix.SerializeToString(), resolution)
    assert isinstance(outcome, Accepted), outcome
    return outcome


class TestAccept:
    def test_accept_indexes_and_keeps_fields(self) -> None:
        fix = _fix(speed_kmh=42.5, altitude=12.0, satellites=9)
        fix.attributes["battery"] = json.dumps(81)

        row = _accepted(fix)

        assert row.device == "truck-7"
        assert row.fix_time_ms == SERVER_MS - 2_000
        assert row.speed == pytest.approx(42.5)
        assert row.altitude == pytest.approx(12.0)
        assert row.satellites == 9
        assert row.accuracy is None and row.course is None
        assert json.loads(row.attributes) == {"battery": 81}
        assert format(row.h3, "x") == h3.latlng_to_cell(38.7223, -9.1393, 9)

    def test_accept_payload_carries_h3(self) -> None:
        row = _accepted(_fix(), resolution=7)

        again = Fix.FromString(row.payload)

        assert again.h3 == row.h3
        assert h3.get_resolution(format(again.h3, "x")) == 7
        assert again.device == "truck-7"

    def test_accept_latest_json_is_api_form_plus_h3(self) -> None:
        fix = _fix(course=90.0)

        document = json.loads(_accepted(fix).latest_json)

        expected = fix_to_json(fix)
        expected["h3"] = h3.latlng_to_cell(38.7223, -9.1393, 9)
        assert document == expected

    def test_accept_tuple_follows_field_names(self) -> None:
        row = _accepted(_fix())

        values = dict(zip(FIELD_NAMES, row.as_tuple(), strict=True))

        assert values["device"] == "truck-7"
        assert values["payload"] == row.payload

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"valid": False}, "invalid"),
            ({"latitude": 0.0, "longitude": 0.0}, "zero"),
            ({"latitude": 95.0}, "out_of_range"),
            ({"fix_time_ms": SERVER_MS + 2 * 86_400_000}, "future"),
        ],
    )
    def test_accept_rejects_with_reason(
        self, changes: dict[str, object], reason: str
    ) -> None:
        assert accept(_fix(**changes).SerializeToString(), 9) == reason

    def test_accept_garbage_is_malformed(self) -> None:
        assert accept(b"\xff\xff\xff not protobuf", 9) == MALFORMED

    def test_accept_empty_device_is_malformed(self) -> None:
        assert accept(_fix(device="").SerializeToString(), 9) == MALFORMED

    def test_accept_empty_payload_is_malformed(self) -> None:
        assert accept(b"", 9) == MALFORMED

    def test_accept_attribute_not_json_is_malformed(self) -> None:
        fix = _fix()
        fix.attributes["note"] = "not json"

        assert accept(fix.SerializeToString(), 9) == MALFORMED


class TestJudge:
    def test_judge_first_fix_is_newest(self) -> None:
        verdict = judge(1_000, "1.0,2.0", seen_signature=None, latest_ms=None)

        assert not verdict.duplicate
        assert verdict.newest

    def test_judge_exact_repeat_is_duplicate(self) -> None:
        verdict = judge(1_000, "1.0,2.0", seen_signature="1.0,2.0", latest_ms=1_000)

        assert verdict.duplicate
        assert not verdict.newest

    def test_judge_same_time_other_position_is_kept(self) -> None:
        verdict = judge(1_000, "1.0,2.5", seen_signature="1.0,2.0", latest_ms=1_000)

        assert not verdict.duplicate
        assert not verdict.newest

    def test_judge_older_fix_is_history_only(self) -> None:
        verdict = judge(500, "1.0,2.0", seen_signature=None, latest_ms=1_000)

        assert not verdict.duplicate
        assert not verdict.newest

    def test_judge_later_fix_is_newest(self) -> None:
        verdict = judge(1_001, "1.0,2.0", seen_signature=None, latest_ms=1_000)

        assert verdict.newest


class TestPositionSignature:
    def test_position_signature_is_exact(self) -> None:
        assert position_signature(0.1 + 0.2, 1.0) != position_signature(0.3, 1.0)
        assert position_signature(38.7223, -9.1393) == "38.7223,-9.1393"
