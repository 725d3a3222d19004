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
                spool.recheck()?;
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

    /// A unit that was written. The last record of a segment removes the
    /// segment at once, so that a spool at its limit has room again.
    pub fn written(&mut self, unit: &Unit, stats: &HistoryStats) {
        let Unit::Spooled(rows) = unit else {
            return;
        };
        stats
            .rows_replayed
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        if self.replay.as_ref().is_some_and(|r| r.records.is_empty()) {
            let done = self.replay.take().expect("checked above");
            if let Some(spool) = self.spool.as_mut() {
                if let Err(e) = spool.remove(&done.path) {
                    // Its rows are stored; a later replay of it is duplicate-safe.
                    tracing::error!(segment = %done.path.display(), error = %e, "cannot remove a replayed spool segment; it will be replayed again");
                }
                stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
            }
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

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::reading::Quality;

    /// A batch of `n` rows whose register ids count from `start`.
    fn batch(start: i32, n: i32) -> Rows {
        let ts = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let mut rows = Rows::default();
        rows.extend(
            (start..start + n).map(|i| Row::new(ts, i, 1, Some(1.0), None, Quality::Good, None)),
        );
        rows
    }

    fn first_id(unit: &Unit) -> i32 {
        unit.pieces()[0][0].register_id
    }

    fn settings(dir: Option<&std::path::Path>, spool_max: Option<u64>) -> BatchSettings {
        BatchSettings {
            max_rows: 10,
            spool_after: 20,
            memory_max: 50,
            spool_dir: dir.map(|d| d.join("spool")),
            spool_max,
            ..BatchSettings::default()
        }
    }

    #[test]
    fn beyond_spool_after_the_oldest_batches_go_to_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let stats = HistoryStats::default();
        let mut p = Pending::open(&settings(Some(dir.path()), None), &stats);
        for b in 0..5 {
            p.push(batch(b * 10, 10));
            p.make_room(0, &stats);
        }
        assert_eq!(p.backlog.rows, 20);
        assert_eq!(stats.rows_spooled.load(Ordering::Relaxed), 30);
        assert_eq!(stats.rows_lost.load(Ordering::Relaxed), 0);
        assert!(stats.spool_bytes.load(Ordering::Relaxed) > 0);
        // The spool's oldest first, then memory and spool take turns.
        let order: Vec<i32> = std::iter::from_fn(|| p.next_unit(10, &stats).unwrap())
            .map(|u| first_id(&u))
            .collect();
        assert_eq!(order, [0, 30, 10, 40, 20]);
        assert!(p.is_empty());
        assert_eq!(stats.spool_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn memory_batches_are_joined_up_to_the_cap_into_one_write() {
        let stats = HistoryStats::default();
        let mut p = Pending::open(&settings(None, None), &stats);
        for b in 0..5 {
            p.push(batch(b * 10, 10));
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| p.next_unit(30, &stats).unwrap())
            .map(|u| u.len())
            .collect();
        assert_eq!(sizes, [30, 20]);
    }

    #[test]
    fn a_full_spool_keeps_rows_in_memory_up_to_the_bound_then_drops_the_oldest_counted() {
        let dir = tempfile::tempdir().unwrap();
        let stats = HistoryStats::default();
        // Room for two records of ten rows (352 bytes each), not three.
        let mut p = Pending::open(&settings(Some(dir.path()), Some(720)), &stats);
        for b in 0..5 {
            p.push(batch(b * 10, 10));
            p.make_room(0, &stats);
        }
        assert_eq!(stats.rows_spooled.load(Ordering::Relaxed), 20);
        assert!(p.spool_down.is_some(), "the spool refused the third record");
        assert_eq!(p.backlog.rows, 30);
        // Memory takes up to memory_max (50) while the spool is full ...
        for b in 5..7 {
            p.push(batch(b * 10, 10));
            p.make_room(0, &stats);
        }
        assert_eq!(p.backlog.rows, 50);
        assert_eq!(stats.rows_lost.load(Ordering::Relaxed), 0);
        assert!(stats.snapshot(0).problems(chrono::Utc::now()).is_empty());
        // ... and past it the oldest are dropped, counted.
        p.push(batch(70, 10));
        p.make_room(0, &stats);
        assert_eq!(p.backlog.rows, 50);
        assert_eq!(stats.rows_lost.load(Ordering::Relaxed), 10);
        assert_eq!(
            p.backlog.batches.front().unwrap().pieces()[0][0].register_id,
            30
        );
        let problems = stats.snapshot(0).problems(chrono::Utc::now());
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("history: losing readings: 10 lost")),
            "{problems:?}"
        );

        // Once the spool's records are replayed it has room again, and when
        // its retry is due it takes the oldest of memory.
        let mut order = Vec::new();
        for _ in 0..3 {
            let unit = p.next_unit(10, &stats).unwrap().unwrap();
            order.push(first_id(&unit));
            p.written(&unit, &stats);
        }
        assert_eq!(order, [0, 30, 10], "spool and memory take turns");
        assert_eq!(stats.spool_bytes.load(Ordering::Relaxed), 0);
        p.make_room(0, &stats);
        assert_eq!(p.backlog.rows, 40, "not yet: the retry is not due");
        p.spool_down = Some(Instant::now());
        p.make_room(0, &stats);
        assert!(p.spool_down.is_none(), "the spool took records again");
        assert_eq!(p.backlog.rows, 20);
        assert_eq!(stats.rows_spooled.load(Ordering::Relaxed), 40);
        assert_eq!(stats.rows_lost.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn without_a_spool_memory_holds_up_to_its_bound() {
        let stats = HistoryStats::default();
        let mut p = Pending::open(&settings(None, None), &stats);
        for b in 0..5 {
            p.push(batch(b * 10, 10));
            p.make_room(0, &stats);
        }
        assert_eq!(
            (p.backlog.rows, stats.rows_lost.load(Ordering::Relaxed)),
            (50, 0)
        );
        // A unit in flight counts against the bound too.
        p.make_room(15, &stats);
        assert_eq!(
            (p.backlog.rows, stats.rows_lost.load(Ordering::Relaxed)),
            (30, 20)
        );
    }

    #[test]
    fn a_unit_that_failed_is_first_in_line_again() {
        let stats = HistoryStats::default();
        let mut p = Pending::open(&settings(None, None), &stats);
        p.push(batch(0, 10));
        p.push(batch(10, 10));
        let unit = p.next_unit(10, &stats).unwrap().unwrap();
        p.put_back(unit);
        assert_eq!(first_id(&p.next_unit(10, &stats).unwrap().unwrap()), 0);
    }
}
