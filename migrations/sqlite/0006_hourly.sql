-- The hourly rollup as a view (the same columns as PostgreSQL's); `bucket` is
-- the hour's start in microseconds since the Unix epoch, like `ts`.
CREATE VIEW register_readings_hourly AS
SELECT register_id,
       ts / 3600000000 * 3600000000 AS bucket,
       avg(value) AS avg,
       min(value) AS min,
       max(value) AS max,
       count(value) AS count,
       (SELECT r2.value FROM register_readings r2
         WHERE r2.register_id = r.register_id
           AND r2.ts / 3600000000 = r.ts / 3600000000
           AND r2.quality IN ('good', 'uncertain')
         ORDER BY r2.ts DESC LIMIT 1) AS last
FROM register_readings r
WHERE quality IN ('good', 'uncertain')
GROUP BY register_id, ts / 3600000000;
