"""What the job knows about the fleet: device profiles and geofences, kept current.

Each parallel instance of the job's device operator holds one :class:`Catalog`.
It loads every registered device's :class:`~pipeline.stream.profiles.DeviceProfile`
(settings from the fleet's, its group's and its own attributes, its owner's time
zone, the geofences assigned to it or its group) and a
:class:`geo.geofences.GeofenceIndex` of every geofence, then polls PostgreSQL every
:data:`POLL_S` seconds with one cheap fingerprint query: counts and hashes of
``geofences (id, version)``, of the assignments, of devices, groups and users' time
zones.  A change in the geofences part loads only the geofences whose version
differs and rebuilds the index with :meth:`~geo.geofences.GeofenceIndex.changed` (a
deleted one drops out, since the ids are compared, not only the versions); any
other change reloads the profiles.  So a geofence or assignment changed through the
API applies to fixes within about ``POLL_S`` seconds, without restarting the job.
The fleet's settings come from the job's options, so they change with a restart.

PostgreSQL being down never stops the job: the last catalog stays in use, the
failure is logged once, and the next poll tries again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import structlog

from geo.geofences import (
    Geofence,
    GeofenceIndex,
    InvalidGeofence,
    geofence_from_geojson,
)
from pipeline.stream.database import DATABASE_ERRORS, BlockingDatabase
from pipeline.stream.profiles import (
    DEFAULT_PROFILE,
    FLEET_LAYER,
    DeviceProfile,
    resolve_profile,
)

__all__ = ["POLL_S", "Catalog"]

log = structlog.get_logger("rastro.stream")

#: Seconds between two fingerprint queries (how soon a geofence change applies).
POLL_S = 2.0

_FINGERPRINT = """
SELECT
  (SELECT count(*)::text || ':'
          || coalesce(sum(hashtext(id::text || ':' || version)), 0)
     FROM geofences) AS geofences,
  (SELECT count(*)::text || ':' || coalesce(sum(hashtext(
            geofence_id::text || ':' || coalesce(device_id, -1)::text || ':'
            || coalesce(group_id, -1)::text)), 0)
     FROM geofence_assignments)
  || '/' ||
  (SELECT count(*)::text || ':' || coalesce(sum(hashtext(
            id::text || ':' || coalesce(group_id, -1)::text || ':' || unique_id
            || ':' || owner_id::text || ':' || attributes::text)), 0)
     FROM devices)
  || '/' ||
  (SELECT count(*)::text || ':' || coalesce(sum(hashtext(
            id::text || ':' || attributes::text)), 0)
     FROM device_groups)
  || '/' ||
  (SELECT count(*)::text || ':' || coalesce(sum(hashtext(
            id::text || ':' || time_zone)), 0)
     FROM users) AS profiles
"""

_DEVICES = """
SELECT d.id, d.unique_id, d.group_id, d.attributes, g.attributes AS group_attributes,
       u.time_zone
