//! Rollups: `register_readings_1m` and `register_readings_hourly`, the
//! aggregates (avg, min, max, count, last) of each register per minute and
//! per hour, which answer bucketed queries over long ranges without reading
//! every raw row, and outlive the raw rows (each tier has its own retention).
//!
//! On TimescaleDB they are continuous aggregates (`db.rs` creates them) that
//! answer in real time themselves. On plain PostgreSQL and SQLite they are
//! tables kept here: every history write records its batch's time range in
//! `rollup_invalidations` in the same transaction as the rows; [`refresh`]
//! takes those ranges, merges them by minute, recomputes the touched minutes
//! from the raw rows and the touched hours from the minutes, and moves the
//! watermark. A query ([`read`]) answers the buckets before the watermark
//! from the fitting rollup and the rest (and any part of a bucket the rollup
//! cannot cover) from the raw rows, then merges the parts.

use std::time::Duration;

use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};

use super::maintenance::{Job, Runs};
use super::store::{self, BucketAggregate, HistoryStore, Span};
use crate::db::Db;

/// Most minutes of history one refresh transaction recomputes: a spool
/// replayed after a week's outage is refreshed a day at a time, so no
/// transaction holds its locks (and the rows it writes) for long.
pub const SLICE: Duration = Duration::from_secs(86_400);

/// The rollup tables, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Minute,
    Hour,
}

impl Tier {
    pub fn width(self) -> Duration {
        match self {
            Tier::Minute => Duration::from_secs(60),
            Tier::Hour => Duration::from_secs(3600),
        }
    }

    pub fn table(self) -> &'static str {
        match self {
            Tier::Minute => "register_readings_1m",
            Tier::Hour => "register_readings_hourly",
        }
    }

    fn delta(self) -> TimeDelta {
        TimeDelta::from_std(self.width()).expect("a minute or an hour")
    }
}

/// The rollup whose buckets make up buckets of `width` exactly: the hourly
/// one for whole hours, the 1-minute one for whole minutes, none otherwise
/// (those are aggregated from the raw rows).
pub fn tier_for(width: Duration) -> Option<Tier> {
    [Tier::Hour, Tier::Minute]
        .into_iter()
        .find(|t| !width.is_zero() && width.as_nanos().is_multiple_of(t.width().as_nanos()))
}

/// How far back each refresh may recompute: a minute is recomputed from
/// raw rows only while they are all kept, an hour from minutes likewise
/// (else the refresh would replace a rollup by the little that is left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Horizon {
    /// Retention of the raw rows (`None`: kept forever).
    pub raw: Option<Duration>,
    /// Retention of the 1-minute rollup.
    pub minute: Option<Duration>,
}

/// How far back TimescaleDB's refresh policy of `tier` reaches, given its
/// source's retention (`None`: the source keeps everything, so the window
/// is open). TimescaleDB's documentation asks for a start offset smaller
/// than the source's `drop_after`: one bucket less keeps the window's
/// bucket-aligned start off the dropped rows. It still spans the two
/// buckets a refresh window needs past the end offset (one bucket).
pub fn refresh_start(source_keep: Option<Duration>, tier: Tier) -> Option<Duration> {
    source_keep.map(|k| k.saturating_sub(tier.width()).max(tier.width() * 3))
}

/// A half-open time range `[from, to)` of whole buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// What one refresh transaction does with the invalidations it took.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Minutes to recompute from the raw rows now.
    pub minutes: Vec<Range>,
    /// Hours to recompute from the minutes now.
    pub hours: Vec<Range>,
    /// Minutes left for the next transaction (put back as invalidations).
    pub later: Vec<Range>,
}

/// What one refresh transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// Rollup rows written (1-minute and hourly).
    pub rows: u64,
    /// Whether invalidations were put back for another pass.
    pub more: bool,
}

fn floor(t: DateTime<Utc>, tier: Tier) -> DateTime<Utc> {
    t.duration_trunc(tier.delta()).unwrap_or(t)
}

fn ceil(t: DateTime<Utc>, tier: Tier) -> DateTime<Utc> {
    let f = floor(t, tier);
    if f == t { t } else { f + tier.delta() }
}

