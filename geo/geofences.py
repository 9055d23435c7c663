"""Geofences: shapes and their GeoJSON form, a spatial index, dwell-aware membership.

Three shapes, each with an ``id``, a ``name`` and an optional speed limit (km/h):

- :class:`PolygonFence`: a Polygon or MultiPolygon in WGS 84 longitude/latitude.  As in
  GeoJSON (RFC 7946 §3.1.1), edges are straight lines in longitude/latitude; a polygon
  that crosses the antimeridian must be given as a MultiPolygon split there (RFC 7946
  §3.1.9), so one spanning more than 180° of longitude is refused.
- :class:`CircleFence`: a centre and a radius in metres.  A point is inside when its
  great-circle distance from the centre is at most the radius.
- :class:`CorridorFence`: a polyline and a width in metres.  A point is inside when its
  great-circle distance from the polyline (whose segments are great-circle arcs) is at
  most half the width, so the ends are rounded.

Circles and corridors are measured on a sphere of the mean Earth radius, never as
buffers in degrees, so they are metric-correct at the poles and across the antimeridian.
Against the WGS 84 ellipsoid the spherical distance is off by at most 0.6 % of the
distance (0.56 % measured over 200,000 random pairs up to 100 km): the boundary of a
1,000 m circle lies within 6 m of the true geodesic circle.  Corridor segments are
great-circle arcs rather than straight lines in longitude/latitude; over a segment of a
few kilometres the two differ by centimetres.

:class:`GeofenceIndex` finds which geofences contain a point: shapely 2 ``STRtree``
trees over the polygons and over longitude/latitude boxes that bound each circle and
each corridor segment (split at the antimeridian, widened to every longitude near a
pole), then an exact spherical test of the few candidates: in plain Python for one
point (:meth:`GeofenceIndex.containing`, per fix), with numpy for a batch
(:meth:`GeofenceIndex.containing_many`, once per bundle, several times cheaper per
fix); both make the same test and are checked against each other.  It answers for every
geofence it holds; which geofences apply to which device is the caller's business: it
intersects the answer with the ids assigned to the device (or its group).  One index
can so serve every device of a task, and assignments change without a rebuild.

Membership (:func:`advance`) applies a dwell so that a vehicle on an edge does not
flap: a device enters a geofence only after being inside for a number of seconds or
consecutive fixes, and leaves it likewise.  It returns ``geofenceEnter`` and
``geofenceExit`` events and a :class:`Visit` for every closed stay.  When a geofence
disappears from the index (deleted) while a device is inside, the stay is closed as a
:class:`Visit` with ``closed_by="deleted"`` at the next fix, and no ``geofenceExit`` is
emitted: the vehicle did not leave anything.  A geofence whose shape changed is simply
tested in its new shape from the next fix on, with the usual dwell.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeGuard

import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping

from geo.events import GeoEvent
from geo.filtering import fix_points
from geo.fixes import FixPoint
from geo.tracks import EARTH_RADIUS_M, haversine_m

__all__ = [
    "MAX_REACH_M",
    "CircleFence",
    "CorridorFence",
    "DwellSettings",
    "Geofence",
    "GeofenceIndex",
    "InvalidGeofence",
    "MembershipState",
    "PolygonFence",
    "Visit",
    "advance",
    "geofence_from_geojson",
    "run_membership",
    "speed_limit_kmh",
    "to_geojson",
]

#: The largest circle radius or corridor half width accepted, in metres (1,000 km).
MAX_REACH_M: Final = 1_000_000.0

#: Extra room around every index box, in degrees (about 1 cm), against rounding.
_BOX_MARGIN_DEG: Final = 1e-7

#: Grid cells per degree for the index's memory of which geofences can hold a
#: point of a cell (about 870 m of latitude a cell).  A power of two, so that a
#: cell's bounds, ``i / 128``, are exact in floating point and hold every point
#: that :func:`math.floor` put in the cell.
_CELLS_PER_DEG: Final = 128

#: More geofence items than this crossing one cell (a dense city of small
#: geofences), and the index asks its tree about each point of the cell instead.
_CROSSING_LIMIT: Final = 8

#: How many cells an index remembers (least recently used first out): a few
#: hundred bytes each, so some tens of megabytes at most.
_CELLS_REMEMBERED: Final = 65_536

Array = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]
Bools = npt.NDArray[np.bool_]


class InvalidGeofence(ValueError):
    """A geofence definition that cannot be used; the message says what is wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Geofence:
    """What every geofence has: an id, a name and an optional speed limit in km/h."""

    id: str
    name: str
    speed_limit_kmh: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            message = f"a geofence id must be a non-empty string, got {self.id!r}"
            raise InvalidGeofence(message)
        if not isinstance(self.name, str):
            message = f"a geofence name must be a string, got {self.name!r}"
            raise InvalidGeofence(message)
        limit = self.speed_limit_kmh
        if limit is not None and not (_is_number(limit) and 0 < limit < math.inf):
            message = f"speed_limit_kmh must be a positive number, got {limit!r}"
            raise InvalidGeofence(message)
        self._check_shape()

    def _check_shape(self) -> None:
        raise NotImplementedError

    def contains(self, latitude: float, longitude: float) -> bool:
        """Whether a point (WGS 84 degrees) lies inside or on the edge."""
        raise NotImplementedError

    def geometry(self) -> dict[str, Any]:
        """The GeoJSON geometry (a circle as a Point, a corridor as a LineString)."""
        raise NotImplementedError

    def extra_properties(self) -> dict[str, Any]:
        """GeoJSON properties the geometry alone does not carry (radius, width)."""
        return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class PolygonFence(Geofence):
    """A polygon or multipolygon; edges are straight in longitude/latitude.

    Examples
    --------
    >>> square = Polygon([(11.0, 48.0), (11.1, 48.0), (11.1, 48.1), (11.0, 48.1)])
    >>> PolygonFence(id="yard", name="Yard", shape=square).contains(48.05, 11.05)
    True
    """

    shape: Polygon | MultiPolygon

    def _check_shape(self) -> None:
        if not isinstance(self.shape, Polygon | MultiPolygon):
            message = f"shape must be a Polygon or MultiPolygon, got {self.shape!r}"
            raise InvalidGeofence(message)
        if self.shape.is_empty or not self.shape.is_valid:
            reason = shapely.is_valid_reason(self.shape)
            message = f"polygon of geofence {self.id!r} is invalid: {reason}"
            raise InvalidGeofence(message)
        west, south, east, north = self.shape.bounds
        if west < -180 or east > 180 or south < -90 or north > 90:
            message = f"polygon of geofence {self.id!r} leaves ±180°/±90°"
            raise InvalidGeofence(message)
        if east - west > 180:
            message = (
                f"polygon of geofence {self.id!r} spans {east - west:.1f}° of "
                f"longitude: split it at the antimeridian into a MultiPolygon"
            )
            raise InvalidGeofence(message)

    def contains(self, latitude: float, longitude: float) -> bool:
        """Whether a point lies inside or on the boundary."""
        return bool(shapely.intersects_xy(self.shape, longitude, latitude))

    def geometry(self) -> dict[str, Any]:
        """The GeoJSON Polygon or MultiPolygon."""
        plain: dict[str, Any] = _as_lists(mapping(self.shape))
        return plain


