//! The history writer: collects readings from a bounded queue into batches
//! (bounded by rows and by time) and writes each batch in one go, never one
//! INSERT per reading.
//!
//! The writer never stops taking reports: while a batch is being written,
//! or a connection to a database that is down is awaited, new reports go
//! into the next batch and, past their bounds, to the disk spool
//! (`history::pending`). So pollers hand over their reports without waiting
//! however long the database is away.
//!
//! Rows the database refuses for good (a data error: a constraint, a value
//! it cannot hold) are split out of their batch and quarantined by
//! [`Guarded`], so only failures worth retrying reach the loop below.
//!
//! When the database refuses a batch, writing is retried with backoff;
//! once it works, the spool is replayed and the memory backlog written,
//! taking turns so that new readings are not held up behind a long replay.
//! On shutdown whatever the database has not taken is spooled, and replayed
//! by the next run. Replays are duplicate-safe (see `write`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::deadband::Deadbands;
use super::pending::{Pending, Unit};
use super::quarantine::{self, Guarded};
use super::row::{Row, Rows, rows_in};
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
pub(super) const BACKLOG_FACTOR: usize = 40;
/// How long a writer that found the queue full waits for the next report
/// before it writes what it has (see `collect`).
const BACKLOG_WAIT: Duration = Duration::from_millis(2);
/// Retry backoff start for a batch the database refused; it doubles up to
/// `BatchSettings::retry_max`.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Readings lost are logged at most this often (with the count since the
/// last line), and `/ready` says history is losing readings for this long
/// after the last loss.
pub const LOSS_REPORT_EVERY: Duration = Duration::from_secs(60);

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
    /// Unwritten rows kept in memory when the spool cannot take them (disk
    /// full, `spool_max` reached, no spool) before the oldest are dropped.
    pub memory_max: usize,
    /// Where the spool lives; `None`: no spool (unwritten rows wait in memory).
    pub spool_dir: Option<std::path::PathBuf>,
    /// Most bytes the spool may hold; `None`: as much as the disk takes.
    pub spool_max: Option<u64>,
    /// Longest wait between two attempts to write refused rows.
    pub retry_max: Duration,
    /// Past this long without a write while rows wait, history is reported
    /// stalled (`/ready`).
    pub stalled_after: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_rows: settings::BATCH_ROWS.default_count(),
            max_delay: settings::BATCH_DELAY.default_duration(),
            spool_after: settings::SPOOL_AFTER.default_count(),
            memory_max: settings::HISTORY_MEMORY_MAX.default_count(),
            spool_dir: None,
            spool_max: None,
            retry_max: settings::HISTORY_RETRY_MAX.default_duration(),
            stalled_after: settings::HISTORY_STALLED_AFTER.default_duration(),
        }
    }
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

#[derive(Debug)]
pub struct HistoryStats {
    pub rows_written: AtomicU64,
    pub batches: AtomicU64,
    pub failures: AtomicU64,
    /// Rows of written batches that were already stored (replays), skipped.
    pub duplicates: AtomicU64,
    /// Rows the database refused (a value or row it will never take), kept
    /// in `register_readings_rejected` or the quarantine file instead of
    /// blocking the others (those that could not be kept are in `rows_lost`
    /// too).
    pub rows_rejected: AtomicU64,
    /// Rows given up on: dropped past `memory_max` when the spool could not
    /// take them, not handed over because the queue was full, or left at
    /// shutdown with neither database nor spool taking them (see `lose`).
    pub rows_lost: AtomicU64,
    /// Poll reports the pollers could not hand over because the queue was
    /// full (their rows are in `rows_lost`).
    pub reports_dropped: AtomicU64,
    /// Readings of registers with a deadband left out on purpose (inside
    /// the band of the last stored value; see `history::deadband`): history
    /// thinned, not lost.
    pub deadband_suppressed: AtomicU64,
    /// Rows written to the spool, replayed from it, and stretches of damaged
    /// spool bytes skipped.
    pub rows_spooled: AtomicU64,
    pub rows_replayed: AtomicU64,
    pub spool_damage: AtomicU64,
    /// Bytes in the spool after its last change.
    pub spool_bytes: AtomicU64,
    /// Rows the writer holds in memory, not yet written.
    pub rows_waiting: AtomicU64,
    /// When a batch was last written (µs since the epoch), or when the
    /// writer started; 0 before.
    last_write_us: AtomicI64,
    /// When readings were last lost (µs since the epoch); 0: never.
    last_loss_us: AtomicI64,
    /// See `BatchSettings::stalled_after`.
    stalled_after_ms: AtomicU64,
    /// The last write error, until a write succeeds.
    last_error: Mutex<Option<String>>,
    /// Why readings were lost, as last logged, and when that was; rows lost
    /// since.
    loss_log: Mutex<(Option<std::time::Instant>, String)>,
    lost_since_log: AtomicU64,
    /// How long written batches took to write.
    pub write_latency: Distribution,
}

