//! The rollups on PostgreSQL: the refresh of regpoll's rollup tables
//! (plain PostgreSQL), the query that reads either tier, and TimescaleDB's
//! retention and refresh policies (where the rollups are continuous
//! aggregates).

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::history::retention::Tiers;
use crate::history::rollup::{self, Horizon, Pass, Tier};

/// Epoch-aligned bucket of `$2` seconds of a rollup's rows; the average
/// weighted by the counts.
macro_rules! rollup_buckets {
    ($table:literal) => {
        concat!(
            "SELECT date_bin(make_interval(secs => $2), bucket, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b, \
             sum(avg * count) / sum(count)::float8, min(min), max(max), sum(count)::int8 FROM ",
            $table,
            " WHERE register_id = $1 AND bucket >= $3 AND bucket < $4 \
             GROUP BY b HAVING sum(count) > 0 ORDER BY b LIMIT $5"
        )
    };
}

/// The query of [`HistoryStore::rollup_buckets`](super::HistoryStore::rollup_buckets).
pub(super) fn buckets_statement(tier: Tier) -> &'static str {
    match tier {
        Tier::Minute => rollup_buckets!("register_readings_1m"),
        Tier::Hour => rollup_buckets!("register_readings_hourly"),
    }
}

/// Several instances of a cluster share the database: one refreshes at a
/// time (the others wait, then find little left to do).
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('regpoll.rollup_refresh'))";

/// The minutes of `[$1, $2)` from the raw rows, per register of the
/// registry (each register's rows through the primary key: the raw table
/// has no index on `ts` alone, which would cost every insert).
const REFRESH_MINUTES: &str = "\
INSERT INTO register_readings_1m (register_id, bucket, avg, min, max, count, last)
SELECT m.id, r.b, r.avg, r.min, r.max, r.count, r.last
FROM device_register_map m
CROSS JOIN LATERAL (
    SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b,
           avg(value) AS avg, min(value) AS min, max(value) AS max, count(value) AS count,
           (array_agg(value ORDER BY ts DESC))[1] AS last
    FROM register_readings
    WHERE register_id = m.id AND ts >= $1 AND ts < $2
      AND quality IN ('good', 'uncertain') AND value > '-Infinity' AND value < 'Infinity'
    GROUP BY 1) r
ON CONFLICT (register_id, bucket) DO UPDATE SET avg = excluded.avg, min = excluded.min,
    max = excluded.max, count = excluded.count, last = excluded.last";

/// The hours of `[$1, $2)` from the minutes.
const REFRESH_HOURS: &str = "\
INSERT INTO register_readings_hourly (register_id, bucket, avg, min, max, count, last)
SELECT m.id, h.b, h.avg, h.min, h.max, h.count, h.last
FROM device_register_map m
CROSS JOIN LATERAL (
    SELECT date_bin(INTERVAL '1 hour', bucket, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b,
           sum(avg * count) / sum(count)::float8 AS avg, min(min) AS min, max(max) AS max,
           sum(count)::int8 AS count, (array_agg(last ORDER BY bucket DESC))[1] AS last
    FROM register_readings_1m
    WHERE register_id = m.id AND bucket >= $1 AND bucket < $2
    GROUP BY 1) h
ON CONFLICT (register_id, bucket) DO UPDATE SET avg = excluded.avg, min = excluded.min,
    max = excluded.max, count = excluded.count, last = excluded.last";

/// One refresh transaction: takes the pending invalidations, recomputes
/// this pass's share of them, puts the rest back, and moves the watermark
/// to the start of the transaction's minute once nothing is left.
pub(super) async fn refresh(pool: &PgPool, horizon: Horizon) -> anyhow::Result<Pass> {
    let mut tx = pool
        .begin()
        .await
        .context("cannot start the rollup refresh")?;
    sqlx::query(LOCK)
        .execute(&mut *tx)
        .await
        .context("cannot take the rollup refresh lock")?;
    // now() is when the transaction began, before any write it did not see.
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    let taken: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("DELETE FROM rollup_invalidations RETURNING lo, hi")
            .fetch_all(&mut *tx)
            .await
            .context("cannot take the rollup invalidations")?;
    let plan = rollup::plan(&rollup::merge(&taken), now, horizon, rollup::SLICE);
    let mut rows = 0;
    for (statement, ranges) in [
        (REFRESH_MINUTES, &plan.minutes),
        (REFRESH_HOURS, &plan.hours),
    ] {
        for r in ranges {
            rows += sqlx::query(statement)
                .bind(r.from)
                .bind(r.to)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("cannot refresh the rollups of {} to {}", r.from, r.to))?
                .rows_affected();
        }
    }
    if plan.later.is_empty() {
        sqlx::query(
            "UPDATE rollup_state SET watermark = \
             date_bin(INTERVAL '1 minute', $1, TIMESTAMPTZ '1970-01-01 00:00:00+00')",
        )
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("cannot move the rollup watermark")?;
    } else {
        let (lo, hi): (Vec<_>, Vec<_>) = plan
            .later
            .iter()
            .map(|r| (r.from, r.to - chrono::TimeDelta::microseconds(1)))
            .unzip();
        sqlx::query(
            "INSERT INTO rollup_invalidations (lo, hi) \
             SELECT * FROM UNNEST($1::timestamptz[], $2::timestamptz[])",
        )
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .context("cannot put back the rollup invalidations left for later")?;
    }
    tx.commit()
        .await
        .context("cannot commit the rollup refresh")?;
    Ok(Pass {
        rows,
        more: !plan.later.is_empty(),
    })
}