@dataclass(frozen=True, slots=True, kw_only=True)
class CircleFence(Geofence):
    """A spherical circle: every point within ``radius_m`` metres of the centre.

    Examples
    --------
    >>> depot = CircleFence(id="d", name="Depot", latitude=89.999, longitude=0.0,
    ...                     radius_m=300.0)
    >>> depot.contains(89.999, 180.0)  # 222 m away, across the pole
    True
    """

    latitude: float
    longitude: float
    radius_m: float

    def _check_shape(self) -> None:
        _check_position(self.longitude, self.latitude, self.id)
        _check_reach(self.radius_m, "radius", self.id)

    def contains(self, latitude: float, longitude: float) -> bool:
        """Whether a point is at most ``radius_m`` from the centre (great circle)."""
        centre = _unit_vector(self.latitude, self.longitude)
        point = _unit_vector(latitude, longitude)
        return _chord2(centre, point) <= _chord2_limit(self.radius_m)

    def geometry(self) -> dict[str, Any]:
        """The centre as a GeoJSON Point."""
        return {"type": "Point", "coordinates": [self.longitude, self.latitude]}

    def extra_properties(self) -> dict[str, Any]:
        """The radius in metres."""
        return {"radius": self.radius_m}


@dataclass(frozen=True, slots=True, kw_only=True)
class CorridorFence(Geofence):
    """Every point within half of ``width_m`` of a polyline of great-circle arcs.

    ``path`` holds ``(longitude, latitude)`` positions in GeoJSON order; repeated
    consecutive positions are allowed and ignored.

    Examples
    --------
    >>> road = CorridorFence(id="r", name="Road", path=((0.0, 0.0), (0.0, 1.0)),
    ...                      width_m=100.0)
    >>> road.contains(0.5, 0.0004), road.contains(0.5, 0.0005)  # 44 m, 56 m off
    (True, False)
    """

    path: tuple[tuple[float, float], ...]
    width_m: float

    def _check_shape(self) -> None:
        for longitude, latitude in self.path:
            _check_position(longitude, latitude, self.id)
        _check_reach(self.width_m / 2, "half width", self.id)
        if len(set(self.path)) < 2:
            message = f"corridor {self.id!r} needs at least two distinct positions"
            raise InvalidGeofence(message)
        lons, lats = np.array(self.path).T
        if np.any(haversine_m(lats[:-1], lons[:-1], lats[1:], lons[1:]) > 10_000_000):
            message = f"corridor {self.id!r} has a segment longer than 10,000 km"
            raise InvalidGeofence(message)

    def contains(self, latitude: float, longitude: float) -> bool:
        """Whether a point is at most half the width from the path (great circle)."""
        point = _unit_vector(latitude, longitude)
        return any(_near_arc(point, arc) for arc in _arcs(self.path, self.width_m / 2))

    def geometry(self) -> dict[str, Any]:
        """The path as a GeoJSON LineString."""
        return {"type": "LineString", "coordinates": [list(p) for p in self.path]}

    def extra_properties(self) -> dict[str, Any]:
        """The full width in metres."""
        return {"width": self.width_m}


def speed_limit_kmh(
    fences: Iterable[Geofence], device_limit_kmh: float | None = None
) -> float | None:
    """The speed limit for a fix: the lowest of the device's and its geofences'.

    Parameters
    ----------
    fences
        The geofences that contain the fix (already filtered by assignment).
    device_limit_kmh
        The device's (or its group's, or the global) limit, ``None`` for none.

    Examples
    --------
    >>> school = CircleFence(id="s", name="School", latitude=48.1, longitude=11.5,
    ...                      radius_m=200.0, speed_limit_kmh=30.0)
    >>> speed_limit_kmh([school], 80.0), speed_limit_kmh([], None)
    (30.0, None)
    """
    limits = [f.speed_limit_kmh for f in fences if f.speed_limit_kmh is not None]
    if device_limit_kmh is not None:
        limits.append(device_limit_kmh)
    return min(limits, default=None)


# --- GeoJSON -------------------------------------------------------------------------


