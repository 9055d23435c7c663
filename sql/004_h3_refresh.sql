-- Hourly H3 aggregates kept current from fixes, late fixes included.
-- Plain PostgreSQL (no h3 extension): H3 parents are computed with bit arithmetic.
-- timescale/004_h3_refresh.sql replaces this file under TimescaleDB.
--
-- geo/cells.py is the definition; this is its twin in SQL, and the tests hold the
-- two equal.  One h3_hourly row, for one resolution, cell and UTC hour, covers the
-- accepted fixes (filter IS NULL, h3 set) whose fix time lies in that hour; a
-- coarser resolution counts each fix in the parent of its stored cell:
--   fixes           how many
--   devices         the distinct devices (sorted uniqueIds), so that distinct
--                   vehicles stay exact when hours or cells are merged
--   vehicles        how many devices
--   speed_fixes     fixes with a speed; speed_sum_mkmh their sum in milli-km/h
--                   (each speed clamped at 0 and rounded to 0.001 km/h), so a
--                   merged mean is exact
--   mean_speed_kmh  speed_sum_mkmh / speed_fixes / 1000
--   speed_bins, speed_counts
--                   the speed histogram: speeds rounded to whole km/h, 0 .. 250
--                   (the last bin holds 249.5 km/h and above), only bins in use
--   p95_speed_kmh   the 95th percentile read from the histogram as numpy's linear
--                   quantile of the bin values (within 0.5 km/h of the exact one)
--   dwell_s         for each pair of consecutive accepted fixes of one device whose
--                   speeds are both below stopped_below_kmh (3): the time between
--                   them, at most max_dwell_gap_s (300), in the earlier fix's cell
--                   and hour.  A device's latest fix has no pair yet.
-- 003's comment announced speed_histogram; the columns that carry it are added here.

-- Columns 003 described but did not create, and what the refresh records --------------
ALTER TABLE h3_hourly
    ADD COLUMN devices        text[]     NOT NULL DEFAULT '{}',
    ADD COLUMN speed_fixes    bigint     NOT NULL DEFAULT 0,
    ADD COLUMN speed_sum_mkmh bigint     NOT NULL DEFAULT 0,
    ADD COLUMN speed_bins     smallint[] NOT NULL DEFAULT '{}',
    ADD COLUMN speed_counts   integer[]  NOT NULL DEFAULT '{}';

-- What the last refresh used, so that aggregates computed on the fly (for one
-- user's devices) follow the same rules.
ALTER TABLE h3_refresh_state
    ADD COLUMN finest            smallint,
    ADD COLUMN coarsest          smallint,
    ADD COLUMN stopped_below_kmh double precision,
    ADD COLUMN max_dwell_gap_s   double precision,
    ADD COLUMN refreshed_at      timestamptz;

-- A refresh reads whole hours of fixes.  Within a daily partition rows arrive in
-- about fix-time order, so a BRIN index finds an hour for almost nothing (the
-- primary key (device, fix_time) cannot serve a range on fix_time alone).
CREATE INDEX fixes_fix_time_brin ON fixes USING brin (fix_time);

-- H3 index arithmetic ------------------------------------------------------------
-- An H3 cell index: bit 63 reserved, 59-62 mode, 56-58 reserved, 52-55 resolution,
-- 45-51 base cell, then 15 digits of 3 bits from bit 44 down; digits past the
-- resolution are 7.
CREATE FUNCTION rastro_h3_resolution(cell bigint)
RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT ((cell >> 52) & 15)::integer $$;

COMMENT ON FUNCTION rastro_h3_resolution(bigint) IS
    'Resolution of an H3 cell index (bits 52-55)';

-- The ancestor at a resolution no finer than the cell's own (the cell itself at its
-- own resolution); NULL for a finer or out-of-range resolution.
-- Not STRICT, so that PostgreSQL inlines it (a NULL gives NULL all the same): a call
-- per fix and resolution would cost more than the rest of the refresh.
CREATE FUNCTION rastro_h3_parent(cell bigint, resolution integer)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN resolution BETWEEN 0 AND ((cell >> 52) & 15) THEN
            (cell & ~(15::bigint << 52))
            | (resolution::bigint << 52)
            | ((1::bigint << ((15 - resolution) * 3)) - 1)
    END
$$;

COMMENT ON FUNCTION rastro_h3_parent(bigint, integer) IS
    'H3 cell_to_parent by bit arithmetic: set the resolution, unused digits to 7';