/// The minutes touched by invalidations `[lo, hi]` (inclusive row
/// timestamps), merged where they overlap or touch, oldest first. Ranges
/// apart stay apart: a row replayed from last week and today's rows make
/// two small ranges, never one that spans the week.
pub fn merge(invalidations: &[(DateTime<Utc>, DateTime<Utc>)]) -> Vec<Range> {
    let mut ranges: Vec<Range> = invalidations
        .iter()
        .map(|&(lo, hi)| Range {
            from: floor(lo.min(hi), Tier::Minute),
            to: floor(lo.max(hi), Tier::Minute) + Tier::Minute.delta(),
        })
        .collect();
    ranges.sort_by_key(|r| r.from);
    let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.from <= last.to => last.to = last.to.max(r.to),
            _ => merged.push(r),
        }
    }
    merged
}

/// Splits the merged minutes into this transaction's share (at most
/// `slice` of them, oldest first) and the rest, and finds the hours the
/// share touches. Minutes older than the raw retention and hours older than
/// the 1-minute retention are left alone (see [`Horizon`]).
pub fn plan(ranges: &[Range], now: DateTime<Utc>, horizon: Horizon, slice: Duration) -> Plan {
    let since = |keep: Option<Duration>, tier| {
        keep.and_then(|k| TimeDelta::from_std(k).ok())
            .and_then(|k| now.checked_sub_signed(k))
            .map(|t| ceil(t, tier))
    };
    let raw_since = since(horizon.raw, Tier::Minute);
    let minute_since = since(horizon.minute, Tier::Hour);
    let mut budget = TimeDelta::from_std(slice).unwrap_or(TimeDelta::MAX);
    let mut out = Plan::default();
    for r in ranges {
        let from = raw_since.map_or(r.from, |s| r.from.max(s));
        if from >= r.to {
            continue;
        }
        if budget <= TimeDelta::zero() {
            out.later.push(Range { from, to: r.to });
            continue;
        }
        let cut = floor(from + budget, Tier::Minute).max(from + Tier::Minute.delta());
        if cut < r.to {
            out.minutes.push(Range { from, to: cut });
            out.later.push(Range {
                from: cut,
                to: r.to,
            });
            budget = TimeDelta::zero();
        } else {
            out.minutes.push(Range { from, to: r.to });
            budget -= r.to - from;
        }
    }
    let mut hours: Vec<Range> = Vec::new();
    for m in &out.minutes {
        let from = floor(m.from, Tier::Hour);
        let from = minute_since.map_or(from, |s| from.max(s));
        let to = ceil(m.to, Tier::Hour);
        if from >= to {
            continue;
        }
        match hours.last_mut() {
            Some(last) if from <= last.to => last.to = last.to.max(to),
            _ => hours.push(Range { from, to }),
        }
    }
    out.hours = hours;
    out
}

/// Runs refresh passes until no invalidation is left over; returns the
/// rollup rows written, or `None` when the database keeps its rollups
/// itself (TimescaleDB).
pub async fn refresh(db: &Db, horizon: Horizon) -> anyhow::Result<Option<u64>> {
    let store = store::for_db(db);
    let mut rows = 0;
    loop {
        match store.refresh_rollups(horizon).await? {
            None => return Ok(None),
            Some(pass) => {
                rows += pass.rows;
                if !pass.more {
                    return Ok(Some(rows));
                }
            }
        }
    }
}