def geofence_from_geojson(
    feature_or_geometry: Mapping[str, Any],
    *,
    fence_id: str | None = None,
    name: str | None = None,
    speed_limit_kmh: float | None = None,
) -> Geofence:
    """Build a geofence from a GeoJSON Feature or bare geometry, as the API carries it.

    A circle is a ``Point`` with a ``radius`` in metres, a corridor a ``LineString``
    with a ``width`` in metres; ``Polygon`` and ``MultiPolygon`` are polygons.  In a
    Feature, ``radius``, ``width``, ``name`` and ``speedLimit`` (km/h) are read from
    ``properties`` and the id from the Feature's ``id``; on a bare geometry they are
    read from the geometry object itself.  Keyword arguments win over both.

    Raises
    ------
    InvalidGeofence
        For anything unusable: wrong types, an unclosed or self-intersecting ring, a
        missing or non-positive radius or width, coordinates out of range.

    Examples
    --------
    >>> fence = geofence_from_geojson(
    ...     {"type": "Point", "coordinates": [11.5, 48.1], "radius": 250},
    ...     fence_id="depot")
    >>> type(fence).__name__, fence.name, fence.radius_m
    ('CircleFence', 'depot', 250.0)
    """
    geometry, properties, feature_id = _unwrap(feature_or_geometry)
    chosen_id = _fence_id(fence_id if fence_id is not None else feature_id)
    common: dict[str, Any] = {
        "id": chosen_id,
        "name": name if name is not None else properties.get("name", chosen_id),
        "speed_limit_kmh": (
            speed_limit_kmh
            if speed_limit_kmh is not None
            else properties.get("speedLimit")
        ),
    }

    kind = geometry.get("type")
    coordinates = geometry.get("coordinates")
    if kind == "Point":
        longitude, latitude = _position(coordinates, "Point")
        radius = _required_metres(properties, "radius", "a circle (Point)")
        return CircleFence(
            **common, latitude=latitude, longitude=longitude, radius_m=radius
        )
    if kind == "LineString":
        path = tuple(_position(p, "LineString") for p in _sequence(coordinates, kind))
        width = _required_metres(properties, "width", "a corridor (LineString)")
        return CorridorFence(**common, path=path, width_m=width)
    if kind in ("Polygon", "MultiPolygon"):
        return PolygonFence(**common, shape=_polygon(kind, coordinates))
    message = (
        "geometry type must be Point (with radius), LineString (with width), "
        f"Polygon or MultiPolygon, got {kind!r}"
    )
    raise InvalidGeofence(message)


def to_geojson(fence: Geofence) -> dict[str, Any]:
    """The geofence as a GeoJSON Feature that :func:`geofence_from_geojson` reads back.

    Examples
    --------
    >>> fence = CircleFence(id="d", name="Depot", latitude=48.1, longitude=11.5,
    ...                     radius_m=250.0)
    >>> to_geojson(fence)["properties"]
    {'name': 'Depot', 'radius': 250.0}
    """
    properties: dict[str, Any] = {"name": fence.name, **fence.extra_properties()}
    if fence.speed_limit_kmh is not None:
        properties["speedLimit"] = fence.speed_limit_kmh
    return {
        "type": "Feature",
        "id": fence.id,
        "geometry": fence.geometry(),
        "properties": properties,
    }


def _unwrap(
    value: Mapping[str, Any],
) -> tuple[Mapping[str, Any], Mapping[str, Any], Any]:
    if not isinstance(value, Mapping):
        message = f"a geofence must be a GeoJSON object, got {type(value).__name__}"
        raise InvalidGeofence(message)
    if value.get("type") != "Feature":
        return value, value, value.get("id")

    geometry = value.get("geometry")
    properties = value.get("properties") or {}
    if not isinstance(geometry, Mapping):
        message = f"a Feature's geometry must be an object, got {geometry!r}"
        raise InvalidGeofence(message)
    if not isinstance(properties, Mapping):
        message = f"a Feature's properties must be an object, got {properties!r}"
        raise InvalidGeofence(message)
    return geometry, properties, value.get("id", properties.get("id"))


def _fence_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        message = f"a geofence needs an id (string or integer), got {value!r}"
        raise InvalidGeofence(message)
    return str(value)


def _required_metres(properties: Mapping[str, Any], key: str, what: str) -> float:
    value = properties.get(key)
    if not _is_number(value):
        message = f"{what} needs a numeric {key!r} in metres, got {value!r}"
        raise InvalidGeofence(message)
    return float(value)


def _sequence(value: Any, what: str) -> Sequence[Any]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        message = f"{what} coordinates must be an array, got {value!r}"
        raise InvalidGeofence(message)
    return value


def _position(value: Any, what: str) -> tuple[float, float]:
    items = _sequence(value, what)
    if len(items) not in (2, 3) or not all(_is_number(v) for v in items):
        message = f"a {what} position must be [longitude, latitude], got {value!r}"
        raise InvalidGeofence(message)
    return float(items[0]), float(items[1])


def _ring(value: Any, index: int) -> list[tuple[float, float]]:
    positions = [_position(p, "Polygon") for p in _sequence(value, "Polygon ring")]
    if len(positions) < 4:
        message = (
            f"polygon ring {index} needs at least 4 positions, got {len(positions)}"
        )
        raise InvalidGeofence(message)
    if positions[0] != positions[-1]:
        message = (
            f"polygon ring {index} is not closed: it starts at {positions[0]} "
            f"and ends at {positions[-1]}"
        )
        raise InvalidGeofence(message)
    return positions


def _polygon(kind: str, coordinates: Any) -> Polygon | MultiPolygon:
    def one(rings: Any) -> Polygon:
        parsed = [_ring(r, i) for i, r in enumerate(_sequence(rings, "Polygon"))]
        if not parsed:
            message = "a polygon needs at least one ring"
            raise InvalidGeofence(message)
        return Polygon(parsed[0], parsed[1:])

    if kind == "Polygon":
        return one(coordinates)
    return MultiPolygon([one(p) for p in _sequence(coordinates, kind)])


