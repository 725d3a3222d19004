//! One Modbus TCP connection per endpoint (host:port), shared by every unit id
//! behind it, because gateways put many devices behind one address and many
//! of them accept only one or a few connections.
//!
//! The frames are [`super::tcp`]'s, which has no timeout of its own, so
//! every connect and every request is wrapped in one here. A timeout keeps
//! the connection: `tcp` recognises the late reply by its transaction id and
//! drops it, so one silent unit does not cost its neighbours their
//! connection. The unit is demoted after `demote_after` timeouts in a row
//! ([`super::demotion`]), and the connection is dropped only when every unit
//! behind it has timed out since the last answer (the endpoint itself has
//! stopped answering). After a transport or protocol error the stream is
//! out of step or broken, so the connection is dropped and re-opened before
//! the next request. A Modbus exception is a proper answer and keeps it.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

use super::demotion::{Units, backoff};
use super::tcp::{CallError, Connection as Link};

use super::stats::EndpointStats;
use super::{ReadError, Words};
use crate::registry::{RegisterKind, RequestLimits, UnitId};

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
    /// Which units answer; kept across reconnects.
    units: Units,
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
    backoff(RECONNECT_MIN, RECONNECT_MAX, failures)
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({}:{})", self.host, self.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            conn: Mutex::new(Connection::default()),
            stats: Arc::default(),
        }
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
    /// outcome of the last attempt. A demoted unit is not asked until its
    /// backoff expires: the read fails at once with [`ReadError::Demoted`].
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
            let health = self.conn.units.unit(unit.0, clock);
            if let Some(demoted) = self.conn.units.get(health).demoted(clock) {
                return (sent, Err(demoted));
            }
            let result = self
                .attempt(unit, kind, start, count, timeout, limits)
                .await;
            self.endpoint
                .stats
                .record(clock.elapsed(), result.as_ref().map(|_| ()));
            self.heard(health, &result, limits);
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

    /// What an attempt's outcome says about the unit and the endpoint: an
    /// answer restores a demoted unit, a timeout counts towards demotion, and
    /// when every unit behind the connection has timed out since the last
    /// answer the endpoint has stopped answering and the connection is dropped.
    fn heard(&mut self, health: usize, result: &Result<Words, ReadError>, limits: &RequestLimits) {
        let conn = &mut *self.conn;
        let changed = match result {
            Ok(_) => conn.units.answered(health),
            Err(e) if e.device_answered() => conn.units.answered(health),
            Err(ReadError::Timeout(_)) => {
                let changed = conn.units.timed_out(health, &limits.demotion);
                if conn.units.all_silent(Instant::now()) && conn.link.take().is_some() {
                    tracing::info!(
                        endpoint = %self.endpoint,
                        "every unit behind the endpoint timed out since the last answer; reconnecting"
                    );
                }
                changed
            }
            Err(_) => false,
        };
        if changed {
            self.endpoint
                .stats
                .demoted
                .store(conn.units.demoted_count(), Ordering::Relaxed);
        }
    }

    async fn attempt(
        &mut self,
        unit: UnitId,
        kind: RegisterKind,
        start: u16,
        count: u16,
        timeout: Duration,
        limits: &RequestLimits,
    ) -> Result<Words, ReadError> {
        // A stale connection (a frame nobody asked for waiting on it) is
        // found before the request goes out; the request then goes out on a
        // new one, once.
        let mut fresh = false;
        loop {
            self.open(limits).await?;
            let link = self.conn.link.as_mut().expect("connection was just opened");
            let outcome =
                tokio::time::timeout(timeout, link.read(unit.0, kind, start, count)).await;
            let late = link.take_late_replies();
            if late > 0 {
                self.endpoint
                    .stats
                    .late_replies
                    .fetch_add(late.into(), Ordering::Relaxed);
            }
            let result = match outcome {
                Err(_) => Err(ReadError::Timeout(timeout)),
                Ok(Ok(Ok(words))) => check_len(words, count),
                Ok(Ok(Err(code))) => Err(ReadError::Exception(code)),
                Ok(Err(CallError::Stale(m))) if !fresh => {
                    tracing::debug!(endpoint = %self.endpoint, reason = %m, "connection out of step before a request; reconnecting");
                    self.conn.link = None;
                    fresh = true;
                    continue;
                }
                Ok(Err(CallError::Stale(m) | CallError::Protocol(m))) => {
                    Err(ReadError::Protocol(m))
                }
                Ok(Err(CallError::Transport(e))) => Err(ReadError::Transport(io_reason(&e))),
            };
            if let Err(e) = &result
                && !matches!(e, ReadError::Timeout(_))
                && !e.device_answered()
            {
                // Out of step or broken: never reuse it (see the module
                // comment). A timeout alone leaves it in step (see `tcp`).
                self.conn.link = None;
            }
            return result;
        }
    }

    /// Opens the connection if there is none, unless the last connect failed
    /// and its backoff has not expired; waits `delay_after_connect` after
    /// opening it, for gateways that need a moment before the first request.
    async fn open(&mut self, limits: &RequestLimits) -> Result<(), ReadError> {
        if self.conn.link.is_some() {
            return Ok(());
        }
        if let (Some(at), Some(e)) = (self.conn.retry_at, &self.conn.last_error)
            && Instant::now() < at
        {
            return Err(e.clone());
        }
        match connect(self.endpoint, limits.connect_timeout).await {
            Ok(link) => {
                self.endpoint.stats.connects.fetch_add(1, Ordering::Relaxed);
                self.conn.connected(link);
                if !limits.delay_after_connect.is_zero() {
                    tokio::time::sleep(limits.delay_after_connect).await;
                }
                Ok(())
            }
            Err(e) => Err(self.conn.connect_failed(e)),
        }
    }
}

/// Takes only the endpoint, so nothing borrowing the held connection lives
/// across the connect.
async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Link, ReadError> {
    let addr = (endpoint.host.as_str(), endpoint.port);
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ReadError::ConnectTimeout(timeout)),
        Ok(Err(e)) => Err(ReadError::Connect(io_reason(&e))),
        Ok(Ok(stream)) => {
            // Polls are small request/response exchanges: send them at once.
            let _ = stream.set_nodelay(true);
            Ok(Link::new(stream))
        }
    }
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

/// The OS reason without the "(os error N)" suffix, lower-case, as in
/// `connect: connection refused`.
fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut s = text.to_string();
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_lowercase();
    }
    s
}
