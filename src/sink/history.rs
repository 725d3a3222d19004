//! The history writer: collects readings from a bounded queue into batches
//! (bounded by rows and by time) and writes each batch with one statement per
//! batch, never one INSERT per reading. A batch that fails is retried with
//! backoff until it is written or the writer is told to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};

use crate::db::Db;
use crate::reading::{PollReport, Quality};

/// Most rows written in one batch.
pub const DEFAULT_BATCH_ROWS: usize = 5_000;
/// Longest a reading waits in a partial batch before it is written.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(200);
/// Retry backoff bounds for a batch the database refused.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One row of `register_readings`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ts: DateTime<Utc>,
    pub register_id: i32,
    pub device_id: i32,
    pub value: Option<f64>,
    pub value_text: Option<String>,
    pub quality: Quality,
    pub detail: Option<String>,
}

pub fn rows_of(report: &PollReport, out: &mut Vec<Row>) {
    out.extend(report.readings.iter().map(|r| Row {
        ts: r.ts,
        register_id: report.register(r).id,
        device_id: report.device.id,
        value: r.value.as_f64(),
        value_text: r.value.as_text().map(str::to_string),
        quality: r.quality,
        detail: r.detail.clone(),
    }));
}

#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub max_rows: usize,
    pub max_delay: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_rows: DEFAULT_BATCH_ROWS,
            max_delay: DEFAULT_BATCH_DELAY,
        }
    }
}

#[derive(Debug, Default)]
pub struct HistoryStats {
    pub rows_written: AtomicU64,
    pub batches: AtomicU64,
    pub failures: AtomicU64,
    /// Rows of written batches that were already stored (replays), skipped.
    pub duplicates: AtomicU64,
    /// Rows given up on because the writer was stopped while the database
    /// refused them.
    pub rows_lost: AtomicU64,
}

/// Runs until `rx` closes (every sender dropped) and the last batch is
/// written, or until `abort` turns true while a batch cannot be written.
pub async fn run_writer(
    db: Db,
    mut rx: mpsc::Receiver<Arc<PollReport>>,
    settings: BatchSettings,
    stats: Arc<HistoryStats>,
    mut abort: watch::Receiver<bool>,
) {
    let mut rows: Vec<Row> = Vec::with_capacity(settings.max_rows);
    loop {
        let Some(first) = rx.recv().await else { break };
        rows_of(&first, &mut rows);
        let deadline = Instant::now() + settings.max_delay;
        let mut closed = false;
        while rows.len() < settings.max_rows {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(r) => rows_of(&r, &mut rows),
                    None => { closed = true; break; }
                },
                () = sleep_until(deadline) => break,
            }
        }
        write_with_retry(&db, &rows, &stats, &mut abort).await;
        rows.clear();
        if closed {
            break;
        }
    }
}

async fn write_with_retry(
    db: &Db,
    rows: &[Row],
    stats: &HistoryStats,
    abort: &mut watch::Receiver<bool>,
) {
    let mut backoff = RETRY_MIN;
    loop {
        match write(db, rows).await {
            Ok(new) => {
                stats.rows_written.fetch_add(new, Ordering::Relaxed);
                stats.duplicates.fetch_add(
                    rows.len() as u64 - new.min(rows.len() as u64),
                    Ordering::Relaxed,
                );
                stats.batches.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error = format!("{e:#}"),
                    rows = rows.len(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot write readings; retrying"
                );
            }
        }
        tokio::select! {
            () = sleep(backoff) => {}
            _ = abort.wait_for(|a| *a) => {
                stats.rows_lost.fetch_add(rows.len() as u64, Ordering::Relaxed);
                tracing::error!(rows = rows.len(), "stopping with readings the database did not accept; they are lost");
                return;
            }
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// Writes one batch and returns how many rows were new. Rows already stored
/// (same register and timestamp) are skipped, so a batch retried after an
/// ambiguous failure is not duplicated.
pub async fn write(db: &Db, rows: &[Row]) -> anyhow::Result<u64> {
    match db {
        Db::Postgres(pool) => super::postgres::write(pool, rows).await,
        Db::Sqlite(pool) => super::sqlite::write(pool, rows).await,
    }
}
