//! One Modbus TCP connection per endpoint (host:port), shared by every unit id
//! behind it, because gateways put many devices behind one address and many
//! of them accept only one or a few connections. The same holds for RTU: one
//! link per gateway (RTU over TCP) or serial path, its units serialized on it
//! (the link itself is [`super::link`]'s).
//!
//! The frames are [`super::tcp`]'s, which has no timeout of its own, so
//! every connect and every request is wrapped in one here. After a timeout,
//! transport error or protocol error the connection is out of step (a late
//! reply would be taken as the answer to the next request), so it is dropped
//! and re-opened before the next request; it is never reused. A Modbus
//! exception is a proper answer and keeps the connection.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

use super::link::{Link, io_reason};
use super::tcp::CallError;

use super::stats::EndpointStats;
use super::{ReadError, Words};
use crate::registry::{Device, RegisterKind, RequestLimits, Transport, UnitId};

/// First wait before reconnecting after a failed connect; doubles per failure.
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two connect attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Pause before retrying a request the device answered with "server busy" (exception 6).
pub const BUSY_PAUSE: Duration = Duration::from_millis(100);

/// A Modbus TCP endpoint and its (at most one) open connection.
pub struct Endpoint {
    host: String,
    port: u16,
    transport: Transport,
    conn: Mutex<Connection>,
    stats: Arc<EndpointStats>,
}

/// The connection and, after failed connects, when the next attempt may be made.
#[derive(Default)]
struct Connection {
    link: Option<Link>,
    failures: u32,
    /// No connect attempt before this; reads fail fast with `last_error` until then.
    retry_at: Option<Instant>,
    last_error: Option<ReadError>,
}

impl Connection {
    fn connect_failed(&mut self, e: ReadError) -> ReadError {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + reconnect_delay(self.failures));
        self.last_error = Some(e.clone());
        e
    }

    fn connected(&mut self, link: Link) {
        self.link = Some(link);
        self.failures = 0;
        self.retry_at = None;
        self.last_error = None;
    }
}

/// Exponential backoff with ±20 % jitter, so that devices that went down
/// together do not all reconnect in the same instant.
fn reconnect_delay(failures: u32) -> Duration {
    let base = RECONNECT_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RECONNECT_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let jitter = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
    base.mul_f64(jitter)
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport.serial() {
            Some(line) => write!(f, "Endpoint({line})"),
            None => write!(f, "Endpoint({}:{})", self.host, self.port),
        }
    }
}

impl Endpoint {
    /// A Modbus TCP endpoint.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self::with_transport(host, port, Transport::Tcp)
    }

    /// An endpoint framed as `transport` says (host and port unused for a
    /// serial line).
    pub fn with_transport(host: impl Into<String>, port: u16, transport: Transport) -> Self {
        Self {
            host: host.into(),
            port,
            transport,
            conn: Mutex::new(Connection::default()),
            stats: Arc::default(),
        }
    }

    /// The endpoint `device` is reached through (shared by every device with
    /// the same `Device::endpoint`).
    pub fn for_device(device: &Device) -> Self {
        Self::with_transport(device.host.clone(), device.port, device.transport.clone())
    }

    /// Request counts, errors by kind and latency of this endpoint.
    pub fn stats(&self) -> &Arc<EndpointStats> {
        &self.stats
    }

    /// Takes the endpoint for one poll: requests of different devices on the
    /// same endpoint are serialized, because one TCP connection carries them.
    pub async fn session(&self) -> Session<'_> {
        Session {
            endpoint: self,
            conn: self.conn.lock().await,
        }
    }
}

/// Exclusive use of an endpoint's connection for the duration of one poll.
pub struct Session<'a> {
    endpoint: &'a Endpoint,
    conn: MutexGuard<'a, Connection>,
}

impl Session<'_> {
    /// Reads `count` values of `kind` starting at `start` from unit `unit`,
    /// retrying up to `limits.retries` times when the connection failed or the
    /// device was busy. Returns when the answer's request was sent, and the
    /// outcome of the last attempt.
    pub async fn read(
        &mut self,
        unit: UnitId,
        kind: RegisterKind,
        start: u16,
        count: u16,
        timeout: Duration,
        limits: &RequestLimits,
    ) -> (DateTime<Utc>, Result<Words, ReadError>) {
        let mut attempt = 0;
        loop {
            let sent = Utc::now();
            let clock = Instant::now();
            let result = self
                .attempt(unit, kind, start, count, timeout, limits.connect_timeout)
                .await;
            self.endpoint
                .stats
                .record(clock.elapsed(), result.as_ref().map(|_| ()));
            match &result {
                Err(e) if e.is_retryable() && attempt < limits.retries => {
                    attempt += 1;
                    if matches!(e, ReadError::Exception(_)) {
                        tokio::time::sleep(BUSY_PAUSE).await;
                    }
                }
                _ => return (sent, result),
            }
        }
    }

    async fn attempt(
        &mut self,
        unit: UnitId,
        kind: RegisterKind,
        start: u16,
        count: u16,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Words, ReadError> {
        if self.conn.link.is_none() {
            if let (Some(at), Some(e)) = (self.conn.retry_at, &self.conn.last_error)
                && Instant::now() < at
            {
                return Err(e.clone());
            }
            match connect(self.endpoint, connect_timeout).await {
                Ok(link) => self.conn.connected(link),
                Err(e) => return Err(self.conn.connect_failed(e)),
            }
        }
        let link = self.conn.link.as_mut().expect("connection was just opened");
        let outcome = tokio::time::timeout(timeout, link.read(unit.0, kind, start, count)).await;
        let result = match outcome {
            Err(_) => Err(ReadError::Timeout(timeout)),
            Ok(Ok(Ok(words))) => check_len(words, count),
            Ok(Ok(Err(code))) => Err(ReadError::Exception(code)),
            Ok(Err(CallError::Transport(e))) => Err(ReadError::Transport(io_reason(&e))),
            Ok(Err(CallError::Protocol(e))) => Err(ReadError::Protocol(e)),
        };
        if let Err(e) = &result
            && !link.survives(e)
        {
            // Out of step or broken: never reuse it (see the module comment).
            self.conn.link = None;
        }
        result
    }
}

/// Takes only the endpoint, so nothing borrowing the held connection lives
/// across the connect.
async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Link, ReadError> {
    super::link::connect(&endpoint.host, endpoint.port, &endpoint.transport, timeout).await
}

fn check_len(words: Words, count: u16) -> Result<Words, ReadError> {
    let expected = usize::from(count);
    match words {
        Words::Registers(w) if w.len() != expected => Err(ReadError::ShortResponse {
            got: w.len(),
            expected,
        }),
        // Bit responses are padded to whole bytes; only the requested bits count.
        Words::Bits(mut b) if b.len() >= expected => {
            b.truncate(expected);
            Ok(Words::Bits(b))
        }
        Words::Bits(b) => Err(ReadError::ShortResponse {
            got: b.len(),
            expected,
        }),
        ok => Ok(ok),
    }
}
