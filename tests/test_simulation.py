"""The vehicle motion model: determinism, limits, stops, parking, noise, speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.simulation import (
    DRIVING,
    PARKED,
    WAITING,
    FixColumns,
    FleetSimulator,
    acceleration_limit,
    build_street_network,
)

MAX_LIMIT_KMH = 50.0
MAX_DRIVER_FACTOR = 1.08


def _run(fleet: FleetSimulator, steps: int, dt_s: float = 1.0) -> list[FixColumns]:
    return [fleet.advance_columns(dt_s) for _ in range(steps)]


def _bearing(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dlon = math.radians(lon2 - lon1)
    x = math.sin(dlon) * math.cos(phi2)
    y = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(
        dlon
    )
    return math.degrees(math.atan2(x, y)) % 360.0


def _angle_between(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.fixture(scope="module")
def long_run() -> tuple[FleetSimulator, list[FixColumns], list[np.ndarray]]:
    """100 vehicles for 40 simulated minutes at 1 Hz, with their modes per step."""
    fleet = FleetSimulator(100, seed=11)
    steps, modes = [], []
    for _ in range(2400):
        steps.append(fleet.advance_columns(1.0))
        modes.append(fleet.state().mode)
    return fleet, steps, modes


class TestStreetNetwork:
    def test_network_same_seed_same_junctions(self):
        """The same seed builds the same junction positions and routes."""
        first, second = build_street_network(seed=5), build_street_network(seed=5)
        assert np.array_equal(first.node_x, second.node_x)
        assert np.array_equal(first.next_hop, second.next_hop)
        assert not np.array_equal(first.node_x, build_street_network(seed=6).node_x)

    def test_network_routes_reach_every_place(self):
        """Following next hops from any junction reaches the place in few steps."""
        network = build_street_network(extent_m=2000.0, places=10)
        for place_index, place in enumerate(network.places.tolist()):
            for start in range(network.node_count):
                node, hops = start, 0
                while node != place:
                    node = int(network.next_hop[place_index, node])
                    hops += 1
                    assert hops <= network.node_count
        assert network.places.size == 10

    def test_network_has_lights_stops_and_fast_roads(self):
        """Arterials and avenues are faster, and junctions carry lights or signs."""
        network = build_street_network()
        limits = set(np.round(network.edge_limit * 3.6).astype(int).tolist())
        assert limits == {30, 50}
        assert network.traffic_light.sum() > 20
        assert network.stop_sign.sum() > 20
        assert not (network.traffic_light & network.stop_sign).any()

    def test_network_segments_are_blocks_long(self):
        """Grid segments are about one block; diagonals about √2 blocks."""
        network = build_street_network(block_m=200.0)
        assert network.edge_length.min() > 200.0 * 0.6
        assert network.edge_length.max() < 200.0 * 1.42 * 1.3

    @pytest.mark.parametrize(
        ("arguments", "match"),
        [
            ({"block_m": 10.0}, "block_m must be between"),
            ({"extent_m": 100.0}, "extent_m must be between"),
            ({"extent_m": 20_000.0, "block_m": 100.0}, "more than 10,000 junctions"),
            ({"places": 1}, "places must be at least 2"),
            ({"center": (91.0, 0.0)}, "center must be a latitude"),
        ],
    )
    def test_network_bad_arguments_named(self, arguments, match):
        """Each unusable argument is refused with a message naming it."""
        with pytest.raises(ValueError, match=match):
            build_street_network(**arguments)


class TestFleetSimulator:
    def test_simulator_same_seed_same_fixes(self):
        """Two fleets with one seed and one sequence of steps report identical fixes."""
        first, second = FleetSimulator(30, seed=3), FleetSimulator(30, seed=3)
        for dt in (1.0, 0.5, 2.0, 1.0):
            assert first.advance(dt) == second.advance(dt)
        assert FleetSimulator(30, seed=4).advance(1.0) != FleetSimulator(
            30, seed=3
        ).advance(1.0)

    def test_simulator_ids_and_clock(self):
        """Ids are sim-000001...; the clock moves by each step's seconds."""
        fleet = FleetSimulator(3, start_time_ms=1_000_000, id_prefix="car-")
        fixes = fleet.advance(1.5)
        assert [fix.unique_id for fix in fixes] == [
            "car-000001",
            "car-000002",
            "car-000003",
        ]
        assert {fix.time_ms for fix in fixes} == {1_001_500}
        assert fleet.advance(0.25)[0].time_ms == 1_001_750

    def test_simulator_speeds_within_limits(self, long_run):
        """True speeds never pass the fastest limit times the boldest driver."""
        _, steps, _ = long_run
        top = max(float(step.speed.max()) for step in steps)
        assert top <= MAX_LIMIT_KMH * MAX_DRIVER_FACTOR + 2.0
        assert top > 40.0
        assert min(float(step.speed.min()) for step in steps) >= 0.0

    def test_simulator_accelerations_bounded(self):
        """Acceleration stays below 1.8 m/s² and braking below 3.5 m/s²."""
        fleet = FleetSimulator(200, seed=2)
        previous = fleet.state().speed_ms
        for step in range(900):
            dt = 0.5 if step % 3 else 1.0
            fleet.advance_columns(dt)
            speed = fleet.state().speed_ms
            change = (speed - previous) / dt
            assert change.max() <= 1.8 + 1e-9
            assert change.min() >= -3.5 - 1e-9
            previous = speed

    def test_acceleration_limit_zero_to_fifty(self):
        """Flat out from rest, 50 km/h takes 8 to 10 seconds."""
        speed, seconds = np.array([0.0]), 0.0
        while speed[0] < 50 / 3.6:
            speed = speed + acceleration_limit(speed) * 0.01
            seconds += 0.01
        assert 8.0 <= seconds <= 10.0

    def test_simulator_waits_at_junctions(self, long_run):
        """Vehicles wait 2-40 s at junctions, stopped with the ignition on."""
        _, steps, modes = long_run
        mode = np.array(modes)
        waits = _run_lengths(mode == WAITING)
        assert len(waits) > 100
        assert max(waits) <= 41
        assert min(waits) >= 1
        waiting = mode == WAITING
        speeds = np.array([step.speed for step in steps])
        ignition = np.array([step.ignition for step in steps])
        assert (speeds[waiting] == 0.0).all()
        assert ignition[waiting].all()

    def test_simulator_waits_happen_at_junctions(self):
        """A waiting vehicle stands at the end of its segment, on the junction."""
        fleet = FleetSimulator(100, seed=8)
        for _ in range(300):
            fleet.advance_columns(1.0)
            state = fleet.state()
            waiting = state.mode == WAITING
            lengths = fleet.network.edge_length[state.edge[waiting]]
            assert np.allclose(state.offset_m[waiting], lengths)

    def test_simulator_parks_then_drives_again(self, long_run):
        """Parking lasts minutes with the ignition off, and parked vehicles drive on."""
        _, steps, modes = long_run
        mode = np.array(modes)
        parked = mode == PARKED
        spells = _run_lengths(parked, complete_only=True)
        assert spells and min(spells) >= 59
        ignition = np.array([step.ignition for step in steps])
        assert not ignition[parked].any()
        resumed = parked[:-1] & (mode[1:] == DRIVING)
        assert resumed.sum() > 20

    def test_simulator_drives_most_of_the_time(self, long_run):
        """Between a third and nine tenths of vehicle time is spent driving."""
        _, _, modes = long_run
        share = float((np.array(modes) == DRIVING).mean())
        assert 0.33 <= share <= 0.9

    def test_simulator_positions_stay_in_area(self, long_run):
        """Every fix lies within the network's junctions plus GPS noise."""
        fleet, steps, _ = long_run
        south, west, north, east = fleet.network.bounds(margin_m=60.0)
        for step in steps:
            assert south <= step.latitude.min() and step.latitude.max() <= north
            assert west <= step.longitude.min() and step.longitude.max() <= east

    def test_simulator_courses_follow_movement(self):
        """The reported course matches the bearing of the vehicle's true path."""
        fleet = FleetSimulator(50, seed=9)
        differences = []
        previous_state = fleet.state()
        previous_fix = fleet.advance_columns(1.0)
        for _ in range(200):
            # Five seconds apart, GPS noise is small beside the distance covered.
            fix = _run(fleet, 5)[-1]
            state = fleet.state()
            same_edge = state.edge == previous_state.edge
            moved = state.offset_m - previous_state.offset_m > 40.0
            for vehicle in np.flatnonzero(same_edge & moved).tolist():
                bearing = _bearing(
                    previous_fix.latitude[vehicle],
                    previous_fix.longitude[vehicle],
                    fix.latitude[vehicle],
                    fix.longitude[vehicle],
                )
                differences.append(_angle_between(bearing, fix.course[vehicle]))
            previous_state, previous_fix = state, fix
        assert len(differences) > 500
        assert float(np.median(differences)) < 8.0
        assert float(np.quantile(differences, 0.9)) < 30.0

    def test_simulator_slows_for_sharp_turns(self):
        """Crossing a junction with a turn of 80° or more happens below 27 km/h."""
        fleet = FleetSimulator(200, seed=4)
        network = fleet.network
        previous = fleet.state()
        turn_speeds, straight_speeds = [], []
        for _ in range(900):
            fleet.advance_columns(0.5)
            state = fleet.state()
            crossed = (state.edge != previous.edge) & (state.mode == DRIVING)
            crossed &= previous.mode == DRIVING
            turn = np.abs(
                (
                    network.edge_bearing[state.edge]
                    - network.edge_bearing[previous.edge]
                    + 180.0
                )
                % 360.0
                - 180.0
            )
            turn_speeds.extend((state.speed_ms[crossed & (turn >= 80)] * 3.6).tolist())
            straight_speeds.extend(
                (state.speed_ms[crossed & (turn < 20)] * 3.6).tolist()
            )
            previous = state
        assert len(turn_speeds) > 50
        assert max(turn_speeds) < 27.0
        assert float(np.median(straight_speeds)) > float(np.median(turn_speeds)) + 10

    def test_simulator_fix_fields_plausible(self, long_run):
        """Altitude, accuracy, satellites, battery and odometer look plausible."""
        _, steps, _ = long_run
        last, first = steps[-1], steps[0]
        assert 600.0 < last.altitude.min() and last.altitude.max() < 700.0
        assert 3.0 <= last.accuracy.min() and last.accuracy.max() <= 10.0
        assert 4 <= last.satellites.min() and last.satellites.max() <= 14
        assert (last.odometer >= first.odometer).all()
        assert (last.odometer - first.odometer).max() > 5_000
        assert (last.battery[last.ignition] > 13.5).all()
        assert (last.battery[~last.ignition] < 13.0).all()

    def test_simulator_fix_attributes(self):
        """A fix carries ignition, odometer and battery as API attributes."""
        fix = FleetSimulator(1, seed=1).advance(1.0)[0]
        assert set(fix.attributes()) == {"ignition", "odometer", "battery"}
        assert isinstance(fix.attributes()["odometer"], int)

    @pytest.mark.parametrize("dt_s", [0.0, -1.0, math.nan, 4000.0])
    def test_simulator_bad_step_refused(self, dt_s):
        """A step that is not positive finite seconds is refused, naming dt_s."""
        with pytest.raises(ValueError, match="dt_s must be"):
            FleetSimulator(1).advance(dt_s)

    def test_simulator_no_vehicles_refused(self):
        """A fleet needs a vehicle."""
        with pytest.raises(ValueError, match="vehicles must be at least 1"):
            FleetSimulator(0)

    @settings(max_examples=25, deadline=None)
    @given(
        seed=st.integers(0, 2**32 - 1),
        vehicles=st.integers(1, 25),
        steps=st.lists(st.floats(0.05, 30.0), min_size=1, max_size=30),
        latitude=st.floats(-60.0, 60.0),
        longitude=st.floats(-179.0, 179.0),
    )
    def test_simulator_invariants_hold(
        self, seed, vehicles, steps, latitude, longitude
    ):
        """Whatever the seed, place and steps, fixes stay finite, bounded, ordered."""
        fleet = FleetSimulator(
            vehicles, seed=seed, center=(latitude, longitude), extent_m=2000.0
        )
        south, west, north, east = fleet.network.bounds(margin_m=60.0)
        odometer = None
        clock = fleet.time_ms
        for dt in steps:
            fixes = fleet.advance_columns(dt)
            assert fixes.time_ms == clock + round(dt * 1000) or fixes.time_ms > clock
            clock = fixes.time_ms
            assert np.isfinite(fixes.latitude).all() and np.isfinite(fixes.speed).all()
            assert (south <= fixes.latitude).all() and (fixes.latitude <= north).all()
            assert (west <= fixes.longitude).all() and (fixes.longitude <= east).all()
            assert (fixes.speed >= 0).all()
            assert (fixes.speed <= MAX_LIMIT_KMH * MAX_DRIVER_FACTOR + 2.0).all()
            assert ((fixes.course >= 0) & (fixes.course < 360)).all()
            assert ((fixes.accuracy >= 3) & (fixes.accuracy <= 10)).all()
            if odometer is not None:
                assert (fixes.odometer >= odometer).all()
            odometer = fixes.odometer

    def test_simulator_cost_per_vehicle_step(self):
        """10,000 vehicles step well within a second; prints µs per vehicle step."""
        fleet = FleetSimulator(10_000, seed=1)
        _run(fleet, 3)
        started = time.perf_counter()
        _run(fleet, 20)
        columns_us = (time.perf_counter() - started) / 20 / 10_000 * 1e6
        started = time.perf_counter()
        for _ in range(5):
            fleet.advance(1.0)
        objects_us = (time.perf_counter() - started) / 5 / 10_000 * 1e6
        print(f"\nsimulation: {columns_us:.2f} µs/vehicle-step as arrays, ")
        print(f"{objects_us:.2f} µs/vehicle-step as SimulatedFix objects")
        assert columns_us < 20.0
        assert objects_us < 50.0


def _run_lengths(flags: np.ndarray, complete_only: bool = False) -> list[int]:
    """Lengths of runs of True along axis 0, per column (vehicle)."""
    lengths = []
    for column in flags.T:
        run = 0
        started_inside = bool(column[0])
        for value in column.tolist():
            if value:
                run += 1
            elif run:
                if not (complete_only and started_inside):
                    lengths.append(run)
                run, started_inside = 0, False
        if run and not complete_only:
            lengths.append(run)
    return lengths
