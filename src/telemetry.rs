//! Counters and histograms the running service keeps about itself, read by
//! `/metrics` and by the shutdown summary.
//!
//! They are plain atomics owned by the service instance rather than a global
//! metrics recorder: several services run in one test process, and each must
//! report only its own numbers. Recording is a few relaxed atomic adds, cheap
//! enough for every Modbus request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::modbus::endpoint::ReadError;

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

    /// `(upper bound, cumulative count)` per bucket, the last bound being
    /// +Inf; plus the sum in seconds.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, f64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            out.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), total));
        }
        (out, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// What went wrong with a Modbus request, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Timeout,
    Connect,
    Exception,
    Transport,
    Protocol,
    ShortResponse,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::Exception,
        ErrorKind::Transport,
        ErrorKind::Protocol,
        ErrorKind::ShortResponse,
    ];

    pub fn of(e: &ReadError) -> Self {
        match e {
            ReadError::Timeout(_) => ErrorKind::Timeout,
            ReadError::Connect(_) | ReadError::ConnectTimeout(_) => ErrorKind::Connect,
            ReadError::Exception(_) => ErrorKind::Exception,
            ReadError::Transport(_) => ErrorKind::Transport,
            ReadError::Protocol(_) => ErrorKind::Protocol,
            ReadError::ShortResponse { .. } => ErrorKind::ShortResponse,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Exception => "exception",
            ErrorKind::Transport => "transport",
            ErrorKind::Protocol => "protocol",
            ErrorKind::ShortResponse => "short_response",
        }
    }
}

/// Requests to one Modbus endpoint (host:port).
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub requests: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Time from sending a request (connecting first when needed) to its answer.
    pub latency: Histogram,
}

impl EndpointStats {
    pub fn record(&self, took: Duration, outcome: Result<(), &ReadError>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latency.record(took);
        if let Err(e) = outcome {
            let i = ErrorKind::ALL
                .iter()
                .position(|k| *k == ErrorKind::of(e))
                .expect("ALL lists every kind");
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        let i = ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("ALL lists every kind");
        self.errors[i].load(Ordering::Relaxed)
    }
}

/// Every endpoint's stats by `host:port`; the fleet adds endpoints as it
/// creates them.
#[derive(Debug, Default)]
pub struct Endpoints(RwLock<BTreeMap<String, Arc<EndpointStats>>>);

impl Endpoints {
    pub fn insert(&self, endpoint: String, stats: Arc<EndpointStats>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(endpoint, stats);
    }

    pub fn snapshot(&self) -> Vec<(String, Arc<EndpointStats>)> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(1)); // on the bound: le="0.001"
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(1));
        let (buckets, sum) = h.cumulative();
        assert_eq!(buckets[0], (0.001, 2));
        assert_eq!(buckets[1], (0.01, 3));
        assert_eq!(buckets[2].1, 4);
        assert!(buckets[2].0.is_infinite());
        assert!((sum - 1.0065).abs() < 1e-9, "{sum}");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn endpoint_stats_count_errors_by_kind() {
        let s = EndpointStats::default();
        s.record(Duration::from_millis(2), Ok(()));
        s.record(
            Duration::from_secs(1),
            Err(&ReadError::Timeout(Duration::from_secs(1))),
        );
        s.record(
            Duration::ZERO,
            Err(&ReadError::Connect("connection refused".into())),
        );
        assert_eq!(s.requests.load(Ordering::Relaxed), 3);
        assert_eq!(s.errors(ErrorKind::Timeout), 1);
        assert_eq!(s.errors(ErrorKind::Connect), 1);
        assert_eq!(s.errors(ErrorKind::Exception), 0);
    }
}
