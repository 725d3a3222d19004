//! The history writer: collects readings from a bounded queue into batches
//! (bounded by rows and by time) and writes each batch in one go, never one
//! INSERT per reading.
//!
//! While a batch is being written the writer keeps taking reports (into the
//! next batch), so a slow write does not hold up polling.
//!
//! Rows the database refuses for good (a data error: a constraint, a value
//! it cannot hold) are split out of their batch and quarantined by
//! [`Guarded`], so only failures worth retrying reach the loop below.
//!
//! When the database refuses a batch, the writer keeps collecting: unwritten
//! batches wait in memory up to `spool_after` rows, then the oldest go to the
//! disk spool. Writing is retried with backoff; once it works, the spool is
//! replayed first, then the memory backlog, in order, while new readings keep
//! arriving. On shutdown whatever the database has not taken is spooled, and
//! replayed by the next run. Replays are duplicate-safe (see `write`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use std::collections::VecDeque;

use super::quarantine::{self, Guarded};
use super::row::{Row, Rows, rows_in, rows_of};
use super::spool::Spool;
use super::store;
use crate::db::Db;
use crate::reading::PollReport;
use crate::settings;
use crate::telemetry::{Distribution, DistributionSnapshot};

/// How many batches' worth of already queued rows one COPY may take when the
/// writer is behind (see `collect`): 200,000 rows at the default batch size,
/// about 18 MB of rows plus 12 MB encoded. Measured with `regpoll-bench
/// ingest`: at 10 the writer reached 91 % of psql's single COPY, at 40 it is
/// level with it (BENCHMARKS.md).
const BACKLOG_FACTOR: usize = 40;
/// How long a writer that found the queue full waits for the next report
/// before it writes what it has (see `collect`).
const BACKLOG_WAIT: Duration = Duration::from_millis(2);
/// Retry backoff start for a batch the database refused; it doubles up to
/// `BatchSettings::retry_max`.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// How the writer batches, spools and retries (defaults and reasons in
/// [`crate::settings`]).
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// Most rows written in one batch.
    pub max_rows: usize,
    /// Longest a reading waits in a partial batch before it is written.
    pub max_delay: Duration,
    /// Unwritten rows kept in memory before the oldest go to the spool.
    pub spool_after: usize,
    /// Where the spool lives; `None`: no spool (unwritten rows wait in memory).
    pub spool_dir: Option<std::path::PathBuf>,
    /// Longest wait between two attempts to write refused rows.
    pub retry_max: Duration,
}

impl BatchSettings {
    /// Where rows go that the database refused and the quarantine table
    /// refused too: beside the spool, in the data directory.
    pub fn rejected_file(&self) -> Option<std::path::PathBuf> {
        let spool = self.spool_dir.as_deref()?;
        Some(
            spool
                .parent()
                .unwrap_or(std::path::Path::new(""))
                .join(quarantine::REJECTED_FILE),
        )
    }
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_rows: settings::BATCH_ROWS.default_count(),
            max_delay: settings::BATCH_DELAY.default_duration(),
            spool_after: settings::SPOOL_AFTER.default_count(),
            spool_dir: None,
            retry_max: settings::HISTORY_RETRY_MAX.default_duration(),
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
    /// refused them and there was no spool to keep them.
    pub rows_lost: AtomicU64,
    /// Rows written to the spool, replayed from it, and stretches of damaged
    /// spool bytes skipped.
    pub rows_spooled: AtomicU64,
    pub rows_replayed: AtomicU64,
    pub spool_damage: AtomicU64,
    /// Bytes in the spool after its last change.
    pub spool_bytes: AtomicU64,
    /// Rows the database refused (a value or row it will never take), kept
    /// in `register_readings_rejected` or the quarantine file instead of
    /// blocking the others (those that could not be kept are in `rows_lost`
    /// too).
    pub rows_rejected: AtomicU64,
    /// How long written batches took to write.
    pub write_latency: Distribution,
}