-- A quantile of a speed histogram, as geo.cells.CellHour.speed_quantile_kmh reads
-- it: numpy's linear quantile of the bin values (rank q * (n - 1) between the two
-- order statistics around it).  bins ascending, counts of each; NULL when empty.
CREATE FUNCTION rastro_quantile_of_bins(
    bins integer[],
    counts bigint[],
    q double precision
)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
DECLARE
    total bigint := 0;
    seen  bigint := 0;
    rank  double precision;
    below bigint;
    low   double precision;
    high  double precision;
    i     integer;
BEGIN
    IF coalesce(cardinality(bins), 0) <> coalesce(cardinality(counts), 0) THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(counts), 0) LOOP
        total := total + counts[i];
    END LOOP;
    IF total = 0 THEN
        RETURN NULL;
    END IF;

    rank := q * (total - 1);
    below := floor(rank)::bigint;
    FOR i IN 1 .. cardinality(bins) LOOP
        seen := seen + counts[i];
        IF low IS NULL AND below < seen THEN
            low := bins[i];
        END IF;
        IF below + 1 < seen THEN
            high := bins[i];
            EXIT;
        END IF;
    END LOOP;
    high := coalesce(high, bins[cardinality(bins)]);
    RETURN low + (rank - below) * (high - low);
END;
$$;

COMMENT ON FUNCTION rastro_quantile_of_bins(integer[], bigint[], double precision) IS
    'Linear quantile of histogram bin values, as geo.cells reads its speed histogram';

