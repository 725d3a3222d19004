//! What the history writer holds that the database has not taken yet: the
//! memory backlog, the disk spool behind it, and the spool segment being
//! replayed. The writer takes one [`Unit`] at a time out of it to write, so
//! that while that write is in flight (or a connection is awaited) new
//! reports keep coming in here and never wait for the database.
//!
//! Bounds, in order: up to `spool_after` rows wait in memory; beyond that
//! the oldest batches go to the spool; when the spool cannot take them (disk
//! full, `--spool-max` reached, no spool at all) they stay in memory up to
//! `memory_max` rows, the spool is tried again every [`SPOOL_RETRY`], and
//! only past that bound are the oldest dropped, counted as lost.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::row::{Row, Rows};
use super::spool::Spool;
use super::writer::{BatchSettings, HistoryStats};

/// How long a spool that refused a record is left alone before it is tried
/// again: a full disk is not freed within milliseconds, and every attempt
/// costs a write and an fsync.
pub const SPOOL_RETRY: Duration = Duration::from_secs(1);

/// One thing to write: a batch from memory, or one record of the spool.
pub enum Unit {
    Memory(Rows),
    Spooled(Vec<Row>),
}

impl Unit {
    pub fn pieces(&self) -> Vec<&[Row]> {
        match self {
            Unit::Memory(rows) => rows.pieces(),
            Unit::Spooled(rows) => vec![rows.as_slice()],
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Unit::Memory(rows) => rows.len(),
            Unit::Spooled(rows) => rows.len(),
        }
    }
}

/// Unwritten batches in memory, oldest first.
#[derive(Default)]
struct Backlog {
    batches: VecDeque<Rows>,
    rows: usize,
}

impl Backlog {
    fn push_back(&mut self, rows: Rows) {
        if !rows.is_empty() {
            self.rows += rows.len();
            self.batches.push_back(rows);
        }
    }
    fn push_front(&mut self, rows: Rows) {
        if !rows.is_empty() {
            self.rows += rows.len();
            self.batches.push_front(rows);
        }
    }
    fn pop(&mut self) -> Option<Rows> {
        let b = self.batches.pop_front()?;
        self.rows -= b.len();
        Some(b)
    }
}

/// The spool segment being replayed: its records not yet written.
struct Replay {
    path: PathBuf,
    records: VecDeque<Vec<Row>>,
}

pub struct Pending {
    backlog: Backlog,
    spool: Option<Spool>,
    replay: Option<Replay>,
    /// Set while the spool refuses records: when to try it again.
    spool_down: Option<Instant>,
    /// Whether the last unit written came from the spool: replay and new
    /// readings take turns, so neither starves the other.
    replayed_last: bool,
    spool_after: usize,
    memory_max: usize,
}

impl Pending {
    /// Opens the spool (when there is a directory for it); segments left by
    /// an earlier run are replayed first.
    pub fn open(settings: &BatchSettings, stats: &HistoryStats) -> Pending {
        let spool = settings.spool_dir.as_deref().and_then(|dir| {
            Spool::open(dir, settings.spool_max)
                .inspect_err(|e| tracing::error!(dir = %dir.display(), error = %e, "cannot open the spool; unwritten readings will wait in memory only (up to --history-memory-max)"))
                .ok()
        });
        if let Some(s) = &spool {
            stats.spool_bytes.store(s.bytes(), Ordering::Relaxed);
        }
        Pending {
            backlog: Backlog::default(),
            spool,
            replay: None,
            spool_down: None,
            replayed_last: false,
            spool_after: settings.spool_after,
            memory_max: settings.memory_max.max(settings.spool_after),
        }
    }

    /// Rows waiting in memory (not counting a unit being written).
    pub fn memory_rows(&self) -> usize {
        self.backlog.rows
            + self
                .replay
                .as_ref()
                .map_or(0, |r| r.records.iter().map(Vec::len).sum::<usize>())
    }