/// The writer's counters at one moment (see [`HistoryStats`]), with the
/// depth of its queue.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySnapshot {
    pub rows_written: u64,
    pub batches: u64,
    pub failures: u64,
    pub duplicates: u64,
    pub rows_lost: u64,
    pub rows_spooled: u64,
    pub rows_replayed: u64,
    pub spool_damage: u64,
    pub spool_bytes: u64,
    pub rows_rejected: u64,
    /// Poll reports waiting for the writer.
    pub queue_depth: usize,
    pub write_latency: DistributionSnapshot,
}

impl HistoryStats {
    pub fn snapshot(&self, queue_depth: usize) -> HistorySnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HistorySnapshot {
            rows_written: get(&self.rows_written),
            batches: get(&self.batches),
            failures: get(&self.failures),
            duplicates: get(&self.duplicates),
            rows_lost: get(&self.rows_lost),
            rows_spooled: get(&self.rows_spooled),
            rows_replayed: get(&self.rows_replayed),
            spool_damage: get(&self.spool_damage),
            spool_bytes: get(&self.spool_bytes),
            rows_rejected: get(&self.rows_rejected),
            queue_depth,
            write_latency: self.write_latency.snapshot(),
        }
    }
}

/// Runs until `rx` closes (every sender dropped) and everything is written
/// or, when `abort` turns true with the database still refusing, spooled.
pub async fn run_writer(
    db: Db,
    mut rx: mpsc::Receiver<Arc<PollReport>>,
    settings: BatchSettings,
    stats: Arc<HistoryStats>,
    mut abort: watch::Receiver<bool>,
) {
    let store = Guarded::new(store::for_db(&db), settings.rejected_file());
    let mut spool = settings.spool_dir.as_deref().and_then(|dir| {
        Spool::open(dir)
            .inspect_err(|e| tracing::error!(dir = %dir.display(), error = %e, "cannot open the spool; unwritten readings will wait in memory only"))
            .ok()
    });
    let mut backlog = Backlog::default();
    // A spool left by an earlier run is replayed at once, not after the first poll.
    let mut retry: Option<(Instant, Duration)> = spool
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|_| (Instant::now(), RETRY_MIN));
    let mut closed = false;
    // Rows taken while the last batch was written: the start of the next.
    let mut taken = Rows::default();
    loop {
        // Without a spool, memory is the only place for unwritten rows: past
        // the bound, stop taking reports (pollers wait) until writing works.
        let full = spool.is_none() && backlog.rows > settings.spool_after;
        if full && let Some((at, _)) = retry {
            sleep_until(at).await;
        } else if !closed {
            let wake = retry.map(|(at, _)| at);
            let (rows, ended) = collect(&mut rx, &settings, wake, std::mem::take(&mut taken)).await;
            closed = ended;
            backlog.push(rows);
        }
        let due = retry.is_none_or(|(at, _)| Instant::now() >= at);
        if due {
            let room = settings.spool_after.saturating_sub(backlog.rows);
            let flushed;
            (flushed, taken) = flush_taking(
                flush(&store, spool.as_mut(), &mut backlog, &stats),
                &mut rx,
                room,
                &mut closed,
            )
            .await;
            // They start the next batch, unless there will be none to
            // collect (closed) or writing failed: then they wait with the rest.
            if closed || flushed.is_err() {
                backlog.push(std::mem::take(&mut taken));
            }
            match flushed {
                Ok(()) => retry = None,
                Err(e) => {
                    let backoff = retry.map_or(RETRY_MIN, |(_, b)| (b * 2).min(settings.retry_max));
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        error = format!("{e:#}"),
                        waiting_rows = backlog.rows,
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot write readings; keeping them and retrying"
                    );
                    retry = Some((Instant::now() + backoff, backoff));
                }
            }
        }
        if let Some(spool) = spool.as_mut() {
            while backlog.rows > settings.spool_after {
                let Some(oldest) = backlog.pop() else { break };
                spill(spool, &oldest, &stats);
            }
        }
        let spool_empty = spool.as_ref().is_none_or(Spool::is_empty);
        if closed && backlog.rows == 0 && (retry.is_none() || spool_empty) {
            break;
        }
        if closed {
            // Shutting down with the database refusing: wait for the next try,
            // unless told to give up, then keep what is left on disk.
            let until = retry.map_or_else(Instant::now, |(at, _)| at);
            tokio::select! {
                () = sleep_until(until) => continue,
                _ = abort.wait_for(|a| *a) => {}
            }
            while let Some(batch) = backlog.pop() {
                match spool.as_mut() {
                    Some(spool) => spill(spool, &batch, &stats),
                    None => {
                        stats
                            .rows_lost
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        tracing::error!(
                            rows = batch.len(),
                            "stopping with readings the database did not accept and no spool; they are lost"
                        );
                    }
                }
            }
            break;
        }
    }
    if let Some(spool) = spool.as_mut() {
        spool.seal();
    }
}