-- Hourly aggregates computed from fixes -------------------------------------------
-- For the given UTC hours (any timestamptz inside an hour names it), resolutions
-- coarsest .. finest (each fix only at resolutions no finer than its own index),
-- over every device or only the given ones.  The last fix of a device in an hour
-- looks up the device's next accepted fix wherever it is: within a day first, so
-- that only a device silent longer than that reaches into every later partition.
-- JIT is off: compiling this query cost 3.7 s, more than running it (3 s for an
-- hour of 360,000 fixes at five resolutions); work_mem keeps its sorts in memory.
CREATE FUNCTION rastro_h3_hourly(
    hours timestamptz[],
    coarsest integer,
    finest integer,
    only_devices text[] DEFAULT NULL,
    stopped_below_kmh double precision DEFAULT 3,
    max_dwell_gap_s double precision DEFAULT 300
)
RETURNS TABLE (
    resolution      smallint,
    cell            bigint,
    hour            timestamptz,
    fixes           bigint,
    vehicles        integer,
    devices         text[],
    speed_fixes     bigint,
    speed_sum_mkmh  bigint,
    mean_speed_kmh  real,
    p95_speed_kmh   real,
    dwell_s         double precision,
    speed_bins      smallint[],
    speed_counts    integer[]
)
LANGUAGE sql STABLE PARALLEL SAFE
SET jit = off
SET work_mem = '64MB'
AS $$
    WITH wanted AS (
        SELECT DISTINCT date_trunc('hour', h, 'UTC') AS hour
        FROM unnest(hours) AS h
        WHERE h IS NOT NULL
    ),
    inside AS (
        SELECT w.hour, f.device, f.fix_time, f.h3, f.speed,
               lead(f.fix_time) OVER next AS next_time,
               lead(f.speed) OVER next AS next_speed
        FROM wanted AS w
        JOIN fixes AS f
          ON f.fix_time >= w.hour AND f.fix_time < w.hour + interval '1 hour'
        WHERE f.filter IS NULL
          AND (only_devices IS NULL OR f.device = ANY (only_devices))
        WINDOW next AS (PARTITION BY w.hour, f.device ORDER BY f.fix_time)
    ),
    -- Only the last fix of a device in the hour looks further for its pair.
    paired AS (
        SELECT i.hour, i.device, i.fix_time, i.h3, i.speed, i.next_time, i.next_speed
        FROM inside AS i
        WHERE i.next_time IS NOT NULL
        UNION ALL
        SELECT i.hour, i.device, i.fix_time, i.h3, i.speed,
               coalesce(near.fix_time, far.fix_time),
               CASE WHEN near.fix_time IS NOT NULL THEN near.speed ELSE far.speed END
        FROM inside AS i
        LEFT JOIN LATERAL (
            SELECT f.fix_time, f.speed FROM fixes AS f
            WHERE f.device = i.device AND f.filter IS NULL
              AND f.fix_time > i.fix_time AND f.fix_time <= i.fix_time + interval '1 day'
            ORDER BY f.fix_time LIMIT 1
        ) AS near ON true
        LEFT JOIN LATERAL (
            SELECT f.fix_time, f.speed FROM fixes AS f
            WHERE near.fix_time IS NULL AND f.device = i.device AND f.filter IS NULL
              AND f.fix_time > i.fix_time + interval '1 day'
            ORDER BY f.fix_time LIMIT 1
        ) AS far ON true
        WHERE i.next_time IS NULL
    ),
    own AS (
        SELECT hour, device, h3, speed,
               CASE WHEN speed < stopped_below_kmh AND next_speed < stopped_below_kmh
                    THEN least(extract(epoch FROM next_time - fix_time),
                               max_dwell_gap_s)
                    ELSE 0 END::double precision AS dwell_s
        FROM paired
        WHERE h3 > 0
    ),
    -- Each fix at the finest resolution asked (its own when that is coarser).
    placed AS (
        SELECT least(finest, rastro_h3_resolution(o.h3))::smallint AS resolution,
               rastro_h3_parent(o.h3, least(finest, rastro_h3_resolution(o.h3)))
                   AS cell,
               o.hour, o.device, o.dwell_s,
               -- Speeds below 0 count as 0; GREATEST alone would make NULL 0.
               CASE WHEN o.speed IS NOT NULL
                    THEN greatest(o.speed::double precision, 0) END AS speed
        FROM own AS o
        WHERE least(finest, rastro_h3_resolution(o.h3)) >= coarsest
    ),
    binned AS (
        SELECT p.resolution, p.cell, p.hour,
               least(floor(p.speed + 0.5), 250)::smallint AS bin,
               count(*)::integer AS n
        FROM placed AS p
        WHERE p.speed IS NOT NULL
        GROUP BY 1, 2, 3, 4
    ),
    -- Fixes and histogram bins as rows of one relation, aggregated in one pass: no
    -- join whose plan would depend on row estimates the planner cannot make.
    fine AS (
        SELECT c.resolution, c.cell, c.hour,
               count(c.device) AS fixes,
               array_agg(DISTINCT c.device ORDER BY c.device)
                   FILTER (WHERE c.device IS NOT NULL) AS devices,
               count(c.speed) AS speed_fixes,
               coalesce(sum(round(c.speed * 1000)), 0)::bigint AS speed_sum_mkmh,
               sum(c.dwell_s) AS dwell_s,
               array_agg(c.bin ORDER BY c.bin) FILTER (WHERE c.bin IS NOT NULL)
                   AS speed_bins,
               array_agg(c.n ORDER BY c.bin) FILTER (WHERE c.bin IS NOT NULL)
                   AS speed_counts
        FROM (
            SELECT p.resolution, p.cell, p.hour, p.device, p.speed, p.dwell_s,
                   NULL::smallint AS bin, NULL::integer AS n
            FROM placed AS p
            UNION ALL
            SELECT b.resolution, b.cell, b.hour, NULL, NULL, NULL, b.bin, b.n
            FROM binned AS b
        ) AS c
        GROUP BY c.resolution, c.cell, c.hour
    ),
    -- Every coarser level is the merge of its children's rows, as geo.cells rolls
    -- up: far fewer rows than fixes, so a level costs little.
    lifted AS (
        SELECT r::smallint AS resolution, rastro_h3_parent(f.cell, r) AS cell,
               f.hour, f.fixes, f.devices, f.speed_fixes, f.speed_sum_mkmh,
               f.dwell_s, f.speed_bins, f.speed_counts
        FROM fine AS f
        CROSS JOIN generate_series(greatest(coarsest, 0), least(finest, 15)) AS r
        WHERE r <= f.resolution
    ),
    merged AS (
        SELECT m.resolution, m.cell, m.hour,
               sum(m.fixes)::bigint AS fixes,
               array_agg(DISTINCT m.device ORDER BY m.device)
                   FILTER (WHERE m.device IS NOT NULL) AS devices,
               sum(m.speed_fixes)::bigint AS speed_fixes,
               sum(m.speed_sum_mkmh)::bigint AS speed_sum_mkmh,
               sum(m.dwell_s) AS dwell_s,
               array_agg(m.bin ORDER BY m.bin) FILTER (WHERE m.bin IS NOT NULL)
                   AS bins,
               array_agg(m.n ORDER BY m.bin) FILTER (WHERE m.bin IS NOT NULL)
                   AS counts
        FROM (
            SELECT l.resolution, l.cell, l.hour, l.fixes, l.speed_fixes,
                   l.speed_sum_mkmh, l.dwell_s,
                   NULL::text AS device, NULL::smallint AS bin, NULL::bigint AS n
            FROM lifted AS l
            UNION ALL
            SELECT l.resolution, l.cell, l.hour, NULL, NULL, NULL, NULL, d.device,
                   NULL, NULL
            FROM lifted AS l
            CROSS JOIN LATERAL unnest(l.devices) AS d (device)
            UNION ALL
            -- Children's equal bins summed into one.
            SELECT l.resolution, l.cell, l.hour, NULL, NULL, NULL, NULL, NULL,
                   u.bin, sum(u.n)
            FROM lifted AS l
            CROSS JOIN LATERAL unnest(l.speed_bins, l.speed_counts) AS u (bin, n)
            GROUP BY l.resolution, l.cell, l.hour, u.bin
        ) AS m
        GROUP BY m.resolution, m.cell, m.hour
    )
    SELECT m.resolution, m.cell, m.hour, m.fixes,
           cardinality(m.devices), m.devices, m.speed_fixes, m.speed_sum_mkmh,
           (m.speed_sum_mkmh::double precision / nullif(m.speed_fixes, 0) / 1000)::real,
           rastro_quantile_of_bins(m.bins::integer[], m.counts, 0.95)::real,
           m.dwell_s,
           coalesce(m.bins, '{}'), coalesce(m.counts::integer[], '{}')
    FROM merged AS m
