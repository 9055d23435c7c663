-- TimescaleDB variant of version 002: fixes as a hypertable.
-- Chosen by pipeline.store.migrations instead of ../002_fixes_partitions.sql when the
-- timescaledb extension is available and preloaded.  Not tested on Rastro's own
-- machines (no TimescaleDB there): keep it small and close to the documented API.
--
-- Chunks of one day on fix_time (the same grain as the native daily partitions);
-- chunks older than 7 days are compressed, segmented by device so one device's
-- history stays together and decompresses alone.  The primary key
-- (device, fix_time) holds the time column, as a hypertable requires, so
-- INSERT ... ON CONFLICT (device, fix_time) DO NOTHING keeps working.

CREATE EXTENSION IF NOT EXISTS timescaledb;

SELECT create_hypertable(
    'fixes',
    'fix_time',
    chunk_time_interval => INTERVAL '1 day',
    migrate_data => true
);

ALTER TABLE fixes SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device',
    timescaledb.compress_orderby = 'fix_time DESC'
);

SELECT add_compression_policy('fixes', compress_after => INTERVAL '7 days');

-- TimescaleDB creates chunks itself: the partition helper the runner and the
-- supervisor call exists here too, and creates nothing.
CREATE FUNCTION rastro_ensure_fix_partitions(from_day date, days integer)
RETURNS SETOF text
LANGUAGE sql
AS $$ SELECT NULL::text WHERE false $$;

COMMENT ON FUNCTION rastro_ensure_fix_partitions(date, integer) IS
    'No-op under TimescaleDB: chunks are created on insert';
