//! Where history is stored: PostgreSQL by binary COPY (`postgres`, with
//! its encoder in `pgcopy`) or SQLite by multi-row INSERT (`sqlite`). Both
//! are a [`HistoryStore`]; the writer, [`query`](super::query) and
//! [`retention`](super::retention) talk only to that, and [`for_db`] is the
//! one place that picks the store for the database.
//!
//! Each store owns its SQL; the statements that are the same text on both
//! databases (they differ only in how `ts` is bound and read back:
//! timestamptz on PostgreSQL, microseconds since the Unix epoch on SQLite)
//! are written once here.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::jobs::JobHealth;
use super::retention::Tiers;
use super::rollup::{Horizon, Pass, Tier};
use super::row::{Row, rows_in};
use crate::db::Db;

/// The columns of `register_readings` a row is written to, in the order
/// both stores send them (`pgcopy::tuples`, the SQLite INSERT's binds). A
/// macro so that statements can be built from it with `concat!`.
macro_rules! written_columns {
    () => {
        "ts, register_id, device_id, value, value_text, quality, detail"
    };
}

pub mod errors;
mod pgcopy;
mod postgres;
mod sqlite;

/// The statement PostgreSQL history is written with: a binary COPY into
/// `register_readings` of a stream as [`copy_bytes`] makes it.
pub use pgcopy::COPY_STATEMENT;

/// The exact binary COPY stream (PGCOPY) the PostgreSQL store sends for
/// `rows` with [`COPY_STATEMENT`], header and trailer included. It is for
/// tools that must send what regpoll sends, such as the benchmark's floor
/// and its `psql` baseline; the store itself sends it in pieces.
pub fn copy_bytes(rows: &[Row]) -> Vec<u8> {
    pgcopy::encode(rows)
}

/// The newest reading of one register: the primary key `(register_id, ts)`
/// serves it, scanned backwards.
const LATEST: &str = "SELECT ts, value, value_text, quality, detail FROM register_readings \
                      WHERE register_id = $1 ORDER BY ts DESC LIMIT 1";

/// The readings of one register in `[$2, $3)`, oldest first, at most `$4`.
const RANGE: &str = "SELECT ts, value, value_text, quality, detail FROM register_readings \
                     WHERE register_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4";

/// One batch of expired rows (before `$1`, at most `$2`) of the raw table
/// and of each rollup table; the same SQL on PostgreSQL and SQLite (row
/// values in `IN`).
macro_rules! delete_expired {
    ($table:literal, $ts:literal) => {
        concat!(
            "DELETE FROM ",
            $table,
            " WHERE (register_id, ",
            $ts,
            ") IN (SELECT register_id, ",
            $ts,
            " FROM ",
            $table,
            " WHERE ",
            $ts,
            " < $1 LIMIT $2)"
        )
    };
}

/// [`delete_expired!`] of the raw table (`None`) or of a rollup.
fn delete_expired(tier: Option<Tier>) -> &'static str {
    match tier {
        None => delete_expired!("register_readings", "ts"),
        Some(Tier::Minute) => delete_expired!("register_readings_1m", "bucket"),
        Some(Tier::Hour) => delete_expired!("register_readings_hourly", "bucket"),
    }
}

/// The oldest and newest timestamps of a batch: what a write records in
/// `rollup_invalidations`. `None` for an empty batch.
fn time_bounds(pieces: &[&[Row]]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if rows_in(pieces) == 0 {
        return None;
    }
    pieces
        .iter()
        .flat_map(|p| p.iter())
        .fold(None, |b, r| match b {
            None => Some((r.ts, r.ts)),
            Some((lo, hi)) => Some((r.ts.min(lo), r.ts.max(hi))),
        })
}

/// A row the database refused, with the error it met: what
/// [`HistoryStore::quarantine`] keeps in `register_readings_rejected`.
#[derive(Debug, Clone, Copy)]
pub struct Rejected<'a> {
    pub row: &'a Row,
    pub error: &'a str,
}

/// One stored reading of a register.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredReading {
    pub ts: DateTime<Utc>,
    pub value: Option<f64>,
    pub value_text: Option<String>,
    pub quality: String,
    pub detail: Option<String>,
}

