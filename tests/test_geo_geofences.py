"""Geofence shapes, their GeoJSON form, the spatial index and dwell-aware membership."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pickle
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyproj
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from geo.events import GeoEvent
from geo.fixes import FixPoint
from geo.geofences import (
    CircleFence,
    CorridorFence,
    DwellSettings,
    Geofence,
    GeofenceIndex,
    InvalidGeofence,
    MembershipState,
    PolygonFence,
    Visit,
    advance,
    geofence_from_geojson,
    run_membership,
    speed_limit_kmh,
    to_geojson,
)
from geo.tracks import EARTH_RADIUS_M, haversine_m

IMMEDIATE = DwellSettings(None, None, None, None)
WGS84 = pyproj.Geod(ellps="WGS84")


# --- builders ---------------------------------------------------------------------


def destination(
    latitude: float, longitude: float, bearing_deg: float, metres: float
) -> tuple[float, float]:
    """The point ``metres`` away along a great circle on the mean-radius sphere."""
    phi, lam = math.radians(latitude), math.radians(longitude)
    theta, delta = math.radians(bearing_deg), metres / EARTH_RADIUS_M
    phi2 = math.asin(
        math.sin(phi) * math.cos(delta)
        + math.cos(phi) * math.sin(delta) * math.cos(theta)
    )
    lam2 = lam + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi),
        math.cos(delta) - math.sin(phi) * math.sin(phi2),
    )
    longitude2 = (math.degrees(lam2) + 540) % 360 - 180
    return math.degrees(phi2), longitude2


def circle(
    radius_m: float = 100.0, lat: float = 48.1, lon: float = 11.5
) -> CircleFence:
    return CircleFence(
        id="depot", name="Depot", latitude=lat, longitude=lon, radius_m=radius_m
    )


def square(
    fence_id: str = "yard", lat: float = 48.1, lon: float = 11.5
) -> PolygonFence:
    shape = Polygon(
        [(lon, lat), (lon + 0.01, lat), (lon + 0.01, lat + 0.01), (lon, lat + 0.01)]
    )
    return PolygonFence(id=fence_id, name=fence_id.title(), shape=shape)


def fixes_at(
    points: Sequence[tuple[float, float]], step_s: float = 1.0, device: str = "van"
) -> list[FixPoint]:
    return [
        FixPoint(device, round(i * step_s * 1000), lat, lon, speed_kmh=20.0)
        for i, (lat, lon) in enumerate(points)
    ]


def around_edge(
    fence: CircleFence, offsets_m: Sequence[float]
) -> list[tuple[float, float]]:
    """A drive round a circle's edge, ``offsets_m`` outside it (negative: inside)."""
    return [
        destination(fence.latitude, fence.longitude, 7.0 * i, fence.radius_m + offset)
        for i, offset in enumerate(offsets_m)
    ]


def run(
    fixes: Sequence[FixPoint], index: GeofenceIndex, dwell: DwellSettings
) -> list[GeoEvent | Visit]:
    _, outputs = run_membership(fixes, index, dwell)
    return outputs


def of_type(outputs: Sequence[GeoEvent | Visit], kind: str) -> list[GeoEvent]:
    return [o for o in outputs if isinstance(o, GeoEvent) and o.type == kind]


def visits(outputs: Sequence[GeoEvent | Visit]) -> list[Visit]:
    return [o for o in outputs if isinstance(o, Visit)]


def city_fences(count: int, seed: int = 7) -> list[Geofence]:
    """Random polygons, circles and corridors over 22 km x 30 km of Munich."""
    rng = random.Random(seed)
    fences: list[Geofence] = []
    for i in range(count):
        lat, lon = rng.uniform(48.05, 48.25), rng.uniform(11.35, 11.75)
        if i % 3 == 0:
            corners = rng.randint(5, 9)
            start = rng.uniform(0, 60)
            ring = [
                destination(lat, lon, start + k * 360 / corners, rng.uniform(50, 500))
                for k in range(corners)
            ]
            shape = Polygon([(x, y) for y, x in ring])
            fences.append(PolygonFence(id=f"p{i}", name=f"P{i}", shape=shape))
        elif i % 3 == 1:
            fences.append(
                CircleFence(
                    id=f"c{i}",
                    name=f"C{i}",
                    latitude=lat,
                    longitude=lon,
                    radius_m=rng.uniform(30, 500),
                )
            )
        else:
            path = [(lat, lon)]
            for _ in range(rng.randint(1, 4)):
                path.append(
                    destination(*path[-1], rng.uniform(0, 360), rng.uniform(200, 1500))
                )
            fences.append(
                CorridorFence(
                    id=f"r{i}",
                    name=f"R{i}",
                    path=tuple((x, y) for y, x in path),
                    width_m=rng.uniform(20, 100),
                )
            )
    return fences


