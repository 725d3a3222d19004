//! What the endpoints' requests did: counts and latency per endpoint, and
//! the kinds of error, as metric labels.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::ReadError;
use crate::telemetry::{Histogram, HistogramSnapshot};

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
            // Never recorded: no request went out (see `Session::read`).
            ReadError::Demoted { .. } => ErrorKind::Timeout,
            ReadError::Fenced => ErrorKind::Connect,
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
    /// Connections opened: one, unless the endpoint or its link broke.
    pub connects: AtomicU64,
    /// Units behind the endpoint demoted now (a gauge).
    pub demoted: AtomicU64,
    /// Answers that came after their request's timeout, recognised by their
    /// transaction id and dropped.
    pub late_replies: AtomicU64,
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

    /// Every endpoint's counts now, in `host:port` order.
    pub fn snapshot(&self) -> Vec<EndpointSnapshot> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(endpoint, s)| EndpointSnapshot {
                endpoint: endpoint.clone(),
                requests: s.requests.load(Ordering::Relaxed),
                errors: ErrorKind::ALL.map(|k| s.errors(k)),
                latency: s.latency.snapshot(),
                connects: s.connects.load(Ordering::Relaxed),
                demoted: s.demoted.load(Ordering::Relaxed),
                late_replies: s.late_replies.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// One endpoint's counts at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    /// `host:port`.
    pub endpoint: String,
    pub requests: u64,
    /// Failed requests by kind, in [`ErrorKind::ALL`]'s order.
    pub errors: [u64; ErrorKind::ALL.len()],
    pub latency: HistogramSnapshot,
    pub connects: u64,
    /// Units demoted now.
    pub demoted: u64,
    pub late_replies: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