/// Refreshes the rollups every `every` until aborted (at shutdown),
/// recording each run in `runs`. Stops at once on TimescaleDB, whose
/// refresh policies keep the continuous aggregates.
pub async fn refresh_loop(db: Db, every: Duration, horizon: Horizon, runs: std::sync::Arc<Runs>) {
    loop {
        let started = Utc::now();
        match refresh(&db, horizon).await {
            Ok(None) => return,
            Ok(Some(rows)) => runs.record(Job::RollupRefresh, started, Ok(rows)),
            Err(e) => {
                let text = crate::db::error_text(e.as_ref());
                tracing::warn!(error = %text, "cannot refresh the rollups; will retry");
                runs.record(Job::RollupRefresh, started, Err(text));
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Buckets of `width` (a whole number of `tier` buckets) of the span:
/// from the rollup before `watermark` (`None`: the rollup answers in real
/// time itself), from the raw rows after it and in the partial rollup
/// buckets at either end of the span.
pub async fn read(
    store: &dyn HistoryStore,
    span: &Span,
    tier: Tier,
    width: Duration,
    watermark: Option<DateTime<Utc>>,
) -> sqlx::Result<Vec<BucketAggregate>> {
    let from = ceil(span.from, tier);
    let to = floor(watermark.map_or(span.to, |w| w.min(span.to)), tier);
    if from >= to {
        return store.buckets(span, width).await;
    }
    let mut parts = Vec::new();
    if span.from < from {
        parts.extend(store.buckets(&Span { to: from, ..*span }, width).await?);
    }
    let middle = Span { from, to, ..*span };
    parts.extend(store.rollup_buckets(&middle, tier, width).await?);
    if to < span.to {
        parts.extend(store.buckets(&Span { from: to, ..*span }, width).await?);
    }
    let mut merged = reaggregate(parts);
    merged.truncate(usize::try_from(span.limit).unwrap_or(usize::MAX));
    Ok(merged)
}

/// Merges aggregates of the same bucket (given oldest first, as the parts
/// of [`read`] are): the average weighted by the counts, the smallest min,
/// the largest max, the counts summed.
pub fn reaggregate(parts: Vec<BucketAggregate>) -> Vec<BucketAggregate> {
    let mut out: Vec<BucketAggregate> = Vec::with_capacity(parts.len());
    for p in parts {
        match out.last_mut() {
            Some(last) if last.start == p.start => {
                let count = last.count + p.count;
                if count > 0 {
                    last.avg =
                        (last.avg * last.count as f64 + p.avg * p.count as f64) / count as f64;
                }
                last.min = last.min.min(p.min);
                last.max = last.max.max(p.max);
                last.count = count;
            }
            _ => out.push(p),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn range(from: &str, to: &str) -> Range {
        Range {
            from: at(from),
            to: at(to),
        }
    }

    #[test]
    fn a_width_reads_the_coarsest_rollup_that_divides_it() {
        let s = Duration::from_secs;
        assert_eq!(tier_for(s(60)), Some(Tier::Minute));
        assert_eq!(tier_for(s(300)), Some(Tier::Minute));
        assert_eq!(tier_for(s(5400)), Some(Tier::Minute)); // 90 minutes
        assert_eq!(tier_for(s(3600)), Some(Tier::Hour));
        assert_eq!(tier_for(s(86_400)), Some(Tier::Hour));
        assert_eq!(tier_for(s(7)), None);
        assert_eq!(tier_for(s(90)), None);
        assert_eq!(tier_for(Duration::from_millis(60_500)), None);
        assert_eq!(tier_for(Duration::ZERO), None);
    }

    #[test]
    fn overlapping_and_touching_minutes_merge_but_distant_ones_do_not() {
        let inv = |lo: &str, hi: &str| (at(lo), at(hi));
        let merged = merge(&[
            inv("2026-12-01T10:00:10Z", "2026-12-01T10:00:50Z"),
            inv("2026-12-01T10:01:00Z", "2026-12-01T10:01:01Z"), // the next minute: touches
            inv("2026-11-24T03:00:00Z", "2026-11-24T03:00:00Z"), // a week before
            inv("2026-12-01T10:00:30Z", "2026-12-01T10:00:40Z"), // inside the first
            inv("2026-12-01T10:03:00Z", "2026-12-01T10:03:59.999999Z"), // a gap of a minute
            inv("2026-12-01T10:03:30Z", "2026-12-01T10:03:10Z"), // written backwards by hand
        ]);
        assert_eq!(
            merged,
            [
                range("2026-11-24T03:00:00Z", "2026-11-24T03:01:00Z"),
                range("2026-12-01T10:00:00Z", "2026-12-01T10:02:00Z"),
                range("2026-12-01T10:03:00Z", "2026-12-01T10:04:00Z"),
            ]
        );
        assert!(merge(&[]).is_empty());
    }

    #[test]
    fn a_long_replay_is_refreshed_a_slice_at_a_time() {
        let now = at("2026-12-05T12:00:00Z");
        let week = range("2026-11-28T00:00:00Z", "2026-12-05T00:00:00Z");
        let p = plan(&[week], now, Horizon::default(), SLICE);
        assert_eq!(
            p.minutes,
            [range("2026-11-28T00:00:00Z", "2026-11-29T00:00:00Z")]
        );
        assert_eq!(p.hours, p.minutes);
        assert_eq!(
            p.later,
            [range("2026-11-29T00:00:00Z", "2026-12-05T00:00:00Z")]
        );
        // Small ranges fit one pass; the hours they touch merge.
        let small = [
            range("2026-12-05T10:58:00Z", "2026-12-05T11:01:00Z"),
            range("2026-12-05T11:30:00Z", "2026-12-05T11:31:00Z"),
        ];
        let p = plan(&small, now, Horizon::default(), SLICE);
        assert_eq!(p.minutes, small);
        assert!(p.later.is_empty());
        assert_eq!(
            p.hours,
            [range("2026-12-05T10:00:00Z", "2026-12-05T12:00:00Z")]
        );
    }

    #[test]
    fn expired_history_is_never_recomputed() {
        let now = at("2026-12-05T12:00:30Z");
        let horizon = Horizon {
            raw: Some(Duration::from_secs(86_400)),
            minute: Some(Duration::from_secs(2 * 86_400)),
        };
        let ranges = [
            range("2026-12-01T00:00:00Z", "2026-12-01T00:05:00Z"), // raw gone
            range("2026-12-04T11:00:00Z", "2026-12-04T13:00:00Z"), // straddles
        ];
        let p = plan(&ranges, now, horizon, SLICE);
        // From the first whole minute whose raw rows are all kept.
        assert_eq!(
            p.minutes,
            [range("2026-12-04T12:01:00Z", "2026-12-04T13:00:00Z")]
        );
        assert_eq!(
            p.hours,
            [range("2026-12-04T12:00:00Z", "2026-12-04T13:00:00Z")]
        );
        // The hour a replayed minute falls in is recomputed only while the
        // minutes of the whole hour are kept.
        let p = plan(
            &ranges[1..],
            at("2026-12-06T11:30:00Z"),
            Horizon {
                raw: None,
                ..horizon
            },
            SLICE,
        );
        assert_eq!(
            p.hours,
            [range("2026-12-04T12:00:00Z", "2026-12-04T13:00:00Z")]
        );
    }

    #[test]
    fn a_refresh_window_stays_inside_its_sources_retention() {
        let day = Duration::from_secs(86_400);
        assert_eq!(refresh_start(None, Tier::Minute), None);
        assert_eq!(
            refresh_start(Some(365 * day), Tier::Minute),
            Some(365 * day - Duration::from_secs(60))
        );
        assert_eq!(
            refresh_start(Some(730 * day), Tier::Hour),
            Some(730 * day - Duration::from_secs(3600))
        );
        // A retention of an hour still leaves the window its two buckets.
        assert_eq!(
            refresh_start(Some(Duration::from_secs(3600)), Tier::Hour),
            Some(Duration::from_secs(3 * 3600))
        );
    }

    fn agg(start: &str, avg: f64, min: f64, max: f64, count: i64) -> BucketAggregate {
        BucketAggregate {
            start: at(start),
            avg,
            min,
            max,
            count,
        }
    }

    #[test]
    fn parts_of_one_bucket_merge_with_a_weighted_average() {
        let merged = reaggregate(vec![
            agg("2026-12-05T10:00:00Z", 1.0, 0.0, 2.0, 3),
            agg("2026-12-05T11:00:00Z", 10.0, 10.0, 10.0, 1),
            agg("2026-12-05T11:00:00Z", 20.0, 15.0, 30.0, 3),
            agg("2026-12-05T12:00:00Z", 5.0, 5.0, 5.0, 1),
        ]);
        assert_eq!(
            merged,
            [
                agg("2026-12-05T10:00:00Z", 1.0, 0.0, 2.0, 3),
                agg("2026-12-05T11:00:00Z", 17.5, 10.0, 30.0, 4),
                agg("2026-12-05T12:00:00Z", 5.0, 5.0, 5.0, 1),
            ]
        );
    }
}
