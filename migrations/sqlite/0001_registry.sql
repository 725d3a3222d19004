-- The registry, as in migrations/postgres/0001_registry.sql. Tags are JSON text.
CREATE TABLE devices (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    host        TEXT NOT NULL,
    port        INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    unit_id     INTEGER NOT NULL CHECK (unit_id BETWEEN 0 AND 255),
    every_ms    INTEGER NOT NULL CHECK (every_ms > 0),
    timeout_ms  INTEGER NOT NULL CHECK (timeout_ms > 0),
    active      BOOLEAN NOT NULL DEFAULT 1,
    tags        TEXT NOT NULL DEFAULT '{}',
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE device_register_map (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   INTEGER NOT NULL REFERENCES devices (id),
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('holding', 'input', 'coil', 'discrete')),
    address     INTEGER NOT NULL CHECK (address BETWEEN 0 AND 65535),
    data_type   TEXT NOT NULL,
    word_order  TEXT NOT NULL DEFAULT 'ABCD',
    scale       REAL NOT NULL DEFAULT 1,
    "offset"    REAL NOT NULL DEFAULT 0,
    unit        TEXT,
    valid_min   REAL,
    valid_max   REAL,
    active      BOOLEAN NOT NULL DEFAULT 1,
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (device_id, name)
);
