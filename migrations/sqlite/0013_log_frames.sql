-- The same column as migrations/postgres/0013_log_frames.sql. SQLite can
-- add a column with a CHECK constraint (unlike adding a constraint to an
-- existing column, which 0009 does with triggers); every existing row takes
-- the default, which passes it.
ALTER TABLE devices ADD COLUMN log_frames TEXT NOT NULL DEFAULT 'off'
    CHECK (log_frames IN ('off', 'header', 'payload'));