def _as_lists(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _as_lists(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_as_lists(v) for v in value]
    return value


def _is_number(value: Any) -> TypeGuard[float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _check_position(longitude: float, latitude: float, fence_id: str) -> None:
    if not (
        _is_number(longitude)
        and _is_number(latitude)
        and -180 <= longitude <= 180
        and -90 <= latitude <= 90
    ):
        message = (
            f"geofence {fence_id!r} has a position outside ±180° longitude and "
            f"±90° latitude: {(longitude, latitude)!r}"
        )
        raise InvalidGeofence(message)


def _check_reach(metres: float, what: str, fence_id: str) -> None:
    if not (_is_number(metres) and 0 < metres <= MAX_REACH_M):
        message = (
            f"{what} of geofence {fence_id!r} must be a positive number of metres "
            f"up to {MAX_REACH_M:.0f}, got {metres!r}"
        )
        raise InvalidGeofence(message)


# --- spherical geometry ---------------------------------------------------------------

Vector = tuple[float, float, float]


def _unit_vector(latitude: float, longitude: float) -> Vector:
    """A point as a unit vector, x towards 0° E, z towards the north pole."""
    phi, lam = math.radians(latitude), math.radians(longitude)
    return (math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi))


def _dot(u: Vector, v: Vector) -> float:
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _cross(u: Vector, v: Vector) -> Vector:
    return (
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    )


def _chord2(u: Vector, v: Vector) -> float:
    """The squared straight-line distance between two unit vectors."""
    return (u[0] - v[0]) ** 2 + (u[1] - v[1]) ** 2 + (u[2] - v[2]) ** 2


def _chord2_limit(reach_m: float) -> float:
    """The squared chord of a great-circle distance: compare chords, not angles."""
    return (2 * math.sin(reach_m / EARTH_RADIUS_M / 2)) ** 2


class _Arc(NamedTuple):
    """A great-circle arc from ``a`` to ``b`` and how far it reaches, ready to test.

    A point ``p`` whose projection onto the arc's great circle falls between ``a``
    and ``b`` (the lune where ``p·after_a ≥ 0`` and ``p·before_b ≥ 0``) lies
    ``asin|p·normal|`` from the arc; any other point is nearest to an end.  Both
    compare as a sine and a chord, so no trigonometry runs per test.
    """

    a: Vector
    b: Vector
    normal: Vector
    after_a: Vector
    before_b: Vector
    sine_limit: float
    chord2_limit: float


def _arcs(path: Sequence[tuple[float, float]], reach_m: float) -> list[_Arc]:
    ends = [_unit_vector(lat, lon) for lon, lat in _distinct(path)]
    sine, chord2 = math.sin(reach_m / EARTH_RADIUS_M), _chord2_limit(reach_m)
    arcs = []
    for a, b in itertools.pairwise(ends):
        normal = _cross(a, b)
        length = math.sqrt(_dot(normal, normal))
        normal = (normal[0] / length, normal[1] / length, normal[2] / length)
        after_a, before_b = _cross(normal, a), _cross(b, normal)
        arcs.append(_Arc(a, b, normal, after_a, before_b, sine, chord2))
    return arcs


def _near_arc(point: Vector, arc: _Arc) -> bool:
    if _chord2(point, arc.a) <= arc.chord2_limit:
        return True
    if _chord2(point, arc.b) <= arc.chord2_limit:
        return True
    return (
        abs(_dot(point, arc.normal)) <= arc.sine_limit
        and _dot(point, arc.after_a) >= 0
        and _dot(point, arc.before_b) >= 0
    )


def _distinct(path: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [p for i, p in enumerate(path) if i == 0 or p != path[i - 1]]


def _unit_vectors(latitudes: Array, longitudes: Array) -> Array:
    """Points as unit vectors (n, 3), as :func:`_unit_vector` makes them."""
    phi, lam = np.radians(latitudes), np.radians(longitudes)
    vectors: Array = np.stack(
        [np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1
    )
    return vectors


def _rows_dot(a: Array, b: Array) -> Array:
    dots: Array = np.einsum("ij,ij->i", a, b)
    return dots


class _ArcTable:
    """The fields of many :class:`_Arc` as arrays, for the same test vectorised."""

    def __init__(self, arcs: Sequence[_Arc]) -> None:
        def column(i: int) -> Array:
            values = np.array([arc[i] for arc in arcs], dtype=float)
            return values.reshape(len(arcs), 3) if i < 5 else values

        (
            self.a,
            self.b,
            self.normal,
            self.after_a,
            self.before_b,
            self.sine_limit,
            self.chord2_limit,
        ) = (column(i) for i in range(7))

    def near(self, points: Array, arcs: Indices) -> Bools:
        """Whether each point (unit vectors) is within reach of the paired arc."""
        limit = self.chord2_limit[arcs]
        near_a = np.sum((points - self.a[arcs]) ** 2, axis=1) <= limit
        near_b = np.sum((points - self.b[arcs]) ** 2, axis=1) <= limit
        beside = (
            (np.abs(_rows_dot(points, self.normal[arcs])) <= self.sine_limit[arcs])
            & (_rows_dot(points, self.after_a[arcs]) >= 0)
            & (_rows_dot(points, self.before_b[arcs]) >= 0)
        )
        near: Bools = near_a | near_b | beside
        return near

    def latitude_spans(self) -> tuple[Array, Array]:
        """South and north latitudes (degrees) each arc reaches.

        An arc can bulge poleward of both ends: its great circle's northernmost
        (or southernmost) point counts when it lies on the arc.
        """
        south = _latitudes(np.minimum(self.a[:, 2], self.b[:, 2]))
        north = _latitudes(np.maximum(self.a[:, 2], self.b[:, 2]))
        top = np.array([0.0, 0.0, 1.0]) - self.normal[:, 2:] * self.normal
        length = np.linalg.norm(top, axis=1, keepdims=True)
        top = np.divide(top, length, out=np.zeros_like(top), where=length > 1e-12)
        for extreme in (top, -top):
            on_arc = (_rows_dot(extreme, self.after_a) >= 0) & (
                _rows_dot(extreme, self.before_b) >= 0
            )
            latitude = _latitudes(extreme[:, 2])
            south = np.where(on_arc, np.minimum(south, latitude), south)
            north = np.where(on_arc, np.maximum(north, latitude), north)
        return south, north


def _latitudes(z: Array) -> Array:
    degrees: Array = np.degrees(np.arcsin(np.clip(z, -1.0, 1.0)))
    return degrees


def _reach_boxes(
    south: Array, north: Array, west: Array, east: Array, reach_m: Array
) -> tuple[Any, Indices]:
    """Longitude/latitude boxes holding every point within ``reach_m`` of each box.

    ``west`` to ``east`` may run past ±180° (an unwrapped range).  A box that
    crosses the antimeridian is split in two; one that comes within reach of a pole
    takes every longitude.  The widening in longitude, ``asin(sin δ / cos φ)`` for
    an angular reach ``δ`` at the box's most polar latitude ``φ``, is the exact
    half-width of a spherical cap.  Returns shapely boxes and the input row of each.
    """
    reach = reach_m / EARTH_RADIUS_M
    reach_deg = np.degrees(reach) + _BOX_MARGIN_DEG
    south, north = south - reach_deg, north + reach_deg
    polar = (south <= -90) | (north >= 90)
    most_polar = np.where(polar, 0.0, np.radians(np.maximum(-south, north)))
    ratio = np.minimum(1.0, np.sin(reach) / np.cos(most_polar))
    widen = np.degrees(np.arcsin(ratio)) + _BOX_MARGIN_DEG

    west, east = west - widen, east + widen
    full = polar | (east - west >= 360)
    west, east = np.where(full, -180.0, west), np.where(full, 180.0, east)
    south, north = np.maximum(south, -90.0), np.minimum(north, 90.0)
    shift = np.floor((west + 180) / 360) * 360
    west, east = west - shift, east - shift

    over = np.flatnonzero(east > 180)
    boxes = np.concatenate(
        [
            shapely.box(west, south, np.minimum(east, 180.0), north),
            shapely.box(-180.0, south[over], east[over] - 360, north[over]),
        ]
    )
    rows = np.concatenate([np.arange(len(west)), over])
    return boxes, rows


# --- the index ------------------------------------------------------------------------


class _Layer:
    """Items of one kind (polygons, circles or corridor arcs), each of a geofence.

    ``entries`` are what the index's STRtree holds: the polygons themselves (the
    tree's own test is then exact), or boxes bounding the spherical items (an item
    split at the antimeridian has two).  :meth:`holds` and :meth:`confirm` make the
    same exact test, one point in plain Python (cheaper for a single fix than
    numpy's per-call overhead), many points vectorised.
    """

    def __init__(self, entries: Any, item_of_entry: Indices, owners: Indices) -> None:
        self.entries = entries
        self.item_of_entry = item_of_entry
        self.owners = owners
        self.owner_list: list[int] = owners.tolist()

    def holds(self, item: int, vector: Vector) -> bool:
        """Whether one item holds a point; the tree's own test was exact."""
        return True

    def holds_at(self, item: int, latitude: float, longitude: float) -> bool:
        """Whether one item holds a point, without the tree's test."""
        return self.holds(item, _unit_vector(latitude, longitude))

    def covers(self, item: int, cell: Any) -> bool:
        """Whether one item holds every point of a grid cell (a shapely box).

        ``False`` is always safe: the points of the cell are then tested one by
        one with :meth:`holds_at`.
        """
        return False

    def confirm(self, items: Indices, lats: Array, lons: Array) -> Bools:
        """Which candidate pairs are really inside; the tree's own test was exact."""
        return np.ones(len(items), dtype=bool)


class _PolygonLayer(_Layer):
    def __init__(self, polygons: Sequence[tuple[int, PolygonFence]]) -> None:
        shapes = np.array([f.shape for _, f in polygons], dtype=object)
        owners = np.array([owner for owner, _ in polygons], dtype=np.intp)
        super().__init__(shapes, np.arange(len(polygons)), owners)
        shapely.prepare(shapes)

    def holds_at(self, item: int, latitude: float, longitude: float) -> bool:
        return bool(shapely.intersects_xy(self.entries[item], longitude, latitude))

    def covers(self, item: int, cell: Any) -> bool:
        return bool(shapely.covers(self.entries[item], cell))


class _CircleLayer(_Layer):
    def __init__(self, circles: Sequence[tuple[int, CircleFence]]) -> None:
        self._lats = np.array([c.latitude for _, c in circles], dtype=float)
        self._lons = np.array([c.longitude for _, c in circles], dtype=float)
        self._radii = np.array([c.radius_m for _, c in circles], dtype=float)
        self._centres = [_unit_vector(c.latitude, c.longitude) for _, c in circles]
        self._limits = [_chord2_limit(c.radius_m) for _, c in circles]
        boxes, rows = _reach_boxes(
            self._lats, self._lats, self._lons, self._lons, self._radii
        )
        owners = np.array([owner for owner, _ in circles], dtype=np.intp)
        super().__init__(boxes, rows, owners)

    def holds(self, item: int, vector: Vector) -> bool:
        return _chord2(self._centres[item], vector) <= self._limits[item]

    def confirm(self, items: Indices, lats: Array, lons: Array) -> Bools:
        centres = _unit_vectors(self._lats[items], self._lons[items])
        chord2 = np.sum((_unit_vectors(lats, lons) - centres) ** 2, axis=1)
        inside: Bools = chord2 <= np.array(self._limits)[items]
        return inside


class _CorridorLayer(_Layer):
    def __init__(self, corridors: Sequence[tuple[int, CorridorFence]]) -> None:
        self._arcs: list[_Arc] = []
        owners, reaches, starts, ends = [], [], [], []
        for owner, corridor in corridors:
            path = _distinct(corridor.path)
            self._arcs += _arcs(path, corridor.width_m / 2)
            owners += [owner] * (len(path) - 1)
            reaches += [corridor.width_m / 2] * (len(path) - 1)
            starts += [lon for lon, _ in path[:-1]]
            ends += [lon for lon, _ in path[1:]]
        self._table = _ArcTable(self._arcs)

        west = np.array(starts, dtype=float)
        # A minor arc spans the shorter way round in longitude.
        east = west + (np.array(ends, dtype=float) - west + 180) % 360 - 180
        south, north = self._table.latitude_spans()
        boxes, rows = _reach_boxes(
            south,
            north,
            np.minimum(west, east),
            np.maximum(west, east),
            np.array(reaches, dtype=float),
        )
        super().__init__(boxes, rows, np.array(owners, dtype=np.intp))

    def holds(self, item: int, vector: Vector) -> bool:
        return _near_arc(vector, self._arcs[item])

    def confirm(self, items: Indices, lats: Array, lons: Array) -> Bools:
        return self._table.near(_unit_vectors(lats, lons), items)


class GeofenceIndex(Mapping[str, Geofence]):
    """Every geofence of a task, indexed to answer "which contain this point?".

    It is also a read-only mapping from id to geofence.  Building one is cheap (a
    few tenths of a second for 10,000 geofences on two cores, see the tests'
    benchmark): on any change the job builds a new index with :meth:`changed` and
    swaps it in; the membership states need nothing (see :func:`advance`).

    Parameters
    ----------
    fences
        The geofences; ids must be unique.

    Examples
    --------
    >>> index = GeofenceIndex([
    ...     CircleFence(id="a", name="A", latitude=0.0, longitude=179.9999,
    ...                 radius_m=100.0),
    ...     CircleFence(id="b", name="B", latitude=0.0, longitude=10.0,
    ...                 radius_m=100.0)])
    >>> sorted(index.containing(0.0, -179.9995))  # 67 m across the antimeridian
    ['a']
    """

    def __init__(self, fences: Iterable[Geofence]) -> None:
        self._fences: dict[str, Geofence] = {}
        for fence in fences:
            if fence.id in self._fences:
                message = f"geofence ids must be unique, {fence.id!r} appears twice"
                raise ValueError(message)
            self._fences[fence.id] = fence
        self._ids = list(self._fences)

        listed = list(enumerate(self._fences.values()))
        self._layers = (
            _PolygonLayer([(i, f) for i, f in listed if isinstance(f, PolygonFence)]),
            _CircleLayer([(i, f) for i, f in listed if isinstance(f, CircleFence)]),
            _CorridorLayer([(i, f) for i, f in listed if isinstance(f, CorridorFence)]),
        )
        # One tree over every layer's entries: one query per point, not three.
        self._tree = shapely.STRtree(np.concatenate([x.entries for x in self._layers]))
        self._layer_of_entry = np.concatenate(
            [np.full(len(x.entries), k) for k, x in enumerate(self._layers)]
        )
        self._item_of_entry = np.concatenate([x.item_of_entry for x in self._layers])
        self._entry_list = [
            (layer, item)
            for layer in self._layers
            for item in layer.item_of_entry.tolist()
        ]
        self._cell_candidates = functools.lru_cache(maxsize=_CELLS_REMEMBERED)(
            self._candidates_in_cell
        )

    def __getitem__(self, fence_id: str) -> Geofence:
        return self._fences[fence_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fences)

    def __len__(self) -> int:
        return len(self._fences)

    def changed(
        self, upserted: Iterable[Geofence] = (), deleted: Iterable[str] = ()
    ) -> GeofenceIndex:
        """A new index with geofences added or replaced and others removed by id."""
        fences = dict(self._fences)
        for fence_id in deleted:
            fences.pop(fence_id, None)
        for fence in upserted:
            fences[fence.id] = fence
        return GeofenceIndex(fences.values())

    def containing(self, latitude: float, longitude: float) -> frozenset[str]:
        """Ids of the geofences that contain one point (inside or on the edge).

        The index remembers, per grid cell (:data:`_CELLS_PER_DEG`), which
        geofences cover the whole cell and which cross it: a vehicle stays in a
        cell for many fixes and a fleet keeps to the same roads, so most fixes
        cost a lookup and an exact test of only the geofences whose edge is near.
        """
        if not (math.isfinite(latitude) and math.isfinite(longitude)):
            return frozenset()
        remembered = self._cell_candidates(
            math.floor(latitude * _CELLS_PER_DEG),
            math.floor(longitude * _CELLS_PER_DEG),
        )
        if remembered is None:
            return self._containing_by_tree(latitude, longitude)
        covering, crossing = remembered
        if not crossing:
            return covering

        found = set(covering)
        for layer, item, fence_id in crossing:
            if fence_id not in found and layer.holds_at(item, latitude, longitude):
                found.add(fence_id)
        return frozenset(found)

    def _containing_by_tree(self, latitude: float, longitude: float) -> frozenset[str]:
        """:meth:`containing` asked of the tree, for a cell crossed by many edges."""
        entries = self._tree.query(
            shapely.Point(longitude, latitude), predicate="intersects"
        )
        vector = _unit_vector(latitude, longitude)
        found = set()
        for entry in entries.tolist():
            layer, item = self._entry_list[entry]
            if layer.holds(item, vector):
                found.add(self._ids[layer.owner_list[item]])
        return frozenset(found)

    def _candidates_in_cell(
        self, row: int, column: int
    ) -> tuple[frozenset[str], tuple[tuple[_Layer, int, str], ...]] | None:
        """Geofences covering a whole grid cell, and items that cross its box.

        ``None`` when more than :data:`_CROSSING_LIMIT` items cross the cell:
        testing each would cost more than asking the tree about the point.
        """
        cell = shapely.box(
            column / _CELLS_PER_DEG,
            row / _CELLS_PER_DEG,
            (column + 1) / _CELLS_PER_DEG,
            (row + 1) / _CELLS_PER_DEG,
        )
        covering: set[str] = set()
        crossing: list[tuple[_Layer, int, str]] = []
        for entry in self._tree.query(cell, predicate="intersects").tolist():
            layer, item = self._entry_list[entry]
            fence_id = self._ids[layer.owner_list[item]]
            if layer.covers(item, cell):
                covering.add(fence_id)
            else:
                crossing.append((layer, item, fence_id))
        kept = tuple(c for c in crossing if c[2] not in covering)
        if len(kept) > _CROSSING_LIMIT:
            return None
        return frozenset(covering), kept

    def containing_many(
        self, latitudes: Sequence[float] | Array, longitudes: Sequence[float] | Array
    ) -> list[frozenset[str]]:
        """Ids of the geofences containing each point, for a whole batch at once.

        Parameters
        ----------
        latitudes, longitudes
            WGS 84 degrees, equal lengths.  A point with a NaN coordinate is in none.
        """
        lats = np.asarray(latitudes, dtype=float)
        lons = np.asarray(longitudes, dtype=float)
        if lats.shape != lons.shape or lats.ndim != 1:
            message = (
                f"latitudes and longitudes must be 1-D of one length, got shapes "
                f"{lats.shape} and {lons.shape}"
            )
            raise ValueError(message)

        pairs = self._tree.query(shapely.points(lons, lats), predicate="intersects")
        found: list[set[str]] = [set() for _ in range(len(lats))]
        for k, layer in enumerate(self._layers):
            mine = pairs[:, self._layer_of_entry[pairs[1]] == k]
            count = len(layer.owners)
            # An item split at the antimeridian has two boxes: keep each pair once.
            keys = np.unique(mine[0] * count + self._item_of_entry[mine[1]])
            at, items = keys // count, keys % count

            inside = layer.confirm(items, lats[at], lons[at])
            owners = layer.owners[items[inside]]
            for point, owner in zip(at[inside].tolist(), owners.tolist(), strict=True):
                found[point].add(self._ids[owner])
        return [frozenset(ids) for ids in found]


# --- membership with dwell ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DwellSettings:
    """How long a device must stay on the new side before it enters or leaves.

    A change is confirmed by whichever criterion is met first: ``*_after_s`` seconds
    since the first fix on the new side, or ``*_after_fixes`` consecutive fixes on
    it.  ``None`` turns a criterion off; with both off, a change is immediate (and a
    vehicle on an edge flaps).  One fix back on the old side resets the count.
    """

    enter_after_s: float | None = 10.0
    enter_after_fixes: int | None = 3
    exit_after_s: float | None = 10.0
    exit_after_fixes: int | None = 3

    def __post_init__(self) -> None:
        for name in ("enter_after_s", "exit_after_s"):
            seconds = getattr(self, name)
            if seconds is not None and not (_is_number(seconds) and seconds >= 0):
                message = f"{name} must be None or seconds >= 0, got {seconds!r}"
                raise ValueError(message)
        for name in ("enter_after_fixes", "exit_after_fixes"):
            fixes = getattr(self, name)
            if fixes is not None and not (
                isinstance(fixes, int) and not isinstance(fixes, bool) and fixes >= 1
            ):
                message = f"{name} must be None or a whole number >= 1, got {fixes!r}"
                raise ValueError(message)


class Crossing(NamedTuple):
    """The first fix of a device on the other side of a geofence's edge."""

    time_ms: int
    latitude: float
    longitude: float
    fixes: int


class Stay(NamedTuple):
    """A confirmed stay inside a geofence: when it began, and the fence's name then."""

    enter_ms: int
    name: str


@dataclass(frozen=True, slots=True)
class MembershipState:
    """Where one device is, by geofence id; plain values, cheap to pickle.

    ``inside`` holds confirmed stays; ``pending`` the geofences whose edge the device
    has crossed without the dwell being met yet (an exit for ids in ``inside``, an
    entry otherwise).  Never mutated: :func:`advance` returns a new one.
    """

    inside: dict[str, Stay] = field(default_factory=dict)
    pending: dict[str, Crossing] = field(default_factory=dict)
    last_time_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Visit:
    """One closed stay of a device in a geofence (times in epoch milliseconds).

    ``closed_by`` is ``"exit"`` when the device left, ``"deleted"`` when the geofence
    was removed (or changed id) while the device was inside.
    """

    device: str
    geofence: str
    name: str
    enter_ms: int
    exit_ms: int
    closed_by: str = "exit"

    @property
    def duration_s(self) -> float:
        """How long the stay lasted, in seconds."""
        return (self.exit_ms - self.enter_ms) / 1000


def advance(
    state: MembershipState,
    fix: FixPoint,
    settings: DwellSettings,
    *,
    containing: Collection[str],
    fences: Mapping[str, Geofence],
) -> tuple[MembershipState, list[GeoEvent | Visit]]:
    """Step one device's geofence membership by one fix.

    Parameters
    ----------
    state
        The device's state (a fresh ``MembershipState()`` at first).
    fix
        The next fix of the device, in fix-time order.  An older one is ignored with
        a warning.
    settings
        The dwell rules.
    containing
        Ids of the geofences that contain the fix and apply to the device, i.e.
        :meth:`GeofenceIndex.containing` intersected with the device's assignments.
    fences
        The geofences now defined (the index itself); a stay in one that is no
        longer here is closed as deleted.

    Returns
    -------
    tuple
        The new state, and the events and visits this fix confirmed.  An event
        carries the time and place of the first fix on the new side, the best
        estimate of the crossing; it is returned when the dwell is met.

    Examples
    --------
    >>> fences = {"d": CircleFence(id="d", name="Depot", latitude=0.0,
    ...                            longitude=0.0, radius_m=50.0)}
    >>> state, out = advance(MembershipState(), FixPoint("car", 1000, 0.0, 0.0),
    ...                      DwellSettings(None, 1, None, 1), containing={"d"},
    ...                      fences=fences)
    >>> [(e.type, e.attributes["geofence"]) for e in out]
    [('geofenceEnter', 'd')]
    """
    if state.last_time_ms is not None and fix.time_ms < state.last_time_ms:
        warnings.warn(
            f"fix of {fix.device!r} at {fix.time_ms} is older than the previous one "
            f"({state.last_time_ms}); geofence membership ignores it",
            stacklevel=2,
        )
        return state, []

    inside, pending = dict(state.inside), dict(state.pending)
    outputs: list[GeoEvent | Visit] = []
    for fence_id in sorted(f for f in inside if f not in fences):
        stay = inside.pop(fence_id)
        closed = Visit(
            fix.device, fence_id, stay.name, stay.enter_ms, fix.time_ms, "deleted"
        )
        outputs.append(closed)
    for fence_id in [f for f in pending if f not in fences]:
        del pending[fence_id]

    here = {fence_id for fence_id in containing if fence_id in fences}
    for fence_id in sorted(here.union(inside, pending)):
        outputs += _step_fence(
            fence_id, fence_id in here, fix, settings, fences, inside, pending
        )
    return MembershipState(inside, pending, fix.time_ms), outputs


def _step_fence(
    fence_id: str,
    is_inside: bool,
    fix: FixPoint,
    settings: DwellSettings,
    fences: Mapping[str, Geofence],
    inside: dict[str, Stay],
    pending: dict[str, Crossing],
) -> list[GeoEvent | Visit]:
    was_inside = fence_id in inside
    if is_inside == was_inside:
        pending.pop(fence_id, None)
        return []

    seen = pending.get(fence_id)
    if seen is None:
        seen = Crossing(fix.time_ms, fix.latitude, fix.longitude, 1)
    else:
        seen = seen._replace(fixes=seen.fixes + 1)
    if was_inside:
        rule = settings.exit_after_s, settings.exit_after_fixes
    else:
        rule = settings.enter_after_s, settings.enter_after_fixes
    if not _dwelt(seen, fix.time_ms, *rule):
        pending[fence_id] = seen
        return []

    pending.pop(fence_id, None)
    name = fences[fence_id].name
    if not was_inside:
        inside[fence_id] = Stay(seen.time_ms, name)
        return [_crossing_event(fix.device, "geofenceEnter", seen, fence_id, name)]

    stay = inside.pop(fence_id)
    visit = Visit(fix.device, fence_id, name, stay.enter_ms, seen.time_ms)
    event = _crossing_event(
        fix.device, "geofenceExit", seen, fence_id, name, duration_s=visit.duration_s
    )
    return [event, visit]


def _crossing_event(
    device: str, kind: str, seen: Crossing, fence_id: str, name: str, **extra: float
) -> GeoEvent:
    attributes: dict[str, Any] = {"geofence": fence_id, "name": name, **extra}
    return GeoEvent(
        device, kind, seen.time_ms, seen.latitude, seen.longitude, attributes
    )


def _dwelt(
    seen: Crossing, now_ms: int, after_s: float | None, after_fixes: int | None
) -> bool:
    if after_s is None and after_fixes is None:
        return True
    by_time = after_s is not None and now_ms - seen.time_ms >= after_s * 1000
    by_count = after_fixes is not None and seen.fixes >= after_fixes
    return by_time or by_count


def run_membership(
    fixes: Iterable[FixPoint] | pd.DataFrame,
    index: GeofenceIndex,
    settings: DwellSettings,
    *,
    assigned: Mapping[str, Collection[str]] | None = None,
) -> tuple[dict[str, MembershipState], list[GeoEvent | Visit]]:
    """Run :func:`advance` over fixes of one or more devices, as replay does.

    The fixes are taken in fix-time order (stable for equal times) and looked up in
    the index in one vectorised call, as the job does once per bundle.

    Parameters
    ----------
    fixes
        Fixes of any devices, or a track table (see
        :func:`geo.filtering.fix_points`).
    index
        The geofences.
    settings
        The dwell rules.
    assigned
        Geofence ids per device; ``None`` applies every geofence to every device.

    Returns
    -------
    tuple
        The final state per device, and every event and visit in order.
    """
    points = fix_points(fixes) if isinstance(fixes, pd.DataFrame) else fixes
    ordered = sorted(points, key=lambda f: f.time_ms)
    found = index.containing_many(
        [f.latitude for f in ordered], [f.longitude for f in ordered]
    )

    states: dict[str, MembershipState] = {}
    outputs: list[GeoEvent | Visit] = []
    for fix, ids in zip(ordered, found, strict=True):
        if assigned is not None:
            ids = ids & frozenset(assigned.get(fix.device, ()))
        state = states.get(fix.device, MembershipState())
        states[fix.device], produced = advance(
            state, fix, settings, containing=ids, fences=index
        )
        outputs += produced
    return states, outputs
