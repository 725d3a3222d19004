-- NaN and infinity never reach an aggregate. From this version regpoll
-- stores a non-finite reading with `value` NULL (quality `uncertain`, the
-- detail naming NaN, +Inf or -Inf); SQLite itself stores NaN as NULL. An
-- infinity written before is not rewritten: the hourly view counts finite
-- values only (`1e999` is SQLite's infinity), so `last` is the newest
-- finite value too. Same columns as before.
DROP VIEW register_readings_hourly;

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
           AND r2.value > -1e999 AND r2.value < 1e999
         ORDER BY r2.ts DESC LIMIT 1) AS last
FROM register_readings r
WHERE quality IN ('good', 'uncertain')
  AND value > -1e999 AND value < 1e999
GROUP BY register_id, ts / 3600000000;
