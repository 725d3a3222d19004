//! Counters and histograms the running service keeps about itself, read by
//! `/metrics` and by the shutdown summary.
//!
//! They are plain atomics owned by the service instance rather than a global
//! metrics recorder: several services run in one test process, and each must
//! report only its own numbers. Recording is a few relaxed atomic adds, cheap
//! enough for every Modbus request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets: from well under
/// a millisecond (a local device, the schedule's lateness) to the longest
/// timeouts people configure.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram with fixed bounds, in the shape Prometheus expects.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus the last for everything above the last bound.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(LATENCY_BOUNDS)
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn record(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < s);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The counts now, cumulative per bucket.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), total));
        }
        HistogramSnapshot {
            buckets,
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// A histogram's counts at one moment, in the shape Prometheus expects.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)` per bucket, the last
    /// bound being +Inf.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of everything recorded, in seconds.
    pub sum_s: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |b| b.1)
    }
}

/// Sub-buckets per power of two in a [`Distribution`]: values are kept to
/// within 1/32 (about 3 %).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values from 2^40 µs (about 12 days) up share the last bucket.
const TOP_BIT: u32 = 40;
const DIST_BUCKETS: usize = (2 * SUB + (TOP_BIT as u64 - SUB_BITS as u64 - 1) * SUB) as usize;

