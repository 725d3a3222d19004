//! History in PostgreSQL/TimescaleDB, written by binary COPY (see `pgcopy`).
//!
//! COPY cannot skip rows that are already stored, so a batch that hits the
//! primary key (a replay after an ambiguous failure, or a spool replayed
//! twice) is written again through a temporary staging table and
//! `INSERT … ON CONFLICT DO NOTHING`: never dropped, never duplicated.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Executor as _, PgPool};

use super::{
    BucketAggregate, HistoryStore, LATEST, RANGE, Rejected, Span, StoredReading, delete_expired,
    pgcopy, time_bounds,
};
use crate::db::has_timescaledb;
use crate::history::health::{StorageReport, TABLES};
use crate::history::jobs::JobHealth;
use crate::history::retention::Tiers;
use crate::history::rollup::{Horizon, Pass, Tier};
use crate::history::row::{Row, rows_in};

mod rollups;

/// SQLSTATE of a unique-key violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Rows per piece of a COPY: about 0.5 MB encoded. A COPY is encoded and
/// sent piece by piece, because the connection keeps its send buffer at the
/// largest message it ever sent: a 200,000-row COPY sent whole held 12 MB
/// there, for as long as the connection lived, next to the 12 MB encoding.
const PIECE_ROWS: usize = 8_192;

/// Per-bucket aggregates; `date_bin` from the Unix epoch aligns the buckets
/// as SQLite's integer division does. Only finite values count: regpoll
/// stores NaN and infinity as NULL, but rows written before it did still
/// hold them (PostgreSQL sorts NaN above every number, so NaN and both
/// infinities fail the range test).
const BUCKETS: &str = "SELECT date_bin(make_interval(secs => $2), ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b, \
     avg(value), min(value), max(value), count(value) FROM register_readings \
     WHERE register_id = $1 AND ts >= $3 AND ts < $4 AND quality IN ('good', 'uncertain') \
     AND value > '-Infinity' AND value < 'Infinity' \
     GROUP BY b HAVING count(value) > 0 ORDER BY b LIMIT $5";

/// Where the rows of a batch that overlaps stored ones are copied first.
const COPY_STAGING: &str = concat!(
    "COPY regpoll_staging (",
    written_columns!(),
    ") FROM STDIN (FORMAT binary)"
);
const INSERT_FROM_STAGING: &str = concat!(
    "INSERT INTO register_readings (",
    written_columns!(),
    ") SELECT ",
    written_columns!(),
    " FROM regpoll_staging ON CONFLICT (register_id, ts) DO NOTHING"
);

/// Rejected rows, all in one statement: one array per column.
const QUARANTINE: &str = concat!(
    "INSERT INTO register_readings_rejected (",
    written_columns!(),
    ", error) SELECT * FROM UNNEST($1::timestamptz[], $2::int4[], $3::int4[], \
     $4::float8[], $5::text[], $6::text[], $7::text[], $8::text[])"
);

/// History in a PostgreSQL database.
pub(super) struct PostgresStore {
    pool: PgPool,
    /// Whether regpoll keeps the rollups (they are tables, not TimescaleDB's
    /// continuous aggregates), asked once.
    rollups_kept: tokio::sync::OnceCell<bool>,
}

impl PostgresStore {
    pub(super) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            rollups_kept: tokio::sync::OnceCell::new(),
        }
    }

    /// Whether the rollups are regpoll's tables (plain PostgreSQL, or a
    /// database migrated before TimescaleDB was installed) rather than
    /// TimescaleDB's continuous aggregates: migration 0015 creates
    /// `rollup_invalidations` exactly then. Without that table and without
    /// TimescaleDB the database is not migrated yet (a start without it):
    /// an error, so that no batch is written without its invalidation.
    async fn rollups_kept(&self) -> anyhow::Result<bool> {
        if let Some(kept) = self.rollups_kept.get() {
            return Ok(*kept);
        }
        let (table, timescaledb): (bool, bool) = sqlx::query_as(
            "SELECT to_regclass('rollup_invalidations') IS NOT NULL, \
             EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
        )
        .fetch_one(&self.pool)
        .await
        .context("cannot tell whether regpoll keeps the rollups")?;
        if !table && !timescaledb {
            anyhow::bail!(
                "the database is not migrated to this version yet (no rollup_invalidations table); the readings are written once it is"
            );
        }
        let _ = self.rollups_kept.set(table);
        Ok(table)
    }
}

#[async_trait]
impl HistoryStore for PostgresStore {
    async fn write(&self, pieces: &[&[Row]]) -> anyhow::Result<u64> {
        let invalidate = match self.rollups_kept().await? {
            true => time_bounds(pieces),
            false => None,
        };
        write(&self.pool, pieces, invalidate).await
    }