impl Default for HistoryStats {
    fn default() -> Self {
        Self {
            rows_written: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rows_rejected: AtomicU64::new(0),
            rows_lost: AtomicU64::new(0),
            reports_dropped: AtomicU64::new(0),
            deadband_suppressed: AtomicU64::new(0),
            rows_spooled: AtomicU64::new(0),
            rows_replayed: AtomicU64::new(0),
            spool_damage: AtomicU64::new(0),
            spool_bytes: AtomicU64::new(0),
            rows_waiting: AtomicU64::new(0),
            last_write_us: AtomicI64::new(0),
            last_loss_us: AtomicI64::new(0),
            stalled_after_ms: AtomicU64::new(
                settings::HISTORY_STALLED_AFTER
                    .default_duration()
                    .as_millis() as u64,
            ),
            last_error: Mutex::new(None),
            loss_log: Mutex::new((None, String::new())),
            lost_since_log: AtomicU64::new(0),
            write_latency: Distribution::default(),
        }
    }
}

/// The writer's counters at one moment (see [`HistoryStats`]), with the
/// depth of its queue.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySnapshot {
    pub rows_written: u64,
    pub batches: u64,
    pub failures: u64,
    pub duplicates: u64,
    pub rows_rejected: u64,
    pub rows_lost: u64,
    pub reports_dropped: u64,
    pub deadband_suppressed: u64,
    pub rows_spooled: u64,
    pub rows_replayed: u64,
    pub spool_damage: u64,
    pub spool_bytes: u64,
    /// Rows held in memory, not yet written.
    pub rows_waiting: u64,
    /// When a batch was last written (or the writer started).
    pub last_write: Option<DateTime<Utc>>,
    /// When readings were last lost, and why.
    pub last_loss: Option<(DateTime<Utc>, String)>,
    /// The last write error, while writes fail.
    pub last_error: Option<String>,
    pub stalled_after: Duration,
    /// Poll reports waiting for the writer.
    pub queue_depth: usize,
    pub write_latency: DistributionSnapshot,
}