/// A distribution of durations over a whole run, for exact-enough quantiles:
/// microseconds in log-linear buckets (every value below 64 µs exactly, above
/// that within 3 %), as in HdrHistogram. Recording is two relaxed atomic
/// operations, with no lock and no allocation, so it can sit on every poll;
/// it takes 9 KiB whatever the run's length. Two snapshots subtract, which
/// gives the quantiles of a time window (what `regpoll-bench` reports).
#[derive(Debug)]
pub struct Distribution {
    counts: Box<[AtomicU64]>,
    max_us: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Distribution {
    fn default() -> Self {
        Self {
            counts: (0..DIST_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

/// The bucket of a value in microseconds.
fn bucket_of(us: u64) -> usize {
    if us < 2 * SUB {
        return us as usize;
    }
    let top = (63 - us.leading_zeros()).min(TOP_BIT - 1);
    let us = us.min((1 << (top + 1)) - 1);
    let sub = (us >> (top - SUB_BITS)) & (SUB - 1);
    (2 * SUB + u64::from(top - SUB_BITS - 1) * SUB + sub) as usize
}

/// The largest value (µs) that falls into bucket `i`.
fn bucket_top(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let top = (i - 2 * SUB) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (i - 2 * SUB) % SUB;
    let width = 1u64 << (top - u64::from(SUB_BITS));
    ((SUB + sub) << (top - u64::from(SUB_BITS))) + width - 1
}

impl Distribution {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The given quantiles (0.5 = median, 1.0 = max) of everything recorded,
    /// or `None` before the first value.
    pub fn quantiles(&self, qs: &[f64]) -> Option<Vec<Duration>> {
        self.snapshot().quantiles(qs)
    }

    pub fn snapshot(&self) -> DistributionSnapshot {
        DistributionSnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            max_us: self.max_us.load(Ordering::Relaxed),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// The counts of a [`Distribution`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct DistributionSnapshot {
    counts: Vec<u64>,
    max_us: u64,
    sum_us: u64,
}

impl DistributionSnapshot {
    /// A snapshot of nothing recorded.
    pub fn empty() -> DistributionSnapshot {
        DistributionSnapshot {
            counts: vec![0; DIST_BUCKETS],
            max_us: 0,
            sum_us: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Quantiles, each the top of its bucket (so never under the truth by
    /// more than a bucket width), capped at the largest value recorded.
    pub fn quantiles(&self, qs: &[f64]) -> Option<Vec<Duration>> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        Some(
            qs.iter()
                .map(|&q| {
                    // The rank of the q-quantile: the smallest value with at
                    // least q of all values at or below it.
                    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
                    let mut seen = 0;
                    let at = self
                        .counts
                        .iter()
                        .position(|&c| {
                            seen += c;
                            seen >= rank
                        })
                        .unwrap_or(self.counts.len() - 1);
                    Duration::from_micros(bucket_top(at).min(self.max_us))
                })
                .collect(),
        )
    }

    /// What was recorded after `earlier` (a snapshot of the same
    /// distribution). The maximum is the top of the highest bucket that
    /// grew, capped at the overall maximum.
    pub fn since(&self, earlier: &DistributionSnapshot) -> DistributionSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .zip(&earlier.counts)
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        let max_us = counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(0, |i| bucket_top(i).min(self.max_us));
        DistributionSnapshot {
            counts,
            max_us,
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }

    /// The same counts in a Prometheus histogram's buckets (`bounds` in
    /// seconds, then +Inf), so one record of a measurement serves both
    /// quantiles and `/metrics`. A bucket of the distribution counts under the
    /// first bound at or above its top: a value is never counted under a
    /// bound it exceeds, and one up to 3 % under a bound (the distribution's
    /// resolution) may be counted under the next.
    pub fn histogram(&self, bounds: &[f64]) -> HistogramSnapshot {
        let mut per_bound = vec![0u64; bounds.len() + 1];
        for (i, &c) in self.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let top_s = bucket_top(i) as f64 / 1e6;
            per_bound[bounds.partition_point(|&b| b < top_s)] += c;
        }
        let mut total = 0;
        let buckets = per_bound
            .iter()
            .enumerate()
            .map(|(i, c)| {
                total += c;
                (bounds.get(i).copied().unwrap_or(f64::INFINITY), total)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            sum_s: self.sum_us as f64 / 1e6,
        }
    }

    /// `[[bucket top in µs, count], …]` of the non-empty buckets, plus max
    /// and sum: the JSON form `/api/stats` serves.
    pub fn to_json(&self) -> serde_json::Value {
        let buckets: Vec<[u64; 2]> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| [bucket_top(i), *c])
            .collect();
        serde_json::json!({
            "count": self.count(),
            "sum_us": self.sum_us,
            "max_us": self.max_us,
            "buckets": buckets,
        })
    }

    /// Reads the form [`Self::to_json`] writes.
    pub fn from_json(v: &serde_json::Value) -> Option<DistributionSnapshot> {
        let mut counts = vec![0; DIST_BUCKETS];
        for b in v.get("buckets")?.as_array()? {
            let top = b.get(0)?.as_u64()?;
            counts[bucket_of(top)] += b.get(1)?.as_u64()?;
        }
        Some(DistributionSnapshot {
            counts,
            max_us: v.get("max_us")?.as_u64()?,
            sum_us: v.get("sum_us")?.as_u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_buckets_tile_the_range_within_three_percent() {
        let mut prev_top = None;
        for i in 0..DIST_BUCKETS {
            let top = bucket_top(i);
            assert_eq!(bucket_of(top), i, "top of bucket {i}");
            if let Some(p) = prev_top {
                assert_eq!(bucket_of(p + 1), i, "bucket {i} starts after {p}");
                // Width relative to the bucket's values: at most 1/32.
                assert!(
                    (top - p) as f64 <= (p + 1) as f64 / 32.0 + 1.0,
                    "{i}: {p}..{top}"
                );
            }
            prev_top = Some(top);
        }
        assert_eq!(bucket_of(u64::MAX), DIST_BUCKETS - 1);
    }

    #[test]
    fn distribution_quantiles_and_windows() {
        let d = Distribution::default();
        assert_eq!(d.quantiles(&[0.5]), None);
        for us in 1..=1000u64 {
            d.record(Duration::from_micros(us));
        }
        let q = d.quantiles(&[0.5, 0.99, 1.0]).unwrap();
        let us = |d: Duration| d.as_micros() as f64;
        assert!((us(q[0]) - 500.0).abs() <= 500.0 / 32.0, "{q:?}");
        assert!((us(q[1]) - 990.0).abs() <= 990.0 / 32.0, "{q:?}");
        assert_eq!(q[2], Duration::from_micros(1000));

        let before = d.snapshot();
        for _ in 0..100 {
            d.record(Duration::from_millis(7));
        }
        let window = d.snapshot().since(&before);
        assert_eq!(window.count(), 100);
        let q = window.quantiles(&[0.5, 1.0]).unwrap();
        assert!((us(q[0]) - 7000.0).abs() <= 7000.0 / 32.0, "{q:?}");
        let back = DistributionSnapshot::from_json(&window.to_json()).unwrap();
        assert_eq!(back, window);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(1)); // on the bound: le="0.001"
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(1));
        let HistogramSnapshot {
            buckets,
            sum_s: sum,
        } = h.snapshot();
        assert_eq!(buckets[0], (0.001, 2));
        assert_eq!(buckets[1], (0.01, 3));
        assert_eq!(buckets[2].1, 4);
        assert!(buckets[2].0.is_infinite());
        assert!((sum - 1.0065).abs() < 1e-9, "{sum}");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn a_distribution_renders_as_the_histogram_of_its_values() {
        let d = Distribution::default();
        let h = Histogram::new(&[0.001, 0.01]);
        for us in [500, 900, 5000, 9000, 1_000_000] {
            d.record(Duration::from_micros(us));
            h.record(Duration::from_micros(us));
        }
        let from_d = d.snapshot().histogram(&[0.001, 0.01]);
        let direct = h.snapshot();
        assert_eq!(from_d.buckets, direct.buckets);
        assert!((from_d.sum_s - direct.sum_s).abs() < 1e-6, "{from_d:?}");
        assert_eq!(from_d.count(), 5);
        // 1 ms exactly shares its distribution bucket (992-1007 µs) with
        // values above 1 ms, so it counts under the next bound: never under
        // a bound a value of its bucket exceeds.
        d.record(Duration::from_millis(1));
        let buckets = d.snapshot().histogram(&[0.001, 0.01]).buckets;
        assert_eq!(buckets[0], (0.001, 2));
        assert_eq!(buckets[1], (0.01, 5));
        // Nothing recorded: every bucket empty, +Inf last.
        let empty = Distribution::default().snapshot().histogram(&[0.5]);
        assert_eq!(empty.buckets, vec![(0.5, 0), (f64::INFINITY, 0)]);
    }
}