def brute_force(fences: Sequence[Geofence], lat: float, lon: float) -> frozenset[str]:
    return frozenset(f.id for f in fences if f.contains(lat, lon))


# --- GeoJSON ----------------------------------------------------------------------


class TestGeoJson:
    @pytest.mark.parametrize(
        "fence",
        [
            circle(),
            square(),
            CorridorFence(
                id="a9",
                name="A9",
                path=((11.5, 48.1), (11.6, 48.2), (11.7, 48.2)),
                width_m=40.0,
                speed_limit_kmh=120.0,
            ),
            PolygonFence(
                id="two",
                name="Two yards",
                shape=square(lat=1.0).shape.union(square(lat=2.0).shape),
            ),
        ],
        ids=["circle", "polygon", "corridor", "multipolygon"],
    )
    def test_geojson_round_trip(self, fence: Geofence) -> None:
        text = json.dumps(to_geojson(fence))

        assert geofence_from_geojson(json.loads(text)) == fence

    def test_geojson_circle_reads_radius_from_properties(self) -> None:
        feature = {
            "type": "Feature",
            "id": 7,
            "geometry": {"type": "Point", "coordinates": [11.5, 48.1, 520.0]},
            "properties": {"name": "School", "radius": 150, "speedLimit": 30},
        }

        fence = geofence_from_geojson(feature)

        assert fence == CircleFence(
            id="7",
            name="School",
            latitude=48.1,
            longitude=11.5,
            radius_m=150.0,
            speed_limit_kmh=30,
        )

    def test_geojson_keywords_win(self) -> None:
        geometry = {"type": "LineString", "coordinates": [[0, 0], [0, 1]], "width": 10}

        fence = geofence_from_geojson(
            geometry, fence_id="road", name="Road", speed_limit_kmh=50.0
        )

        assert isinstance(fence, CorridorFence)
        assert (fence.id, fence.name, fence.speed_limit_kmh) == ("road", "Road", 50.0)
        assert fence.width_m == 10.0

    @pytest.mark.parametrize(
        ("geojson", "match"),
        [
            (
                {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
                "ring 0 is not closed",
            ),
            (
                {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]],
                },
                "invalid: Self-intersection",
            ),
            (
                {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]},
                "at least 4",
            ),
            ({"type": "Polygon", "coordinates": []}, "at least one ring"),
            ({"type": "Polygon", "coordinates": "0 0 1 1"}, "must be an array"),
            (
                {
                    "type": "Polygon",
                    "coordinates": [[[-170, 0], [170, 0], [170, 1], [-170, 0]]],
                },
                "split it at the antimeridian",
            ),
            (
                {"type": "Point", "coordinates": [11.5, 48.1], "radius": -5},
                "radius of geofence 'f' must be a positive number",
            ),
            (
                {"type": "Point", "coordinates": [11.5, 48.1]},
                "needs a numeric 'radius'",
            ),
            (
                {"type": "Point", "coordinates": [11.5, 48.1], "radius": "50"},
                "needs a numeric 'radius'",
            ),
            (
                {"type": "Point", "coordinates": [11.5, 48.1], "radius": True},
                "needs a numeric 'radius'",
            ),
            (
                {"type": "Point", "coordinates": [11.5], "radius": 5},
                r"\[longitude, latitude\]",
            ),
            (
                {"type": "Point", "coordinates": [11.5, 95.0], "radius": 5},
                "outside ±180°",
            ),
            (
                {"type": "LineString", "coordinates": [[0, 0], [0, 1]], "width": 0},
                "half width of geofence 'f' must be a positive number",
            ),
            (
                {"type": "LineString", "coordinates": [[0, 0], [0, 0]], "width": 10},
                "at least two distinct positions",
            ),
            ({"type": "MultiPoint", "coordinates": [[0, 0]]}, "geometry type must be"),
            ({"type": "Feature", "geometry": None}, "geometry must be an object"),
            (
                {"type": "Feature", "geometry": {"type": "Point"}, "properties": [1]},
                "properties must be an object",
            ),
        ],
    )
    def test_geojson_bad_input_is_refused(
        self, geojson: dict[str, Any], match: str
    ) -> None:
        with pytest.raises(InvalidGeofence, match=match):
            geofence_from_geojson(geojson, fence_id="f")

    def test_geojson_needs_an_id(self) -> None:
        with pytest.raises(InvalidGeofence, match="needs an id"):
            geofence_from_geojson({"type": "Point", "coordinates": [0, 1], "radius": 5})

    def test_geojson_not_an_object(self) -> None:
        with pytest.raises(InvalidGeofence, match="must be a GeoJSON object, got list"):
            geofence_from_geojson([1, 2], fence_id="f")  # type: ignore[arg-type]

    def test_bad_speed_limit_is_refused(self) -> None:
        with pytest.raises(InvalidGeofence, match="speed_limit_kmh must be a positive"):
            dataclasses.replace(circle(), speed_limit_kmh=-30.0)


