-- Gateways and units that misbehave (issue 22, section 2): the pause after
-- opening a connection, how many requests may be outstanding on it, and
-- when a unit that stops answering is demoted.
-- The bounds are devices.yaml's (src/config/validate/device.rs); the
-- registry loader checks them again for rows written by hand.
ALTER TABLE devices ADD COLUMN delay_after_connect_ms INTEGER NOT NULL DEFAULT 0 CHECK (delay_after_connect_ms BETWEEN 0 AND 60000);
ALTER TABLE devices ADD COLUMN demote_after INTEGER NOT NULL DEFAULT 3 CHECK (demote_after BETWEEN 1 AND 100);
ALTER TABLE devices ADD COLUMN demote_max_ms INTEGER NOT NULL DEFAULT 60000 CHECK (demote_max_ms BETWEEN 1000 AND 86400000);
ALTER TABLE devices ADD COLUMN max_in_flight INTEGER NOT NULL DEFAULT 1 CHECK (max_in_flight BETWEEN 1 AND 16);
