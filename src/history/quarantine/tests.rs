//! The splitting against a store that refuses chosen registers, so every
//! write and every quarantined row can be checked.

use std::collections::HashSet;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::*;
use crate::history::retention::Tiers;
use crate::history::rollup::{Horizon, Pass, Tier};
use crate::history::store::{BucketAggregate, Span, StoredReading};
use crate::reading::Quality;

/// Stores rows, refusing (as a data error) every write holding a register
/// of `refused`, and answering every write with a lost connection after
/// `cut_after` writes.
#[derive(Default)]
struct Picky {
    refused: HashSet<i32>,
    quarantine_refuses: bool,
    cut_after: Option<usize>,
    stored: Mutex<Vec<i32>>,
    quarantined: Mutex<Vec<(i32, String)>>,
    writes: Mutex<usize>,
}

fn data_error(what: &str) -> anyhow::Error {
    anyhow::Error::from(sqlx::Error::Encode(what.to_string().into())).context("cannot write")
}

#[async_trait]
impl HistoryStore for Picky {
    async fn write(&self, pieces: &[&[Row]]) -> anyhow::Result<u64> {
        let mut writes = self.writes.lock().unwrap();
        *writes += 1;
        if self.cut_after.is_some_and(|n| *writes > n) {
            return Err(anyhow::Error::from(sqlx::Error::PoolTimedOut));
        }
        let rows: Vec<&Row> = pieces.iter().flat_map(|p| p.iter()).collect();
        if let Some(bad) = rows.iter().find(|r| self.refused.contains(&r.register_id)) {
            return Err(data_error(&format!("register {} refused", bad.register_id)));
        }
        self.stored
            .lock()
            .unwrap()
            .extend(rows.iter().map(|r| r.register_id));
        Ok(rows.len() as u64)
    }
    async fn quarantine(&self, rejected: &[Rejected<'_>]) -> anyhow::Result<()> {
        if self.quarantine_refuses {
            return Err(data_error("the quarantine refuses too"));
        }
        self.quarantined.lock().unwrap().extend(
            rejected
                .iter()
                .map(|r| (r.row.register_id, r.error.to_string())),
        );
        Ok(())
    }
    async fn latest(&self, _: i32) -> sqlx::Result<Option<StoredReading>> {
        unreachable!("the writer only writes and quarantines")
    }
    async fn range(&self, _: &Span) -> sqlx::Result<Vec<StoredReading>> {
        unreachable!("the writer only writes and quarantines")
    }
    async fn buckets(&self, _: &Span, _: Duration) -> sqlx::Result<Vec<BucketAggregate>> {
        unreachable!("the writer only writes and quarantines")
    }
    async fn delete_before(&self, _: Option<Tier>, _: DateTime<Utc>, _: i64) -> sqlx::Result<u64> {
        unreachable!("the writer only writes and quarantines")
    }
    async fn set_retention_policy(&self, _: &Tiers) -> anyhow::Result<bool> {
        unreachable!("the writer only writes and quarantines")
    }
    async fn refresh_rollups(&self, _: Horizon) -> anyhow::Result<Option<Pass>> {
        unreachable!("the writer only writes and quarantines")
    }
    async fn rollup_watermark(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        unreachable!("the writer only writes and quarantines")
    }
    async fn rollup_buckets(
        &self,
        _: &Span,
        _: Tier,
        _: Duration,
    ) -> sqlx::Result<Vec<BucketAggregate>> {
        unreachable!("the writer only writes and quarantines")
    }

    async fn background_jobs(
        &self,
    ) -> anyhow::Result<Option<Vec<crate::history::jobs::JobHealth>>> {
        unreachable!("the writer only writes and quarantines")
    }
}

/// Rows with register ids 0..n, in pieces of `piece` rows.
fn batch(n: i32, piece: usize) -> Vec<Vec<Row>> {
    let ts = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
    let rows: Vec<Row> = (0..n)
        .map(|i| Row::new(ts, i, 1, Some(f64::from(i)), None, Quality::Good, None))
        .collect();
    rows.chunks(piece).map(<[Row]>::to_vec).collect()
}

fn pieces(b: &[Vec<Row>]) -> Vec<&[Row]> {
    b.iter().map(Vec::as_slice).collect()
}

fn picky(refused: &[i32]) -> Arc<Picky> {
    Arc::new(Picky {
        refused: refused.iter().copied().collect(),
        ..Picky::default()
    })
}

#[tokio::test]
async fn a_healthy_batch_is_written_in_one_go() {
    let store = picky(&[]);
    let stats = HistoryStats::default();
    let b = batch(100, 7);
    let w = Guarded::new(store.clone(), None)
        .write(&pieces(&b), &stats)
        .await
        .unwrap();
    assert_eq!(
        w,
        Written {
            new: 100,
            rejected: 0
        }
    );
    assert_eq!(*store.writes.lock().unwrap(), 1);
}

#[tokio::test]
async fn refused_rows_are_found_quarantined_and_the_rest_written() {
    let store = picky(&[3, 50, 51, 99]);
    let stats = HistoryStats::default();
    let b = batch(100, 7);
    let w = Guarded::new(store.clone(), None)
        .write(&pieces(&b), &stats)
        .await
        .unwrap();
    assert_eq!(
        w,
        Written {
            new: 96,
            rejected: 4
        }
    );
    let mut stored = store.stored.lock().unwrap().clone();
    stored.sort_unstable();
    let want: Vec<i32> = (0..100).filter(|i| ![3, 50, 51, 99].contains(i)).collect();
    assert_eq!(stored, want, "every other row once");
    let q = store.quarantined.lock().unwrap().clone();
    assert_eq!(
        q.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [3, 50, 51, 99]
    );
    // Each row carries the error of its own refusal.
    assert!(q[1].1.ends_with("register 50 refused"), "{}", q[1].1);
    assert_eq!(stats.rows_rejected.load(Ordering::Relaxed), 4);
    assert_eq!(stats.rows_lost.load(Ordering::Relaxed), 0);
    // Bisection, not one write per row.
    assert!(*store.writes.lock().unwrap() < 60);
}

#[tokio::test]
async fn a_batch_refused_whole_is_quarantined_whole() {
    let store = picky(&[0, 1, 2]);
    let stats = HistoryStats::default();
    let b = batch(3, 2);
    let w = Guarded::new(store.clone(), None)
        .write(&pieces(&b), &stats)
        .await
        .unwrap();
    assert_eq!(
        w,
        Written {
            new: 0,
            rejected: 3
        }
    );
    assert_eq!(store.quarantined.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_lost_connection_while_splitting_hands_the_batch_back() {
    let store = Arc::new(Picky {
        refused: [5].into(),
        // The whole batch, its first half (refused), its second half
        // (written), then the link goes.
        cut_after: Some(3),
        ..Picky::default()
    });
    let stats = HistoryStats::default();
    let b = batch(16, 16);
    let e = Guarded::new(store.clone(), None)
        .write(&pieces(&b), &stats)
        .await
        .unwrap_err();
    assert_eq!(classify(&e), Failure::Retryable, "{e:#}");
    assert!(store.quarantined.lock().unwrap().is_empty());
    assert_eq!(stats.rows_rejected.load(Ordering::Relaxed), 0);
    // The half written before the cut is counted; the retry skips it.
    assert_eq!(stats.rows_written.load(Ordering::Relaxed), 8);
}

#[tokio::test]
async fn when_the_quarantine_refuses_too_the_rows_go_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data").join(REJECTED_FILE);
    let store = Arc::new(Picky {
        refused: [2].into(),
        quarantine_refuses: true,
        ..Picky::default()
    });
    let stats = HistoryStats::default();
    let b = batch(4, 4);
    let guarded = Guarded::new(store.clone(), Some(file.clone()));
    for _ in 0..2 {
        let w = guarded.write(&pieces(&b), &stats).await.unwrap();
        assert_eq!(w.rejected, 1);
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "appended, one line a row: {text}");
    assert_eq!(lines[0]["register_id"], 2);
    assert_eq!(lines[0]["value"], 2.0);
    assert_eq!(lines[0]["quality"], "good");
    assert_eq!(lines[0]["ts"], "2023-11-14T22:13:20.000000Z");
    let text_of = |k: &str| lines[0][k].as_str().unwrap().to_string();
    assert!(text_of("error").ends_with("register 2 refused"));
    assert!(text_of("quarantine_error").ends_with("the quarantine refuses too"));
    assert_eq!(stats.rows_rejected.load(Ordering::Relaxed), 2);
    assert_eq!(stats.rows_lost.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn rows_nothing_can_keep_are_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let store = Arc::new(Picky {
        refused: [1].into(),
        quarantine_refuses: true,
        ..Picky::default()
    });
    for file in [Some(not_a_dir.join(REJECTED_FILE)), None] {
        let stats = HistoryStats::default();
        let b = batch(4, 4);
        let w = Guarded::new(store.clone(), file)
            .write(&pieces(&b), &stats)
            .await
            .unwrap();
        assert_eq!(
            w,
            Written {
                new: 3,
                rejected: 1
            }
        );
        assert_eq!(stats.rows_rejected.load(Ordering::Relaxed), 1);
        assert_eq!(stats.rows_lost.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn ranges_cross_pieces() {
    let b = batch(10, 3);
    let p = pieces(&b);
    let ids = |r: Vec<&[Row]>| -> Vec<i32> {
        r.iter()
            .flat_map(|s| s.iter())
            .map(|r| r.register_id)
            .collect()
    };
    assert_eq!(ids(range(&p, 2, 7)), [2, 3, 4, 5, 6]);
    assert_eq!(ids(range(&p, 9, 10)), [9]);
    assert_eq!(ids(range(&p, 0, 10)), (0..10).collect::<Vec<_>>());
    assert_eq!(row_at(&p, 4).register_id, 4);
}

#[test]
fn refusals_are_logged_at_most_once_a_minute_but_the_first_loss_at_once() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut log = LogState::default();
    assert_eq!(log.note(2, false, at(0)), Some((2, 1)));
    assert_eq!(log.note(3, false, at(10)), None);
    assert_eq!(log.note(1, true, at(20)), Some((4, 2)), "first loss");
    assert_eq!(log.note(1, true, at(30)), None, "later losses wait");
    assert_eq!(log.note(5, false, at(79)), None);
    assert_eq!(
        log.note(1, false, at(80)),
        Some((7, 3)),
        "a minute after the last line"
    );
}