# --- shapes -----------------------------------------------------------------------


class TestCircle:
    @settings(max_examples=200, deadline=None)
    @given(
        lat=st.floats(-89.99, 89.99),
        lon=st.floats(-180, 180),
        bearing=st.floats(0, 360),
        radius=st.floats(10, 100_000),
    )
    def test_circle_matches_wgs84_within_documented_bound(
        self, lat: float, lon: float, bearing: float, radius: float
    ) -> None:
        """In at 0.6 % less than the radius on the ellipsoid, out at 0.6 % more."""
        fence = circle(radius, lat, lon)

        inside_lon, inside_lat, _ = WGS84.fwd(lon, lat, bearing, radius * 0.994)
        outside_lon, outside_lat, _ = WGS84.fwd(lon, lat, bearing, radius * 1.006)

        assert fence.contains(inside_lat, inside_lon)
        assert not fence.contains(outside_lat, outside_lon)

    def test_circle_on_the_north_pole_covers_all_longitudes(self) -> None:
        fence = circle(5_000.0, 89.99, 0.0)
        index = GeofenceIndex([fence])

        # 0.01° to the pole, then 0.02° down the other side: 3.3 km.
        assert index.containing(89.98, 180.0) == {"depot"}
        assert index.containing(89.98, -93.0) == {"depot"}
        # 0.05° beyond the pole: 5.6 km.
        assert index.containing(89.96, 180.0) == frozenset()

    def test_circle_centred_on_the_south_pole(self) -> None:
        fence = circle(1_000.0, -90.0, 0.0)
        index = GeofenceIndex([fence])

        near = destination(-90.0, 0.0, 0.0, 999.0)
        far = destination(-90.0, 0.0, 0.0, 1_001.0)

        assert [index.containing(*p) for p in (near, far)] == [{"depot"}, frozenset()]
        assert index.containing(-89.995, 77.0) == {"depot"}  # 556 m at any longitude

    def test_circle_across_the_antimeridian(self) -> None:
        fence = circle(1_000.0, 0.0, 179.995)
        index = GeofenceIndex([fence])

        # 0.006° of the equator is 667 m; 0.015° is 1,668 m.
        assert index.containing(0.0, -179.999) == {"depot"}
        assert index.containing(0.0, -179.99) == frozenset()
        assert index.containing(0.0, 179.99) == {"depot"}

    def test_circle_boundary_is_geodesic_on_the_sphere(self) -> None:
        fence = circle(250.0, 60.0, 25.0)

        for bearing in range(0, 360, 15):
            assert fence.contains(*destination(60.0, 25.0, bearing, 249.99))
            assert not fence.contains(*destination(60.0, 25.0, bearing, 250.01))


