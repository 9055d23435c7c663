-- H3 hours whose fixes changed filter after the refresh read them.  Depends on 004.
--
-- rastro_refresh_h3() reads fixes by arrival (server_time), so it never sees a fix
-- whose filter the streaming job changes later: the recompute after a burst of late
-- fixes re-judges a window of history and re-marks fixes that arrived long ago.
-- A trigger notes the hours such a change touches, and rastro_refresh_h3_stale()
-- rewrites them.  The same file serves TimescaleDB (triggers work on hypertables).

CREATE TABLE h3_stale_hours (
    hour      timestamptz PRIMARY KEY,
    marked_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE h3_stale_hours IS
    'UTC hours of h3_hourly to rewrite: a fix there changed filter after it was read';

-- A fix's hour, and the hour of a fix up to the dwell gap before it (the pair that
-- ends at this fix gives its dwell to the earlier fix's hour).  Only a change the
-- refresh may already have read is noted: the job marks a filtered fix seconds
-- after writing it, well before the refresh's settle time, and that needs nothing.
CREATE FUNCTION rastro_note_h3_stale() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    read_to timestamptz;
    gap_s   double precision;
BEGIN
    SELECT s.refreshed_to, coalesce(s.max_dwell_gap_s, 300)
    INTO read_to, gap_s
    FROM h3_refresh_state AS s;

    IF NEW.server_time <= read_to OR NEW.server_time < now() - interval '1 minute' THEN
        INSERT INTO h3_stale_hours (hour)
        SELECT DISTINCT date_trunc('hour', t, 'UTC')
        FROM unnest(ARRAY[NEW.fix_time, NEW.fix_time - make_interval(secs => gap_s)]) AS t
        ON CONFLICT (hour) DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER fixes_filter_changed
    AFTER UPDATE OF filter ON fixes
    FOR EACH ROW
    WHEN (OLD.filter IS DISTINCT FROM NEW.filter)
    EXECUTE FUNCTION rastro_note_h3_stale();

-- Rewrite every noted hour with the rules the last refresh used; returns how many
-- hours and rows.  Holds the refresh's lock, so it never races rastro_refresh_h3().
CREATE FUNCTION rastro_refresh_h3_stale()
RETURNS TABLE (hours integer, written bigint)
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
    rules  h3_refresh_state%ROWTYPE;
    stale  timestamptz[];
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('rastro_refresh_h3'));
    SELECT * INTO rules FROM h3_refresh_state;
    IF rules.finest IS NULL THEN
        -- No refresh ran yet: it will read every fix with its current filter.
        RETURN QUERY SELECT 0, 0::bigint;
        RETURN;
    END IF;

    WITH taken AS (DELETE FROM h3_stale_hours RETURNING hour)
    SELECT coalesce(array_agg(hour), '{}') INTO stale FROM taken;
    IF cardinality(stale) = 0 THEN
        RETURN QUERY SELECT 0, 0::bigint;
        RETURN;
    END IF;

    RETURN QUERY SELECT
        cardinality(stale),
        rastro_rewrite_h3_hours(
            stale, rules.coarsest, rules.finest, rules.stopped_below_kmh,
            rules.max_dwell_gap_s);
END;
$$;

COMMENT ON FUNCTION rastro_refresh_h3_stale() IS
    'Rewrite the h3_hourly hours noted in h3_stale_hours, with the last refresh''s rules';
