"""Simulated vehicles driving a street-like network: a pure, seeded motion model.

A :class:`StreetNetwork` is a jittered grid of junctions around a centre, with
faster arterial streets every few blocks and two diagonal avenues, traffic lights
where major roads cross and stop signs at some minor junctions.  A
:class:`FleetSimulator` drives N vehicles over it: each drives the quickest route
to a destination, accelerates and brakes within realistic limits, cruises near the
road's speed limit, slows for turns in proportion to the turn angle, waits at red
lights and stop signs, parks for minutes at its destination and then drives on.

Every step returns one GPS fix per vehicle with plausible noise.  The model does no
I/O and reads no clock: the same seed and the same steps give the same fixes.  The
state lives in numpy arrays, so one step for 10,000 vehicles costs a few
milliseconds.

Units: metres, seconds, metres per second inside; fixes carry km/h like the API.
Local positions are metres east (``x``) and north (``y``) of the centre.

Examples
--------
>>> fleet = FleetSimulator(3, seed=7)
>>> fixes = fleet.advance(1.0)
>>> [fix.unique_id for fix in fixes]
['sim-000001', 'sim-000002', 'sim-000003']
>>> fixes == FleetSimulator(3, seed=7).advance(1.0)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_CENTER",
    "DRIVING",
    "PARKED",
    "WAITING",
    "FixColumns",
    "FleetSimulator",
    "SimulatedFix",
    "StreetNetwork",
    "VehicleState",
    "acceleration_limit",
    "build_street_network",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_CENTER = (40.4168, -3.7038)
"""Puerta del Sol, Madrid."""

EARTH_RADIUS_M = 6_371_008.8
MAX_DEGREE = 8

# Road classes and their limits, m/s (Spanish urban limits: 50 on major roads,
# 30 on streets with one lane per direction).
ARTERIAL_LIMIT = 50 / 3.6
AVENUE_LIMIT = 50 / 3.6
LOCAL_LIMIT = 30 / 3.6

# Driving dynamics.  Acceleration falls with speed, giving 0-50 km/h in about 9 s.
ACCELERATION_AT_REST = 1.8
ACCELERATION_DROP_PER_MS = 0.025
PLANNED_BRAKING = 2.5
MAX_BRAKING = 3.5
MIN_TURN_SPEED = 2.5
TURN_ANGLE_FOR_STANDSTILL = 135.0
MAX_SUBSTEP_S = 0.5
LANE_OFFSET_M = 1.8

# Junction behaviour, seconds.
RED_LIGHT_PROBABILITY = 0.5
RED_LIGHT_WAIT_S = (5.0, 40.0)
STOP_SIGN_WAIT_S = (2.0, 6.0)
STOP_SIGN_SHARE = 0.2
PARKING_S = (60.0, 720.0)

DRIVING, WAITING, PARKED = 0, 1, 2
"""Vehicle modes: on the move, stopped at a junction, parked at a destination."""


@dataclass(frozen=True, slots=True)
class SimulatedFix:
    """One GPS report of one simulated vehicle.

    ``speed`` is km/h, ``course`` degrees clockwise from north, ``altitude`` metres
    above sea level, ``accuracy`` metres, ``odometer`` metres, ``battery`` volts.
    """

    unique_id: str
    time_ms: int
    latitude: float
    longitude: float
    speed: float
    course: float
    altitude: float
    accuracy: float
    satellites: int
    ignition: bool
    odometer: int
    battery: float

    def attributes(self) -> dict[str, Any]:
        """The vehicle attributes as the API's ``attributes`` object."""
        return {
            "ignition": self.ignition,
            "odometer": self.odometer,
            "battery": self.battery,
        }