class TestCorridor:
    @pytest.mark.parametrize(
        ("lat", "lon"), [(48.1, 11.5), (0.0, 0.0), (-75.0, 120.0), (88.0, -179.99)]
    )
    def test_corridor_membership_across_and_beyond_the_ends(
        self, lat: float, lon: float
    ) -> None:
        """50 m wide: 24.99 m beside the axis is in, 25.01 m is out; ends are round."""
        end = destination(lat, lon, 30.0, 2_000.0)
        fence = CorridorFence(
            id="lane", name="Lane", path=((lon, lat), (end[1], end[0])), width_m=50.0
        )
        middle = destination(lat, lon, 30.0, 1_000.0)

        for side in (120.0, 300.0):
            assert fence.contains(*destination(*middle, side, 24.99))
            assert not fence.contains(*destination(*middle, side, 25.01))
        assert fence.contains(*destination(lat, lon, 210.0, 24.99))
        assert not fence.contains(*destination(lat, lon, 210.0, 25.01))
        assert fence.contains(*destination(lat, lon, 255.0, 24.99))

    def test_corridor_across_the_antimeridian_takes_the_short_way(self) -> None:
        fence = CorridorFence(
            id="ferry",
            name="Ferry",
            path=((179.99, 10.0), (-179.99, 10.0)),
            width_m=100.0,
        )
        index = GeofenceIndex([fence])

        assert index.containing(10.0, 180.0) == {"ferry"}
        assert index.containing(10.0, -180.0) == {"ferry"}
        assert index.containing(10.0, 0.0) == frozenset()

    def test_corridor_over_the_pole_bulges_past_its_ends(self) -> None:
        """An arc between two points at 89.9° over the pole passes through it."""
        fence = CorridorFence(
            id="polar", name="Polar", path=((0.0, 89.9), (180.0, 89.9)), width_m=200.0
        )
        index = GeofenceIndex([fence])

        assert index.containing(90.0, 0.0) == {"polar"}
        assert index.containing(89.95, 90.0) == frozenset()  # 5.6 km off the meridian

    @settings(max_examples=40, deadline=None)
    @given(
        lat=st.floats(-85, 85),
        lon=st.floats(-180, 180),
        legs=st.lists(
            st.tuples(st.floats(0, 360), st.floats(100, 3_000)), min_size=1, max_size=3
        ),
        width=st.floats(20, 400),
        probes=st.lists(
            st.tuples(st.floats(0, 360), st.floats(0, 4_000)), min_size=1, max_size=8
        ),
    )
    def test_corridor_agrees_with_a_densely_sampled_path(
        self,
        lat: float,
        lon: float,
        legs: list[tuple[float, float]],
        width: float,
        probes: list[tuple[float, float]],
    ) -> None:
        points = [(lat, lon)]
        for bearing, metres in legs:
            points.append(destination(*points[-1], bearing, metres))
        fence = CorridorFence(
            id="c", name="C", path=tuple((x, y) for y, x in points), width_m=width
        )
        samples = _densify(points, spacing_m=1.0)

        for bearing, metres in probes:
            probe = destination(lat, lon, bearing, metres)
            nearest = haversine_m(
                samples[:, 0],
                samples[:, 1],
                np.full(len(samples), probe[0]),
                np.full(len(samples), probe[1]),
            ).min()
            # Sampling every metre overstates the distance by at most 0.5 m.
            if abs(nearest - width / 2) > 0.6:
                assert fence.contains(*probe) == (nearest < width / 2)


def _densify(points: list[tuple[float, float]], spacing_m: float) -> np.ndarray:
    """Points every ``spacing_m`` or less along great-circle arcs, (lat, lon) rows."""
    rows = []
    for start, end in itertools.pairwise(points):
        a, b = _vector(*start), _vector(*end)
        angle = math.acos(min(1.0, float(a @ b)))
        steps = max(1, math.ceil(angle * EARTH_RADIUS_M / spacing_m))
        for t in np.linspace(0.0, 1.0, steps + 1):
            v = (np.sin((1 - t) * angle) * a + np.sin(t * angle) * b) / np.sin(angle)
            rows.append(
                (math.degrees(math.asin(v[2])), math.degrees(math.atan2(v[1], v[0])))
            )
    return np.array(rows)


def _vector(lat: float, lon: float) -> np.ndarray:
    phi, lam = math.radians(lat), math.radians(lon)
    return np.array(
        [math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)]
    )


# --- the index --------------------------------------------------------------------


