-- register_readings: every reading regpoll takes. The primary key
-- (register_id, ts) also serves "latest N of a register" (a b-tree scans
-- backwards), so there is deliberately no second index: each one costs ingest.
--
-- register_id refers to device_register_map.id and device_id to devices.id.
-- They are not declared as foreign keys: a per-row check would slow bulk
-- ingest, and registry rows are never deleted, so the references stay valid.

CREATE TABLE register_readings (
    ts          timestamptz NOT NULL,
    register_id integer NOT NULL,
    device_id   integer NOT NULL,
    value       double precision,
    value_text  text,
    quality     text NOT NULL CHECK (quality IN ('good', 'bad', 'uncertain')),
    detail      text,
    PRIMARY KEY (register_id, ts)
);

-- With TimescaleDB (loaded through shared_preload_libraries), the table becomes
-- a hypertable with 1-day chunks. The primary key already contains ts, which a
-- hypertable requires; create_default_indexes => false because the key serves
-- the queries the default (ts DESC) index would. On plain PostgreSQL this block
-- does nothing, so the same migrations run on both.
--
-- Migrations run as an ordinary role (the database's owner) too. Such a role
-- may not read shared_preload_libraries, nor create the extension; it can
-- turn the table it owns into a hypertable once a superuser has run
-- CREATE EXTENSION timescaledb in this database. The extension is never
-- created without the library preloaded: TimescaleDB ends the session
-- (FATAL) then, which no exception handler catches.
DO $$
DECLARE
    preloaded boolean := false;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
    THEN
        BEGIN
            preloaded := current_setting('shared_preload_libraries', true) LIKE '%timescaledb%';
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'regpoll: cannot tell whether TimescaleDB is preloaded (% may not read shared_preload_libraries); register_readings stays a plain table unless a superuser runs CREATE EXTENSION timescaledb in this database before regpoll migrates it', current_user;
        END;
        IF preloaded THEN
            BEGIN
                CREATE EXTENSION IF NOT EXISTS timescaledb;
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'regpoll: % may not create the timescaledb extension; register_readings stays a plain table unless a superuser runs CREATE EXTENSION timescaledb in this database before regpoll migrates it', current_user;
            END;
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable(
            'register_readings',
            by_range('ts', INTERVAL '1 day'),
            create_default_indexes => false,
            if_not_exists => true
        );
    END IF;
END
$$;

-- For analysts: readings with device and register names, no joins needed.
CREATE VIEW register_readings_named AS
SELECT r.ts,
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
