-- Native partitioning of fixes: one partition per UTC day, and a DEFAULT partition.
-- Chosen by pipeline.store.migrations when TimescaleDB is not available (the embedded
-- server, Debian's PostgreSQL); timescale/002_fixes_hypertable.sql is the other choice.
--
-- Daily partitions keep indexes small and let old days be detached or dropped whole.
-- The DEFAULT partition takes any fix no daily partition covers (a 2010 replay, a
-- clock far in the future), so a fix is never rejected for its date.
-- rastro_ensure_fix_partitions() creates the days ahead; the runner calls it after
-- every migration, and pipeline.store.migrations.maintain_partitions() hourly while
-- Rastro runs (a fix past the last partition still lands, in DEFAULT, and is moved
-- into its own day's partition when that is created).

-- Rebuild the plain table of 001 as a partitioned one with the same columns ----------
ALTER TABLE fixes RENAME TO fixes_unpartitioned;
ALTER TABLE fixes_unpartitioned RENAME CONSTRAINT fixes_pkey TO fixes_unpartitioned_pkey;

-- Same columns, defaults, comments and primary key (device, fix_time): the key holds
-- the partition column, so it stays unique across partitions and
-- INSERT ... ON CONFLICT (device, fix_time) works on the parent, from JDBC too.
CREATE TABLE fixes (LIKE fixes_unpartitioned INCLUDING ALL) PARTITION BY RANGE (fix_time);
CREATE TABLE fixes_default PARTITION OF fixes DEFAULT;

INSERT INTO fixes SELECT * FROM fixes_unpartitioned;
DROP TABLE fixes_unpartitioned;

-- Daily partitions, created ahead of time --------------------------------------------
-- Creates fixes_YYYYMMDD for the UTC days from_day .. from_day + days - 1 that do not
-- exist yet and returns the names it created.  Fixes of such a day already sitting in
-- the DEFAULT partition are moved into the new partition before it is attached.
CREATE FUNCTION rastro_ensure_fix_partitions(from_day date, days integer)
RETURNS SETOF text
LANGUAGE plpgsql
AS $$
DECLARE
    step      integer;
    day       date;
    partition text;
    lower_at  timestamptz;
    upper_at  timestamptz;
BEGIN
    IF from_day IS NULL OR days IS NULL OR days < 0 OR days > 3660 THEN
        RAISE EXCEPTION 'rastro_ensure_fix_partitions: need a day and 0..3660 days, got % and %',
            from_day, days;
    END IF;

    -- One creator at a time: a concurrent caller waits, then finds the days done.
    PERFORM pg_advisory_xact_lock(hashtext('rastro_ensure_fix_partitions'));

    FOR step IN 0 .. days - 1 LOOP
        day := from_day + step;
        partition := 'fixes_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(quote_ident(partition)) IS NOT NULL;

        lower_at := day::timestamp AT TIME ZONE 'UTC';
        upper_at := (day + 1)::timestamp AT TIME ZONE 'UTC';

        -- Keeps new rows of that day out of DEFAULT until the partition is attached;
        -- inserts for other days go on.
        LOCK TABLE fixes_default IN ACCESS EXCLUSIVE MODE;
        EXECUTE format('CREATE TABLE %I (LIKE fixes INCLUDING ALL)', partition);
        EXECUTE format(
            'WITH moved AS (DELETE FROM fixes_default'
            ' WHERE fix_time >= $1 AND fix_time < $2 RETURNING *)'
            ' INSERT INTO %I SELECT * FROM moved',
            partition)
        USING lower_at, upper_at;
        EXECUTE format(
            'ALTER TABLE fixes ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            partition, lower_at, upper_at);

        RETURN NEXT partition;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION rastro_ensure_fix_partitions(date, integer) IS
    'Create the daily fixes partitions from_day .. from_day + days - 1 (UTC) that are missing';