    async fn quarantine(&self, rejected: &[Rejected<'_>]) -> anyhow::Result<()> {
        let column = |f: &dyn Fn(&Row) -> Option<String>| -> Vec<Option<String>> {
            rejected.iter().map(|r| f(r.row)).collect()
        };
        sqlx::query(QUARANTINE)
            .bind(rejected.iter().map(|r| r.row.ts).collect::<Vec<_>>())
            .bind(
                rejected
                    .iter()
                    .map(|r| r.row.register_id)
                    .collect::<Vec<_>>(),
            )
            .bind(rejected.iter().map(|r| r.row.device_id).collect::<Vec<_>>())
            .bind(rejected.iter().map(|r| r.row.value()).collect::<Vec<_>>())
            .bind(column(&|r| r.value_text().map(str::to_string)))
            .bind(column(&|r| Some(r.quality.as_str().to_string())))
            .bind(column(&|r| r.detail().map(str::to_string)))
            .bind(rejected.iter().map(|r| r.error).collect::<Vec<_>>())
            .execute(&self.pool)
            .await
            .with_context(|| {
                format!(
                    "cannot keep {} refused readings in register_readings_rejected",
                    rejected.len()
                )
            })?;
        Ok(())
    }

    async fn latest(&self, register_id: i32) -> sqlx::Result<Option<StoredReading>> {
        sqlx::query_as(LATEST)
            .bind(register_id)
            .fetch_optional(&self.pool)
            .await
    }

    async fn range(&self, span: &Span) -> sqlx::Result<Vec<StoredReading>> {
        sqlx::query_as(RANGE)
            .bind(span.register_id)
            .bind(span.from)
            .bind(span.to)
            .bind(span.limit)
            .fetch_all(&self.pool)
            .await
    }

    async fn buckets(&self, span: &Span, width: Duration) -> sqlx::Result<Vec<BucketAggregate>> {
        bucket_query(&self.pool, BUCKETS, span, width).await
    }

    async fn delete_before(
        &self,
        tier: Option<Tier>,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> sqlx::Result<u64> {
        sqlx::query(delete_expired(tier))
            .bind(cutoff)
            .bind(limit)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
    }

    async fn set_retention_policy(&self, keep: &Tiers) -> anyhow::Result<bool> {
        if !has_timescaledb(&self.pool).await? {
            return Ok(false);
        }
        rollups::set_policies(&self.pool, keep).await?;
        Ok(true)
    }

    async fn refresh_rollups(&self, horizon: Horizon) -> anyhow::Result<Option<Pass>> {
        if !self.rollups_kept().await? {
            return Ok(None);
        }
        rollups::refresh(&self.pool, horizon).await.map(Some)
    }

    async fn rollup_watermark(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar("SELECT watermark FROM rollup_state")
            .fetch_one(&self.pool)
            .await
    }

    async fn rollup_buckets(
        &self,
        span: &Span,
        tier: Tier,
        width: Duration,
    ) -> sqlx::Result<Vec<BucketAggregate>> {
        bucket_query(&self.pool, rollups::buckets_statement(tier), span, width).await
    }

    async fn background_jobs(&self) -> anyhow::Result<Option<Vec<JobHealth>>> {
        // The informational views exist exactly when TimescaleDB is
        // installed; asking for them (rather than for the extension) keeps
        // one guard for the query below.
        let present: bool = sqlx::query_scalar(
            "SELECT to_regclass('timescaledb_information.job_stats') IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .context("cannot look for TimescaleDB's job views")?;
        if !present {
            return Ok(None);
        }
        let rows: Vec<JobRow> = sqlx::query_as(BACKGROUND_JOBS)
            .fetch_all(&self.pool)
            .await
            .context("cannot read timescaledb_information.job_stats and job_errors")?;
        Ok(Some(
            rows.into_iter()
                .map(|r| JobHealth {
                    id: r.0,
                    name: format!("{} on {}", r.1, r.2),
                    last_run_status: r.3,
                    last_run_started: r.4,
                    last_success: r.5,
                    total_failures: r.6,
                    consecutive_failures: r.7,
                    last_error: r.8,
                })
                .collect(),
        ))
    }

    async fn storage(&self) -> anyhow::Result<StorageReport> {
        super::storage::postgres(&self.pool, &TABLES).await
    }
}

fn aggregate(
    (start, avg, min, max, count): (DateTime<Utc>, f64, f64, f64, i64),
) -> BucketAggregate {
    BucketAggregate {
        start,
        avg,
        min,
        max,
        count,
    }
}

/// id, procedure, target, last_run_status, last_run_started_at, last_successful_finish,
/// total_failures, failures since the last success, newest error.
type JobRow = (
    i32,
    String,
    String,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    i64,
    i64,
    Option<String>,
);

/// The jobs on `register_readings` and on the rollups' aggregates (whose
/// refresh and compression jobs name its materialization hypertable), with
/// their statistics. `job_stats` has no count of consecutive failures, so
/// it is the errors `job_errors` holds since the last success (that view
/// keeps a month by default, which bounds the count, not its meaning).
const BACKGROUND_JOBS: &str = "\
SELECT j.job_id, j.proc_name::text, COALESCE(c.view_name, j.hypertable_name)::text, \
       s.last_run_status::text, s.last_run_started_at, s.last_successful_finish, COALESCE(s.total_failures, 0)::int8, \
       (SELECT count(*) FROM timescaledb_information.job_errors e \
         WHERE e.job_id = j.job_id \
           AND (s.last_successful_finish IS NULL OR e.start_time > s.last_successful_finish)), \
       (SELECT e.err_message::text FROM timescaledb_information.job_errors e \
         WHERE e.job_id = j.job_id ORDER BY e.finish_time DESC NULLS LAST LIMIT 1) \
FROM timescaledb_information.jobs j \
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id \
LEFT JOIN timescaledb_information.continuous_aggregates c \
  ON c.materialization_hypertable_schema = j.hypertable_schema \
 AND c.materialization_hypertable_name = j.hypertable_name \
WHERE j.hypertable_name IN ('register_readings', 'register_readings_1m', 'register_readings_hourly') \
   OR c.view_name IN ('register_readings_1m', 'register_readings_hourly') \
ORDER BY j.job_id";

/// Writes the rows of `pieces` in one COPY; returns how many were new (the
/// rest were already stored). With `invalidate` (the batch's time range,
/// when regpoll keeps the rollups) the COPY and the range's row in
/// `rollup_invalidations` are one transaction, so a refresh never misses
/// rows that were stored.
/// Runs a bucket query (`BUCKETS` over the raw rows, or a rollup's): the
/// register, the width in seconds, the span and the limit, in that order.
async fn bucket_query(
    pool: &PgPool,
    statement: &'static str,
    span: &Span,
    width: Duration,
) -> sqlx::Result<Vec<BucketAggregate>> {
    let rows: Vec<(DateTime<Utc>, f64, f64, f64, i64)> = sqlx::query_as(statement)
        .bind(span.register_id)
        .bind(width.as_secs_f64())
        .bind(span.from)
        .bind(span.to)
        .bind(span.limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(aggregate).collect())
}

async fn write(
    pool: &PgPool,
    pieces: &[&[Row]],
    invalidate: Option<Bounds>,
) -> anyhow::Result<u64> {
    let rows = rows_in(pieces);
    let mut conn = pool
        .acquire()
        .await
        .context("no PostgreSQL connection for writing readings")?;
    let copied = match invalidate {
        None => copy(&mut conn, pgcopy::COPY_STATEMENT, pieces).await,
        Some(bounds) => copy_invalidating(&mut conn, pieces, bounds).await,
    };
    match copied {
        Ok(n) => Ok(n),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            tracing::info!(
                rows,
                "batch overlaps stored readings; writing it without the duplicates"
            );
            write_skipping_duplicates(&mut conn, pieces, invalidate).await
        }
        Err(e) => Err(e).with_context(|| format!("cannot COPY {rows} readings into PostgreSQL")),
    }
}

/// A batch's oldest and newest timestamps.
type Bounds = (DateTime<Utc>, DateTime<Utc>);

const INVALIDATE: &str = "INSERT INTO rollup_invalidations (lo, hi) VALUES ($1, $2)";

/// The COPY and its invalidation in one transaction.
async fn copy_invalidating(
    conn: &mut sqlx::PgConnection,
    pieces: &[&[Row]],
    (lo, hi): Bounds,
) -> Result<u64, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let n = copy(&mut tx, pgcopy::COPY_STATEMENT, pieces).await?;
    sqlx::query(INVALIDATE)
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Runs `statement` (a binary COPY … FROM STDIN) with the rows of `pieces`
/// as its data, sent in pieces of about `PIECE_ROWS` rows.
async fn copy(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    pieces: &[&[Row]],
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut piece =
        Vec::with_capacity(pgcopy::HEADER_LEN + rows_in(pieces).min(PIECE_ROWS) * 72 + 2);
    pgcopy::header(&mut piece);
    let mut in_piece = 0;
    for rows in pieces.iter().flat_map(|p| p.chunks(PIECE_ROWS)) {
        pgcopy::tuples(&mut piece, rows);
        in_piece += rows.len();
        if in_piece >= PIECE_ROWS {
            copy.send(piece.as_slice()).await?;
            piece.clear();
            in_piece = 0;
        }
    }
    pgcopy::trailer(&mut piece);
    copy.send(piece.as_slice()).await?;
    copy.finish().await
}

async fn write_skipping_duplicates(
    conn: &mut sqlx::PgConnection,
    pieces: &[&[Row]],
    invalidate: Option<Bounds>,
) -> anyhow::Result<u64> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    tx.execute(
        "CREATE TEMP TABLE regpoll_staging (LIKE register_readings INCLUDING DEFAULTS) ON COMMIT DROP",
    )
    .await
    .context("cannot create the staging table")?;
    copy(&mut tx, COPY_STAGING, pieces)
        .await
        .context("cannot COPY readings into the staging table")?;
    let inserted = tx
        .execute(INSERT_FROM_STAGING)
        .await
        .context("cannot move readings from the staging table")?
        .rows_affected();
    if let Some((lo, hi)) = invalidate {
        sqlx::query(INVALIDATE)
            .bind(lo)
            .bind(hi)
            .execute(&mut *tx)
            .await
            .context("cannot record the batch in rollup_invalidations")?;
    }
    tx.commit().await?;
    Ok(inserted)
}
