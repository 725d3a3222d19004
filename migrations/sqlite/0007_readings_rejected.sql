-- register_readings_rejected: rows the database refused, kept with the error
-- (see the PostgreSQL migration). ts and rejected_at are microseconds since
-- the Unix epoch, as in register_readings. No key, no references, no checks
-- that could refuse a quarantined row.
CREATE TABLE register_readings_rejected (
    ts          INTEGER NOT NULL,
    register_id INTEGER NOT NULL,
    device_id   INTEGER NOT NULL,
    value       REAL,
    value_text  TEXT,
    quality     TEXT NOT NULL,
    detail      TEXT,
    error       TEXT NOT NULL,
    rejected_at INTEGER NOT NULL
);
