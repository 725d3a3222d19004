//! What history costs the database, read periodically so that an operator
//! sees the disk fill before it is full: per table (readings, the rollups,
//! the rejected rows) its size with indexes, an estimate of its rows and,
//! with TimescaleDB, its chunks and how well they compress; for SQLite the
//! file, its pages and its free pages. The same task reads TimescaleDB's
//! background jobs ([`super::jobs`]).
//!
//! A read of the database's health must never make the service worse: it
//! runs on a pool of its own (one connection whose statements the server
//! cancels after `timeout`), and each read is bounded by `timeout` here too,
//! so a hung catalog or a dead server shows as an error on `/metrics`, the
//! status page and `/ready`'s warnings, never as a stalled task.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::jobs::{JobWatch, JobsReport, age};
use super::maintenance::{Job, Run};
use super::store::{self, HistoryStore};
use crate::db::Db;
use crate::reading::rfc3339;
use crate::registry::format_duration;

/// The tables whose storage is read, when they exist: the readings, the
/// rollups (continuous aggregates with TimescaleDB, tables kept by regpoll
/// otherwise) and the rows the database refused. Fixed here, never taken
/// from input, so the statements that name them are safe.
pub const TABLES: [&str; 4] = [
    "register_readings",
    "register_readings_1m",
    "register_readings_hourly",
    "register_readings_rejected",
];

/// Reads the jobs and the storage every `every` into `jobs` and `storage`,
/// until aborted (at shutdown); each read gives up after `timeout`. The
/// first read is at once, so `/ready` knows about a failing policy from the
/// start.
pub async fn watch(
    db: Db,
    jobs: Arc<JobWatch>,
    storage: Arc<StorageWatch>,
    every: Duration,
    timeout: Duration,
) {
    let store = store::for_db(&db);
    loop {
        read_into(store.as_ref(), &jobs, &storage, timeout).await;
        tokio::time::sleep(every).await;
    }
}

/// One read of the jobs and one of the storage, each bounded by `timeout`.
async fn read_into(
    store: &dyn HistoryStore,
    jobs: &JobWatch,
    storage: &StorageWatch,
    timeout: Duration,
) {
    match bounded(timeout, store.background_jobs()).await {
        Ok(j) => jobs.update(j, Utc::now()),
        Err(e) => jobs.read_failed(&e, Utc::now()),
    }
    match bounded(timeout, store.storage()).await {
        Ok(s) => storage.update(s, Utc::now()),
        Err(e) => storage.read_failed(&e, Utc::now()),
    }
}

/// `read`, or an error when it takes longer than `timeout`.
pub async fn bounded<T>(
    timeout: Duration,
    read: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer within {} (--{})",
                format_duration(timeout),
                crate::settings::DB_HEALTH_TIMEOUT.flag
            ))
        })
}

/// Everything known of the database's health at one moment: what
/// `/api/database`, the status page's Database card and `regpoll status`
/// show, in one form.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseHealth {
    /// `postgres` or `sqlite`.
    pub kind: &'static str,
    /// `host:port/database` or the SQLite file (never a password).
    pub location: String,
    pub storage: StorageHealth,
    pub jobs: JobsReport,
    /// The last runs of regpoll's own jobs (the rollup refresh, retention):
    /// known only to the service that runs them, so `None` for
    /// `regpoll status` (which shows the rollups' watermark instead).
    pub maintenance: Option<Vec<(Job, Run)>>,
}

impl DatabaseHealth {
    /// Reads the jobs and the storage once, each bounded by `timeout`: what
    /// `regpoll status` shows. A failed read is in the answer, not an error.
    pub async fn read(db: &Db, timeout: Duration) -> DatabaseHealth {
        let jobs = JobWatch::default();
        let storage = StorageWatch::default();
        read_into(store::for_db(db).as_ref(), &jobs, &storage, timeout).await;
        DatabaseHealth {
            kind: db.kind(),
            location: db.location(),
            storage: storage.health(),
            jobs: jobs.report(),
            maintenance: None,
        }
    }

    /// Whether any read failed.
    pub fn read_error(&self) -> Option<&str> {
        self.storage
            .read_error
            .as_deref()
            .or(self.jobs.read_error.as_deref())
    }

