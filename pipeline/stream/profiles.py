"""Per-device settings of the streaming job, from fleet, group and device settings.

Every ``geo`` stepper takes a frozen settings dataclass; the job picks them per
device from three layers of JSON objects: the fleet's (the ``motion_settings``
setting), ``device_groups.attributes`` and ``devices.attributes``.  The keys, each
an object of the dataclass's field names (units in the names):

``filters``
    :class:`geo.filtering.FilterSettings`, e.g. ``{"min_distance_m": 20}``.
``trips``
    :class:`geo.trips.TripSettings`, e.g. ``{"rule": "ignition"}``.
``dwell``
    :class:`geo.geofences.DwellSettings`, e.g. ``{"enter_after_fixes": 1}``.
``alerts``
    :class:`geo.alerts.AlertSettings`, one object per rule: ``overspeed``,
    ``offline``, ``idle``, ``alarm``, ``battery``, e.g.
    ``{"offline": {"after_s": 900}, "battery": {"low_percent": 15}}``.
``speedLimit``
    The device's own speed limit in km/h for the overspeed rule (a geofence's lower
    limit wins inside it); none by default, so no overspeed alert without one.

A field left out of a layer takes the value of the layer below it: the device's
wins over the group's, the group's over the fleet's, the fleet's over the
dataclass default, field by field.  A value the dataclass refuses (an unknown
field, a negative distance) makes that layer's concern fall back to the layers
below, and is reported as a problem, so one typo never stops the job.  A problem
of the fleet layer starts with :data:`FLEET_LAYER`, so that it can be reported
once for the fleet rather than once per device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from geo.alerts import (
    AlarmSettings,
    AlertSettings,
    BatterySettings,
    IdleSettings,
    OfflineSettings,
    OverspeedSettings,
)
from geo.filtering import FilterSettings
from geo.geofences import DwellSettings
from geo.trips import TripSettings

__all__ = ["DEFAULT_PROFILE", "FLEET_LAYER", "DeviceProfile", "resolve_profile"]

_T = TypeVar("_T")

#: The name of the fleet layer, which starts each of its problems.
FLEET_LAYER = "motion_settings"

#: One layer of settings: the prefix of its problems, and its JSON object.
_Layer = tuple[str, dict[str, Any]]

_ALERT_RULES: dict[str, Callable[..., Any]] = {
    "overspeed": OverspeedSettings,
    "offline": OfflineSettings,
    "idle": IdleSettings,
    "alarm": AlarmSettings,
    "battery": BatterySettings,
}


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """Everything the job needs to judge one device's fixes.

    ``time_zone`` is the owner's (``users.time_zone``), the zone of the device's
    daily summaries; ``geofences`` the ids (as text) of the geofences assigned to
    the device or its group.
    """

    filters: FilterSettings = field(default_factory=FilterSettings)
    trips: TripSettings = field(default_factory=TripSettings)
    dwell: DwellSettings = field(default_factory=DwellSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    speed_limit_kmh: float | None = None
    time_zone: str = "UTC"
    geofences: frozenset[str] = frozenset()


#: The profile of a device the job does not know (not registered).
DEFAULT_PROFILE = DeviceProfile()


def resolve_profile(
    group_attributes: Mapping[str, Any] | None,
    device_attributes: Mapping[str, Any] | None,
    *,
    fleet_attributes: Mapping[str, Any] | None = None,
    time_zone: str = "UTC",
    geofences: frozenset[str] = frozenset(),
) -> tuple[DeviceProfile, list[str]]:
    """The device's profile, and a sentence per setting that could not be used.

    Examples
    --------
    >>> profile, problems = resolve_profile(
    ...     {"trips": {"min_stop_duration_s": 120}},
    ...     {"trips": {"rule": "ignition"}, "speedLimit": 90},
    ...     fleet_attributes={"trips": {"min_stop_duration_s": 60, "max_gap_s": 90}})
    >>> trips = profile.trips
    >>> trips.rule, trips.min_stop_duration_s, trips.max_gap_s, profile.speed_limit_kmh
    ('ignition', 120, 90, 90.0)
    >>> resolve_profile(None, {"filters": {"max_hdop": -1}})[1]
    ['filters: max_hdop must be a positive number or None, got -1']
    >>> resolve_profile(None, None, fleet_attributes={"speedLimit": 0})[1]
    ['motion_settings: speedLimit must be a positive number, got 0']
    >>> resolve_profile({"alerts": {"ofline": {"after_s": 900}}}, None)[1]
    ['alerts: unknown rule ofline (known: alarm, battery, idle, offline, overspeed)']
    """
    layers: list[_Layer] = [
        (f"{FLEET_LAYER}: ", _object(fleet_attributes)),
        ("", _object(group_attributes)),
        ("", _object(device_attributes)),
    ]
    problems: list[str] = []

    def scopes(*path: str) -> list[_Layer]:
        found = []
        for prefix, layer in layers:
            for key in path:
                layer = _object(layer.get(key))
            found.append((prefix, layer))
        return found

    problems += _unknown_alert_rules(layers)
    alerts = AlertSettings(
        **{
            name: _layered(
                f"alerts.{name}",
                make,
                getattr(AlertSettings(), name),
                scopes("alerts", name),
                problems,
            )
            for name, make in _ALERT_RULES.items()
        }
    )
    profile = DeviceProfile(
        filters=_layered(
            "filters", FilterSettings, FilterSettings(), scopes("filters"), problems
        ),
        trips=_layered(
            "trips", TripSettings, TripSettings(), scopes("trips"), problems
        ),
        dwell=_layered(
            "dwell", DwellSettings, DwellSettings(), scopes("dwell"), problems
        ),
        alerts=alerts,
        speed_limit_kmh=_speed_limit(layers, problems),
        time_zone=_zone(time_zone, problems),
        geofences=geofences,
    )
    return profile, problems


def _unknown_alert_rules(layers: list[_Layer]) -> list[str]:
    """A sentence per layer that names an alert rule there is none of (a typo)."""
    known = ", ".join(sorted(_ALERT_RULES))
    problems = []
    for prefix, layer in layers:
        unknown = sorted(set(_object(layer.get("alerts"))) - set(_ALERT_RULES))
        if unknown:
            names = ", ".join(unknown)
            problems.append(f"{prefix}alerts: unknown rule {names} (known: {known})")
    return problems


def _layered(
    key: str,
    make: Callable[..., _T],
    default: _T,
    scopes: list[_Layer],
    problems: list[str],
) -> _T:
    """Apply each scope's fields over the previous ones; skip a refused scope."""
    current = default
    for prefix, scope in scopes:
        if not scope:
            continue
        known = {item.name for item in fields(current)}  # type: ignore[arg-type]
        unknown = sorted(set(scope) - known)
        if unknown:
            problems.append(f"{prefix}{key}: unknown settings {unknown}")
            continue
        values = {name: getattr(current, name) for name in known}
        try:
            current = make(**{**values, **scope})
        except (TypeError, ValueError) as error:
            problems.append(f"{prefix}{key}: {error}")
    return current


def _speed_limit(layers: list[_Layer], problems: list[str]) -> float | None:
    limit: float | None = None
    for prefix, layer in layers:
        value = layer.get("speedLimit")
        if value is None:
            continue
        good = isinstance(value, int | float) and not isinstance(value, bool)
        if good and math.isfinite(value) and value > 0:
            limit = float(value)
        else:
            problems.append(
                f"{prefix}speedLimit must be a positive number, got {value!r}"
            )
    return limit


def _zone(name: str, problems: list[str]) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"time zone {name!r} is unknown, UTC is used")
        return "UTC"
    return name


def _object(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}