@dataclass(frozen=True, slots=True)
class FixColumns:
    """The fixes of one step as parallel arrays, one element per vehicle."""

    unique_ids: tuple[str, ...]
    time_ms: int
    latitude: FloatArray
    longitude: FloatArray
    speed: FloatArray
    course: FloatArray
    altitude: FloatArray
    accuracy: FloatArray
    satellites: IntArray
    ignition: BoolArray
    odometer: IntArray
    battery: FloatArray

    def to_fixes(self) -> list[SimulatedFix]:
        """One :class:`SimulatedFix` per vehicle, values rounded as a tracker would."""
        columns = zip(
            self.unique_ids,
            np.round(self.latitude, 7).tolist(),
            np.round(self.longitude, 7).tolist(),
            np.round(self.speed, 1).tolist(),
            np.round(self.course, 1).tolist(),
            np.round(self.altitude, 1).tolist(),
            np.round(self.accuracy, 1).tolist(),
            self.satellites.tolist(),
            self.ignition.tolist(),
            self.odometer.tolist(),
            np.round(self.battery, 2).tolist(),
            strict=True,
        )
        time_ms = self.time_ms
        return [
            SimulatedFix(uid, time_ms, lat, lon, spd, crs, alt, acc, sat, ign, odo, bat)
            for uid, lat, lon, spd, crs, alt, acc, sat, ign, odo, bat in columns
        ]


@dataclass(frozen=True, slots=True)
class VehicleState:
    """Per vehicle: segment, metres along it, true speed (m/s) and mode.

    ``mode`` is :data:`DRIVING`, :data:`WAITING` (at a light or stop sign) or
    :data:`PARKED` (ignition off at a destination).
    """

    edge: IntArray
    offset_m: FloatArray
    speed_ms: FloatArray
    mode: IntArray


def acceleration_limit(speed_ms: FloatArray) -> FloatArray:
    """The strongest acceleration at a speed, m/s²: 1.8 at rest, less when faster.

    Examples
    --------
    >>> float(acceleration_limit(np.array([0.0]))[0])
    1.8
    """
    limit: FloatArray = np.maximum(
        ACCELERATION_AT_REST - ACCELERATION_DROP_PER_MS * speed_ms, 0.3
    )
    return limit


