-- With TimescaleDB: compress chunks older than 7 days, segmented by register
-- (queries select one register over time) and ordered newest first.
-- Without it: `register_readings_hourly` is a plain view with the same columns
-- as the continuous aggregate regpoll creates on TimescaleDB after migrating
-- (a continuous aggregate cannot be created inside a transaction or function,
-- so it is not created here; see src/db.rs).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        ALTER TABLE register_readings SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'register_id',
            timescaledb.compress_orderby = 'ts DESC'
        );
        PERFORM add_compression_policy('register_readings', INTERVAL '7 days', if_not_exists => true);
    ELSE
        CREATE VIEW register_readings_hourly AS
        SELECT register_id,
               date_trunc('hour', ts) AS bucket,
               avg(value) AS avg,
               min(value) AS min,
               max(value) AS max,
               count(value) AS count,
               (array_agg(value ORDER BY ts DESC))[1] AS last
        FROM register_readings
        WHERE quality IN ('good', 'uncertain')
        GROUP BY register_id, date_trunc('hour', ts);
    END IF;
END
$$;
