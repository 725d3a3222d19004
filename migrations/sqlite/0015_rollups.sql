-- Rollups: `register_readings_1m` and `register_readings_hourly`, tables
-- with (register_id, bucket, avg, min, max, count, last) over good and
-- uncertain finite values, as the hourly view of 0006/0008 counted them;
-- `bucket` is the start of the minute or hour in microseconds since the
-- Unix epoch, like `ts`. regpoll keeps them (src/history/rollup.rs): every
-- history write adds its batch's [min ts, max ts] to `rollup_invalidations`
-- in the same transaction as the rows; the refresh job takes them,
-- recomputes the touched minutes from the raw table and the touched hours
-- from the minutes, and moves the watermark in `rollup_state`: buckets from
-- the watermark on are answered from the raw table. The hourly view is
-- replaced by the table, and both are filled from the history stored.
DROP VIEW register_readings_hourly;

CREATE TABLE register_readings_1m (
    register_id INTEGER NOT NULL,
    bucket      INTEGER NOT NULL,
    avg         REAL NOT NULL,
    min         REAL NOT NULL,
    max         REAL NOT NULL,
    count       INTEGER NOT NULL,
    last        REAL NOT NULL,
    PRIMARY KEY (register_id, bucket)
) WITHOUT ROWID;

CREATE TABLE register_readings_hourly (
    register_id INTEGER NOT NULL,
    bucket      INTEGER NOT NULL,
    avg         REAL NOT NULL,
    min         REAL NOT NULL,
    max         REAL NOT NULL,
    count       INTEGER NOT NULL,
    last        REAL NOT NULL,
    PRIMARY KEY (register_id, bucket)
) WITHOUT ROWID;

CREATE TABLE rollup_invalidations (
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL
);

-- One row (the key can only be 1). Rollup buckets before the watermark are
-- complete, except rows written late, until the next refresh.
CREATE TABLE rollup_state (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    watermark INTEGER
);

-- `last` is the value of the newest row of the minute (row_number 1).
INSERT INTO register_readings_1m (register_id, bucket, avg, min, max, count, last)
SELECT register_id, b, avg(value), min(value), max(value), count(value),
       max(CASE WHEN newest = 1 THEN value END)
FROM (SELECT register_id, ts / 60000000 * 60000000 AS b, value,
             row_number() OVER (PARTITION BY register_id, ts / 60000000 ORDER BY ts DESC) AS newest
      FROM register_readings
      WHERE quality IN ('good', 'uncertain') AND value > -1e999 AND value < 1e999)
GROUP BY register_id, b;

-- The hour's average weighted by each minute's count, its last value that
-- of its newest minute.
INSERT INTO register_readings_hourly (register_id, bucket, avg, min, max, count, last)
SELECT register_id, h, sum(avg * count) / sum(count), min(min), max(max), sum(count),
       max(CASE WHEN newest = 1 THEN last END)
FROM (SELECT register_id, bucket / 3600000000 * 3600000000 AS h, avg, min, max, count, last,
             row_number() OVER (PARTITION BY register_id, bucket / 3600000000 ORDER BY bucket DESC) AS newest
      FROM register_readings_1m)
GROUP BY register_id, h;

-- Everything stored before now is in the tables.
INSERT INTO rollup_state (id, watermark)
VALUES (1, CAST(strftime('%s', 'now') AS INTEGER) / 60 * 60000000);
