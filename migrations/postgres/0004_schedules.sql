-- Cron schedules with time zones, strict alignment, and per-register schedules
-- (poll groups). A device with `cron` set is polled on it and its every_ms is
-- not used (every_ms stays NOT NULL so the same rows work on SQLite, which
-- cannot relax a column constraint in place).
ALTER TABLE devices ADD COLUMN cron text;
ALTER TABLE devices ADD COLUMN timezone text;
ALTER TABLE devices ADD COLUMN align text NOT NULL DEFAULT 'spread' CHECK (align IN ('spread', 'strict'));
ALTER TABLE device_register_map ADD COLUMN every_ms bigint CHECK (every_ms > 0);
ALTER TABLE device_register_map ADD COLUMN cron text;
ALTER TABLE device_register_map ADD COLUMN timezone text;
