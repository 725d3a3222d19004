//! An optional record of every request the simulator served: which unit of
//! which endpoint it was addressed to, the connection it came on, and when.
//! It lets a test prove what no client can see from its side, e.g. that two
//! regpoll instances never poll one device at the same time.
//!
//! Off unless asked for ([`Simulator::start_with_log`](super::Simulator::start_with_log)):
//! an endpoint without a log pays one `Option` check per request, since the
//! benchmarks run the simulator at 10,000 devices. On, each request takes a
//! short mutex to append one entry; the log holds at most its capacity and
//! counts what it had to leave out, so a long run cannot grow it without
//! bound.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// One request as the simulator received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The endpoint as configured in the devices the simulator serves
    /// (`host:port`, or a serial line's configured path), not the address it
    /// actually listens on.
    pub endpoint: Arc<str>,
    /// The unit id the request was addressed to.
    pub unit: u8,
    /// The connection it came on: numbered from 1 in the order the
    /// simulator accepted them, never reused. A serial line is one
    /// connection for its whole life (clients that open the pseudo-terminal
    /// in turn cannot be told apart).
    pub connection: u64,
    /// The client's address, on TCP.
    pub peer: Option<SocketAddr>,
    /// When the whole request had been read.
    pub at: DateTime<Utc>,
}

/// The requests served, in the order they arrived (see the module comment).
#[derive(Debug)]
pub struct RequestLog {
    capacity: usize,
    entries: Mutex<Vec<Request>>,
    dropped: AtomicU64,
    connections: AtomicU64,
}

impl RequestLog {
    /// A log that keeps the first `capacity` requests and counts the rest.
    pub fn new(capacity: usize) -> Arc<RequestLog> {
        Arc::new(RequestLog {
            capacity,
            entries: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        })
    }

    /// A copy of every request kept so far, oldest first.
    pub fn entries(&self) -> Vec<Request> {
        self.lock().clone()
    }

    /// How many requests were kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests served but not kept because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn push(&self, request: Request) {
        let mut entries = self.lock();
        if entries.len() < self.capacity {
            entries.push(request);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Request>> {
        // A test that panicked while holding it leaves whole entries behind.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One endpoint's handle on the log.
pub(crate) struct EndpointLog {
    log: Arc<RequestLog>,
    endpoint: Arc<str>,
}

impl EndpointLog {
    pub fn new(log: Arc<RequestLog>, endpoint: &str) -> Self {
        Self {
            log,
            endpoint: endpoint.into(),
        }
    }

    /// A connection just accepted (or a serial line opened): a new number.
    pub fn connection(&self, peer: Option<SocketAddr>) -> Tap {
        Tap {
            log: Arc::clone(&self.log),
            endpoint: Arc::clone(&self.endpoint),
            connection: self.log.connections.fetch_add(1, Ordering::Relaxed) + 1,
            peer,
        }
    }
}

/// Records the requests of one connection.
pub(crate) struct Tap {
    log: Arc<RequestLog>,
    endpoint: Arc<str>,
    connection: u64,
    peer: Option<SocketAddr>,
}

impl Tap {
    pub fn record(&self, unit: u8) {
        self.log.push(Request {
            endpoint: Arc::clone(&self.endpoint),
            unit,
            connection: self.connection,
            peer: self.peer,
            at: Utc::now(),
        });
    }
}

/// Records `unit`'s request on the connection of `tap`, when it has one.
pub(crate) fn record(tap: Option<&Tap>, unit: u8) {
    if let Some(tap) = tap {
        tap.record(unit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_numbered_apart_and_requests_kept_in_order() {
        let log = RequestLog::new(10);
        let a = EndpointLog::new(Arc::clone(&log), "10.0.0.1:502");
        let first = a.connection(Some("127.0.0.1:40000".parse().unwrap()));
        let second = a.connection(None);
        first.record(1);
        second.record(2);
        first.record(3);
        let seen: Vec<(u64, u8)> = log
            .entries()
            .iter()
            .map(|r| (r.connection, r.unit))
            .collect();
        assert_eq!(seen, [(1, 1), (2, 2), (1, 3)]);
        assert_eq!(&*log.entries()[0].endpoint, "10.0.0.1:502");
        assert_eq!(log.entries()[1].peer, None);
        assert!(log.entries().windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn a_full_log_keeps_the_first_requests_and_counts_the_rest() {
        let log = RequestLog::new(2);
        let tap = EndpointLog::new(Arc::clone(&log), "x:1").connection(None);
        for unit in 1..=5 {
            tap.record(unit);
        }
        assert_eq!(log.len(), 2);
        assert_eq!(log.dropped(), 3);
        assert_eq!(log.entries()[1].unit, 2);
    }

    /// Two clients of one gateway, each asking both units: every request is
    /// logged under the configured endpoint, with the client's own address
    /// and a connection number of its own.
    #[tokio::test]
    async fn a_logged_simulator_tells_the_connections_of_one_endpoint_apart() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let yaml = "defaults: { host: 127.0.0.1, port: 15020 }\ndevices:\n  - { name: a, unit_id: 1, registers: [ { name: x, kind: holding, address: 0 } ] }\n  - { name: b, unit_id: 2, registers: [ { name: x, kind: holding, address: 0 } ] }\n";
        let devices = crate::config::parse(yaml, "log.yaml").unwrap();
        let log = RequestLog::new(100);
        let sim = crate::sim::Simulator::start_with_log(
            &devices,
            crate::sim::Bind::Ephemeral,
            Vec::new(),
            Arc::clone(&log),
        )
        .await
        .unwrap();
        assert!(Arc::ptr_eq(sim.request_log().unwrap(), &log));
        let addr = sim.addr_of(&devices[0]).unwrap();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            for unit in [1u8, 2] {
                s.write_all(&[0, 1, 0, 0, 0, 6, unit, 3, 0, 0, 0, 1])
                    .await
                    .unwrap();
                let mut answer = [0u8; 11];
                s.read_exact(&mut answer).await.unwrap();
            }
            clients.push(s.local_addr().unwrap());
        }
        let entries = log.entries();
        assert!(entries.iter().all(|r| &*r.endpoint == "127.0.0.1:15020"));
        let seen: Vec<(u8, u64, Option<std::net::SocketAddr>)> = entries
            .iter()
            .map(|r| (r.unit, r.connection, r.peer))
            .collect();
        let (one, two) = (Some(clients[0]), Some(clients[1]));
        assert_eq!(seen, [(1, 1, one), (2, 1, one), (1, 2, two), (2, 2, two)]);
        assert_eq!(log.dropped(), 0);
    }

    #[tokio::test]
    async fn a_simulator_started_without_a_log_has_none() {
        let yaml = "devices:\n  - { name: a, host: 127.0.0.1, port: 15021, registers: [ { name: x, kind: coil, address: 0 } ] }\n";
        let devices = crate::config::parse(yaml, "log.yaml").unwrap();
        let sim = crate::sim::Simulator::start(&devices, crate::sim::Bind::Ephemeral)
            .await
            .unwrap();
        assert!(sim.request_log().is_none());
    }
}
