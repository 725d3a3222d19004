//! Rows the database refuses never block the others. When a batch fails with
//! a data error (see [`super::store::errors`]), the batch is split in halves, and
//! every half that fails again is split again, until the rows at fault are
//! alone: every other row is written, and the rows at fault go to the
//! quarantine table `register_readings_rejected` with the error they met.
//! If the quarantine table refuses them too, they are appended to a JSON
//! lines file in the data directory; only if that also fails are they lost,
//! and counted as such.
//!
//! A write that succeeds costs nothing here: the splitting starts only after
//! the database refused the whole batch. A retryable failure (the database
//! went away, also halfway through the splitting) is handed back to the
//! writer, which keeps the batch and retries it whole; rows written by then
//! are skipped as duplicates on the retry.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::row::{Row, rows_in};
use super::store::errors::{Failure, classify, describe};
use super::store::{HistoryStore, Rejected};
use super::writer::HistoryStats;
use crate::reading::rfc3339;

/// The file, in the data directory, that holds refused rows the quarantine
/// table refused too: one JSON object a line.
pub const REJECTED_FILE: &str = "rejected.jsonl";

/// Shortest time between two log lines about refused rows: with a
/// constraint that refuses one register's rows, every batch has some, and
/// one line a batch would drown the log. Each line counts what happened
/// since the one before.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What writing one batch did with its rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows stored that were not stored before.
    pub new: u64,
    /// Rows the database refused (quarantined, in the file, or lost).
    pub rejected: u64,
}

/// A history store whose writes survive refused rows (see the module docs).
pub struct Guarded {
    store: Arc<dyn HistoryStore>,
    file: Option<PathBuf>,
    log: Mutex<LogState>,
}

/// Refusals not yet logged, and when the last line was.
#[derive(Default)]
struct LogState {
    last: Option<Instant>,
    rows: u64,
    batches: u64,
    /// Whether a loss was logged: the first one is, at once.
    lost_logged: bool,
}

impl LogState {
    /// Notes a refused batch of `rows` at `now`; returns the rows and
    /// batches to log when a line is due.
    fn note(&mut self, rows: u64, lost: bool, now: Instant) -> Option<(u64, u64)> {
        self.rows += rows;
        self.batches += 1;
        let first_loss = lost && !self.lost_logged;
        if !first_loss && self.last.is_some_and(|t| now < t + LOG_EVERY) {
            return None;
        }
        let due = (self.rows, self.batches);
        *self = LogState {
            last: Some(now),
            lost_logged: self.lost_logged || lost,
            ..LogState::default()
        };
        Some(due)
    }
}

/// Where the refused rows of one batch ended up.
enum Kept {
    Table,
    File(PathBuf),
    Lost(String),
}

impl Guarded {
    /// `file`: where refused rows go when the quarantine table refuses
    /// them too; `None`: nowhere (they are counted as lost).
    pub fn new(store: Arc<dyn HistoryStore>, file: Option<PathBuf>) -> Self {
        Guarded {
            store,
            file,
            log: Mutex::default(),
        }
    }

    /// Writes one batch held in pieces: all of it, or, when the database
    /// refuses some rows, all but those, which are quarantined and counted
    /// in `stats.rows_rejected` (and `rows_lost` if nothing could keep them).
    /// An error is retryable: the batch should be written again later.
    pub async fn write(&self, pieces: &[&[Row]], stats: &HistoryStats) -> anyhow::Result<Written> {
        match self.store.write(pieces).await {
            Ok(new) => Ok(Written { new, rejected: 0 }),
            Err(e) if classify(&e) == Failure::Data => self.split(pieces, &e, stats).await,
            Err(e) => Err(e),
        }
    }

    /// Bisects a refused batch down to the rows at fault, writing the rest.
    async fn split(
        &self,
        pieces: &[&[Row]],
        refusal: &anyhow::Error,
        stats: &HistoryStats,
    ) -> anyhow::Result<Written> {
        let mut refused: Vec<(usize, String)> = Vec::new();
        let mut todo = vec![(0, rows_in(pieces), describe(refusal))];
        let mut new = 0;
        while let Some((lo, hi, error)) = todo.pop() {
            if hi - lo == 1 {
                refused.push((lo, error));
                continue;
            }
            let mid = lo + (hi - lo) / 2;
            for (a, b) in [(lo, mid), (mid, hi)] {
                match self.store.write(&range(pieces, a, b)).await {
                    Ok(n) => new += n,
                    Err(e) if classify(&e) == Failure::Data => todo.push((a, b, describe(&e))),
                    Err(e) => {
                        // Written all the same: the retry will skip them.
                        stats.rows_written.fetch_add(new, Ordering::Relaxed);
                        return Err(
                            e.context("while looking for the readings the database refused")
                        );
                    }
                }
            }
        }
        refused.sort_by_key(|(i, _)| *i);
        let rejected: Vec<Rejected> = refused
            .iter()
            .map(|(i, error)| Rejected {
                row: row_at(pieces, *i),
                error,
            })
            .collect();
        let kept = match self.store.quarantine(&rejected).await {
            Ok(()) => Kept::Table,
            Err(e) if classify(&e) == Failure::Retryable => {
                stats.rows_written.fetch_add(new, Ordering::Relaxed);
                return Err(e);
            }
            Err(e) => self.to_file(&rejected, &e),
        };
        let n = rejected.len() as u64;
        stats.rows_rejected.fetch_add(n, Ordering::Relaxed);
        if let Kept::Lost(_) = kept {
            stats.rows_lost.fetch_add(n, Ordering::Relaxed);
        }
        self.log(&rejected, &kept);
        Ok(Written { new, rejected: n })
    }

