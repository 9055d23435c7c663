"""Fixes counted by H3 cell and hour: mergeable partial aggregates and their rollups.

Every accepted fix lies in one H3 cell at the stored resolution (a setting, 9 by
default).  Per cell and UTC hour the job keeps a :class:`CellHour`, a partial
aggregate whose every field merges exactly, in any order: a late fix simply merges
into the cell-hour it belongs to, and a coarser resolution is the merge of the parents
of the stored cells.  From it come fixes, distinct vehicles, mean and 95th-percentile
speed and dwell time.

What is kept, and its error:

- **counts and sums** are integers (speeds as milli-km/h, dwell as milliseconds), so
  merges are exact and order-free; rounding a speed to 0.001 km/h is the only loss.
- **95th percentile**: a histogram of speeds rounded to whole km/h, 0 to 250 (the last
  bin holds everything from 249.5 km/h up).  A quantile is read as numpy's default
  (linear) quantile of the bin values, so it is within 0.5 km/h of numpy's quantile
  of the true speeds, and exact when trackers report whole km/h, as long as the
  quantile lies below 249.5 km/h; above, 250 is a lower bound.
- **distinct vehicles**: the set of device ids itself, exact under any merge and
  rollup.  A cell-hour at resolution 9 sees a handful of devices; a coarse one sees
  at most the fleet.  (In PostgreSQL, the ``hll`` extension can take over for very
  large fleets, trading exactness for a fixed size.)
- **dwell time**: time a device spends stopped in a cell.  Each pair of consecutive
  fixes of one device whose speeds are both below ``stopped_below_kmh`` adds the time
  between them, capped at ``max_dwell_gap_s`` (a longer silence says nothing about
  what the device did), to the cell and hour of the earlier fix.  Pairs are taken
  in arrival order, so dwell is exact when a device's fixes arrive in fix-time
  order, as the job sorts them; a late fix (older than the device's previous one)
  is counted everywhere else but adds no dwell, since undoing the pair that skipped
  it would need the whole history.

Coarser cells are the *parents* (``cell_to_parent``) of the stored cell, not the cell
``latlng_to_cell`` gives at the coarser resolution: H3 children cover their parent
only approximately, so near an edge the two can differ.  Counting every fix in the
parent of its stored cell makes a rollup equal to aggregating directly at the coarse
resolution.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import h3
import pandas as pd

from geo.filtering import fix_points
from geo.fixes import FixPoint, h3_cell, h3_hex

__all__ = [
    "HOUR_MS",
    "TOP_SPEED_KMH",
    "CellHour",
    "CellSettings",
    "CellState",
    "advance",
    "aggregate",
    "cell_hours",
    "merged",
    "rollup",
    "table",
]

#: One hour in milliseconds; cell-hours start on whole UTC hours.
HOUR_MS: Final = 3_600_000

#: The top of the speed histogram, km/h: its last bin holds 249.5 km/h and above.
TOP_SPEED_KMH: Final = 250


@dataclass(frozen=True, slots=True)
class CellSettings:
    """How fixes are counted in cells.

    Attributes
    ----------
    resolution
        H3 resolution fixes are stored at (0 to 15; 9 is about 0.1 km²).
    stopped_below_kmh
        A fix slower than this counts as stopped, for dwell time.
    max_dwell_gap_s
        The most one pair of consecutive fixes adds to dwell time, in seconds.
    """

    resolution: int = 9
    stopped_below_kmh: float = 3.0
    max_dwell_gap_s: float = 300.0

    def __post_init__(self) -> None:
        if isinstance(self.resolution, bool) or self.resolution not in range(16):
            message = f"resolution must be from 0 to 15, got {self.resolution!r}"
            raise ValueError(message)
        if not (math.isfinite(self.stopped_below_kmh) and self.stopped_below_kmh > 0):
            message = (
                f"stopped_below_kmh must be a positive speed, "
                f"got {self.stopped_below_kmh!r}"
            )
            raise ValueError(message)
        if not (math.isfinite(self.max_dwell_gap_s) and self.max_dwell_gap_s > 0):
            gap = self.max_dwell_gap_s
            message = f"max_dwell_gap_s must be positive seconds, got {gap!r}"
            raise ValueError(message)


@dataclass(frozen=True, slots=True)
class CellHour:
    """The partial aggregate of one H3 cell in one UTC hour; merges exactly.

    Attributes
    ----------
    cell
        The H3 cell, as a 64-bit integer.
    hour_ms
        Start of the hour, epoch milliseconds UTC.
    fixes
        Fixes in the cell and hour.
    devices
        Ids of the devices that reported them.
    speed_fixes, speed_sum_mkmh
        How many of them carry a speed, and its sum in milli-km/h.
    speed_bins
        ``(km/h, fixes)`` pairs, sorted: the speed histogram, only bins in use.
    dwell_ms
        Time stopped in the cell, attributed to this hour, in milliseconds.

    Examples
    --------
    >>> a = CellHour.of_fix(617700169958293503, FixPoint("a", 60_000, 0, 0, 10.2))
    >>> b = CellHour.of_fix(617700169958293503, FixPoint("b", 120_000, 0, 0, 30.0))
    >>> both = a.merge(b)
    >>> both.fixes, both.vehicles, both.mean_speed_kmh, both.speed_bins
    (2, 2, 20.1, ((10, 1), (30, 1)))
    """

    cell: int
    hour_ms: int
    fixes: int = 0
    devices: frozenset[str] = field(default_factory=frozenset)
    speed_fixes: int = 0
    speed_sum_mkmh: int = 0
    speed_bins: tuple[tuple[int, int], ...] = ()
    dwell_ms: int = 0

    @classmethod
    def of_fix(cls, cell: int, fix: FixPoint) -> CellHour:
        """The contribution of one fix to its cell and hour (no dwell)."""
        hour_ms = fix.time_ms - fix.time_ms % HOUR_MS
        devices = frozenset({fix.device})
        speed = fix.speed_kmh
        if speed is None or not math.isfinite(speed):
            return cls(cell, hour_ms, fixes=1, devices=devices)

        kmh = max(0.0, speed)
        speed_bin = min(TOP_SPEED_KMH, math.floor(kmh + 0.5))
        return cls(
            cell,
            hour_ms,
            fixes=1,
            devices=devices,
            speed_fixes=1,
            speed_sum_mkmh=round(kmh * 1000),
            speed_bins=((speed_bin, 1),),
        )

    @property
    def key(self) -> tuple[int, int]:
        """``(cell, hour_ms)``: what partial aggregates merge on."""
        return self.cell, self.hour_ms

    @property
    def resolution(self) -> int:
        """The H3 resolution of the cell."""
        return int(h3.get_resolution(h3_hex(self.cell)))

    @property
    def vehicles(self) -> int:
        """Distinct devices seen."""
        return len(self.devices)

    @property
    def mean_speed_kmh(self) -> float | None:
        """Mean reported speed, km/h; ``None`` when no fix carried one."""
        if not self.speed_fixes:
            return None
        return self.speed_sum_mkmh / self.speed_fixes / 1000

    @property
    def dwell_s(self) -> float:
        """Time stopped in the cell during this hour, seconds."""
        return self.dwell_ms / 1000

    def speed_quantile_kmh(self, q: float) -> float | None:
        """A quantile of the speed histogram, read as numpy's linear quantile.

        Parameters
        ----------
        q
            From 0 to 1 (0.95 for the 95th percentile).
        """
        if not 0 <= q <= 1:
            message = f"q must be from 0 to 1, got {q!r}"
            raise ValueError(message)
        if not self.speed_fixes:
            return None

        rank = q * (self.speed_fixes - 1)
        below = math.floor(rank)
        low = _bin_value(self.speed_bins, below)
        high = _bin_value(self.speed_bins, below + 1)
        return low + (rank - below) * (high - low)

    def merge(self, other: CellHour) -> CellHour:
        """Both partial aggregates as one; they must share cell and hour."""
        if other.key != self.key:
            message = f"cannot merge cell-hour {other.key} into {self.key}"
            raise ValueError(message)
        bins = Counter(dict(self.speed_bins))
        bins.update(dict(other.speed_bins))
        return CellHour(
            cell=self.cell,
            hour_ms=self.hour_ms,
            fixes=self.fixes + other.fixes,
            devices=self.devices | other.devices,
            speed_fixes=self.speed_fixes + other.speed_fixes,
            speed_sum_mkmh=self.speed_sum_mkmh + other.speed_sum_mkmh,
            speed_bins=tuple(sorted(bins.items())),
            dwell_ms=self.dwell_ms + other.dwell_ms,
        )

    def to_parent(self, resolution: int) -> CellHour:
        """The same aggregate keyed on the parent cell at a coarser resolution."""
        if not 0 <= resolution <= self.resolution:
            message = (
                f"resolution must be from 0 to {self.resolution} (the cell's), "
                f"got {resolution!r}"
            )
            raise ValueError(message)
        parent = h3.cell_to_parent(h3_hex(self.cell), resolution)
        return replace(self, cell=int(h3.str_to_int(parent)))

    def summary(self) -> dict[str, Any]:
        """The figures analysts read, as one table row."""
        return {
            "resolution": self.resolution,
            "cell": self.cell,
            "h3": h3_hex(self.cell),
            "hour": pd.Timestamp(self.hour_ms, unit="ms", tz="UTC"),
            "fixes": self.fixes,
            "vehicles": self.vehicles,
            "mean_speed_kmh": self.mean_speed_kmh,
            "p95_speed_kmh": self.speed_quantile_kmh(0.95),
            "dwell_s": self.dwell_s,
        }


def _bin_value(bins: Sequence[tuple[int, int]], rank: int) -> float:
    """The bin value of the 0-based order statistic ``rank`` (the last if beyond)."""
    seen = 0
    for value, count in bins:
        seen += count
        if rank < seen:
            return float(value)
    return float(bins[-1][0])


@dataclass(frozen=True, slots=True)
class CellState:
    """One device's previous fix, for dwell time; plain values, cheap to pickle."""

    last_time_ms: int | None = None
    last_speed_kmh: float | None = None
    last_cell: int | None = None


