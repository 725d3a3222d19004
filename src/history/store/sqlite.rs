//! History in the embedded SQLite file: one transaction per batch, multi-row
//! INSERT statements inside it (SQLite caps bound parameters, so a batch is
//! split into statements of `ROWS_PER_STATEMENT` rows). Timestamps are
//! stored as integer microseconds since the Unix epoch.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::{
    BucketAggregate, HistoryStore, LATEST, RANGE, Rejected, Span, StoredReading, delete_expired,
    time_bounds,
};
use crate::history::jobs::JobHealth;
use crate::history::retention::Tiers;
use crate::history::rollup::{self, Horizon, Pass, Tier};
use crate::history::row::Row;

/// 7 parameters a row (9 in the quarantine) keeps a statement well under
/// SQLite's 32,766 limit.
const ROWS_PER_STATEMENT: usize = 1_000;

/// Rows already stored are skipped by `ON CONFLICT` on the primary key
/// only: `INSERT OR IGNORE` would also skip, silently, rows that a CHECK or
/// NOT NULL constraint refuses, where they must be quarantined and counted.
const INSERT: &str = concat!("INSERT INTO register_readings (", written_columns!(), ") ");
const ON_CONFLICT: &str = " ON CONFLICT (register_id, ts) DO NOTHING";

/// Per-bucket aggregates; integer division of the microsecond timestamps
/// aligns the buckets to the Unix epoch, as `date_bin` does on PostgreSQL.
/// Only finite values count: SQLite stores NaN as NULL itself, and an
/// infinity written before regpoll stored them as NULL fails the range
/// test (`1e999` is SQLite's infinity).
const BUCKETS: &str = "SELECT (ts / $2) * $2 AS b, avg(value), min(value), max(value), count(value) \
     FROM register_readings \
     WHERE register_id = $1 AND ts >= $3 AND ts < $4 AND quality IN ('good', 'uncertain') \
     AND value > -1e999 AND value < 1e999 \
     GROUP BY b HAVING count(value) > 0 ORDER BY b LIMIT $5";

/// Epoch-aligned buckets of `$2` microseconds of a rollup's rows; the
/// average weighted by the counts.
macro_rules! rollup_buckets {
    ($table:literal) => {
        concat!(
            "SELECT (bucket / $2) * $2 AS b, sum(avg * count) / sum(count), min(min), max(max), \
             sum(count) FROM ",
            $table,
            " WHERE register_id = $1 AND bucket >= $3 AND bucket < $4 \
             GROUP BY b HAVING sum(count) > 0 ORDER BY b LIMIT $5"
        )
    };
}

/// The minutes of `[$1, $2)` from the raw rows, per register of the
/// registry (each register's rows through the primary key); `last` is the
/// value of the minute's newest row.
const REFRESH_MINUTES: &str = "\
INSERT INTO register_readings_1m (register_id, bucket, avg, min, max, count, last)
SELECT register_id, b, avg(value), min(value), max(value), count(value),
       max(CASE WHEN newest = 1 THEN value END)
FROM (SELECT r.register_id, r.ts / 60000000 * 60000000 AS b, r.value,
             row_number() OVER (PARTITION BY r.register_id, r.ts / 60000000 ORDER BY r.ts DESC) AS newest
      FROM device_register_map m JOIN register_readings r ON r.register_id = m.id
      WHERE r.ts >= $1 AND r.ts < $2 AND r.quality IN ('good', 'uncertain')
        AND r.value > -1e999 AND r.value < 1e999)
GROUP BY register_id, b
ON CONFLICT (register_id, bucket) DO UPDATE SET avg = excluded.avg, min = excluded.min,
    max = excluded.max, count = excluded.count, last = excluded.last";

/// The hours of `[$1, $2)` from the minutes.
const REFRESH_HOURS: &str = "\
INSERT INTO register_readings_hourly (register_id, bucket, avg, min, max, count, last)
SELECT register_id, h, sum(avg * count) / sum(count), min(min), max(max), sum(count),
       max(CASE WHEN newest = 1 THEN last END)
FROM (SELECT r.register_id, r.bucket / 3600000000 * 3600000000 AS h, r.avg, r.min, r.max, r.count, r.last,
             row_number() OVER (PARTITION BY r.register_id, r.bucket / 3600000000 ORDER BY r.bucket DESC) AS newest
      FROM device_register_map m JOIN register_readings_1m r ON r.register_id = m.id
      WHERE r.bucket >= $1 AND r.bucket < $2)
