-- A register's deadband and heartbeat (devices.yaml `deadband`,
-- `deadband_percent`, `heartbeat`): which readings history may leave out.
-- A device's values in devices.yaml are a default of its registers and are
-- stored on each register, so these columns hold what the history writer
-- applies. NULL everywhere (every existing row) is "no deadband": every
-- reading stored, as before. The database refuses what devices.yaml's
-- validation and the registry loader refuse (src/registry/deadband.rs).
ALTER TABLE device_register_map
    ADD COLUMN deadband double precision,
    ADD COLUMN deadband_percent double precision,
    ADD COLUMN heartbeat_ms bigint,
    ADD CONSTRAINT register_deadband_one_form
        CHECK (deadband IS NULL OR deadband_percent IS NULL),
    ADD CONSTRAINT register_deadband_finite
        CHECK (deadband IS NULL OR (deadband >= 0 AND deadband < 'Infinity')),
    ADD CONSTRAINT register_deadband_percent_range
        CHECK (deadband_percent IS NULL OR (deadband_percent >= 0 AND deadband_percent <= 100)),
    ADD CONSTRAINT register_heartbeat_needs_deadband
        CHECK (heartbeat_ms IS NULL OR deadband IS NOT NULL OR deadband_percent IS NOT NULL),
    ADD CONSTRAINT register_heartbeat_range
        CHECK (heartbeat_ms IS NULL OR heartbeat_ms BETWEEN 1 AND 604800000),
    ADD CONSTRAINT register_deadband_changes_only_without_distance
        CHECK (data_type NOT IN ('bool', 'string') OR (deadband_percent IS NULL AND coalesce(deadband, 0) = 0));

COMMENT ON COLUMN device_register_map.deadband IS
    'Readings within this distance (in the register''s unit) of the last stored value are not stored; 0 stores changes only';
COMMENT ON COLUMN device_register_map.deadband_percent IS
    'Readings within this percentage of the magnitude of the last stored value are not stored (any change when that value is 0)';
COMMENT ON COLUMN device_register_map.heartbeat_ms IS
    'With a deadband: a reading is stored at the latest this long after the last stored row, whatever its value';
