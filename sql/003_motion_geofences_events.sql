-- What the streaming job derives from fixes, and what it needs to derive it:
-- device groups, geofences, filtered fixes, trips, stops, idle periods, geofence
-- visits, events, daily summaries and hourly H3 aggregates.
--
-- Every derived table is keyed so that the job can write it again after a crash or
-- a recompute of late data without making duplicates (INSERT ... ON CONFLICT).
-- Devices are referred to by unique_id (text), as in fixes: history outlives a
-- device row, and the job knows devices by what they send.

-- Who is in charge of what -------------------------------------------------------
-- A user's time zone decides the days of their daily summaries.
ALTER TABLE users ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC';

-- Groups share settings (filters, thresholds, speed limits in attributes) and
-- geofence assignments.
CREATE TABLE device_groups (
    id            bigserial PRIMARY KEY,
    owner_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          text NOT NULL,
    attributes    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_id, name)
);

ALTER TABLE devices
    ADD COLUMN group_id bigint REFERENCES device_groups (id) ON DELETE SET NULL;
CREATE INDEX devices_group_idx ON devices (group_id);

-- A filtered fix stays in history with its reason --------------------------------
-- NULL: accepted.  Otherwise a reason code of geo.filtering (jump, accuracy, ...).
-- Added to the parent, so every partition (and every future one) has it.
ALTER TABLE fixes ADD COLUMN filter text;

-- Geofences ----------------------------------------------------------------------
-- geometry is GeoJSON: a Polygon; a Point with properties.radius (metres) for a
-- circle; a LineString with properties.width (metres) for a corridor.  version
-- grows with every change, so the running job can tell a changed fence.
CREATE TABLE geofences (
    id              bigserial PRIMARY KEY,
    owner_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('polygon', 'circle', 'corridor')),
    geometry        jsonb NOT NULL,
    speed_limit_kmh real CHECK (speed_limit_kmh IS NULL OR speed_limit_kmh > 0),
    attributes      jsonb NOT NULL DEFAULT '{}'::jsonb,
    version         bigint NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX geofences_owner_idx ON geofences (owner_id);
CREATE INDEX geofences_updated_idx ON geofences (updated_at);

-- Which devices a geofence applies to: devices one by one, or whole groups.
CREATE TABLE geofence_assignments (
    geofence_id   bigint NOT NULL REFERENCES geofences (id) ON DELETE CASCADE,
    device_id     bigint REFERENCES devices (id) ON DELETE CASCADE,
    group_id      bigint REFERENCES device_groups (id) ON DELETE CASCADE,
    CHECK (num_nonnulls(device_id, group_id) = 1),
    UNIQUE (geofence_id, device_id),
    UNIQUE (geofence_id, group_id)
);
CREATE INDEX geofence_assignments_device_idx ON geofence_assignments (device_id);
CREATE INDEX geofence_assignments_group_idx ON geofence_assignments (group_id);

-- Motion -----------------------------------------------------------------------
CREATE TABLE trips (
    -- identity
    device           text NOT NULL,
    start_time       timestamptz NOT NULL,
    end_time         timestamptz NOT NULL,
    -- places
    start_latitude   double precision NOT NULL,
    start_longitude  double precision NOT NULL,
    end_latitude     double precision NOT NULL,
    end_longitude    double precision NOT NULL,
    -- measures
    distance_m       double precision NOT NULL,
    duration_s       double precision NOT NULL,
    max_speed_kmh    real,
    avg_speed_kmh    real,
    idle_s           double precision NOT NULL DEFAULT 0,
    start_odometer_m double precision,
    end_odometer_m   double precision,
    PRIMARY KEY (device, start_time),
    CHECK (end_time >= start_time)
);
CREATE INDEX trips_end_idx ON trips (device, end_time);