    pub fn to_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        json!({
            "kind": self.kind,
            "location": self.location,
            "storage": self.storage.to_json(now),
            "timescaledb_jobs": self.jobs.jobs.as_ref().map(|jobs| {
                jobs.iter().map(|j| j.to_json(now)).collect::<Vec<_>>()
            }),
            "timescaledb_jobs_error": self.jobs.read_error,
            "maintenance": self.maintenance.as_ref().map(|runs| {
                runs.iter().map(|(job, run)| run_json(*job, run, now)).collect::<Vec<_>>()
            }),
        })
    }
}

fn run_json(job: Job, run: &Run, now: DateTime<Utc>) -> serde_json::Value {
    json!({
        "job": job.name(),
        "last_run": run.last_run.map(rfc3339),
        "last_run_age_s": age(run.last_run, now),
        "last_success": run.last_success.map(rfc3339),
        "last_success_age_s": age(run.last_success, now),
        "last_error": run.last_error,
        "rows": run.rows,
    })
}

/// `/ready` warnings: one per maintenance job whose last run failed. Like a
/// failing TimescaleDB policy, it does not make the service unready.
pub fn maintenance_warnings(runs: &[(Job, Run)]) -> Vec<String> {
    runs.iter()
        .filter_map(|(job, run)| {
            let error = run.last_error.as_ref()?;
            let since = match run.last_success {
                Some(t) => format!("last success {}", rfc3339(t)),
                None => "never succeeded".to_string(),
            };
            Some(format!(
                "maintenance: {} failed ({since}): {error}",
                job.name()
            ))
        })
        .collect()
}

/// How a table is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// A TimescaleDB hypertable (chunks, compression).
    Hypertable,
    /// A TimescaleDB continuous aggregate: its figures are those of its
    /// materialization hypertable.
    ContinuousAggregate,
    /// A plain table.
    Table,
    /// A view: no storage of its own (the hourly rollup before TimescaleDB
    /// or regpoll's rollup job kept it as a table).
    View,
}

impl TableKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Hypertable => "hypertable",
            TableKind::ContinuousAggregate => "continuous_aggregate",
            TableKind::Table => "table",
            TableKind::View => "view",
        }
    }
}

/// What one table costs on disk. Every figure is `None` when the database
/// cannot tell it (a view has no size; SQLite tells sizes per table only
/// when reading them is cheap, see `store::storage`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableStorage {
    pub name: String,
    pub kind: TableKind,
    /// Table, indexes and TOAST together.
    pub total_bytes: Option<i64>,
    pub index_bytes: Option<i64>,
    /// The planner's estimate (PostgreSQL's `reltuples`, TimescaleDB's
    /// `approximate_row_count`), never a count: counting billions of rows
    /// would take minutes. On SQLite, the cells of the table's leaf pages.
    pub rows_estimate: Option<i64>,
    /// TimescaleDB only.
    pub chunks: Option<i64>,
    pub compressed_chunks: Option<i64>,
    /// Bytes of the compressed chunks before and after compression
    /// (`hypertable_compression_stats`); `None` while nothing is compressed.
    pub compression: Option<Compression>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Compression {
    pub before_bytes: i64,
    pub after_bytes: i64,
}

impl Compression {
    /// How many times smaller the compressed chunks are; `None` when there
    /// is nothing to divide by.
    pub fn ratio(&self) -> Option<f64> {
        (self.after_bytes > 0 && self.before_bytes > 0)
            .then(|| self.before_bytes as f64 / self.after_bytes as f64)
    }
}

/// The SQLite file: what `PRAGMA page_count`, `page_size` and
/// `freelist_count` say, and the sizes of the file and its write-ahead log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SqliteFile {
    pub path: String,
    pub file_bytes: u64,
    pub wal_bytes: u64,
    pub page_size: i64,
    pub page_count: i64,
    /// Pages that hold nothing since rows were deleted: reused by new rows,
    /// given back to the file system only by `VACUUM`.
    pub freelist_count: i64,
    /// Why the per-table sizes are missing, when they are.
    pub tables_note: Option<String>,
}

/// One read of the database's storage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StorageReport {
    /// The tables of [`TABLES`] that exist, in that order.
    pub tables: Vec<TableStorage>,
    /// SQLite only.
    pub sqlite: Option<SqliteFile>,
    /// Where regpoll's rollup refresh has got to (`rollup_state`): the
    /// rollup buckets before it are complete. `None` where the rollups
    /// answer in real time themselves (TimescaleDB) or before the first
    /// refresh. In the database, so `regpoll status` can tell whether the
    /// refresh job runs without asking the service.
    pub rollup_watermark: Option<DateTime<Utc>>,
}