def advance(
    state: CellState, fix: FixPoint, settings: CellSettings
) -> tuple[CellState, list[CellHour]]:
    """Count one fix of one device: the partial aggregates it adds to.

    Returns the new state and one or two :class:`CellHour` to merge into the job's
    table: the fix in its own cell-hour, and the dwell since the device's previous
    fix in the previous fix's cell-hour when both were stopped.  A fix older than
    the previous one (late) is counted but adds no dwell and leaves the state.

    Examples
    --------
    >>> settings = CellSettings(resolution=9)
    >>> state, first = advance(CellState(), FixPoint("v", 0, 48.1, 11.5, 0.0), settings)
    >>> state, second = advance(state, FixPoint("v", 30_000, 48.1, 11.5, 1.0), settings)
    >>> [(p.fixes, p.dwell_ms) for p in second]
    [(1, 0), (0, 30000)]
    """
    cell = h3_cell(fix.latitude, fix.longitude, settings.resolution)
    outputs = [CellHour.of_fix(cell, fix)]
    if state.last_time_ms is not None and fix.time_ms < state.last_time_ms:
        return state, outputs

    dwell_ms = _dwell_ms(state, fix, settings)
    if dwell_ms and state.last_time_ms is not None and state.last_cell is not None:
        hour_ms = state.last_time_ms - state.last_time_ms % HOUR_MS
        outputs.append(CellHour(state.last_cell, hour_ms, dwell_ms=dwell_ms))
    return CellState(fix.time_ms, fix.speed_kmh, cell), outputs


