-- The same columns and rules as migrations/postgres/0016_deadband.sql.
-- SQLite adds a column with a CHECK constraint that names other columns of
-- the row (as 0013 does with one); every existing row takes NULL, which
-- passes them: no deadband, every reading stored, as before.
ALTER TABLE device_register_map ADD COLUMN deadband REAL
    CHECK (deadband IS NULL OR (deadband >= 0 AND deadband < 9e999))
    CHECK (data_type NOT IN ('bool', 'string') OR coalesce(deadband, 0) = 0);
ALTER TABLE device_register_map ADD COLUMN deadband_percent REAL
    CHECK (deadband_percent IS NULL OR (deadband_percent >= 0 AND deadband_percent <= 100))
    CHECK (deadband IS NULL OR deadband_percent IS NULL)
    CHECK (data_type NOT IN ('bool', 'string') OR deadband_percent IS NULL);
ALTER TABLE device_register_map ADD COLUMN heartbeat_ms INTEGER
    CHECK (heartbeat_ms IS NULL OR heartbeat_ms BETWEEN 1 AND 604800000)
    CHECK (heartbeat_ms IS NULL OR deadband IS NOT NULL OR deadband_percent IS NOT NULL);
