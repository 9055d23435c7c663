-- Notification rules: which events reach a user, for which devices, and how.
--
-- A rule belongs to one user.  It lists event types (none: every type), devices
-- and device groups (all_devices: every device the owner may see) and one or more
-- channels.  The notifier (pipeline.notify) reads them to deliver e-mail and
-- webhooks; the API's live feed reads the web channels.  Depends on 001 and 003
-- (users, devices, device_groups) only.

CREATE TABLE notification_rules (
    id            bigserial PRIMARY KEY,
    owner_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          text NOT NULL,
    enabled       boolean NOT NULL DEFAULT true,
    -- geo.events.EVENT_TYPES names; empty: every type
    event_types   text[] NOT NULL DEFAULT '{}',
    -- true: every device the owner may see; false: only the targets below (a rule
    -- whose targets were all deleted then matches nothing, instead of everything)
    all_devices   boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notification_rules_owner_idx ON notification_rules (owner_id);

-- Devices one by one, or whole groups; deleting a device or group removes it here.
CREATE TABLE notification_rule_targets (
    rule_id       bigint NOT NULL REFERENCES notification_rules (id) ON DELETE CASCADE,
    device_id     bigint REFERENCES devices (id) ON DELETE CASCADE,
    group_id      bigint REFERENCES device_groups (id) ON DELETE CASCADE,
    CHECK (num_nonnulls(device_id, group_id) = 1),
    UNIQUE (rule_id, device_id),
    UNIQUE (rule_id, group_id)
);
CREATE INDEX notification_rule_targets_device_idx
    ON notification_rule_targets (device_id);
CREATE INDEX notification_rule_targets_group_idx
    ON notification_rule_targets (group_id);

-- How a rule's events are delivered --------------------------------------------
-- web: the dashboards (the WebSocket marks the event); email: target is the
-- address; webhook: target is the URL and secret the shared HMAC key.  The secret
-- has to be usable to sign, so it is stored as given: the API never returns it.
CREATE TABLE notification_channels (
    id            bigserial PRIMARY KEY,
    rule_id       bigint NOT NULL REFERENCES notification_rules (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('web', 'email', 'webhook')),
    target        text,
    secret        text,
    CHECK ((kind = 'web') = (target IS NULL)),
    CHECK ((kind = 'webhook') = (secret IS NOT NULL))
);
CREATE INDEX notification_channels_rule_idx ON notification_channels (rule_id);