/// A policy on one of regpoll's relations, found by the relation's name
/// (a continuous aggregate's jobs name its materialization hypertable).
const POLICY_CONFIG: &str = "\
SELECT j.config::text FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.continuous_aggregates c
  ON c.materialization_hypertable_schema = j.hypertable_schema
 AND c.materialization_hypertable_name = j.hypertable_name
WHERE j.proc_name = $1 AND COALESCE(c.view_name, j.hypertable_name) = $2";

/// Whether the policy `proc` on `relation` is there with exactly these
/// offsets (each compared as an interval; `None` for a missing one).
async fn policy_is(
    pool: &PgPool,
    proc: &str,
    relation: &str,
    offsets: &[(&str, Option<Duration>)],
) -> anyhow::Result<Option<bool>> {
    let Some(config) = sqlx::query_scalar::<_, String>(POLICY_CONFIG)
        .bind(proc)
        .bind(relation)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("cannot read the {proc} policy of {relation}"))?
    else {
        return Ok(None);
    };
    for (key, want) in offsets {
        let same: bool = sqlx::query_scalar(
            "SELECT ($1::jsonb->>$2)::interval IS NOT DISTINCT FROM make_interval(secs => $3)",
        )
        .bind(&config)
        .bind(key)
        .bind(want.map(|d| d.as_secs_f64()))
        .fetch_one(pool)
        .await?;
        if !same {
            return Ok(Some(false));
        }
    }
    Ok(Some(true))
}

/// Sets the retention policy of `relation` (the hypertable or a continuous
/// aggregate) to `keep`, replacing a different one. Left alone when it is
/// the same, so the job keeps its id and run history across restarts.
async fn set_retention(
    pool: &PgPool,
    relation: &str,
    keep: Option<Duration>,
) -> anyhow::Result<()> {
    let now = policy_is(pool, "policy_retention", relation, &[("drop_after", keep)]).await?;
    match (now, keep) {
        (Some(true), _) | (None, None) => return Ok(()),
        _ => {}
    }
    sqlx::query("SELECT remove_retention_policy($1::regclass, if_exists => true)")
        .bind(relation)
        .execute(pool)
        .await
        .with_context(|| format!("cannot remove the old retention policy of {relation}"))?;
    if let Some(keep) = keep {
        sqlx::query(
            "SELECT add_retention_policy($1::regclass, drop_after => make_interval(secs => $2))",
        )
        .bind(relation)
        .bind(keep.as_secs_f64())
        .execute(pool)
        .await
        .with_context(|| format!("cannot add the retention policy of {relation}"))?;
    }
    Ok(())
}

/// How a continuous aggregate is refreshed by policy.
struct Refresh {
    view: &'static str,
    start: Option<Duration>,
    end: Duration,
    every: Duration,
}

/// Sets the refresh policy of a continuous aggregate, replacing one with
/// other offsets.
async fn set_refresh(pool: &PgPool, r: &Refresh) -> anyhow::Result<()> {
    let proc = "policy_refresh_continuous_aggregate";
    let offsets = [("start_offset", r.start), ("end_offset", Some(r.end))];
    if policy_is(pool, proc, r.view, &offsets).await? == Some(true) {
        return Ok(());
    }
    sqlx::query("SELECT remove_continuous_aggregate_policy($1::regclass, if_exists => true)")
        .bind(r.view)
        .execute(pool)
        .await
        .with_context(|| format!("cannot remove the old refresh policy of {}", r.view))?;
    sqlx::query(
        "SELECT add_continuous_aggregate_policy($1::regclass, \
         start_offset => make_interval(secs => $2), end_offset => make_interval(secs => $3), \
         schedule_interval => make_interval(secs => $4))",
    )
    .bind(r.view)
    .bind(r.start.map(|d| d.as_secs_f64()))
    .bind(r.end.as_secs_f64())
    .bind(r.every.as_secs_f64())
    .execute(pool)
    .await
    .with_context(|| format!("cannot add the refresh policy of {}", r.view))?;
    Ok(())
}

/// TimescaleDB: a retention policy on the hypertable and on each continuous
/// aggregate, and refresh policies whose window never reaches back past its
/// source's retention: a refresh over a window whose source rows were
/// dropped deletes the aggregated rows too (TimescaleDB's "data retention
/// with continuous aggregates"), which would defeat keeping the rollups
/// longer than the raw rows.
///
/// - 1-minute: every minute, up to the minute before the current one (the
///   current minute is still being written; real-time aggregation answers
///   it), back to just inside the raw retention.
/// - hourly: every 30 minutes, up to the hour before the current one, back
///   to just inside the 1-minute retention.
pub(super) async fn set_policies(pool: &PgPool, keep: &Tiers) -> anyhow::Result<()> {
    set_retention(pool, "register_readings", keep.raw).await?;
    if !caggs_exist(pool).await? {
        return Ok(());
    }
    set_retention(pool, Tier::Minute.table(), keep.minute).await?;
    set_retention(pool, Tier::Hour.table(), keep.hour).await?;
    for (tier, source_keep, every) in [
        (Tier::Minute, keep.raw, Duration::from_secs(60)),
        (Tier::Hour, keep.minute, Duration::from_secs(1800)),
    ] {
        let end = tier.width();
        let refresh = Refresh {
            view: tier.table(),
            start: rollup::refresh_start(source_keep, tier),
            end,
            every,
        };
        set_refresh(pool, &refresh).await?;
    }
    Ok(())
}

/// Whether both rollups are continuous aggregates (see `db.rs`; a database
/// migrated before TimescaleDB was installed keeps plain tables).
async fn caggs_exist(pool: &PgPool) -> anyhow::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM timescaledb_information.continuous_aggregates \
         WHERE view_name IN ('register_readings_1m', 'register_readings_hourly')",
    )
    .fetch_one(pool)
    .await
    .context("cannot list the continuous aggregates")?;
    Ok(n == 2)
}