def _dwell_ms(state: CellState, fix: FixPoint, settings: CellSettings) -> int:
    if state.last_time_ms is None:
        return 0
    speeds = (state.last_speed_kmh, fix.speed_kmh)
    if any(s is None or not s < settings.stopped_below_kmh for s in speeds):
        return 0
    gap_ms = fix.time_ms - state.last_time_ms
    return int(min(gap_ms, settings.max_dwell_gap_s * 1000))


def merged(partials: Iterable[CellHour]) -> dict[tuple[int, int], CellHour]:
    """Partial aggregates merged by cell and hour."""
    table: dict[tuple[int, int], CellHour] = {}
    for partial in partials:
        known = table.get(partial.key)
        table[partial.key] = partial if known is None else known.merge(partial)
    return table


def rollup(partials: Iterable[CellHour], resolution: int) -> list[CellHour]:
    """Partial aggregates rolled up to a coarser resolution and merged.

    Examples
    --------
    >>> fine = [CellHour.of_fix(h3_cell(48.1, 11.5 + i / 1000, 9),
    ...                         FixPoint(str(i), 0, 48.1, 11.5 + i / 1000, 5.0))
    ...         for i in range(3)]
    >>> [(c.resolution, c.fixes, c.vehicles) for c in rollup(fine, 5)]
    [(5, 3, 3)]
    """
    return list(merged(p.to_parent(resolution) for p in partials).values())