@st.composite
def scattered_fences(
    draw: st.DrawFn,
) -> tuple[list[Geofence], list[tuple[float, float]]]:
    """A few fences round one anchor anywhere on Earth, and probe points near it."""
    lat = draw(st.one_of(st.floats(-90, 90), st.sampled_from([89.999, -89.999, 0.0])))
    lon = draw(st.one_of(st.floats(-180, 180), st.sampled_from([179.999, -179.999])))
    fences: list[Geofence] = []
    for i in range(draw(st.integers(1, 6))):
        centre = destination(
            lat, lon, draw(st.floats(0, 360)), draw(st.floats(0, 30_000))
        )
        kind = draw(st.sampled_from(["circle", "corridor", "polygon"]))
        if kind == "circle":
            fences.append(circle(draw(st.floats(5, 20_000)), *centre))
            fences[-1] = dataclasses.replace(fences[-1], id=f"f{i}")
        elif kind == "corridor":
            far = destination(
                *centre, draw(st.floats(0, 360)), draw(st.floats(1, 40_000))
            )
            fences.append(
                CorridorFence(
                    id=f"f{i}",
                    name="c",
                    path=((centre[1], centre[0]), (far[1], far[0])),
                    width_m=draw(st.floats(5, 10_000)),
                )
            )
        elif abs(centre[0]) < 89.9 and abs(centre[1]) < 179.9:
            fences.append(square(f"f{i}", centre[0] - 0.005, centre[1] - 0.005))
    probes = [
        destination(lat, lon, draw(st.floats(0, 360)), draw(st.floats(0, 60_000)))
        for _ in range(draw(st.integers(1, 12)))
    ]
    return fences, probes


def _clear_of_edges(fences: Sequence[Geofence], lat: float, lon: float) -> bool:
    """Whether fences 2 mm smaller and larger agree on a point (not on an edge)."""
    for fence in fences:
        if isinstance(fence, CircleFence):
            r = fence.radius_m
            smaller = dataclasses.replace(fence, radius_m=r - 0.002)
            larger = dataclasses.replace(fence, radius_m=r + 0.002)
        elif isinstance(fence, CorridorFence):
            w = fence.width_m
            smaller = dataclasses.replace(fence, width_m=w - 0.004)
            larger = dataclasses.replace(fence, width_m=w + 0.004)
        else:
            continue
        if smaller.contains(lat, lon) != larger.contains(lat, lon):
            return False
    return True


class TestIndex:
    @settings(max_examples=150, deadline=None)
    @given(scattered_fences())
    def test_index_agrees_with_every_fence_anywhere(
        self, case: tuple[list[Geofence], list[tuple[float, float]]]
    ) -> None:
        """Boxes near poles and the antimeridian never lose a fence; batch = single."""
        fences, probes = case
        index = GeofenceIndex(fences)
        probes = [p for p in probes if _clear_of_edges(fences, *p)]
        assume(probes)

        many = index.containing_many([p[0] for p in probes], [p[1] for p in probes])

        assert many == [brute_force(fences, *p) for p in probes]
        assert many == [index.containing(*p) for p in probes]

    def test_index_city_fences_agree_with_brute_force(self) -> None:
        fences = city_fences(450)
        index = GeofenceIndex(fences)
        rng = np.random.default_rng(3)
        lats, lons = rng.uniform(48.05, 48.25, 300), rng.uniform(11.35, 11.75, 300)

        many = index.containing_many(lats, lons)

        assert many == [brute_force(fences, *p) for p in zip(lats, lons, strict=True)]
        assert sum(map(len, many)) > 20  # the case is not vacuous

    def test_index_single_lookups_agree_with_brute_force_cell_by_cell(self) -> None:
        """Points of one remembered grid cell each get their own answer.

        The points are dense (a few per 870 m cell), some on cell bounds
        (multiples of 1/128 degree), and asked twice, so that the second pass
        answers from the remembered cells.
        """
        fences = city_fences(450)
        index = GeofenceIndex(fences)
        rng = np.random.default_rng(5)
        lats = list(rng.uniform(48.05, 48.25, 400))
        lons = list(rng.uniform(11.35, 11.75, 400))
        lats += [round(lat * 128) / 128 for lat in lats[:50]]
        lons += [round(lon * 128) / 128 for lon in lons[:50]]
        points = list(zip(lats, lons, strict=True))
        expected = [brute_force(fences, *p) for p in points]

        first = [index.containing(*p) for p in points]
        second = [index.containing(*p) for p in reversed(points)]

        assert first == expected
        assert second == expected[::-1]
        assert sum(map(len, expected)) > 20  # the case is not vacuous

    def test_index_cell_split_by_a_polygon_edge(self) -> None:
        """A cell the square's edge crosses: one point in, one out, both right."""
        index = GeofenceIndex([square(lon=11.503)])  # west edge at 11.503
        lat = 48.105
        inside, outside = 11.5031, 11.5029  # both in the cell 11.5 to 11.5078
        assert math.floor(inside * 128) == math.floor(outside * 128)

        assert index.containing(lat, inside) == {"yard"}
        assert index.containing(lat, outside) == frozenset()
        assert index.containing(lat, inside) == {"yard"}

    def test_index_point_on_a_polygon_edge_is_inside(self) -> None:
        index = GeofenceIndex([square()])

        assert index.containing(48.1, 11.505) == {"yard"}
        assert index.containing(48.0999, 11.505) == frozenset()

    def test_index_missing_coordinates_are_in_nothing(self) -> None:
        index = GeofenceIndex([circle()])

        assert index.containing_many([math.nan, 48.1], [11.5, 11.5]) == [
            frozenset(),
            {"depot"},
        ]

    def test_index_empty(self) -> None:
        index = GeofenceIndex([])

        assert index.containing(48.1, 11.5) == frozenset()
        assert index.containing_many([1.0, 2.0], [3.0, 4.0]) == [frozenset()] * 2

    def test_index_refuses_duplicate_ids(self) -> None:
        with pytest.raises(ValueError, match="'depot' appears twice"):
            GeofenceIndex([circle(), circle(50.0)])

    def test_index_refuses_mismatched_arrays(self) -> None:
        with pytest.raises(ValueError, match="1-D of one length"):
            GeofenceIndex([circle()]).containing_many([1.0, 2.0], [3.0])

    def test_index_is_a_mapping_and_changes_by_rebuilding(self) -> None:
        index = GeofenceIndex([circle(), square()])

        changed = index.changed(upserted=[circle(5.0)], deleted=["yard"])

        assert sorted(index) == ["depot", "yard"] and len(index) == 2
        assert list(changed) == ["depot"]
        assert changed["depot"].radius_m == 5.0  # type: ignore[attr-defined]
        assert index.containing(*destination(48.1, 11.5, 180, 50)) == {"depot"}
        assert changed.containing(*destination(48.1, 11.5, 180, 50)) == frozenset()


