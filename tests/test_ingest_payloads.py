"""Decoding positions bodies: JSON and Protocol Buffers, per-record verdicts, limits."""

from __future__ import annotations

import json

import pytest

from pipeline.ingest.payloads import (
    PayloadError,
    encode_batch,
    parse_json_positions,
    parse_positions,
    parse_protobuf_positions,
)
from pipeline.model import Fix

NOW_MS = 1_760_000_000_000


def _position(device: str = "dev-1", **fields: object) -> dict[str, object]:
    return {
        "uniqueId": device,
        "time": "2025-05-09T04:11:30.579Z",
        "latitude": 48.137,
        "longitude": 11.575,
        **fields,
    }


def _fix(device: str = "dev-1", **fields: object) -> Fix:
    values: dict[str, object] = {
        "device": device,
        "fix_time_ms": 1_746_763_890_579,
        "latitude": 48.137,
        "longitude": 11.575,
        **fields,
    }
    return Fix(**values)  # type: ignore[arg-type]


class TestJsonPositions:
    def test_json_object_becomes_one_fix(self) -> None:
        body = json.dumps(_position(speed=42.5, course=90, attributes={"a": 1}))

        batch = parse_positions(
            body.encode(), "application/json; charset=utf-8", server_time_ms=NOW_MS
        )

        [(index, fix)] = batch.fixes
        assert index == 0 and batch.rejected == []
        assert fix.device == "dev-1"
        assert fix.fix_time_ms == 1_746_763_890_579
        assert fix.server_time_ms == NOW_MS
        assert fix.protocol == "json"
        assert fix.speed_kmh == pytest.approx(42.5)
        assert json.loads(fix.attributes["a"]) == 1

    def test_json_array_rejects_bad_records_by_index(self) -> None:
        records = [_position("a"), _position("b", latitude=91), {"uniqueId": ""}]

        batch = parse_json_positions(json.dumps(records), server_time_ms=NOW_MS)

        assert [index for index, _ in batch.fixes] == [0]
        assert [rejection.index for rejection in batch.rejected] == [1, 2]
        assert "latitude must be between -90 and 90" in batch.rejected[0].reason
        assert "uniqueId must be a non-empty string" in batch.rejected[1].reason

    def test_json_without_time_takes_server_time(self) -> None:
        document = _position()
        del document["time"]

        batch = parse_json_positions(json.dumps(document), server_time_ms=NOW_MS)

        assert batch.fixes[0][1].fix_time_ms == NOW_MS

    def test_json_default_device_fills_missing_unique_id(self) -> None:
        document = _position()
        del document["uniqueId"]

        batch = parse_json_positions(
            json.dumps(document), server_time_ms=NOW_MS, default_device="topic-dev"
        )

        assert batch.fixes[0][1].device == "topic-dev"

    def test_json_invalid_body_names_the_place(self) -> None:
        with pytest.raises(PayloadError, match=r"not valid JSON.*line 1, column 2"):
            parse_json_positions(b"{oops", server_time_ms=NOW_MS)

    def test_json_empty_array_is_refused(self) -> None:
        with pytest.raises(PayloadError, match="no records"):
            parse_json_positions(b"[]", server_time_ms=NOW_MS)


class TestProtobufPositions:
    def test_protobuf_batch_becomes_fixes(self) -> None:
        body = encode_batch([_fix("a"), _fix("b", speed_kmh=12.0)])

        batch = parse_positions(body, "application/x-protobuf", server_time_ms=NOW_MS)

        assert [fix.device for _, fix in batch.fixes] == ["a", "b"]
        assert all(fix.protocol == "protobuf" for _, fix in batch.fixes)
        assert batch.fixes[1][1].speed_kmh == pytest.approx(12.0)

    def test_protobuf_single_fix_is_accepted(self) -> None:
        body = _fix("solo", altitude=520.0).SerializeToString()

        batch = parse_protobuf_positions(body, server_time_ms=NOW_MS)

        [(_, fix)] = batch.fixes
        assert fix.device == "solo" and fix.altitude == pytest.approx(520.0)
        assert fix.server_time_ms == NOW_MS

    def test_protobuf_bad_record_does_not_spoil_batch(self) -> None:
        good = _fix("good").SerializeToString()
        corrupt = b"\x0a\x03abc\x22\x02\xff"  # field 4 (double) as a 2-byte string
        body = b"".join(
            b"\x0a" + bytes([len(record)]) + record
            for record in (
                good,
                corrupt,
                _fix("bad", latitude=95.0).SerializeToString(),
            )
        )

        batch = parse_protobuf_positions(body, server_time_ms=NOW_MS)

        assert [(index, fix.device) for index, fix in batch.fixes] == [(0, "good")]
        assert [rejection.index for rejection in batch.rejected] == [1, 2]
        assert "not a valid rastro.v1.Fix" in batch.rejected[0].reason
        assert "latitude must be between" in batch.rejected[1].reason

    def test_protobuf_broken_framing_is_refused(self) -> None:
        with pytest.raises(PayloadError, match="not Protocol Buffers"):
            parse_protobuf_positions(b"\x0a\x7fshort", server_time_ms=NOW_MS)

    def test_protobuf_fix_without_time_takes_server_time(self) -> None:
        body = _fix(fix_time_ms=0).SerializeToString()

        batch = parse_protobuf_positions(body, server_time_ms=NOW_MS)

        assert batch.fixes[0][1].fix_time_ms == NOW_MS


class TestLimits:
    def test_limits_too_many_records_is_413(self) -> None:
        body = json.dumps([_position()] * 11).encode()

        with pytest.raises(PayloadError, match="11 records; at most 10") as caught:
            parse_positions(
                body, "application/json", server_time_ms=NOW_MS, max_records=10
            )
        assert caught.value.status == 413

    def test_limits_too_many_bytes_is_413(self) -> None:
        with pytest.raises(PayloadError, match="at most 10 are accepted") as caught:
            parse_positions(
                b"[" + b" " * 20 + b"]",
                "application/json",
                server_time_ms=NOW_MS,
                max_bytes=10,
            )
        assert caught.value.status == 413

    def test_limits_unknown_content_type_is_415(self) -> None:
        with pytest.raises(PayloadError, match="content type must be") as caught:
            parse_positions(b"x", "text/csv", server_time_ms=NOW_MS)
        assert caught.value.status == 415
