-- NaN and infinity never reach an aggregate. From this version regpoll
-- stores a non-finite reading with `value` NULL (quality `uncertain`, the
-- detail naming NaN, +Inf or -Inf), and every aggregate ignores NULL. Rows
-- written before still hold NaN or ±Infinity, and this migration does not
-- rewrite them (on TimescaleDB that would decompress every old chunk): the
-- plain hourly view is redefined to count finite values only, as the
-- continuous aggregate regpoll creates on TimescaleDB does (src/db.rs).
-- PostgreSQL sorts NaN above every number, so the range test below keeps
-- NaN, both infinities and NULL out. Only the plain view made by 0006 is
-- replaced; a continuous aggregate of the same name is left alone (the
-- README says how to recreate one made by an earlier version).
DO $$
DECLARE
    plain_view boolean := EXISTS (
        SELECT 1 FROM pg_views
        WHERE viewname = 'register_readings_hourly' AND schemaname = current_schema()
    );
BEGIN
    IF plain_view AND EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        plain_view := NOT EXISTS (
            SELECT 1 FROM timescaledb_information.continuous_aggregates
            WHERE view_name = 'register_readings_hourly'
        );
    END IF;
    IF plain_view THEN
        CREATE OR REPLACE VIEW register_readings_hourly AS
        SELECT register_id,
               date_trunc('hour', ts) AS bucket,
               avg(value) AS avg,
               min(value) AS min,
               max(value) AS max,
               count(value) AS count,
               (array_agg(value ORDER BY ts DESC))[1] AS last
        FROM register_readings
        WHERE quality IN ('good', 'uncertain')
          AND value > '-Infinity' AND value < 'Infinity'
        GROUP BY register_id, date_trunc('hour', ts);
    END IF;
END
$$;