GROUP BY register_id, h
ON CONFLICT (register_id, bucket) DO UPDATE SET avg = excluded.avg, min = excluded.min,
    max = excluded.max, count = excluded.count, last = excluded.last";

const INVALIDATE: &str = "INSERT INTO rollup_invalidations (lo, hi) VALUES ($1, $2)";

/// A stored reading as SQLite returns it: `ts` in microseconds.
type Stored = (i64, Option<f64>, Option<String>, String, Option<String>);

fn reading((ts, value, value_text, quality, detail): Stored) -> StoredReading {
    StoredReading {
        ts: from_micros(ts),
        value,
        value_text,
        quality,
        detail,
    }
}

fn micros(ts: DateTime<Utc>) -> i64 {
    ts.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// History in a SQLite file.
pub(super) struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub(super) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl HistoryStore for SqliteStore {
    async fn write(&self, pieces: &[&[Row]]) -> anyhow::Result<u64> {
        write(&self.pool, pieces).await
    }

    async fn quarantine(&self, rejected: &[Rejected<'_>]) -> anyhow::Result<()> {
        quarantine(&self.pool, rejected).await.with_context(|| {
            format!(
                "cannot keep {} refused readings in register_readings_rejected",
                rejected.len()
            )
        })
    }

    async fn latest(&self, register_id: i32) -> sqlx::Result<Option<StoredReading>> {
        let row: Option<Stored> = sqlx::query_as(LATEST)
            .bind(register_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(reading))
    }

    async fn range(&self, span: &Span) -> sqlx::Result<Vec<StoredReading>> {
        let rows: Vec<Stored> = sqlx::query_as(RANGE)
            .bind(span.register_id)
            .bind(micros(span.from))
            .bind(micros(span.to))
            .bind(span.limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(reading).collect())
    }

    async fn buckets(&self, span: &Span, width: Duration) -> sqlx::Result<Vec<BucketAggregate>> {
        query_buckets(&self.pool, BUCKETS, span, width).await
    }

    async fn delete_before(
        &self,
        tier: Option<Tier>,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> sqlx::Result<u64> {
        sqlx::query(delete_expired(tier))
            .bind(micros(cutoff))
            .bind(limit)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
    }

    /// SQLite has no TimescaleDB.
    async fn set_retention_policy(&self, _keep: &Tiers) -> anyhow::Result<bool> {
        Ok(false)
    }

    async fn refresh_rollups(&self, horizon: Horizon) -> anyhow::Result<Option<Pass>> {
        refresh(&self.pool, horizon).await.map(Some)
    }

    async fn rollup_watermark(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        let w: Option<i64> = sqlx::query_scalar("SELECT watermark FROM rollup_state")
            .fetch_one(&self.pool)
            .await?;
        Ok(w.map(from_micros))
    }

    async fn rollup_buckets(
        &self,
        span: &Span,
        tier: Tier,
        width: Duration,
    ) -> sqlx::Result<Vec<BucketAggregate>> {
        let statement = match tier {
            Tier::Minute => rollup_buckets!("register_readings_1m"),
            Tier::Hour => rollup_buckets!("register_readings_hourly"),
        };
        query_buckets(&self.pool, statement, span, width).await
    }

    async fn background_jobs(&self) -> anyhow::Result<Option<Vec<JobHealth>>> {
        Ok(None)
    }
}

/// Per-bucket aggregates of `span` by `statement` (whose parameters are
/// the register, the width in microseconds, from, to and the limit).
async fn query_buckets(
    pool: &SqlitePool,
    statement: &'static str,
    span: &Span,
    width: Duration,
) -> sqlx::Result<Vec<BucketAggregate>> {
    let width = i64::try_from(width.as_micros()).unwrap_or(i64::MAX);
    let rows: Vec<(i64, f64, f64, f64, i64)> = sqlx::query_as(statement)
        .bind(span.register_id)
        .bind(width)
        .bind(micros(span.from))
        .bind(micros(span.to))
        .bind(span.limit)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(b, avg, min, max, count)| BucketAggregate {
            start: from_micros(b),
            avg,
            min,
            max,
            count,
        })
        .collect())
}

/// One refresh transaction (see `rollup`): takes the pending
/// invalidations, recomputes this pass's share, puts the rest back, and
/// moves the watermark to the start of the current minute once nothing is
/// left. SQLite lets one transaction write at a time and the first
/// statement (the DELETE) writes, so two refreshes never overlap.
async fn refresh(pool: &SqlitePool, horizon: Horizon) -> anyhow::Result<Pass> {
    let now = Utc::now();
    let mut tx = pool
        .begin()
        .await
        .context("cannot start the rollup refresh")?;
    let taken: Vec<(i64, i64)> =
        sqlx::query_as("DELETE FROM rollup_invalidations RETURNING lo, hi")
            .fetch_all(&mut *tx)
            .await
            .context("cannot take the rollup invalidations")?;
    let taken: Vec<_> = taken
        .into_iter()
        .map(|(lo, hi)| (from_micros(lo), from_micros(hi)))
        .collect();
    let plan = rollup::plan(&rollup::merge(&taken), now, horizon, rollup::SLICE);
    let mut rows = 0;
    for (statement, ranges) in [
        (REFRESH_MINUTES, &plan.minutes),
        (REFRESH_HOURS, &plan.hours),
    ] {
        for r in ranges {
            rows += sqlx::query(statement)
                .bind(micros(r.from))
                .bind(micros(r.to))
                .execute(&mut *tx)
                .await
                .with_context(|| format!("cannot refresh the rollups of {} to {}", r.from, r.to))?
                .rows_affected();
        }
    }
    if plan.later.is_empty() {
        let minute = 60_000_000;
        sqlx::query("UPDATE rollup_state SET watermark = $1")
            .bind(micros(now).div_euclid(minute) * minute)
            .execute(&mut *tx)
            .await
            .context("cannot move the rollup watermark")?;
    }
    for r in &plan.later {
        sqlx::query(INVALIDATE)
            .bind(micros(r.from))
            .bind(micros(r.to) - 1)
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

/// Writes the rows of `pieces` in one transaction; returns how many were new
/// (the rest were already stored).
async fn write(pool: &SqlitePool, pieces: &[&[Row]]) -> anyhow::Result<u64> {
    let mut inserted = 0;
    let mut tx = pool
        .begin()
        .await
        .context("cannot start a SQLite transaction")?;
    for chunk in pieces.iter().flat_map(|p| p.chunks(ROWS_PER_STATEMENT)) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(INSERT);
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.ts.timestamp_micros())
                .push_bind(r.register_id)
                .push_bind(r.device_id)
                .push_bind(r.value())
                .push_bind(r.value_text())
                .push_bind(r.quality.as_str())
                .push_bind(r.detail());
        });
        q.push(ON_CONFLICT);
        inserted += q
            .build()
            .execute(&mut *tx)
            .await
            .with_context(|| format!("cannot insert {} readings into SQLite", chunk.len()))?
            .rows_affected();
    }
    // The batch's time range, for the rollup refresh: in the same
    // transaction, so a refresh never misses rows that were stored.
    if let Some((lo, hi)) = time_bounds(pieces) {
        sqlx::query(INVALIDATE)
            .bind(micros(lo))
            .bind(micros(hi))
            .execute(&mut *tx)
            .await
            .context("cannot record the batch in rollup_invalidations")?;
    }
    tx.commit()
        .await
        .context("cannot commit readings to SQLite")?;
    Ok(inserted)
}

const QUARANTINE: &str = concat!(
    "INSERT INTO register_readings_rejected (",
    written_columns!(),
    ", error, rejected_at) "
);

async fn quarantine(pool: &SqlitePool, rejected: &[Rejected<'_>]) -> sqlx::Result<()> {
    let now = micros(Utc::now());
    let mut tx = pool.begin().await?;
    for chunk in rejected.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(QUARANTINE);
        q.push_values(chunk, |mut b, r| {
            b.push_bind(micros(r.row.ts))
                .push_bind(r.row.register_id)
                .push_bind(r.row.device_id)
                .push_bind(r.row.value())
                .push_bind(r.row.value_text())
                .push_bind(r.row.quality.as_str())
                .push_bind(r.row.detail())
                .push_bind(r.error)
                .push_bind(now);
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await
}
