"""Fix validity rules and H3 indexing in geo.fixes."""

from __future__ import annotations

import h3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.fixes import MAX_AHEAD_MS, Rejection, h3_cell, h3_hex, rejection

SERVER_MS = 1_700_000_000_000


def _judge(**changes: object) -> Rejection | None:
    fields: dict[str, object] = {
        "valid": True,
        "latitude": 38.7223,
        "longitude": -9.1393,
        "fix_time_ms": SERVER_MS - 5_000,
        "server_time_ms": SERVER_MS,
    }
    fields.update(changes)
    return rejection(**fields)  # type: ignore[arg-type]


class TestRejection:
    def test_rejection_good_fix_is_kept(self) -> None:
        assert _judge() is None

    def test_rejection_device_flag_invalid(self) -> None:
        assert _judge(valid=False) is Rejection.INVALID

    def test_rejection_null_island_is_zero(self) -> None:
        assert _judge(latitude=0.0, longitude=0.0) is Rejection.ZERO

    def test_rejection_one_zero_coordinate_is_kept(self) -> None:
        """The equator and the prime meridian are real places."""
        assert _judge(latitude=0.0, longitude=-9.1) is None
        assert _judge(latitude=51.5, longitude=0.0) is None

    @pytest.mark.parametrize(
        ("latitude", "longitude"),
        [
            (90.5, 0.0),
            (-91.0, 10.0),
            (10.0, 180.01),
            (10.0, -200.0),
            (float("nan"), 10.0),
            (10.0, float("inf")),
        ],
    )
    def test_rejection_out_of_range(self, latitude: float, longitude: float) -> None:
        assert _judge(latitude=latitude, longitude=longitude) is Rejection.OUT_OF_RANGE

    def test_rejection_range_limits_are_kept(self) -> None:
        assert _judge(latitude=90.0, longitude=180.0) is None
        assert _judge(latitude=-90.0, longitude=-180.0) is None

    def test_rejection_more_than_a_day_ahead_is_future(self) -> None:
        ahead = SERVER_MS + MAX_AHEAD_MS + 1
        assert _judge(fix_time_ms=ahead) is Rejection.FUTURE

    def test_rejection_exactly_a_day_ahead_is_kept(self) -> None:
        assert _judge(fix_time_ms=SERVER_MS + MAX_AHEAD_MS) is None

    def test_rejection_old_fix_is_kept(self) -> None:
        """Trackers upload buffered fixes hours or days late; they are history."""
        assert _judge(fix_time_ms=SERVER_MS - 30 * MAX_AHEAD_MS) is None

    def test_rejection_invalid_wins_over_position(self) -> None:
        assert _judge(valid=False, latitude=0.0, longitude=0.0) is Rejection.INVALID

    def test_rejection_codes_are_snake_case(self) -> None:
        codes = {reason.value for reason in Rejection}
        assert codes == {"invalid", "zero", "out_of_range", "future"}


class TestH3Cell:
    def test_h3_cell_matches_h3_library(self) -> None:
        cell = h3_cell(38.7223, -9.1393, 9)

        assert h3_hex(cell) == h3.latlng_to_cell(38.7223, -9.1393, 9)
        assert h3.get_resolution(h3_hex(cell)) == 9

    def test_h3_cell_fits_postgres_bigint(self) -> None:
        assert 0 < h3_cell(-89.9, 179.9, 15) < 2**63

    @given(
        latitude=st.floats(-90, 90),
        longitude=st.floats(-180, 180),
        resolution=st.integers(0, 15),
    )
    def test_h3_cell_contains_the_point(
        self, latitude: float, longitude: float, resolution: int
    ) -> None:
        cell = h3_hex(h3_cell(latitude, longitude, resolution))

        assert h3.is_valid_cell(cell)
        assert h3.get_resolution(cell) == resolution

    @pytest.mark.parametrize("resolution", [-1, 16])
    def test_h3_cell_bad_resolution(self, resolution: int) -> None:
        with pytest.raises(ValueError, match="resolution must be from 0 to 15"):
            h3_cell(38.7, -9.1, resolution)

    def test_h3_cell_resolution_not_a_number(self) -> None:
        with pytest.raises(TypeError, match="resolution must be a whole number"):
            h3_cell(38.7, -9.1, 9.0)  # type: ignore[arg-type]

    def test_h3_cell_bad_latitude(self) -> None:
        with pytest.raises(ValueError, match="within ±90 and ±180 degrees"):
            h3_cell(91.0, -9.1, 9)

    def test_h3_hex_refuses_zero(self) -> None:
        with pytest.raises(ValueError, match="positive integer, got 0"):
            h3_hex(0)


def test_geo_fixes_doctests_pass() -> None:
    """The Examples sections of the module are correct."""
    import doctest

    import geo.fixes

    outcome = doctest.testmod(geo.fixes)

    assert outcome.attempted > 0
    assert outcome.failed == 0