impl StorageReport {
    pub fn table(&self, name: &str) -> Option<&TableStorage> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// What the watcher last learned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageHealth {
    /// The last successful read (kept while later reads fail).
    pub report: Option<StorageReport>,
    pub read_at: Option<DateTime<Utc>>,
    /// The error of the last read, when it failed.
    pub read_error: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
    /// Reads that failed since start.
    pub read_failures: u64,
}

impl StorageHealth {
    /// Seconds since the last successful read, as of `now`.
    pub fn age(&self, now: DateTime<Utc>) -> Option<f64> {
        age(self.read_at, now)
    }

    /// The form `/api/database`, the status page and `regpoll status --json`
    /// show.
    pub fn to_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        json!({
            "tables": self.report.as_ref().map(|r| &r.tables),
            "sqlite": self.report.as_ref().and_then(|r| r.sqlite.as_ref()),
            "rollup_watermark": self.report.as_ref().and_then(|r| r.rollup_watermark).map(rfc3339),
            "rollup_watermark_age_s": age(self.report.as_ref().and_then(|r| r.rollup_watermark), now),
            "read_at": self.read_at.map(rfc3339),
            "read_age_s": self.age(now),
            "read_error": self.read_error,
            "checked_at": self.checked_at.map(rfc3339),
            "read_failures": self.read_failures,
        })
    }
}

/// The shared state between the watcher, which writes it, and the API,
/// which reads it. A failing read is logged once until a read succeeds.
#[derive(Debug, Default)]
pub struct StorageWatch {
    health: Mutex<StorageHealth>,
}

impl StorageWatch {
    pub fn health(&self) -> StorageHealth {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn update(&self, report: StorageReport, now: DateTime<Utc>) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if h.read_error.take().is_some() {
            tracing::info!("the database's storage figures can be read again");
        }
        h.report = Some(report);
        h.read_at = Some(now);
        h.checked_at = Some(now);
    }

    pub fn read_failed(&self, error: &anyhow::Error, now: DateTime<Utc>) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let text = crate::db::error_text(error.as_ref());
        if h.read_error.is_none() {
            tracing::warn!(error = %text, "cannot read the database's storage figures");
        }
        h.read_error = Some(text);
        h.checked_at = Some(now);
        h.read_failures += 1;
    }

    /// The `/ready` warning while the figures cannot be read: the service
    /// still polls and writes, but nobody sees the disk fill.
    pub fn warnings(&self) -> Vec<String> {
        let h = self.health();
        h.read_error
            .map(|e| format!("database health: cannot read table sizes: {e}"))
            .into_iter()
            .collect()
    }
}

/// Bytes for people: `0 B`, `8.0 kB`, `1.5 GB` (powers of 1024, as
/// PostgreSQL's `pg_size_pretty`).
pub fn format_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_ratio_is_before_over_after_and_absent_without_bytes() {
        let c = Compression {
            before_bytes: 1000,
            after_bytes: 100,
        };
        assert_eq!(c.ratio(), Some(10.0));
        let none = Compression {
            before_bytes: 1000,
            after_bytes: 0,
        };
        assert_eq!(none.ratio(), None);
    }

    #[test]
    fn a_failed_read_keeps_the_last_figures_and_is_a_warning_until_a_read_succeeds() {
        let watch = StorageWatch::default();
        let now = Utc::now();
        watch.update(StorageReport::default(), now);
        watch.read_failed(
            &anyhow::anyhow!("permission denied for table pg_class"),
            now,
        );
        watch.read_failed(&anyhow::anyhow!("connection reset"), now);
        let h = watch.health();
        assert!(h.report.is_some());
        assert_eq!(h.read_failures, 2);
        let w = watch.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("connection reset"), "{w:?}");
        watch.update(StorageReport::default(), now);
        assert!(watch.warnings().is_empty());
        assert_eq!(watch.health().read_failures, 2, "a total since start");
    }

    #[test]
    fn bytes_read_like_pg_size_pretty() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(8192), "8.0 kB");
        assert_eq!(format_bytes(3 << 30), "3.0 GB");
    }

    #[tokio::test]
    async fn a_read_that_hangs_is_an_error_naming_the_timeout_setting() {
        let hang = std::future::pending::<anyhow::Result<()>>();
        let e = bounded(Duration::from_millis(10), hang).await.unwrap_err();
        assert!(e.to_string().contains("--db-health-timeout"), "{e}");
    }
}