def test_speed_limit_is_the_lowest() -> None:
    school = dataclasses.replace(circle(), speed_limit_kmh=30.0)
    zone = dataclasses.replace(square(), speed_limit_kmh=50.0)

    assert speed_limit_kmh([zone, school], 80.0) == 30.0
    assert speed_limit_kmh([square()], 80.0) == 80.0
    assert speed_limit_kmh([zone]) == 50.0
    assert speed_limit_kmh([], None) is None


# --- membership -------------------------------------------------------------------


class TestMembership:
    def test_edge_circling_flaps_without_dwell(self) -> None:
        """Two fixes out, two in, five times round: every run in enters and leaves."""
        fence = circle(200.0)
        fixes = fixes_at(around_edge(fence, [4.0, 4.0, -4.0, -4.0] * 5 + [4.0] * 3))

        outputs = run(fixes, GeofenceIndex([fence]), IMMEDIATE)

        assert len(of_type(outputs, "geofenceEnter")) == 5
        assert len(of_type(outputs, "geofenceExit")) == 5
        assert [v.duration_s for v in visits(outputs)] == [2.0] * 5

    def test_edge_circling_does_not_flap_with_dwell(self) -> None:
        fence = circle(200.0)
        fixes = fixes_at(around_edge(fence, [4.0, 4.0, -4.0, -4.0] * 5 + [4.0] * 3))

        assert run(fixes, GeofenceIndex([fence]), DwellSettings()) == []

    def test_drive_through_enters_and_leaves_once(self) -> None:
        """Dwell of 3 fixes: events carry the first fix on the new side."""
        fence = circle(200.0)
        offsets = [30.0, 10.0, -10.0, 5.0, -20.0, -50.0, -60.0, 10.0, 30.0, 40.0, 50.0]
        fixes = fixes_at(around_edge(fence, offsets), step_s=2.0)

        outputs = run(fixes, GeofenceIndex([fence]), DwellSettings(None, 3, None, 3))

        enter, exit_ = (
            of_type(outputs, "geofenceEnter"),
            of_type(outputs, "geofenceExit"),
        )
        assert [e.time_ms for e in enter] == [fixes[4].time_ms]
        assert (enter[0].latitude, enter[0].longitude) == (
            fixes[4].latitude,
            fixes[4].longitude,
        )
        assert [e.time_ms for e in exit_] == [fixes[7].time_ms]
        assert exit_[0].attributes == {
            "geofence": "depot",
            "name": "Depot",
            "duration_s": 6.0,
        }
        assert visits(outputs) == [Visit("van", "depot", "Depot", 8_000, 14_000)]

    def test_dwell_by_time_with_sparse_fixes(self) -> None:
        """One minute between fixes: the second fix inside meets 30 s, not 3 fixes."""
        fence = circle(200.0)
        fixes = fixes_at(around_edge(fence, [50.0, -50.0, -50.0]), step_s=60.0)
        index = GeofenceIndex([fence])

        by_time = run(fixes, index, DwellSettings(30.0, None, 30.0, None))
        by_count = run(fixes, index, DwellSettings(None, 3, None, 3))

        assert [(e.type, e.time_ms) for e in by_time] == [("geofenceEnter", 60_000)]
        assert by_count == []

    def test_deleted_geofence_closes_the_visit_silently(self) -> None:
        index = GeofenceIndex([circle(), square()])
        fixes = fixes_at([(48.1, 11.5), (48.1, 11.5), (48.1, 11.5)], step_s=10.0)
        state, entered = advance(
            MembershipState(),
            fixes[0],
            IMMEDIATE,
            containing=index.containing(48.1, 11.5),
            fences=index,
        )

        smaller = index.changed(deleted=["depot"])
        state, closed = advance(
            state,
            fixes[1],
            IMMEDIATE,
            containing=smaller.containing(48.1, 11.5),
            fences=smaller,
        )

        assert len(of_type(entered, "geofenceEnter")) == 2  # on the yard's corner
        assert closed == [
            Visit("van", "depot", "Depot", 0, 10_000, closed_by="deleted")
        ]
        assert list(state.inside) == ["yard"]

    def test_changed_shape_is_tested_anew(self) -> None:
        index = GeofenceIndex([circle(100.0)])
        here = destination(48.1, 11.5, 90.0, 60.0)
        fixes = fixes_at([here] * 4, step_s=5.0)
        shrunk = index.changed(upserted=[circle(50.0)])

        state, _ = advance(
            MembershipState(),
            fixes[0],
            IMMEDIATE,
            containing=index.containing(*here),
            fences=index,
        )
        state, outputs = advance(
            state,
            fixes[1],
            IMMEDIATE,
            containing=shrunk.containing(*here),
            fences=shrunk,
        )

        assert [e.type for e in of_type(outputs, "geofenceExit")] == ["geofenceExit"]
        assert visits(outputs)[0].closed_by == "exit"

    def test_older_fix_is_ignored_with_a_warning(self) -> None:
        index = GeofenceIndex([circle()])
        state, _ = advance(
            MembershipState(),
            FixPoint("van", 5_000, 48.1, 11.5),
            IMMEDIATE,
            containing={"depot"},
            fences=index,
        )

        with pytest.warns(UserWarning, match="older than the previous one"):
            again, outputs = advance(
                state,
                FixPoint("van", 4_000, 0.0, 0.0),
                IMMEDIATE,
                containing=set(),
                fences=index,
            )

        assert (again, outputs) == (state, [])

    def test_unknown_ids_in_containing_are_ignored(self) -> None:
        state, outputs = advance(
            MembershipState(),
            FixPoint("van", 0, 48.1, 11.5),
            IMMEDIATE,
            containing={"ghost"},
            fences=GeofenceIndex([]),
        )

        assert (state.inside, outputs) == ({}, [])

    def test_assignment_filters_per_device(self) -> None:
        index = GeofenceIndex([circle()])
        fixes = fixes_at([(48.1, 11.5)], device="a") + fixes_at(
            [(48.1, 11.5)], device="b"
        )

        states, outputs = run_membership(
            fixes, index, IMMEDIATE, assigned={"a": {"depot"}}
        )

        assert [e.device for e in of_type(outputs, "geofenceEnter")] == ["a"]
        assert set(states) == {"a", "b"}

    def test_batch_takes_a_track_table(self) -> None:
        fence = circle(200.0)
        points = around_edge(fence, [20.0, -20.0, -20.0, 20.0])
        frame = pd.DataFrame(
            {
                "device": "van",
                "time": pd.to_datetime([0, 1, 2, 3], unit="s", utc=True),
                "latitude": [p[0] for p in points],
                "longitude": [p[1] for p in points],
            }
        )

        outputs = run(frame, GeofenceIndex([fence]), IMMEDIATE)  # type: ignore[arg-type]

        assert visits(outputs) == [Visit("van", "depot", "Depot", 1_000, 3_000)]

    @pytest.mark.parametrize(
        ("changes", "match"),
        [
            ({"enter_after_s": -1.0}, "enter_after_s must be None or seconds >= 0"),
            (
                {"exit_after_fixes": 0},
                "exit_after_fixes must be None or a whole number",
            ),
            ({"enter_after_fixes": True}, "enter_after_fixes must be None or a whole"),
        ],
    )
    def test_dwell_settings_are_checked(
        self, changes: dict[str, Any], match: str
    ) -> None:
        with pytest.raises(ValueError, match=match):
            DwellSettings(**changes)


