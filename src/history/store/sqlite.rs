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
    BucketAggregate, DELETE_EXPIRED, HistoryStore, LATEST, RANGE, Rejected, Span, StoredReading,
};
use crate::history::health::{StorageReport, TABLES};
use crate::history::jobs::JobHealth;
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
        let width = i64::try_from(width.as_micros()).unwrap_or(i64::MAX);
        let rows: Vec<(i64, f64, f64, f64, i64)> = sqlx::query_as(BUCKETS)
            .bind(span.register_id)
            .bind(width)
            .bind(micros(span.from))
            .bind(micros(span.to))
            .bind(span.limit)
            .fetch_all(&self.pool)
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

    async fn delete_before(&self, cutoff: DateTime<Utc>, limit: i64) -> sqlx::Result<u64> {
        sqlx::query(DELETE_EXPIRED)
            .bind(micros(cutoff))
            .bind(limit)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
    }

    /// SQLite has no TimescaleDB.
    async fn set_retention_policy(&self, _keep: Option<Duration>) -> anyhow::Result<bool> {
        Ok(false)
    }

    async fn background_jobs(&self) -> anyhow::Result<Option<Vec<JobHealth>>> {
        Ok(None)
    }

    async fn storage(&self) -> anyhow::Result<StorageReport> {
        super::storage::sqlite(&self.pool, &TABLES).await
    }
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
