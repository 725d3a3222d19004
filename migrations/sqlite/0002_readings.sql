-- register_readings for the embedded default. ts is microseconds since the Unix
-- epoch (UTC): compact, exact and cheap to range-scan. The view below shows it as
-- ISO 8601 text.
CREATE TABLE register_readings (
    ts          INTEGER NOT NULL,
    register_id INTEGER NOT NULL,
    device_id   INTEGER NOT NULL,
    value       REAL,
    value_text  TEXT,
    quality     TEXT NOT NULL CHECK (quality IN ('good', 'bad', 'uncertain')),
    detail      TEXT,
    PRIMARY KEY (register_id, ts)
) WITHOUT ROWID;

CREATE VIEW register_readings_named AS
SELECT strftime('%Y-%m-%dT%H:%M:%fZ', r.ts / 1000000.0, 'unixepoch') AS ts,
       d.name AS device,
       m.name AS register,
       r.value,
       r.value_text,
       m.unit,
       r.quality,
       r.detail,
       r.device_id,
       r.register_id
FROM register_readings r
JOIN device_register_map m ON m.id = r.register_id
JOIN devices d ON d.id = r.device_id;