$$;

COMMENT ON FUNCTION rastro_h3_hourly(
    timestamptz[], integer, integer, text[], double precision, double precision
) IS 'H3 aggregates per resolution, cell and UTC hour, computed from accepted fixes';

-- Rewrite the aggregates of whole hours -------------------------------------------
-- Rows of those hours at resolutions coarsest .. finest are replaced: a cell no fix
-- lies in any more loses its row.  Returns the number of rows written.
CREATE FUNCTION rastro_rewrite_h3_hours(
    hours timestamptz[],
    coarsest integer,
    finest integer,
    stopped_below_kmh double precision DEFAULT 3,
    max_dwell_gap_s double precision DEFAULT 300
)
RETURNS bigint
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
    truncated timestamptz[];
    written   bigint;
BEGIN
    SELECT coalesce(array_agg(DISTINCT date_trunc('hour', h, 'UTC')), '{}')
    INTO truncated
    FROM unnest(hours) AS h
    WHERE h IS NOT NULL;

    DELETE FROM h3_hourly AS a
    WHERE a.hour = ANY (truncated)
      AND a.resolution BETWEEN coarsest AND finest;

    INSERT INTO h3_hourly AS a (
        resolution, cell, hour, fixes, vehicles, devices, speed_fixes,
        speed_sum_mkmh, mean_speed_kmh, p95_speed_kmh, dwell_s, speed_bins,
        speed_counts
    )
    SELECT * FROM rastro_h3_hourly(
        truncated, coarsest, finest, NULL, stopped_below_kmh, max_dwell_gap_s)
    ON CONFLICT (resolution, hour, cell) DO UPDATE SET
        fixes = excluded.fixes,
        vehicles = excluded.vehicles,
        devices = excluded.devices,
        speed_fixes = excluded.speed_fixes,
        speed_sum_mkmh = excluded.speed_sum_mkmh,
        mean_speed_kmh = excluded.mean_speed_kmh,
        p95_speed_kmh = excluded.p95_speed_kmh,
        dwell_s = excluded.dwell_s,
        speed_bins = excluded.speed_bins,
        speed_counts = excluded.speed_counts;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END;
$$;

COMMENT ON FUNCTION rastro_rewrite_h3_hours(
    timestamptz[], integer, integer, double precision, double precision
) IS 'Recompute h3_hourly for whole UTC hours at resolutions coarsest .. finest';