    /// Appends the rows to the quarantine file, with the reason the table
    /// refused them too.
    fn to_file(&self, rejected: &[Rejected], table_error: &anyhow::Error) -> Kept {
        let Some(path) = &self.file else {
            return Kept::Lost(format!(
                "register_readings_rejected refused them ({}) and there is no data directory for {REJECTED_FILE}",
                describe(table_error)
            ));
        };
        match append_json_lines(path, rejected, &describe(table_error)) {
            Ok(()) => Kept::File(path.clone()),
            Err(e) => Kept::Lost(format!(
                "register_readings_rejected refused them ({}) and {} cannot be written: {e}",
                describe(table_error),
                path.display()
            )),
        }
    }

    /// One line per refused batch, at most one every `LOG_EVERY` (counting
    /// what came since the last), and at once for the first loss.
    fn log(&self, rejected: &[Rejected], kept: &Kept) {
        let due = self.log.lock().unwrap_or_else(|e| e.into_inner()).note(
            rejected.len() as u64,
            matches!(kept, Kept::Lost(_)),
            Instant::now(),
        );
        let Some((rows, batches)) = due else { return };
        let first = rejected[0];
        let (register_id, device_id, error) =
            (first.row.register_id, first.row.device_id, first.error);
        match kept {
            Kept::Table => tracing::warn!(
                rows,
                batches,
                register_id,
                device_id,
                error,
                "the database refused readings; the others were written, the refused ones kept in register_readings_rejected"
            ),
            Kept::File(path) => tracing::error!(
                rows, batches, register_id, device_id, error, file = %path.display(),
                "the database refused readings, and the quarantine table refused them too; kept in the quarantine file"
            ),
            Kept::Lost(why) => tracing::error!(
                rows,
                batches,
                register_id,
                device_id,
                error,
                why = why.as_str(),
                "the database refused readings and nothing could keep them; they are lost"
            ),
        }
    }
}

/// The rows of global positions `[lo, hi)` of a batch held in pieces.
fn range<'a>(pieces: &[&'a [Row]], mut lo: usize, mut hi: usize) -> Vec<&'a [Row]> {
    let mut out = Vec::new();
    for p in pieces {
        if hi == 0 {
            break;
        }
        if lo < p.len() {
            out.push(&p[lo..hi.min(p.len())]);
        }
        lo = lo.saturating_sub(p.len());
        hi = hi.saturating_sub(p.len());
    }
    out
}

/// The row at global position `i` of a batch held in pieces.
fn row_at<'a>(pieces: &[&'a [Row]], i: usize) -> &'a Row {
    let piece: &'a [Row] = range(pieces, i, i + 1)[0];
    &piece[0]
}

/// Appends one JSON object per row (the row's columns, the error the
/// readings table gave, why the quarantine table did not take it, and
/// when), then syncs: the file is the last place these rows exist.
fn append_json_lines(path: &Path, rejected: &[Rejected], table_error: &str) -> std::io::Result<()> {
    let now = rfc3339(chrono::Utc::now());
    let mut out = Vec::new();
    for r in rejected {
        let value = r.row.value().map(|v| {
            serde_json::Number::from_f64(v).map_or_else(|| json!(v.to_string()), Into::into)
        });
        let line = json!({
            "ts": r.row.ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "register_id": r.row.register_id,
            "device_id": r.row.device_id,
            "value": value,
            "value_text": r.row.value_text(),
            "quality": r.row.quality.as_str(),
            "detail": r.row.detail(),
            "error": r.error,
            "quarantine_error": table_error,
            "rejected_at": now,
        });
        serde_json::to_writer(&mut out, &line)?;
        out.push(b'\n');
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(&out)?;
    f.sync_data()
}

#[cfg(test)]
mod tests;