@settings(max_examples=40, deadline=None)
@given(
    offsets=st.lists(
        st.sampled_from([-30.0, -3.0, 3.0, 30.0]), min_size=2, max_size=40
    ),
    steps=st.lists(st.integers(1, 20), min_size=40, max_size=40),
    cut=st.integers(0, 40),
    dwell=st.sampled_from(
        [IMMEDIATE, DwellSettings(), DwellSettings(5.0, None, None, 2)]
    ),
)
def test_membership_resumes_from_a_pickled_state(
    offsets: list[float], steps: list[int], cut: int, dwell: DwellSettings
) -> None:
    """Batch = one by one = stopped and restored from a pickle at any fix."""
    fences = [
        circle(200.0),
        dataclasses.replace(circle(150.0), id="inner", name="Inner"),
    ]
    index = GeofenceIndex(fences)
    times = np.cumsum(steps[: len(offsets)]) * 1000
    fixes = [
        FixPoint("van", int(t), lat, lon)
        for t, (lat, lon) in zip(times, around_edge(fences[0], offsets), strict=True)
    ]
    _, batch = run_membership(fixes, index, dwell)

    state, outputs = MembershipState(), []
    for i, fix in enumerate(fixes):
        if i == cut:
            state = pickle.loads(pickle.dumps(state))
        state, found = advance(
            state,
            fix,
            dwell,
            containing=index.containing(fix.latitude, fix.longitude),
            fences=index,
        )
        outputs += found

    assert outputs == batch
    enters, exits = of_type(batch, "geofenceEnter"), of_type(batch, "geofenceExit")
    assert 0 <= len(enters) - len(exits) <= 2
    assert len(visits(batch)) == len(exits)