fn micros_to_time(us: i64) -> Option<DateTime<Utc>> {
    (us != 0)
        .then(|| DateTime::from_timestamp_micros(us))
        .flatten()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HistoryStats {
    pub fn snapshot(&self, queue_depth: usize) -> HistorySnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let last_loss = micros_to_time(self.last_loss_us.load(Ordering::Relaxed))
            .map(|at| (at, lock(&self.loss_log).1.clone()));
        HistorySnapshot {
            rows_written: get(&self.rows_written),
            batches: get(&self.batches),
            failures: get(&self.failures),
            duplicates: get(&self.duplicates),
            rows_rejected: get(&self.rows_rejected),
            rows_lost: get(&self.rows_lost),
            reports_dropped: get(&self.reports_dropped),
            deadband_suppressed: get(&self.deadband_suppressed),
            rows_spooled: get(&self.rows_spooled),
            rows_replayed: get(&self.rows_replayed),
            spool_damage: get(&self.spool_damage),
            spool_bytes: get(&self.spool_bytes),
            rows_waiting: get(&self.rows_waiting),
            last_write: micros_to_time(self.last_write_us.load(Ordering::Relaxed)),
            last_loss,
            last_error: lock(&self.last_error).clone(),
            stalled_after: Duration::from_millis(get(&self.stalled_after_ms)),
            queue_depth,
            write_latency: self.write_latency.snapshot(),
        }
    }

    /// Counts `rows` readings as lost and logs it, at most once per
    /// [`LOSS_REPORT_EVERY`] (with how many were lost since the last line).
    pub fn lose(&self, rows: u64, cause: std::fmt::Arguments<'_>) {
        self.rows_lost.fetch_add(rows, Ordering::Relaxed);
        self.lost_since_log.fetch_add(rows, Ordering::Relaxed);
        self.last_loss_us
            .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
        let mut log = lock(&self.loss_log);
        if log.0.is_none_or(|at| at.elapsed() >= LOSS_REPORT_EVERY) {
            log.0 = Some(std::time::Instant::now());
            log.1 = cause.to_string();
            // Outside the macro: its fields are evaluated only when logged.
            let lost = self.lost_since_log.swap(0, Ordering::Relaxed);
            tracing::error!(
                lost,
                lost_total = self.rows_lost.load(Ordering::Relaxed),
                cause = %log.1,
                "losing readings (logged once a minute while it lasts; see rows_lost)"
            );
        }
    }

    fn wrote(&self) {
        self.last_write_us
            .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
        lock(&self.last_error).take();
    }
}