@dataclass(frozen=True, slots=True)
class StreetNetwork:
    """Junctions and directed road segments around a centre.

    Node arrays are indexed by junction, edge arrays by directed segment;
    ``neighbours[n, k]`` is the k-th junction reachable from ``n`` (``-1`` pads)
    and ``neighbour_edges[n, k]`` the segment leading there.  ``next_hop[p, n]``
    is the junction after ``n`` on the quickest route to place ``p``.
    """

    center: tuple[float, float]
    node_x: FloatArray
    node_y: FloatArray
    traffic_light: BoolArray
    stop_sign: BoolArray
    edge_from: IntArray
    edge_to: IntArray
    edge_length: FloatArray
    edge_limit: FloatArray
    edge_bearing: FloatArray
    edge_ux: FloatArray
    edge_uy: FloatArray
    neighbours: IntArray
    neighbour_edges: IntArray
    places: IntArray
    next_hop: IntArray

    @property
    def node_count(self) -> int:
        """How many junctions the network has."""
        return int(self.node_x.size)

    def to_lat_lon(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Convert metres east/north of the centre to degrees latitude/longitude.

        An equirectangular projection: within a few kilometres of the centre its
        error is far below GPS noise.
        """
        lat0, lon0 = self.center
        latitude = lat0 + np.degrees(y / EARTH_RADIUS_M)
        longitude = lon0 + np.degrees(
            x / (EARTH_RADIUS_M * math.cos(math.radians(lat0)))
        )
        return latitude, longitude

    def node_lat_lon(self) -> tuple[FloatArray, FloatArray]:
        """Latitude and longitude of every junction."""
        return self.to_lat_lon(self.node_x, self.node_y)

    def bounds(self, margin_m: float = 0.0) -> tuple[float, float, float, float]:
        """``(min_lat, min_lon, max_lat, max_lon)`` of the junctions plus a margin."""
        x = np.array([self.node_x.min() - margin_m, self.node_x.max() + margin_m])
        y = np.array([self.node_y.min() - margin_m, self.node_y.max() + margin_m])
        latitude, longitude = self.to_lat_lon(x, y)
        return (
            float(latitude[0]),
            float(longitude[0]),
            float(latitude[1]),
            float(longitude[1]),
        )

    def edges_between(self, start: IntArray, end: IntArray) -> IntArray:
        """The segment ids from each ``start`` junction to the adjacent ``end`` one."""
        rows = self.neighbours[start]
        slot = np.argmax(rows == end[:, None], axis=1)
        edges: IntArray = self.neighbour_edges[start, slot]
        return edges


def build_street_network(
    center: tuple[float, float] = DEFAULT_CENTER,
    *,
    extent_m: float = 5000.0,
    block_m: float = 250.0,
    places: int = 60,
    seed: int = 0,
) -> StreetNetwork:
    """Generate a street-like network: a jittered grid with arterials and avenues.

    Parameters
    ----------
    center
        ``(latitude, longitude)`` of the middle of the network, degrees.
    extent_m
        Width and height of the square area, metres (500 to 20,000).
    block_m
        Distance between neighbouring junctions, metres (80 to 1,000).
    places
        How many junctions serve as trip destinations (at least 2).
    seed
        Seed of the generator; the same arguments give the same network.

    Examples
    --------
    >>> network = build_street_network(extent_m=1000.0, block_m=250.0)
    >>> network.node_count
    25
    """
    _check_network_arguments(center, extent_m, block_m, places)
    rng = np.random.default_rng([seed, 1])
    side = int(extent_m // block_m) + 1
    x, y = _jittered_grid(side, block_m, rng)
    starts, ends, limits = _grid_segments(side)
    traffic_light, stop_sign = _junction_controls(side, rng)
    return _assemble(
        center, x, y, starts, ends, limits, traffic_light, stop_sign, places, rng
    )


def _check_network_arguments(
    center: tuple[float, float], extent_m: float, block_m: float, places: int
) -> None:
    latitude, longitude = center
    if not (-80.0 <= latitude <= 80.0 and -180.0 <= longitude <= 180.0):
        message = (
            f"center must be a latitude within ±80 and a longitude, got {center!r}"
        )
        raise ValueError(message)
    if not 80.0 <= block_m <= 1000.0:
        message = f"block_m must be between 80 and 1000 metres, got {block_m!r}"
        raise ValueError(message)
    if not 500.0 <= extent_m <= 20_000.0 or extent_m < 2 * block_m:
        message = (
            "extent_m must be between 500 and 20000 metres and at least two "
            f"blocks, got {extent_m!r}"
        )
        raise ValueError(message)
    if (extent_m // block_m + 1) ** 2 > 10_000:
        message = (
            f"extent_m / block_m gives more than 10,000 junctions, got "
            f"{extent_m!r} / {block_m!r}"
        )
        raise ValueError(message)
    if places < 2:
        message = f"places must be at least 2, got {places!r}"
        raise ValueError(message)


def _jittered_grid(
    side: int, block_m: float, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    offset = (side - 1) / 2
    rows, cols = np.divmod(np.arange(side * side), side)
    jitter = rng.uniform(-0.15, 0.15, size=(2, side * side)) * block_m
    x = (cols - offset) * block_m + jitter[0]
    y = (rows - offset) * block_m + jitter[1]
    return x, y


def _is_arterial(index: IntArray | int, side: int) -> Any:
    """Every fourth row and column, and the outer ring, carry the faster roads."""
    return (np.asarray(index) % 4 == 0) | (np.asarray(index) == side - 1)


def _grid_segments(side: int) -> tuple[IntArray, IntArray, FloatArray]:
    """Undirected segments (start, end, limit): grid streets plus two diagonals."""
    rows, cols = np.divmod(np.arange(side * side), side)
    node = rows * side + cols

    east = cols < side - 1
    north = rows < side - 1
    diagonal = np.arange(side - 1)
    starts = np.concatenate(
        [
            node[east],
            node[north],
            diagonal * side + diagonal,
            diagonal * side + (side - 1 - diagonal),
        ]
    )
    ends = np.concatenate(
        [
            node[east] + 1,
            node[north] + side,
            (diagonal + 1) * side + diagonal + 1,
            (diagonal + 1) * side + (side - 2 - diagonal),
        ]
    )
    limits = np.concatenate(
        [
            np.where(_is_arterial(rows[east], side), ARTERIAL_LIMIT, LOCAL_LIMIT),
            np.where(_is_arterial(cols[north], side), ARTERIAL_LIMIT, LOCAL_LIMIT),
            np.full(2 * (side - 1), AVENUE_LIMIT),
        ]
    )
    return starts.astype(np.int64), ends.astype(np.int64), limits


def _junction_controls(
    side: int, rng: np.random.Generator
) -> tuple[BoolArray, BoolArray]:
    """Lights where arterials or avenues cross; stop signs at some other junctions."""
    rows, cols = np.divmod(np.arange(side * side), side)
    on_avenue = (rows == cols) | (rows + cols == side - 1)
    major_rows = _is_arterial(rows, side)
    major_cols = _is_arterial(cols, side)
    traffic_light = (major_rows & major_cols) | (on_avenue & (major_rows | major_cols))
    minor = ~traffic_light & ~(major_rows | major_cols)
    stop_sign = minor & (rng.random(side * side) < STOP_SIGN_SHARE)
    return traffic_light.astype(np.bool_), stop_sign.astype(np.bool_)


def _assemble(
    center: tuple[float, float],
    x: FloatArray,
    y: FloatArray,
    starts: IntArray,
    ends: IntArray,
    limits: FloatArray,
    traffic_light: BoolArray,
    stop_sign: BoolArray,
    place_count: int,
    rng: np.random.Generator,
) -> StreetNetwork:
    edge_from = np.concatenate([starts, ends])
    edge_to = np.concatenate([ends, starts])
    edge_limit = np.concatenate([limits, limits])
    dx = x[edge_to] - x[edge_from]
    dy = y[edge_to] - y[edge_from]
    edge_length = np.hypot(dx, dy)
    neighbours, neighbour_edges = _adjacency(x.size, edge_from, edge_to)

    chosen = min(place_count, x.size)
    places = np.sort(rng.choice(x.size, size=chosen, replace=False)).astype(np.int64)
    # Crossing a light costs time on average, so routes prefer fewer of them.
    cost = edge_length / edge_limit + np.where(traffic_light[edge_to], 8.0, 2.0)
    next_hop = _quickest_next_hops(places, neighbours, neighbour_edges, cost)
    return StreetNetwork(
        center=(float(center[0]), float(center[1])),
        node_x=x,
        node_y=y,
        traffic_light=traffic_light,
        stop_sign=stop_sign,
        edge_from=edge_from,
        edge_to=edge_to,
        edge_length=edge_length,
        edge_limit=edge_limit,
        edge_bearing=np.degrees(np.arctan2(dx, dy)) % 360.0,
        edge_ux=dx / edge_length,
        edge_uy=dy / edge_length,
        neighbours=neighbours,
        neighbour_edges=neighbour_edges,
        places=places,
        next_hop=next_hop,
    )


def _adjacency(
    node_count: int, edge_from: IntArray, edge_to: IntArray
) -> tuple[IntArray, IntArray]:
    neighbours = np.full((node_count, MAX_DEGREE), -1, dtype=np.int64)
    neighbour_edges = np.full((node_count, MAX_DEGREE), -1, dtype=np.int64)
    filled = np.zeros(node_count, dtype=np.int64)
    for edge, (start, end) in enumerate(
        zip(edge_from.tolist(), edge_to.tolist(), strict=True)
    ):
        slot = filled[start]
        neighbours[start, slot] = end
        neighbour_edges[start, slot] = edge
        filled[start] = slot + 1
    return neighbours, neighbour_edges


def _quickest_next_hops(
    places: IntArray,
    neighbours: IntArray,
    neighbour_edges: IntArray,
    cost: FloatArray,
) -> IntArray:
    """Bellman-Ford towards every place at once, then the best neighbour per node.

    The segments are symmetric, so the cost from a node to a place equals the cost
    from the place to the node.
    """
    valid = neighbours >= 0
    safe_neighbours = np.where(valid, neighbours, 0)
    step_cost = np.where(valid, cost[np.where(valid, neighbour_edges, 0)], np.inf)
    remaining = np.full((places.size, neighbours.shape[0]), np.inf)
    remaining[np.arange(places.size), places] = 0.0

    for _ in range(neighbours.shape[0]):
        through = (remaining[:, safe_neighbours] + step_cost[None]).min(axis=2)
        relaxed = np.minimum(remaining, through)
        if np.array_equal(relaxed, remaining):
            break
        remaining = relaxed

    through = remaining[:, safe_neighbours] + step_cost[None]
    best = np.argmin(through, axis=2)
    next_hop = np.take_along_axis(safe_neighbours[None], best[..., None], axis=2)[
        ..., 0
    ]
    next_hop[np.arange(places.size), places] = places
    return next_hop.astype(np.int64)


class FleetSimulator:
    """N vehicles driving a :class:`StreetNetwork`, stepped by :meth:`advance`.

    Parameters
    ----------
    vehicles
        How many vehicles, at least 1.
    seed
        Seed for the network and the drivers; same seed and steps, same fixes.
    center
        ``(latitude, longitude)`` of the area, degrees.
    extent_m, block_m
        Size of the square area and of a block, metres.
    start_time_ms
        Epoch milliseconds of the simulation clock before the first step.
    id_prefix
        Prefix of the unique ids: ``sim-000001``, ``sim-000002``, ...
    base_altitude_m
        Mean ground altitude of the area (about 650 m in Madrid).
    """

    def __init__(
        self,
        vehicles: int,
        *,
        seed: int = 0,
        center: tuple[float, float] = DEFAULT_CENTER,
        extent_m: float = 5000.0,
        block_m: float = 250.0,
        start_time_ms: int = 1_767_225_600_000,
        id_prefix: str = "sim-",
        base_altitude_m: float = 650.0,
    ) -> None:
        if vehicles < 1:
            message = f"vehicles must be at least 1, got {vehicles!r}"
            raise ValueError(message)
        self.network = build_street_network(
            center, extent_m=extent_m, block_m=block_m, seed=seed
        )
        self.unique_ids = tuple(f"{id_prefix}{n:06d}" for n in range(1, vehicles + 1))
        self.time_ms = int(start_time_ms)
        self._elapsed_s = 0.0
        self._start_ms = int(start_time_ms)
        self._base_altitude = base_altitude_m
        self._rng = np.random.default_rng([seed, 2])
        self._init_state(vehicles)

    @property
    def vehicle_count(self) -> int:
        """How many vehicles are simulated."""
        return len(self.unique_ids)

    def state(self) -> VehicleState:
        """A copy of the vehicles' motion state, for inspection and tests."""
        return VehicleState(
            edge=self._edge.copy(),
            offset_m=self._s.copy(),
            speed_ms=self._v.copy(),
            mode=self._mode.copy(),
        )

    def advance(self, dt_s: float) -> list[SimulatedFix]:
        """Move every vehicle ``dt_s`` seconds on and return one fix per vehicle."""
        return self.advance_columns(dt_s).to_fixes()

    def advance_columns(self, dt_s: float) -> FixColumns:
        """Like :meth:`advance`, as arrays: the cheap form for thousands of vehicles."""
        if not math.isfinite(dt_s) or not 0.0 < dt_s <= 3600.0:
            message = f"dt_s must be a number of seconds in (0, 3600], got {dt_s!r}"
            raise ValueError(message)
        substeps = max(1, math.ceil(dt_s / MAX_SUBSTEP_S - 1e-9))
        for _ in range(substeps):
            self._substep(dt_s / substeps)
        self._elapsed_s += dt_s
        self.time_ms = self._start_ms + round(self._elapsed_s * 1000.0)
        return self._report()

    # State -----------------------------------------------------------------

    def _init_state(self, count: int) -> None:
        network, rng = self.network, self._rng
        self._edge = rng.integers(network.edge_from.size, size=count)
        self._s = rng.random(count) * network.edge_length[self._edge] * 0.8
        self._v = np.zeros(count)
        self._factor = rng.uniform(0.88, 1.08, size=count)
        self._place = rng.integers(network.places.size, size=count)
        self._next = np.full(count, -1, dtype=np.int64)
        self._end_speed = np.zeros(count)
        self._stop_at_end = np.zeros(count, dtype=np.bool_)
        self._mode = np.full(count, DRIVING, dtype=np.int64)
        self._timer = np.zeros(count)
        self._odometer = rng.uniform(5e6, 2e8, size=count)
        self._course = network.edge_bearing[self._edge].copy()
        self._accuracy = rng.uniform(3.0, 10.0, size=count)

        everyone = np.arange(count)
        self._plan_edge_end(everyone)
        parked = rng.random(count) < 0.3
        self._mode[parked] = PARKED
        self._s[parked] = network.edge_length[self._edge[parked]]
        self._timer[parked] = rng.uniform(0.0, PARKING_S[1], size=int(parked.sum()))

    def _plan_edge_end(self, idx: IntArray) -> None:
        """For vehicles just on their segment: the next junction, stop and end speed."""
        network = self.network
        edge = self._edge[idx]
        end_node = network.edge_to[edge]
        destination = network.places[self._place[idx]]
        arriving = end_node == destination

        next_node = network.next_hop[self._place[idx], end_node]
        next_edge = network.edges_between(end_node, next_node)
        turn = np.abs(
            (network.edge_bearing[next_edge] - network.edge_bearing[edge] + 180.0)
            % 360.0
            - 180.0
        )
        cruise_here = network.edge_limit[edge] * self._factor[idx]
        cruise_next = network.edge_limit[next_edge] * self._factor[idx]
        turn_speed = np.minimum(cruise_here, cruise_next) * (
            1.0 - turn / TURN_ANGLE_FOR_STANDSTILL
        )
        turn_speed = np.clip(turn_speed, MIN_TURN_SPEED, None)

        red = network.traffic_light[end_node] & (
            self._rng.random(idx.size) < RED_LIGHT_PROBABILITY
        )
        stop = arriving | red | network.stop_sign[end_node]
        self._next[idx] = np.where(arriving, -1, next_node)
        self._stop_at_end[idx] = stop
        self._end_speed[idx] = np.where(stop, 0.0, turn_speed)

    def _enter(self, idx: IntArray, edges: IntArray, carried: FloatArray) -> None:
        self._edge[idx] = edges
        self._s[idx] = np.minimum(carried, self.network.edge_length[edges] * 0.5)
        self._plan_edge_end(idx)

    # Motion ----------------------------------------------------------------

    def _substep(self, h: float) -> None:
        self._release_timers(h)
        self._drive(h)

    def _release_timers(self, h: float) -> None:
        waiting_or_parked = self._mode != DRIVING
        self._timer[waiting_or_parked] -= h
        done = waiting_or_parked & (self._timer <= 0.0)
        if not done.any():
            return
        network = self.network
        waited = np.flatnonzero(done & (self._mode == WAITING))
        if waited.size:
            here = network.edge_to[self._edge[waited]]
            self._mode[waited] = DRIVING
            self._enter(
                waited,
                network.edges_between(here, self._next[waited]),
                np.zeros(waited.size),
            )
        rested = np.flatnonzero(done & (self._mode == PARKED))
        if rested.size:
            self._leave_parking(rested)

    def _leave_parking(self, idx: IntArray) -> None:
        network = self.network
        here = network.edge_to[self._edge[idx]]
        place = self._rng.integers(network.places.size, size=idx.size)
        place = np.where(
            network.places[place] == here, (place + 1) % network.places.size, place
        )
        self._place[idx] = place
        first_hop = network.next_hop[place, here]
        self._mode[idx] = DRIVING
        self._enter(idx, network.edges_between(here, first_hop), np.zeros(idx.size))

    def _drive(self, h: float) -> None:
        network = self.network
        driving = self._mode == DRIVING
        edge = self._edge
        v = self._v
        length = network.edge_length[edge]
        remaining = length - self._s

        cruise = network.edge_limit[edge] * self._factor
        lookahead = np.maximum(remaining - v * h, 0.0)
        may_reach = np.sqrt(self._end_speed**2 + 2.0 * PLANNED_BRAKING * lookahead)
        target = np.minimum(cruise, may_reach)
        fastest = v + acceleration_limit(v) * h
        v_new = np.clip(target, np.maximum(v - MAX_BRAKING * h, 0.0), fastest)
        v_new = np.where(driving, v_new, 0.0)

        distance = 0.5 * (v + v_new) * h
        self._s = self._s + distance
        self._odometer += distance
        self._v = v_new
        moving = driving & (v_new > 0.5)
        self._course[moving] = network.edge_bearing[edge[moving]]

        arrived = np.flatnonzero(driving & (self._s >= length - 0.05))
        if arrived.size:
            self._arrive(arrived)

    def _arrive(self, idx: IntArray) -> None:
        network = self.network
        edge = self._edge[idx]
        length = network.edge_length[edge]
        stop = self._stop_at_end[idx]

        stopping = idx[stop]
        self._s[stopping] = network.edge_length[self._edge[stopping]]
        self._v[stopping] = 0.0
        parking = stopping[self._next[stopping] < 0]
        waiting = stopping[self._next[stopping] >= 0]
        self._mode[parking] = PARKED
        self._timer[parking] = self._rng.uniform(*PARKING_S, size=parking.size)
        end_nodes = network.edge_to[self._edge[waiting]]
        light = network.traffic_light[end_nodes]
        low = np.where(light, RED_LIGHT_WAIT_S[0], STOP_SIGN_WAIT_S[0])
        high = np.where(light, RED_LIGHT_WAIT_S[1], STOP_SIGN_WAIT_S[1])
        self._mode[waiting] = WAITING
        self._timer[waiting] = self._rng.uniform(low, high)

        rolling = idx[~stop]
        if rolling.size:
            here = network.edge_to[self._edge[rolling]]
            carried = self._s[rolling] - length[~stop]
            self._enter(
                rolling, network.edges_between(here, self._next[rolling]), carried
            )

    # Reporting -------------------------------------------------------------

    def _report(self) -> FixColumns:
        network, rng = self.network, self._rng
        count = self.vehicle_count
        edge = self._edge
        ux, uy = network.edge_ux[edge], network.edge_uy[edge]
        start = network.edge_from[edge]
        # Vehicles keep right: offset the lane from the centre line.
        x = network.node_x[start] + ux * self._s + uy * LANE_OFFSET_M
        y = network.node_y[start] + uy * self._s - ux * LANE_OFFSET_M

        self._accuracy = np.clip(
            self._accuracy + rng.normal(0.0, 0.3, size=count), 3.0, 10.0
        )
        noise = rng.normal(0.0, 1.0, size=(2, count)) * (self._accuracy / 3.0)
        latitude, longitude = network.to_lat_lon(x + noise[0], y + noise[1])

        moving = self._v > 0.3
        speed = np.where(
            moving, np.maximum(self._v * 3.6 + rng.normal(0.0, 0.4, count), 0.0), 0.0
        )
        course = np.where(
            moving, (self._course + rng.normal(0.0, 1.5, count)) % 360.0, self._course
        )
        terrain = 25.0 * np.sin(x / 1700.0) * np.cos(y / 2300.0)
        altitude = self._base_altitude + terrain + rng.normal(0.0, 2.5, count)
        satellites = np.clip(np.round(16.0 - self._accuracy), 4, 14).astype(np.int64)
        ignition = self._mode != PARKED
        battery = np.where(ignition, 14.1, 12.6) + rng.normal(0.0, 0.05, count)
        return FixColumns(
            unique_ids=self.unique_ids,
            time_ms=self.time_ms,
            latitude=latitude,
            longitude=longitude,
            speed=speed,
            course=course,
            altitude=altitude,
            accuracy=self._accuracy.copy(),
            satellites=satellites,
            ignition=ignition,
            odometer=self._odometer.astype(np.int64),
            battery=battery,
        )