FROM devices AS d
JOIN users AS u ON u.id = d.owner_id
LEFT JOIN device_groups AS g ON g.id = d.group_id
"""

_ASSIGNMENTS = "SELECT geofence_id, device_id, group_id FROM geofence_assignments"

_VERSIONS = "SELECT id, version FROM geofences"

_GEOFENCES = """
SELECT id, name, geometry, speed_limit_kmh, version
FROM geofences WHERE id = ANY ($1::bigint[])
"""


class Catalog:
    """Device profiles and the geofence index of one job instance.

    Parameters
    ----------
    database
        Where to read them.
    poll_s
        Seconds between fingerprint queries.
    fleet_attributes
        The fleet's settings (the ``motion_settings`` setting, parsed), under every
        group's and device's.  What it gets refused is logged once, here.
    """

    def __init__(
        self,
        database: BlockingDatabase,
        *,
        poll_s: float = POLL_S,
        fleet_attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self._database = database
        self._poll_s = poll_s
        self._fleet = dict(fleet_attributes or {})
        self._unknown = self._fleet_profile()
        self._fingerprint: tuple[str, str] | None = None
        self._polled_at = -float("inf")
        self._versions: dict[int, int] = {}
        self._profiles: dict[str, DeviceProfile] = {}
        self._reported: set[tuple[str, str]] = set()
        self._down = False
        self.index = GeofenceIndex([])

    def profile(self, device: str) -> DeviceProfile:
        """The device's profile; the fleet's settings alone for an unknown device.

        Without fleet settings, that is :data:`DEFAULT_PROFILE`.
        """
        return self._profiles.get(device, self._unknown)

    def refresh(self, *, force: bool = False) -> bool:
        """Poll PostgreSQL if :data:`POLL_S` passed; return whether anything changed."""
        now = time.monotonic()
        if not force and now - self._polled_at < self._poll_s:
            return False
        self._polled_at = now
        try:
            return self._refresh()
        except DATABASE_ERRORS as error:
            if not self._down:
                log.warning(
                    "stream_catalog_unavailable",
                    reason=type(error).__name__,
                    effect="last known settings and geofences stay in use",
                )
            self._down = True
            return False

    def _refresh(self) -> bool:
        row = self._database.fetchrow(_FINGERPRINT)
        assert row is not None
        fingerprint = (str(row["geofences"]), str(row["profiles"]))
        if self._down:
            self._down = False
            log.info("stream_catalog_recovered")
        if fingerprint == self._fingerprint:
            return False

        previous = self._fingerprint
        if previous is None or fingerprint[0] != previous[0]:
            self._load_geofences()
        if previous is None or fingerprint[1] != previous[1]:
            self._load_profiles()
        self._fingerprint = fingerprint
        return True

    def _load_geofences(self) -> None:
        versions = {
            int(row["id"]): int(row["version"])
            for row in self._database.fetch(_VERSIONS)
        }
        deleted = [str(i) for i in self._versions if i not in versions]
        wanted = [i for i, v in versions.items() if self._versions.get(i) != v]
        rows = self._database.fetch(_GEOFENCES, wanted) if wanted else []
        upserted = [fence for fence in map(self._geofence, rows) if fence is not None]
        # A geofence that became unusable is dropped, not kept in its old shape.
        unusable = {str(i) for i in wanted} - {fence.id for fence in upserted}
        self.index = self.index.changed(upserted, [*deleted, *unusable])
        self._versions = versions
        log.info(
            "stream_geofences_loaded",
            geofences=len(self.index),
            changed=len(upserted),
            deleted=len(deleted),
        )

    def _geofence(self, row: Mapping[str, Any]) -> Geofence | None:
        try:
            return geofence_from_geojson(
                _json(row["geometry"]),
                fence_id=str(row["id"]),
                name=str(row["name"]),
                speed_limit_kmh=row["speed_limit_kmh"],
            )
        except InvalidGeofence as error:
            log.warning(
                "stream_geofence_unusable",
                geofence=int(row["id"]),
                version=int(row["version"]),
                reason=str(error),
            )
            return None

    def _load_profiles(self) -> None:
        by_device: dict[int, set[str]] = {}
        by_group: dict[int, set[str]] = {}
        for row in self._database.fetch(_ASSIGNMENTS):
            fence = str(row["geofence_id"])
            if row["device_id"] is not None:
                by_device.setdefault(int(row["device_id"]), set()).add(fence)
            else:
                by_group.setdefault(int(row["group_id"]), set()).add(fence)

        shared: dict[tuple[str, str, str, frozenset[str]], DeviceProfile] = {}
        profiles: dict[str, DeviceProfile] = {}
        for row in self._database.fetch(_DEVICES):
            group = row["group_id"]
            fences = frozenset(
                by_device.get(int(row["id"]), set())
                | (by_group.get(int(group), set()) if group is not None else set())
            )
            key = (
                str(row["group_attributes"] or "{}"),
                str(row["attributes"] or "{}"),
                str(row["time_zone"]),
                fences,
            )
            if key not in shared:
                shared[key] = self._resolve(row, fences)
            profiles[str(row["unique_id"])] = shared[key]
        self._profiles = profiles
        log.info("stream_profiles_loaded", devices=len(profiles), distinct=len(shared))

    def _resolve(self, row: Mapping[str, Any], fences: frozenset[str]) -> DeviceProfile:
        profile, problems = resolve_profile(
            _json(row["group_attributes"]),
            _json(row["attributes"]),
            fleet_attributes=self._fleet,
            time_zone=str(row["time_zone"]),
            geofences=fences,
        )
        for problem in problems:
            if problem.startswith(f"{FLEET_LAYER}: "):
                continue
            report = (str(row["unique_id"]), problem)
            if report not in self._reported:
                self._reported.add(report)
                log.warning("stream_setting_refused", device=report[0], problem=problem)
        return profile

    def _fleet_profile(self) -> DeviceProfile:
        """The fleet's settings over the defaults; log once what they got refused."""
        if not self._fleet:
            return DEFAULT_PROFILE

        profile, problems = resolve_profile(None, None, fleet_attributes=self._fleet)
        for problem in problems:
            log.warning("stream_setting_refused", setting=FLEET_LAYER, problem=problem)
        return profile


def _json(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    loaded = json.loads(value) if isinstance(value, str) else value
    return dict(loaded) if isinstance(loaded, Mapping) else {}