def aggregate(
    fixes: Iterable[FixPoint], settings: CellSettings
) -> dict[tuple[int, int], CellHour]:
    """Run :func:`advance` over fixes of any devices and merge what it returns.

    Each device's fixes are taken in fix-time order (stable for equal times).
    """
    states: dict[str, CellState] = {}
    partials: list[CellHour] = []
    for fix in sorted(fixes, key=lambda f: (f.device, f.time_ms)):
        states[fix.device], produced = advance(
            states.get(fix.device, CellState()), fix, settings
        )
        partials += produced
    return merged(partials)


def cell_hours(
    frame: pd.DataFrame,
    settings: CellSettings | None = None,
    rollups: Sequence[int] = (),
) -> pd.DataFrame:
    """The aggregate table of a DataFrame of fixes, at the stored and coarser levels.

    Parameters
    ----------
    frame
        Columns ``device``, ``time`` (UTC), ``latitude``, ``longitude`` and
        ``speed_kmh`` (NaN where unknown); see :func:`geo.filtering.fix_points`.
    settings
        Stored resolution and dwell rules; the defaults when ``None``.
    rollups
        Coarser resolutions to add, as parents of the stored cells.

    Returns
    -------
    pandas.DataFrame
        One row per resolution, cell and hour: ``resolution``, ``cell``, ``h3``,
        ``hour``, ``fixes``, ``vehicles``, ``mean_speed_kmh``, ``p95_speed_kmh``,
        ``dwell_s``.
    """
    settings = settings or CellSettings()
    stored = list(aggregate(fix_points(frame), settings).values())
    levels = [stored, *(rollup(stored, resolution) for resolution in rollups)]
    return table(partial for level in levels for partial in level)


def table(partials: Iterable[CellHour]) -> pd.DataFrame:
    """Partial aggregates as rows, finest resolution first, then by hour and cell."""
    rows = [p.summary() for p in partials]
    frame = pd.DataFrame(rows, columns=_TABLE_COLUMNS)
    return frame.sort_values(
        ["resolution", "hour", "cell"], ascending=[False, True, True], ignore_index=True
    )


_TABLE_COLUMNS: Final = [
    "resolution",
    "cell",
    "h3",
    "hour",
    "fixes",
    "vehicles",
    "mean_speed_kmh",
    "p95_speed_kmh",
    "dwell_s",
]