/// What a range query reads: one register's rows in `[from, to)`, at most
/// `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub register_id: i32,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub limit: i64,
}

/// Aggregates of one register's numeric values over one bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketAggregate {
    /// Start of the bucket; buckets are aligned to the Unix epoch.
    pub start: DateTime<Utc>,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub count: i64,
}

/// What history needs from a database. Readings are addressed by
/// `register_id` (`device_register_map.id`); the registry maps names to ids.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Writes the rows of `pieces` (one batch held in pieces, see
    /// [`Rows`](super::row::Rows)) in one go: one COPY or one transaction.
    /// Rows already stored (same register and timestamp) are skipped, so a
    /// batch retried after an ambiguous failure is not duplicated. Returns
    /// how many rows were new.
    async fn write(&self, pieces: &[&[Row]]) -> anyhow::Result<u64>;

    /// Keeps rows the database refused in `register_readings_rejected`
    /// (the reading's columns, the error, and when), in one transaction.
    /// The table has no key and no reference that could refuse them again.
    async fn quarantine(&self, rejected: &[Rejected<'_>]) -> anyhow::Result<()>;

    /// The newest stored reading of a register, if it has any.
    async fn latest(&self, register_id: i32) -> sqlx::Result<Option<StoredReading>>;

    /// The readings of the span, oldest first.
    async fn range(&self, span: &Span) -> sqlx::Result<Vec<StoredReading>>;

    /// Aggregates per bucket of `width` (aligned to the Unix epoch) of the
    /// span's readings, oldest first.
    /// Over good and uncertain values, as in `register_readings_hourly`;
    /// buckets with no numeric value (strings, only bad readings) are left out.
    async fn buckets(&self, span: &Span, width: Duration) -> sqlx::Result<Vec<BucketAggregate>>;

    /// Deletes at most `limit` rows older than `cutoff` from the raw table
    /// (`tier` `None`) or from a rollup; returns how many were deleted
    /// (fewer than `limit`: none older are left).
    async fn delete_before(
        &self,
        tier: Option<Tier>,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> sqlx::Result<u64>;

    /// Sets TimescaleDB's retention policies (raw table and each rollup)
    /// and the rollups' refresh policies to fit `keep`, replacing earlier
    /// ones. Returns false when the database has no TimescaleDB (expired
    /// rows must then be deleted with [`delete_before`](Self::delete_before)).
    async fn set_retention_policy(&self, keep: &Tiers) -> anyhow::Result<bool>;

    /// One refresh transaction of the rollups regpoll keeps (see
    /// [`rollup`](super::rollup)); `None` when the database keeps them
    /// itself (TimescaleDB's continuous aggregates).
    async fn refresh_rollups(&self, horizon: Horizon) -> anyhow::Result<Option<Pass>>;

    /// Where the rollups stop answering for themselves: buckets from it on
    /// are aggregated from the raw rows. `None`: they answer in real time
    /// (TimescaleDB).
    async fn rollup_watermark(&self) -> sqlx::Result<Option<DateTime<Utc>>>;

    /// Like [`buckets`](Self::buckets), from the rows of rollup `tier`
    /// (`width` is a whole number of its buckets): the average weighted by
    /// the counts, min of min, max of max, counts summed.
    async fn rollup_buckets(
        &self,
        span: &Span,
        tier: Tier,
        width: Duration,
    ) -> sqlx::Result<Vec<BucketAggregate>>;

    /// The state of TimescaleDB's background jobs on regpoll's tables
    /// (retention, compression, the hourly aggregate's refresh); `None`
    /// when the database has no TimescaleDB.
    async fn background_jobs(&self) -> anyhow::Result<Option<Vec<JobHealth>>>;
}

/// The history store of `db`. Cheap: the store shares the database's pool.
pub fn for_db(db: &Db) -> Arc<dyn HistoryStore> {
    match db {
        Db::Postgres(pool) => Arc::new(postgres::PostgresStore::new(pool.clone())),
        Db::Sqlite(pool) => Arc::new(sqlite::SqliteStore::new(pool.clone())),
    }
}
