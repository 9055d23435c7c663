-- What the streaming job writes beyond 003: when a trip reached its top speed, the
-- trips and stopped time of a day, and the late fixes whose window is recomputed.
-- Depends on 003 only.

-- A trip's top speed belongs to the day it was reached (geo.trips.Trip.max_speed_ms),
-- which is not always the day the trip starts.
ALTER TABLE trips ADD COLUMN max_speed_time timestamptz;

-- geo.summaries.DaySummary has these two besides 003's figures.
ALTER TABLE daily_summaries
    ADD COLUMN trips     integer NOT NULL DEFAULT 0,
    ADD COLUMN stopped_s double precision NOT NULL DEFAULT 0;

-- Late fixes --------------------------------------------------------------------
-- A fix that reached the job after newer fixes of its device were already used for
-- trips (later than the allowed lateness) is stored in fixes at once, and one row
-- here records that the trips, stops, idles and daily summaries around it are to be
-- recomputed.  The job deletes the row once it has replaced those records, so a row
-- that stays here is a recompute still to do (or one the job could not finish).
CREATE TABLE recompute_requests (
    device        text NOT NULL,
    fix_time      timestamptz NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, fix_time)
);
CREATE INDEX recompute_requests_requested_idx ON recompute_requests (requested_at);