impl HistorySnapshot {
    /// Why history cannot be called healthy at `now`, for `/ready`: nothing
    /// written for longer than `stalled_after` while rows wait, or readings
    /// lost within the last [`LOSS_REPORT_EVERY`]. Each reason starts with
    /// `history:`.
    pub fn problems(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut out = Vec::new();
        let waiting = self.rows_waiting > 0 || self.spool_bytes > 0 || self.queue_depth > 0;
        let since = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
        if waiting
            && let Some(last) = self.last_write
            && since(last) > self.stalled_after
        {
            out.push(format!(
                "history: nothing written for {} s while readings wait ({} in memory, {} bytes spooled); {}",
                since(last).as_secs(),
                self.rows_waiting,
                self.spool_bytes,
                self.last_error.as_deref().unwrap_or("no write error yet")
            ));
        }
        if let Some((at, cause)) = &self.last_loss
            && since(*at) < LOSS_REPORT_EVERY
        {
            out.push(format!(
                "history: losing readings: {} lost since start, the last {} s ago ({cause})",
                self.rows_lost,
                since(*at).as_secs()
            ));
        }
        out
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
    stats
        .stalled_after_ms
        .store(settings.stalled_after.as_millis() as u64, Ordering::Relaxed);
    stats.wrote();
    let mut pending = Pending::open(&settings, &stats);
    let mut filter = Deadbands::new(Arc::clone(&stats));
    let cap = settings.max_rows.saturating_mul(BACKLOG_FACTOR);
    let mut retry: Option<(Instant, Duration)> = None;
    let mut closed = false;
    // Rows taken but not yet a batch of their own.
    let mut current = Rows::default();
    // About when `current` began (noted between writes).
    let mut current_since: Option<Instant> = None;
    loop {
        let due =
            |retry: Option<(Instant, Duration)>| retry.is_none_or(|(at, _)| Instant::now() >= at);
        if !closed {
            if due(retry) && !pending.is_empty() {
                // Something waits to be written (a backlog, the spool): take
                // what is queued without waiting for more. A partial batch
                // older than max_delay joins the writes, so that new
                // readings are written between the records of a long replay
                // however slowly they come.
                closed = drain(
                    &mut rx,
                    &mut filter,
                    &mut current,
                    &mut pending,
                    settings.max_rows,
                );
                if current.is_empty() {
                    current_since = None;
                } else if current_since.get_or_insert_with(Instant::now).elapsed()
                    >= settings.max_delay
                {
                    pending.push(std::mem::take(&mut current));
                    current_since = None;
                }
            } else {
                current_since = None;
                let wake = retry.map(|(at, _)| at);
                let (rows, ended) = collect(
                    &mut rx,
                    &mut filter,
                    &settings,
                    wake,
                    std::mem::take(&mut current),
                )
                .await;
                closed = ended;
                pending.push(rows);
            }
        }
        if closed {
            pending.push(std::mem::take(&mut current));
        }
        if due(retry) {
            let written = match pending.next_unit(cap, &stats) {
                Ok(None) => None,
                Ok(Some(unit)) => {
                    let intake = Intake {
                        rx: &mut rx,
                        filter: &mut filter,
                        current: &mut current,
                        pending: &mut pending,
                        settings: &settings,
                        stats: &stats,
                        closed: &mut closed,
                    };
                    let result = write_taking(&store, &unit, intake).await;
                    match result {
                        Ok(()) => pending.written(&unit, &stats),
                        Err(_) => pending.put_back(unit),
                    }
                    Some(result)
                }
                Err(e) => Some(Err(e.context("cannot read the spool"))),
            };
            match written {
                None => {}
                Some(Ok(())) => {
                    stats.wrote();
                    if retry.is_some() {
                        tracing::info!("writing readings again; what was kept is being written");
                    }
                    retry = None;
                }
                Some(Err(e)) => {
                    let backoff = retry.map_or(RETRY_MIN, |(_, b)| (b * 2).min(settings.retry_max));
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    let error = crate::db::error_text(e.as_ref());
                    // Once per outage and per new cause, not at every retry:
                    // the counters and /ready show that it goes on.
                    if lock(&stats.last_error).as_deref() != Some(error.as_str()) {
                        tracing::warn!(
                            error,
                            waiting_rows = pending.memory_rows() + current.len(),
                            retry_in_ms = backoff.as_millis() as u64,
                            "cannot write readings; keeping them and retrying"
                        );
                    }
                    *lock(&stats.last_error) = Some(error);
                    retry = Some((Instant::now() + crate::schedule::jittered(backoff), backoff));
                }
            }
        }
        if closed {
            // The queue may have closed during the write: what was taken
            // meanwhile is the last batch.
            pending.push(std::mem::take(&mut current));
        }
        pending.make_room(current.len(), &stats);
        stats.rows_waiting.store(
            (pending.memory_rows() + current.len()) as u64,
            Ordering::Relaxed,
        );
        if closed && (pending.is_empty() || (retry.is_some() && pending.only_spooled())) {
            break;
        }
        if closed && let Some((at, _)) = retry {
            // Shutting down with the database refusing: wait for the next try,
            // unless told to give up, then keep what is left on disk.
            tokio::select! {
                () = sleep_until(at) => continue,
                _ = abort.wait_for(|a| *a) => {}
            }
            pending.spill_all(&stats);
            break;
        }
    }
    stats.rows_waiting.store(0, Ordering::Relaxed);
    pending.seal();
}

/// Takes every report already queued, without waiting, into `current`;
/// full batches go to `pending`. Says whether the queue has closed.
fn drain(
    rx: &mut mpsc::Receiver<Arc<PollReport>>,
    filter: &mut Deadbands,
    current: &mut Rows,
    pending: &mut Pending,
    max_rows: usize,
) -> bool {
    loop {
        match rx.try_recv() {
            Ok(r) => {
                filter.rows_of(&r, current);
                if current.len() >= max_rows {
                    pending.push(std::mem::take(current));
                }
            }
            Err(mpsc::error::TryRecvError::Empty) => return false,
            Err(mpsc::error::TryRecvError::Disconnected) => return true,
        }
    }
}

/// One batch, starting with `rows` (taken while the last batch was
/// written): unless there are some, waits for the first report (or until
/// `wake`, when a retry is due); then takes more until `max_rows` or
/// `max_delay`. Also says whether the queue has closed.
async fn collect(
    rx: &mut mpsc::Receiver<Arc<PollReport>>,
    filter: &mut Deadbands,
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
        filter.rows_of(&first, &mut rows);
    }
    let deadline = Instant::now() + settings.max_delay;
    let sleep = sleep_until(deadline);
    tokio::pin!(sleep);
    while rows.len() < settings.max_rows {
        tokio::select! {
            next = rx.recv() => match next {
                Some(r) => filter.rows_of(&r, &mut rows),
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
                Ok(r) => filter.rows_of(&r, &mut rows),
                Err(mpsc::error::TryRecvError::Disconnected) => return (rows, true),
                Err(mpsc::error::TryRecvError::Empty) if queue_full => {
                    match tokio::time::timeout(BACKLOG_WAIT, rx.recv()).await {
                        Ok(Some(r)) => filter.rows_of(&r, &mut rows),
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

/// Where reports taken during a write go (see [`write_taking`]).
struct Intake<'a> {
    rx: &'a mut mpsc::Receiver<Arc<PollReport>>,
    filter: &'a mut Deadbands,
    current: &'a mut Rows,
    pending: &'a mut Pending,
    settings: &'a BatchSettings,
    stats: &'a HistoryStats,
    closed: &'a mut bool,
}

/// Writes `unit` while taking every report that comes, so that pollers
/// never wait on the database: a COPY can take a second when the disk
/// stalls, and a database that is down holds a write for the pool's acquire
/// timeout, far longer than the queue lasts at 100,000 readings a second.
/// Full batches of what is taken go to `pending`, which keeps memory within
/// its bounds by spooling (or, past every bound, dropping) the oldest.
async fn write_taking(store: &Guarded, unit: &Unit, intake: Intake<'_>) -> anyhow::Result<()> {
    let Intake {
        rx,
        filter,
        current,
        pending,
        settings,
        stats,
        closed,
    } = intake;
    let pieces = unit.pieces();
    let writing = write_counted(store, &pieces, stats);
    tokio::pin!(writing);
    loop {
        tokio::select! {
            biased;
            written = &mut writing => return written,
            report = rx.recv(), if !*closed => match report {
                Some(r) => {
                    filter.rows_of(&r, current);
                    if current.len() >= settings.max_rows {
                        pending.push(std::mem::take(current));
                        pending.make_room(unit.len(), stats);
                        stats.rows_waiting.store(
                            (pending.memory_rows() + unit.len()) as u64,
                            Ordering::Relaxed,
                        );
                    }
                }
                None => *closed = true,
            },
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_stalled_only_when_rows_wait_longer_than_the_bound() {
        let stats = HistoryStats::default();
        stats.wrote();
        stats.rows_waiting.store(500, Ordering::Relaxed);
        *lock(&stats.last_error) =
            Some("pool timed out while waiting for an open connection".into());
        let snap = stats.snapshot(0);
        let now = Utc::now();
        assert!(snap.problems(now).is_empty(), "just written");
        let later = now + chrono::Duration::seconds(31);
        let problems = snap.problems(later);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "history: nothing written for 31 s while readings wait (500 in memory"
            ) && problems[0].ends_with("pool timed out while waiting for an open connection"),
            "{problems:?}"
        );
        // Nothing waiting: a quiet writer is not a stalled one.
        stats.rows_waiting.store(0, Ordering::Relaxed);
        assert!(stats.snapshot(0).problems(later).is_empty());
        // Reports in the queue are waiting rows too.
        assert_eq!(stats.snapshot(3).problems(later).len(), 1);
    }

    #[test]
    fn a_loss_is_reported_for_a_minute_and_logged_once_per_minute() {
        let stats = HistoryStats::default();
        stats.lose(7, format_args!("the spool cannot take them"));
        stats.lose(5, format_args!("something else"));
        let snap = stats.snapshot(0);
        assert_eq!(snap.rows_lost, 12);
        let (at, cause) = snap.last_loss.clone().unwrap();
        assert_eq!(cause, "the spool cannot take them", "the logged cause");
        // Both losses went into one log line; the next line counts from here.
        assert_eq!(stats.lost_since_log.load(Ordering::Relaxed), 5);
        assert_eq!(
            snap.problems(at + chrono::Duration::seconds(59)),
            [
                "history: losing readings: 12 lost since start, the last 59 s ago (the spool cannot take them)"
            ]
        );
        assert!(snap.problems(at + chrono::Duration::seconds(61)).is_empty());
    }
}