-- The incremental refresh ---------------------------------------------------------
-- Reads the accepted fixes that arrived (server_time) after
-- h3_refresh_state.refreshed_to and up to now() - settle, at most max_span of
-- arrival time per call, and recomputes every hour they touch: the hour of each,
-- and the hour of the device's previous accepted fix (whose pair, and so dwell, a
-- new fix changes), however far back.  A fix late by days updates its own old
-- hour.  settle is how long after its server time a fix may still be written to
-- PostgreSQL (the streaming job's latency); a fix written later than that, or whose
-- filter changes afterwards, is missed here: rastro_rewrite_h3_hours() recomputes
-- such a period.  One refresh at a time (advisory lock); safe to call at any rate.
CREATE FUNCTION rastro_refresh_h3(
    finest integer,
    coarsest integer,
    settle interval DEFAULT interval '2 minutes',
    max_span interval DEFAULT interval '1 day',
    stopped_below_kmh double precision DEFAULT 3,
    max_dwell_gap_s double precision DEFAULT 300
)
RETURNS TABLE (hours integer, written bigint, refreshed_to timestamptz, caught_up boolean)
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
    done_to  timestamptz;
    next_at  timestamptz;
    limit_at timestamptz;
    stop_at  timestamptz;
    touched  timestamptz[];
BEGIN
    IF finest IS NULL OR coarsest IS NULL OR coarsest < 0 OR finest > 15
            OR coarsest > finest THEN
        RAISE EXCEPTION 'rastro_refresh_h3: need 0 <= coarsest <= finest <= 15, got % and %',
            coarsest, finest;
    END IF;
    IF settle IS NULL OR settle < interval '0' OR max_span IS NULL
            OR max_span <= interval '0' THEN
        RAISE EXCEPTION 'rastro_refresh_h3: need settle >= 0 and max_span > 0, got % and %',
            settle, max_span;
    END IF;
    IF NOT (stopped_below_kmh > 0 AND max_dwell_gap_s > 0) THEN
        RAISE EXCEPTION 'rastro_refresh_h3: need stopped_below_kmh > 0 and max_dwell_gap_s > 0, got % and %',
            stopped_below_kmh, max_dwell_gap_s;
    END IF;

    PERFORM pg_advisory_xact_lock(hashtext('rastro_refresh_h3'));
    SELECT s.refreshed_to INTO done_to FROM h3_refresh_state AS s FOR UPDATE;
    limit_at := now() - settle;

    -- The first arrival still to read: a first run or a long pause in arrivals
    -- starts there rather than reading empty days one by one.
    SELECT min(f.server_time) INTO next_at FROM fixes AS f WHERE f.server_time > done_to;

    IF next_at IS NULL OR next_at > limit_at THEN
        UPDATE h3_refresh_state AS s
        SET refreshed_to = greatest(s.refreshed_to, limit_at),
            finest = rastro_refresh_h3.finest,
            coarsest = rastro_refresh_h3.coarsest,
            stopped_below_kmh = rastro_refresh_h3.stopped_below_kmh,
            max_dwell_gap_s = rastro_refresh_h3.max_dwell_gap_s,
            refreshed_at = now();
        RETURN QUERY SELECT 0, 0::bigint, greatest(done_to, limit_at), true;
        RETURN;
    END IF;

    stop_at := least(limit_at, next_at + max_span);
    WITH arrived AS (
        SELECT f.device, date_trunc('hour', f.fix_time, 'UTC') AS hour,
               min(f.fix_time) AS first_time
        FROM fixes AS f
        WHERE f.server_time > done_to AND f.server_time <= stop_at
          AND f.filter IS NULL
        GROUP BY 1, 2
    ),
    previous AS (
        SELECT date_trunc('hour', coalesce(near.fix_time, far.fix_time), 'UTC') AS hour
        FROM arrived AS a
        LEFT JOIN LATERAL (
            SELECT f.fix_time FROM fixes AS f
            WHERE f.device = a.device AND f.filter IS NULL
              AND f.fix_time < a.first_time
              AND f.fix_time >= a.first_time - interval '1 day'
            ORDER BY f.fix_time DESC LIMIT 1
        ) AS near ON true
        LEFT JOIN LATERAL (
            SELECT f.fix_time FROM fixes AS f
            WHERE near.fix_time IS NULL AND f.device = a.device AND f.filter IS NULL
              AND f.fix_time < a.first_time - interval '1 day'
            ORDER BY f.fix_time DESC LIMIT 1
        ) AS far ON true
    )
    SELECT coalesce(array_agg(DISTINCT t.hour), '{}') INTO touched
    FROM (
        SELECT a.hour FROM arrived AS a
        UNION ALL
        SELECT p.hour FROM previous AS p WHERE p.hour IS NOT NULL
    ) AS t;

    RETURN QUERY SELECT
        cardinality(touched),
        rastro_rewrite_h3_hours(
            touched, coarsest, finest, stopped_below_kmh, max_dwell_gap_s),
        stop_at,
        stop_at >= limit_at;

    UPDATE h3_refresh_state AS s
    SET refreshed_to = stop_at,
        finest = rastro_refresh_h3.finest,
        coarsest = rastro_refresh_h3.coarsest,
        stopped_below_kmh = rastro_refresh_h3.stopped_below_kmh,
        max_dwell_gap_s = rastro_refresh_h3.max_dwell_gap_s,
        refreshed_at = now();
END;
$$;

COMMENT ON FUNCTION rastro_refresh_h3(
    integer, integer, interval, interval, double precision, double precision
) IS 'Recompute h3_hourly for the hours touched by fixes that arrived since the last run';