/// Unwritten batches in memory, oldest first.
#[derive(Default)]
struct Backlog {
    batches: VecDeque<Rows>,
    rows: usize,
}

impl Backlog {
    fn push(&mut self, rows: Rows) {
        if !rows.is_empty() {
            self.rows += rows.len();
            self.batches.push_back(rows);
        }
    }
    fn pop(&mut self) -> Option<Rows> {
        let b = self.batches.pop_front()?;
        self.rows -= b.len();
        Some(b)
    }
}

/// One batch, starting with `rows` (taken while the last batch was
/// written): unless there are some, waits for the first report (or until
/// `wake`, when a retry is due); then takes more until `max_rows` or
/// `max_delay`. Also says whether the queue has closed.
async fn collect(
    rx: &mut mpsc::Receiver<Arc<PollReport>>,
    settings: &BatchSettings,
    wake: Option<Instant>,
    mut rows: Rows,
) -> (Rows, bool) {
    if rows.is_empty() {
        let first = match wake {
            Some(at) => tokio::select! {
                r = rx.recv() => r,
                () = sleep_until(at) => return (rows, false),
            },
            None => rx.recv().await,
        };
        let Some(first) = first else {
            return (rows, true);
        };
        rows_of(&first, &mut rows);
    }
    let deadline = Instant::now() + settings.max_delay;
    let sleep = sleep_until(deadline);
    tokio::pin!(sleep);
    while rows.len() < settings.max_rows {
        tokio::select! {
            next = rx.recv() => match next {
                Some(r) => rows_of(&r, &mut rows),
                None => return (rows, true),
            },
            () = &mut sleep => break,
        }
    }
    // A full batch with more reports already waiting means the writer is
    // behind (a burst, a replay, catching up after an outage): take what is
    // queued, up to BACKLOG_FACTOR batches, into one COPY. Every COPY is a
    // transaction and a commit, so writing a backlog in fewer, larger ones is
    // what lets the writer keep pace with psql's single COPY. This does not
    // widen the loss bound: the queued reports were unwritten either way.
    //
    // When the queue is full, pollers are waiting to hand over their reports:
    // keep taking them as they come (each one taken lets a poller go on)
    // until the cap, or until none comes within BACKLOG_WAIT. Draining only
    // what was queued at this instant would end every COPY at the queue's
    // size (about 41,000 rows) however far behind the writer is.
    if rows.len() >= settings.max_rows {
        let cap = settings.max_rows.saturating_mul(BACKLOG_FACTOR);
        let queue_full = rx.capacity() == 0;
        while rows.len() < cap {
            match rx.try_recv() {
                Ok(r) => rows_of(&r, &mut rows),
                Err(mpsc::error::TryRecvError::Disconnected) => return (rows, true),
                Err(mpsc::error::TryRecvError::Empty) if queue_full => {
                    match tokio::time::timeout(BACKLOG_WAIT, rx.recv()).await {
                        Ok(Some(r)) => rows_of(&r, &mut rows),
                        Ok(None) => return (rows, true),
                        Err(_) => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
    }
    (rows, false)
}

/// Runs `flushing` while taking up to `room` rows of new reports, so that
/// pollers do not wait on the database: a COPY can take a second when the
/// disk stalls, longer than the queue lasts at 100,000 readings a second.
/// Returns the flush's outcome and the rows taken; notes when the queue
/// closed.
async fn flush_taking(
    flushing: impl std::future::Future<Output = anyhow::Result<()>>,
    rx: &mut mpsc::Receiver<Arc<PollReport>>,
    room: usize,
    closed: &mut bool,
) -> (anyhow::Result<()>, Rows) {
    let mut taken = Rows::default();
    tokio::pin!(flushing);
    loop {
        tokio::select! {
            biased;
            flushed = &mut flushing => return (flushed, taken),
            report = rx.recv(), if !*closed && taken.len() < room => match report {
                Some(r) => rows_of(&r, &mut taken),
                None => *closed = true,
            },
        }
    }
}

/// Writes what waits, oldest first: spooled segments, then the backlog.
/// Stops at the first failure; nothing is removed before it is stored.
async fn flush(
    store: &Guarded,
    spool: Option<&mut Spool>,
    backlog: &mut Backlog,
    stats: &HistoryStats,
) -> anyhow::Result<()> {
    if let Some(spool) = spool.filter(|s| !s.is_empty()) {
        spool.seal();
        for path in spool.segments()? {
            let segment = Spool::read(&path)?;
            if segment.damaged > 0 {
                stats
                    .spool_damage
                    .fetch_add(segment.damaged as u64, Ordering::Relaxed);
                tracing::error!(segment = %path.display(), damaged = segment.damaged, "spool segment is damaged; replaying the good records around the damage");
            }
            for batch in &segment.batches {
                write_counted(store, &[batch], stats).await?;
                stats
                    .rows_replayed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            spool.remove(&path)?;
            stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
        }
    }
    while let Some(batch) = backlog.batches.front() {
        write_counted(store, &batch.pieces(), stats).await?;
        backlog.pop();
    }
    Ok(())
}

/// Writes one batch; rows the database refuses are quarantined and counted
/// (see `quarantine`), so an error here is one worth retrying.
async fn write_counted(
    store: &Guarded,
    pieces: &[&[Row]],
    stats: &HistoryStats,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let written = store.write(pieces, stats).await?;
    let len = rows_in(pieces) as u64;
    let took = started.elapsed();
    stats.write_latency.record(took);
    stats.rows_written.fetch_add(written.new, Ordering::Relaxed);
    stats.duplicates.fetch_add(
        len.saturating_sub(written.new + written.rejected),
        Ordering::Relaxed,
    );
    stats.batches.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Moves a batch to the spool; if even the disk refuses, the rows are lost
/// and counted as such.
fn spill(spool: &mut Spool, batch: &Rows, stats: &HistoryStats) {
    match spool.append_pieces(&batch.pieces()) {
        Ok(()) => {
            stats
                .rows_spooled
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            stats
                .rows_lost
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::error!(rows = batch.len(), error = %e, "cannot write to the spool; readings lost");
        }
    }
}

/// Writes one batch and returns how many rows were new. Rows already stored
/// (same register and timestamp) are skipped, so a batch retried after an
/// ambiguous failure is not duplicated.
pub async fn write(db: &Db, rows: &[Row]) -> anyhow::Result<u64> {
    write_pieces(db, &[rows]).await
}

/// [`write()`] of one batch held in pieces (see [`Rows`]): one COPY or one
/// transaction for all of them ([`store::HistoryStore::write`]).
pub async fn write_pieces(db: &Db, pieces: &[&[Row]]) -> anyhow::Result<u64> {
    store::for_db(db).write(pieces).await
}
