"""H3 aggregates per cell and hour: their scheduled refresh, and a period's totals.

``h3_hourly`` holds, per resolution, H3 cell and UTC hour, what
:class:`geo.cells.CellHour` holds: fixes, the devices seen, speed sums and a speed
histogram, dwell time, and the figures read from them (vehicles, mean and
95th-percentile speed).  ``sql/004_h3_refresh.sql`` computes them in SQL with the
definitions of :mod:`geo.cells`.  :func:`refresh_h3` runs the SQL refresh once: it
reads the fixes that arrived (by server time) since the last run, late ones
included, and rewrites the hours they touch at the stored resolution and every
coarser one down to ``coarsest``.  :func:`refresh_h3_forever` keeps doing so while
Rastro runs.

:func:`cells_over_period` merges hourly rows into one row per cell for the API, as
:meth:`geo.cells.CellHour.merge` would: from ``h3_hourly`` for the whole fleet, or
computed from the fixes of given devices with the same SQL and the same settings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog

from geo.cells import CellSettings
from pipeline.config import redact_url
from pipeline.store import connect

__all__ = [
    "CellPage",
    "RefreshRound",
    "Refreshed",
    "cells_over_period",
    "check_coarsest",
    "refresh_h3",
    "refresh_h3_forever",
    "refresh_h3_until_caught_up",
    "refresh_stale_h3",
    "refreshed",
    "rewrite_h3_hours",
]

log = structlog.get_logger("rastro.store.aggregates")

# One row per cell over a period, from hourly rows given by the first CTE, merged as
# geo.cells merges CellHour: sums, distinct devices over the union of the hours'
# sets, the mean from the speed sums, the 95th percentile from the summed
# histograms.  The rows, their devices and their bins are one relation aggregated
# in one pass: no join whose plan depends on estimates (a freshly refreshed table
# has no statistics, and a nested loop over it took 18 s instead of 0.3 s).
_MERGE = """
WITH hourly AS MATERIALIZED (
    SELECT s.*
    FROM ({source}) AS s
    WHERE $4::bigint[] IS NULL OR s.cell = ANY ($4::bigint[])
),
combined AS (
    SELECT h.cell, h.fixes, h.dwell_s, h.speed_fixes, h.speed_sum_mkmh,
           NULL::text AS device, NULL::integer AS bin, NULL::bigint AS n
    FROM hourly AS h
    UNION ALL
    SELECT h.cell, NULL, NULL, NULL, NULL, d.device, NULL, NULL
    FROM hourly AS h
    CROSS JOIN LATERAL unnest(h.devices) AS d (device)
    UNION ALL
    SELECT h.cell, NULL, NULL, NULL, NULL, NULL, u.bin, u.n
    FROM hourly AS h
    CROSS JOIN LATERAL unnest(h.speed_bins, h.speed_counts) AS u (bin, n)
)
SELECT cell,
       sum(fixes)::bigint AS fixes,
       count(fixes) AS hours,
       sum(dwell_s) AS dwell_s,
       count(DISTINCT device) AS vehicles,
       sum(speed_sum_mkmh)::double precision / nullif(sum(speed_fixes), 0) / 1000
           AS mean_speed_kmh,
       rastro_quantile_of_bins(
           array_agg(bin ORDER BY bin) FILTER (WHERE bin IS NOT NULL),
           array_agg(n ORDER BY bin) FILTER (WHERE bin IS NOT NULL),
           0.95
       ) AS p95_speed_kmh
FROM combined
GROUP BY cell
ORDER BY fixes DESC, cell
LIMIT $5
"""

_COLUMNS = (
    "cell, fixes, devices, dwell_s, speed_fixes, speed_sum_mkmh, speed_bins,"
    " speed_counts"
)

_FLEET_SOURCE = f"""
    SELECT {_COLUMNS}
    FROM h3_hourly
    WHERE resolution = $1 AND hour >= $2::timestamptz AND hour < $3::timestamptz
