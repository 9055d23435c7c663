-- Users, devices, sessions and the fix history.
-- Applied once, in order, by pipeline.store.migrations; recorded in schema_migrations.

-- Who may log in ------------------------------------------------------------------
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    is_admin      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Browser sessions and program tokens: only a hash of the secret is kept.
CREATE TABLE user_tokens (
    token_hash    bytea PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('session', 'api')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX user_tokens_user_idx ON user_tokens (user_id);

-- What reports ----------------------------------------------------------------------
CREATE TABLE devices (
    id            bigserial PRIMARY KEY,
    unique_id     text NOT NULL UNIQUE,          -- IMEI or whatever the device sends
    name          text NOT NULL,
    owner_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    attributes    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_owner_idx ON devices (owner_id);

-- Every accepted fix ---------------------------------------------------------------
-- Keyed on (device, fix_time) so that a replay after a crash writes nothing twice.
-- Created plain here, so its columns are defined once; version 002 then partitions it
-- by fix time: 002_fixes_partitions.sql (native daily partitions) or, when the
-- TimescaleDB extension is available, timescale/002_fixes_hypertable.sql.
CREATE TABLE fixes (
    -- identity
    device        text NOT NULL,                 -- devices.unique_id
    fix_time      timestamptz NOT NULL,
    server_time   timestamptz NOT NULL,
    -- position
    latitude      double precision NOT NULL,
    longitude     double precision NOT NULL,
    altitude      real,
    accuracy      real,
    h3            bigint,                        -- H3 cell at the configured resolution
    -- motion
    speed         real,                          -- km/h
    course        real,                          -- degrees from north
    -- quality
    satellites    integer,
    valid         boolean NOT NULL,
    -- everything else the device sent
    protocol      text NOT NULL DEFAULT '',
    attributes    jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (device, fix_time)
);