# --- cost per fix (pytest-benchmark; run with --benchmark-enable for figures) --------


@pytest.fixture(scope="module", params=[10, 10_000], ids=lambda n: f"{n}-fences")
def city_index(request: pytest.FixtureRequest) -> tuple[list[Geofence], GeofenceIndex]:
    fences = city_fences(request.param)
    return fences, GeofenceIndex(fences)


def _city_points(count: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(48.05, 48.25, count), rng.uniform(11.35, 11.75, count)


def test_benchmark_per_fix_step(
    benchmark: Any, city_index: tuple[list[Geofence], GeofenceIndex]
) -> None:
    """200 fixes, each: index lookup plus the membership step, as the job does."""
    fences, index = city_index
    lats, lons = _city_points(200)
    fixes = [
        FixPoint("van", i * 1000, lat, lon)
        for i, (lat, lon) in enumerate(zip(lats, lons, strict=True))
    ]
    dwell = DwellSettings()

    def step_all() -> MembershipState:
        state = MembershipState()
        for fix in fixes:
            here = index.containing(fix.latitude, fix.longitude)
            state, _ = advance(state, fix, dwell, containing=here, fences=index)
        return state

    state = benchmark(step_all)

    assert [index.containing(f.latitude, f.longitude) for f in fixes[:10]] == [
        brute_force(fences, f.latitude, f.longitude) for f in fixes[:10]
    ]
    assert state.last_time_ms == fixes[-1].time_ms


def test_benchmark_batch_lookup(
    benchmark: Any, city_index: tuple[list[Geofence], GeofenceIndex]
) -> None:
    """A bundle of 1,000 fixes looked up at once."""
    fences, index = city_index
    lats, lons = _city_points(1_000)

    found = benchmark(index.containing_many, lats, lons)

    assert found[:10] == [
        brute_force(fences, *p) for p in zip(lats[:10], lons[:10], strict=True)
    ]
    assert found == [index.containing(*p) for p in zip(lats, lons, strict=True)]


def test_benchmark_rebuild(
    benchmark: Any, city_index: tuple[list[Geofence], GeofenceIndex]
) -> None:
    """Rebuilding the index after a change."""
    fences, index = city_index

    rebuilt = benchmark(index.changed, upserted=[circle()])

    assert len(rebuilt) == len(fences) + 1