"""

_DEVICES_SOURCE = f"""
    SELECT {_COLUMNS}
    FROM rastro_h3_hourly(
        ARRAY(SELECT generate_series(
            $2::timestamptz, $3::timestamptz - interval '1 hour', interval '1 hour')),
        $1::integer, $1::integer, $6::text[], $7::float8, $8::float8)
"""


@dataclass(frozen=True)
class RefreshRound:
    """What one call of the SQL refresh did.

    ``hours`` were recomputed (``written`` rows), fixes that arrived up to
    ``refreshed_to`` are now counted, and ``caught_up`` says whether that is as far
    as the settle time allows (otherwise another round has more to read).
    """

    hours: int
    written: int
    refreshed_to: datetime
    caught_up: bool


@dataclass(frozen=True)
class Refreshed:
    """The resolutions and dwell rules the last refresh wrote ``h3_hourly`` with."""

    coarsest: int
    settings: CellSettings


@dataclass(frozen=True)
class CellPage:
    """Cells of a period, busiest first; ``truncated`` when more were left out."""

    cells: list[dict[str, Any]]
    truncated: bool


def check_coarsest(settings: CellSettings, coarsest: int) -> None:
    """Refuse a roll-up resolution outside ``0 .. settings.resolution``."""
    if isinstance(coarsest, bool) or not isinstance(coarsest, int):
        message = f"coarsest must be a whole number, got {coarsest!r}"
        raise TypeError(message)
    if not 0 <= coarsest <= settings.resolution:
        message = (
            f"coarsest must be from 0 to the stored resolution "
            f"{settings.resolution}, got {coarsest!r}"
        )
        raise ValueError(message)


async def refresh_h3(
    connection: Any,
    settings: CellSettings,
    *,
    coarsest: int,
    settle_s: float = 120.0,
    max_span_s: float = 86_400.0,
) -> RefreshRound:
    """Run one round of ``rastro_refresh_h3``: the next arrivals, at most a day.

    Parameters
    ----------
    connection
        An asyncpg connection or pool.
    settings
        The stored resolution (``--h3-resolution``) and the dwell rules, as the
        streaming job and :mod:`geo.cells` use them.
    coarsest
        The coarsest resolution aggregates are rolled up to.
    settle_s
        Seconds after its server time within which a fix is surely written to
        PostgreSQL (the streaming job's latency); newer arrivals wait for the
        next round.
    max_span_s
        Seconds of arrival time one round reads at most, to bound a transaction
        (the first round after a long pause catches up over several).
    """
    check_coarsest(settings, coarsest)
    if not settle_s >= 0 or not max_span_s > 0:
        message = (
            f"settle_s must be >= 0 and max_span_s > 0, got {settle_s!r} "
            f"and {max_span_s!r}"
        )
        raise ValueError(message)

    row = await connection.fetchrow(
        "SELECT * FROM rastro_refresh_h3($1, $2, $3, $4, $5, $6)",
        settings.resolution,
        coarsest,
        timedelta(seconds=settle_s),
        timedelta(seconds=max_span_s),
        settings.stopped_below_kmh,
        settings.max_dwell_gap_s,
    )
    return RefreshRound(
        hours=int(row["hours"]),
        written=int(row["written"]),
        refreshed_to=row["refreshed_to"],
        caught_up=bool(row["caught_up"]),
    )


async def refresh_h3_until_caught_up(
    connection: Any,
    settings: CellSettings,
    *,
    coarsest: int,
    settle_s: float = 120.0,
    max_span_s: float = 86_400.0,
    max_rounds: int = 1_000,
) -> RefreshRound:
    """Run :func:`refresh_h3` until it is caught up; returns the totals.

    Each round is its own transaction, so a long backlog never holds one open.
    Stops after ``max_rounds`` rounds even when not caught up (the next call goes on).
    """
    if max_rounds < 1:
        message = f"max_rounds must be at least 1, got {max_rounds!r}"
        raise ValueError(message)

    hours = written = 0
    for _ in range(max_rounds):
        done = await refresh_h3(
            connection,
            settings,
            coarsest=coarsest,
            settle_s=settle_s,
            max_span_s=max_span_s,
        )
        hours += done.hours
        written += done.written
        if done.caught_up:
            break
    return RefreshRound(hours, written, done.refreshed_to, done.caught_up)


async def rewrite_h3_hours(
    connection: Any,
    start: datetime,
    end: datetime,
    settings: CellSettings,
    *,
    coarsest: int,
) -> int:
    """Recompute every hour from ``start`` (rounded down) up to ``end`` (exclusive).

    For fixes the incremental refresh missed: written to PostgreSQL later than its
    settle time (a backlog after an outage), or whose ``filter`` changed.  Returns
    the number of rows written.
    """
    check_coarsest(settings, coarsest)
    if end <= start:
        message = f"end must be later than start, got {start} and {end}"
        raise ValueError(message)

    written = await connection.fetchval(
        "SELECT rastro_rewrite_h3_hours(ARRAY("
        " SELECT generate_series(date_trunc('hour', $1::timestamptz, 'UTC'),"
        " $2::timestamptz - interval '1 microsecond', interval '1 hour')),"
        " $3, $4, $5, $6)",
        start,
        end,
        coarsest,
        settings.resolution,
        settings.stopped_below_kmh,
        settings.max_dwell_gap_s,
    )
    return int(written)


async def refresh_stale_h3(connection: Any) -> tuple[int, int]:
    """Rewrite the hours whose fixes changed filter after a refresh read them.

    The streaming job re-marks fixes of a window it recomputes after late data;
    a trigger (``sql/007``) notes their hours and this rewrites them with the
    rules of the last refresh.  Returns the hours and rows written.
    """
    row = await connection.fetchrow("SELECT * FROM rastro_refresh_h3_stale()")
    return int(row["hours"]), int(row["written"])


async def refresh_h3_forever(
    dsn: str,
    interval_s: float,
    settings: CellSettings,
    *,
    coarsest: int,
    settle_s: float = 120.0,
    max_span_s: float = 86_400.0,
) -> None:
    """Refresh the H3 aggregates every ``interval_s`` seconds until cancelled.

    Meant as one task of a long-running process (the supervisor's task group),
    beside :func:`pipeline.store.migrations.maintain_partitions`.  Each round opens
    a connection, catches up and closes it.  A failure (database down, a query
    error) is logged and retried at the next round; it never ends the loop.
    """
    check_coarsest(settings, coarsest)
    if not interval_s > 0:
        message = f"interval_s must be above 0, got {interval_s!r}"
        raise ValueError(message)

    while True:
        try:
            await _refresh_round(dsn, settings, coarsest, settle_s, max_span_s)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.error(
                "h3_refresh_failed",
                database=redact_url(dsn),
                error=type(error).__name__,
                reason=str(error),
            )
        await asyncio.sleep(interval_s)


async def _refresh_round(
    dsn: str,
    settings: CellSettings,
    coarsest: int,
    settle_s: float,
    max_span_s: float,
) -> None:
    connection = await connect(dsn)
    try:
        done = await refresh_h3_until_caught_up(
            connection,
            settings,
            coarsest=coarsest,
            settle_s=settle_s,
            max_span_s=max_span_s,
        )
        stale_hours, stale_rows = await refresh_stale_h3(connection)
    finally:
        await connection.close()

    if stale_hours:
        log.info("h3_stale_hours_rewritten", hours=stale_hours, rows=stale_rows)

    if done.hours:
        log.info(
            "h3_refreshed",
            hours=done.hours,
            rows=done.written,
            refreshed_to=done.refreshed_to.isoformat(),
            caught_up=done.caught_up,
        )


async def refreshed(connection: Any) -> Refreshed | None:
    """What the last refresh used; ``None`` before the first one."""
    row = await connection.fetchrow(
        "SELECT coarsest, finest, stopped_below_kmh, max_dwell_gap_s"
        " FROM h3_refresh_state"
    )
    if row is None or row["finest"] is None:
        return None
    settings = CellSettings(
        resolution=int(row["finest"]),
        stopped_below_kmh=float(row["stopped_below_kmh"]),
        max_dwell_gap_s=float(row["max_dwell_gap_s"]),
    )
    return Refreshed(int(row["coarsest"]), settings)


async def cells_over_period(
    connection: Any,
    *,
    resolution: int,
    start: datetime,
    end: datetime,
    cells: Sequence[int] | None,
    devices: Sequence[str] | None,
    limit: int,
    settings: CellSettings | None = None,
    timeout_s: float = 30.0,
) -> CellPage:
    """One row per cell at ``resolution`` over the UTC hours in ``[start, end)``.

    Parameters
    ----------
    connection
        An asyncpg connection or pool.
    resolution
        H3 resolution of the cells.
    start, end
        Whole UTC hours (the caller rounds); the hours starting in ``[start, end)``.
    cells
        Only these cells (64-bit indexes), or ``None`` for every cell.
    devices
        ``None``: the whole fleet, from ``h3_hourly``.  Otherwise only these
        devices' fixes (uniqueIds), aggregated on the fly by the same definitions.
    limit
        At most this many cells, the ones with the most fixes.
    settings
        The dwell rules for aggregating on the fly (those of the refresh);
        :class:`geo.cells.CellSettings`' defaults when ``None``.
    timeout_s
        The query is cancelled after this many seconds
        (:class:`asyncpg.QueryCanceledError`): aggregating many devices' fixes
        over weeks on the fly can take minutes.

    Returns
    -------
    CellPage
        Rows with ``cell`` (int), ``fixes``, ``vehicles`` (distinct over the
        period), ``hours`` (with fixes), ``mean_speed_kmh``, ``p95_speed_kmh``
        and ``dwell_s``: what :meth:`geo.cells.CellHour.merge` of the hours gives.
    """
    rules = settings or CellSettings()
    arguments: list[Any] = [
        resolution,
        start,
        end,
        None if cells is None else list(cells),
        limit + 1,
    ]
    source = _FLEET_SOURCE
    if devices is not None:
        if not devices:
            return CellPage([], truncated=False)
        source = _DEVICES_SOURCE
        arguments += [list(devices), rules.stopped_below_kmh, rules.max_dwell_gap_s]

    async with _acquired(connection) as held, held.transaction(readonly=True):
        # JIT compiles this query for seconds when it runs for a fraction of one.
        await held.execute("SET LOCAL jit = off")
        await held.execute(f"SET LOCAL statement_timeout = {round(timeout_s * 1000)}")
        rows = await held.fetch(_MERGE.format(source=source), *arguments)
    found = [_cell_row(row) for row in rows[:limit]]
    return CellPage(found, truncated=len(rows) > limit)


def _acquired(connection: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    """A connection of a pool, or the connection itself."""
    if isinstance(connection, asyncpg.Pool):
        acquired: contextlib.AbstractAsyncContextManager[Any] = connection.acquire()
        return acquired
    return contextlib.nullcontext(connection)


def _cell_row(row: asyncpg.Record) -> dict[str, Any]:
    mean = row["mean_speed_kmh"]
    p95 = row["p95_speed_kmh"]
    return {
        "cell": int(row["cell"]),
        "fixes": int(row["fixes"]),
        "vehicles": int(row["vehicles"]),
        "hours": int(row["hours"]),
        "mean_speed_kmh": None if mean is None else float(mean),
        "p95_speed_kmh": None if p95 is None else float(p95),
        "dwell_s": float(row["dwell_s"]),
    }