CREATE TABLE stops (
    device       text NOT NULL,
    start_time   timestamptz NOT NULL,
    end_time     timestamptz NOT NULL,
    latitude     double precision NOT NULL,
    longitude    double precision NOT NULL,
    duration_s   double precision NOT NULL,
    PRIMARY KEY (device, start_time),
    CHECK (end_time >= start_time)
);

-- Engine on, not moving, longer than the minimum.
CREATE TABLE idles (
    device       text NOT NULL,
    start_time   timestamptz NOT NULL,
    end_time     timestamptz NOT NULL,
    latitude     double precision NOT NULL,
    longitude    double precision NOT NULL,
    duration_s   double precision NOT NULL,
    PRIMARY KEY (device, start_time),
    CHECK (end_time >= start_time)
);

-- Odometer and engine hours per device: the device's own counters where it sends
-- them, otherwise accumulated by the job from accepted fixes.
CREATE TABLE device_counters (
    device        text PRIMARY KEY,
    odometer_m    double precision NOT NULL DEFAULT 0,
    engine_s      double precision NOT NULL DEFAULT 0,
    source        text NOT NULL DEFAULT 'computed' CHECK (source IN ('device', 'computed')),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Geofence visits: exit_time NULL while the device is inside.
CREATE TABLE geofence_visits (
    device        text NOT NULL,
    geofence_id   bigint NOT NULL,
    enter_time    timestamptz NOT NULL,
    exit_time     timestamptz,
    duration_s    double precision,
    PRIMARY KEY (device, geofence_id, enter_time)
);

-- Events: alarms, geofence crossings, overspeed episodes, offline/online, ... ------
-- Keyed on what happened, to whom and when: a replay writes nothing twice.
CREATE TABLE events (
    id            bigserial,
    device        text NOT NULL,
    type          text NOT NULL,
    event_time    timestamptz NOT NULL,
    latitude      double precision,
    longitude     double precision,
    attributes    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, type, event_time)
);
CREATE INDEX events_time_idx ON events (event_time);
CREATE INDEX events_type_time_idx ON events (type, event_time);

-- Daily summaries ----------------------------------------------------------------
-- One row per device and local day in the owner's time zone (users.time_zone),
-- kept current as trips, stops and idle periods arrive.  A summary asked for in
-- another zone is computed from trips, stops and idles instead.
CREATE TABLE daily_summaries (
    device          text NOT NULL,
    time_zone       text NOT NULL,
    day             date NOT NULL,
    distance_m      double precision NOT NULL DEFAULT 0,
    driving_s       double precision NOT NULL DEFAULT 0,
    idle_s          double precision NOT NULL DEFAULT 0,
    stops           integer NOT NULL DEFAULT 0,
    max_speed_kmh   real,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, time_zone, day)
);

-- H3 aggregates per cell and hour ----------------------------------------------
-- At the stored resolution and rolled up to coarser ones.  speed_histogram holds
-- fix counts per 1 km/h bin (mergeable, for percentiles of merged hours); vehicles
-- is exact per row.  Kept current by the scheduled refresh (plain PostgreSQL);
-- under TimescaleDB the same numbers come from a continuous aggregate.
CREATE TABLE h3_hourly (
    resolution      smallint NOT NULL CHECK (resolution BETWEEN 0 AND 15),
    cell            bigint NOT NULL,
    hour            timestamptz NOT NULL,
    fixes           bigint NOT NULL,
    vehicles        integer NOT NULL,
    mean_speed_kmh  real,
    p95_speed_kmh   real,
    dwell_s         double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (resolution, hour, cell)
);
CREATE INDEX h3_hourly_cell_idx ON h3_hourly (resolution, cell, hour);

-- Fixes are found by arrival for the refresh of late data: a BRIN index costs
-- almost nothing on an append-mostly table.
CREATE INDEX fixes_server_time_brin ON fixes USING brin (server_time);

-- How far (in server time) the H3 refresh has read fixes.
CREATE TABLE h3_refresh_state (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),
    refreshed_to    timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO h3_refresh_state DEFAULT VALUES;