    /// Whether anything waits on disk.
    pub fn spooled(&self) -> bool {
        self.replay.is_some() || self.spool.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Whether nothing waits at all.
    pub fn is_empty(&self) -> bool {
        self.backlog.rows == 0 && !self.spooled()
    }

    /// Whether only the spool holds anything (memory is written out).
    pub fn only_spooled(&self) -> bool {
        self.backlog.rows == 0 && self.replay.is_none()
    }

    /// A new batch, newest of all.
    pub fn push(&mut self, rows: Rows) {
        self.backlog.push_back(rows);
    }

    /// The next thing to write, taken out: the spool's oldest record and the
    /// oldest memory batches take turns while both wait. Memory batches are
    /// joined up to `cap` rows into one write: a writer that is behind
    /// writes its backlog in few large COPYs (see `writer::BACKLOG_FACTOR`).
    pub fn next_unit(&mut self, cap: usize, stats: &HistoryStats) -> anyhow::Result<Option<Unit>> {
        let memory = self.backlog.rows > 0;
        let spool_turn = self.spooled() && !(memory && self.replayed_last);
        if spool_turn && let Some(rows) = self.next_spooled(stats)? {
            self.replayed_last = true;
            return Ok(Some(Unit::Spooled(rows)));
        }
        self.replayed_last = false;
        let Some(mut rows) = self.backlog.pop() else {
            return Ok(None);
        };
        while let Some(next) = self.backlog.batches.front()
            && rows.len() + next.len() <= cap
        {
            let next = self.backlog.pop().expect("front exists");
            rows.append(next);
        }
        Ok(Some(Unit::Memory(rows)))
    }

    /// The next record of the spool, loading the oldest segment when none
    /// is being replayed (and removing segments that are done).
    fn next_spooled(&mut self, stats: &HistoryStats) -> anyhow::Result<Option<Vec<Row>>> {
        loop {
            if let Some(replay) = self.replay.as_mut() {
                if let Some(rows) = replay.records.pop_front() {
                    return Ok(Some(rows));
                }
                let done = self.replay.take().expect("checked above");
                if let Some(spool) = self.spool.as_mut() {
                    spool.remove(&done.path)?;
                    stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
                }
                continue;
            }
            let Some(spool) = self.spool.as_mut().filter(|s| !s.is_empty()) else {
                return Ok(None);
            };
            let Some(path) = spool.segments()?.into_iter().next() else {
                return Ok(None);
            };
            // The segment being appended to is sealed before it is read, so
            // that what is spooled during its replay goes to a new one.
            spool.seal_if(&path);
            let segment = Spool::read(&path)?;
            if segment.damaged > 0 {
                stats
                    .spool_damage
                    .fetch_add(segment.damaged as u64, Ordering::Relaxed);
                tracing::error!(segment = %path.display(), damaged = segment.damaged, "spool segment is damaged; replaying the good records around the damage");
            }
            self.replay = Some(Replay {
                path,
                records: segment.batches.into(),
            });
        }
    }

    /// A unit that was written.
    pub fn written(&mut self, unit: &Unit, stats: &HistoryStats) {
        if let Unit::Spooled(rows) = unit {
            stats
                .rows_replayed
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
    }

    /// A unit that could not be written goes back where it came from, first
    /// in line.
    pub fn put_back(&mut self, unit: Unit) {
        match unit {
            Unit::Memory(rows) => self.backlog.push_front(rows),
            Unit::Spooled(rows) => match self.replay.as_mut() {
                Some(replay) => replay.records.push_front(rows),
                // Cannot happen (a spooled unit comes from a replay that
                // stays until it is empty), but never drop rows.
                None => {
                    let mut back = Rows::default();
                    back.extend(rows);
                    self.backlog.push_front(back);
                }
            },
        }
    }

    /// Keeps memory within its bounds: the oldest batches beyond
    /// `spool_after` rows go to the spool (one fsync for all of them); when
    /// the spool cannot take them, they stay up to `memory_max` rows, and
    /// the oldest beyond that are dropped and counted as lost. `extra` is
    /// what memory holds outside the backlog (a unit in flight, a batch
    /// being gathered).
    pub fn make_room(&mut self, extra: usize, stats: &HistoryStats) {
        if self.backlog.rows + extra > self.spool_after && self.spool_usable() {
            self.spill(self.spool_after.saturating_sub(extra), stats);
        }
        while self.backlog.rows + extra > self.memory_max {
            let Some(oldest) = self.backlog.pop() else {
                break;
            };
            let cause = if self.spool.is_none() {
                "no spool"
            } else {
                "the spool cannot take them"
            };
            stats.lose(
                oldest.len() as u64,
                format_args!(
                    "{} readings wait in memory (--history-memory-max) and {cause}",
                    self.memory_max
                ),
            );
        }
    }

    fn spool_usable(&mut self) -> bool {
        match self.spool_down {
            _ if self.spool.is_none() => false,
            Some(at) if Instant::now() < at => false,
            _ => true,
        }
    }

    /// Moves the oldest batches to the spool until at most `keep` rows are
    /// left in memory.
    fn spill(&mut self, keep: usize, stats: &HistoryStats) {
        let spool = self.spool.as_mut().expect("spool_usable checked it");
        let mut spilled = 0;
        let mut failed = None;
        while self.backlog.rows > keep {
            let Some(oldest) = self.backlog.pop() else {
                break;
            };
            match spool.append_pieces(&oldest.pieces()) {
                Ok(()) => spilled += oldest.len() as u64,
                Err(e) => {
                    self.backlog.push_front(oldest);
                    failed = Some(e);
                    break;
                }
            }
        }
        // One fsync for every record of this round (see Spool::sync).
        if spilled > 0
            && let Err(e) = spool.sync()
        {
            failed.get_or_insert(e);
        }
        stats.rows_spooled.fetch_add(spilled, Ordering::Relaxed);
        stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
        match failed {
            Some(e) => {
                if self.spool_down.is_none() {
                    tracing::error!(error = %e, waiting_rows = self.backlog.rows, memory_max = self.memory_max, "cannot write to the spool; keeping readings in memory and trying the spool again every second");
                }
                self.spool_down = Some(Instant::now() + SPOOL_RETRY);
            }
            None if self.spool_down.take().is_some() => {
                tracing::info!("the spool takes readings again");
            }
            None => {}
        }
    }

    /// On shutdown with the database refusing: memory goes to the spool;
    /// what even the spool does not take is lost, counted.
    pub fn spill_all(&mut self, stats: &HistoryStats) {
        self.spool_down = None;
        if self.spool_usable() {
            self.spill(0, stats);
        }
        // What was loaded for replay is still on disk; nothing to do for it.
        self.replay = None;
        while let Some(batch) = self.backlog.pop() {
            stats.lose(
                batch.len() as u64,
                format_args!("stopping while the database refuses them and no spool takes them"),
            );
        }
    }

    pub fn seal(&mut self) {
        if let Some(spool) = self.spool.as_mut() {
            spool.seal();
        }
    }
}
