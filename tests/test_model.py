"""The fix model: JSON form, validation, generated code in step with the schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.model import Fix, FixError, fix_from_json, fix_to_json, parse_time_ms

MODEL_DIR = Path(__file__).resolve().parent.parent / "pipeline" / "model"


def test_generated_code_matches_schema(tmp_path: Path) -> None:
    """Regenerating rastro_pb2 from rastro.proto gives the committed files."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{MODEL_DIR}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            "rastro.proto",
        ],
        check=True,
    )
    for name in ("rastro_pb2.py", "rastro_pb2.pyi"):
        assert (tmp_path / name).read_text() == (MODEL_DIR / name).read_text(), name


class TestFixFromJson:
    def test_full_document_round_trips(self) -> None:
        document = {
            "uniqueId": "356307042441013",
            "time": "2026-03-01T10:00:00Z",
            "latitude": 40.4168,
            "longitude": -3.7038,
            "speed": 42.5,
            "course": 90,
            "altitude": 650,
            "accuracy": 5,
            "satellites": 9,
            "attributes": {"batt": 87, "ignition": True, "driver": "ana"},
        }

        fix = fix_from_json(document, server_time_ms=1, protocol="json")
        again = fix_to_json(Fix.FromString(fix.SerializeToString()))

        assert again["time"] == "2026-03-01T10:00:00Z"
        assert again["speed"] == 42.5
        assert again["satellites"] == 9
        assert again["attributes"] == {"batt": 87, "ignition": True, "driver": "ana"}

    def test_absent_optional_values_stay_absent(self) -> None:
        fix = fix_from_json(
            {"uniqueId": "a", "latitude": 1, "longitude": 2}, server_time_ms=5000
        )

        document = fix_to_json(fix)

        assert "altitude" not in document
        assert "speed" not in document
        assert fix.fix_time_ms == 5000

    @pytest.mark.parametrize(
        ("document", "reason"),
        [
            ({"latitude": 1, "longitude": 2}, "uniqueId must be a non-empty string"),
            (
                {"uniqueId": "a", "latitude": 91, "longitude": 2},
                "latitude must be between",
            ),
            ({"uniqueId": "a", "latitude": 1}, "longitude is required"),
            (
                {"uniqueId": "a", "latitude": "x", "longitude": 2},
                "latitude must be a number",
            ),
            (
                {"uniqueId": "a", "latitude": 1, "longitude": 2, "time": "yesterday"},
                "time must be ISO-8601",
            ),
            (
                {"uniqueId": "a", "latitude": 1, "longitude": 2, "speed": float("nan")},
                "speed must be finite",
            ),
            (
                {"uniqueId": "a", "latitude": 1, "longitude": 2, "attributes": [1]},
                "attributes must be a JSON object",
            ),
        ],
    )
    def test_bad_document_names_the_field(
        self, document: dict[str, object], reason: str
    ) -> None:
        with pytest.raises(FixError, match=reason):
            fix_from_json(document, server_time_ms=0)


def test_time_without_zone_is_utc() -> None:
    assert parse_time_ms("2026-01-01T00:00:00") == parse_time_ms("2026-01-01T00:00:00Z")
