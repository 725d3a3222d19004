-- Rollups: `register_readings_1m` and `register_readings_hourly`, each with
-- (register_id, bucket, avg, min, max, count, last) over good and uncertain
-- finite values, as the hourly view of 0006/0008 counted them.
--
-- With TimescaleDB both are continuous aggregates (the hourly one built on
-- the 1-minute one), which cannot be created inside a transaction: regpoll
-- creates them after migrating (src/db.rs), so this migration only makes
-- `rollup_state` there, with no watermark (the aggregates answer in real
-- time themselves).
--
-- Without TimescaleDB they are tables kept by regpoll's refresh job
-- (src/history/rollup.rs): every history write adds its batch's [min ts,
-- max ts] to `rollup_invalidations` in the same transaction as the rows;
-- the job takes them, recomputes the touched minutes from the raw table and
-- the touched hours from the minutes, and moves the watermark in
-- `rollup_state`: buckets from the watermark on are answered from the raw
-- table. The plain hourly view of 0006/0008 is replaced by the table and
-- both tables are filled here from the history already stored.
CREATE TABLE rollup_state (
    -- One row: the key can only be true.
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- Rollup buckets before it are complete (except rows written late, until
    -- the next refresh); NULL: the rollups answer in real time themselves.
    watermark timestamptz
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        INSERT INTO rollup_state (watermark) VALUES (NULL);
        RETURN;
    END IF;

    -- Only the plain view of 0006/0008: without TimescaleDB nothing else
    -- of that name can exist.
    DROP VIEW IF EXISTS register_readings_hourly;

    CREATE TABLE register_readings_1m (
        register_id integer NOT NULL,
        bucket      timestamptz NOT NULL,
        avg         double precision NOT NULL,
        min         double precision NOT NULL,
        max         double precision NOT NULL,
        count       bigint NOT NULL,
        last        double precision NOT NULL,
        PRIMARY KEY (register_id, bucket)
    );
    CREATE TABLE register_readings_hourly (LIKE register_readings_1m INCLUDING ALL);

    -- Written by every history write, emptied by the refresh job. No key:
    -- the job merges overlapping ranges itself.
    CREATE TABLE rollup_invalidations (
        lo timestamptz NOT NULL,
        hi timestamptz NOT NULL
    );

    INSERT INTO register_readings_1m (register_id, bucket, avg, min, max, count, last)
    SELECT register_id,
           date_bin(INTERVAL '1 minute', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b,
           avg(value), min(value), max(value), count(value),
           (array_agg(value ORDER BY ts DESC))[1]
    FROM register_readings
    WHERE quality IN ('good', 'uncertain')
      AND value > '-Infinity' AND value < 'Infinity'
    GROUP BY register_id, b;

    -- The hour's average weighted by each minute's count, its last value
    -- that of its newest minute.
    INSERT INTO register_readings_hourly (register_id, bucket, avg, min, max, count, last)
    SELECT register_id,
           date_bin(INTERVAL '1 hour', bucket, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS h,
           sum(avg * count) / sum(count)::double precision,
           min(min), max(max), sum(count)::bigint,
           (array_agg(last ORDER BY bucket DESC))[1]
    FROM register_readings_1m
    GROUP BY register_id, h;

    -- Everything stored before now is in the tables.
    INSERT INTO rollup_state (watermark)
    VALUES (date_bin(INTERVAL '1 minute', now(), TIMESTAMPTZ '1970-01-01 00:00:00+00'));
END
$$;
