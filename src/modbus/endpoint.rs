//! One Modbus TCP connection per endpoint (host:port), shared by every unit id
//! behind it, because gateways put many devices behind one address and many
//! of them accept only one or a few connections. The same holds for RTU: one
//! link per gateway (RTU over TCP) or serial path, its units serialized on it
//! (the link itself is [`super::link`]'s).
//!
//! The frames are [`super::tcp`]'s or [`super::rtu`]'s, which has no timeout of its own, so
//! every connect and every request is wrapped in one here. A timeout keeps
//! the connection: `tcp` recognises the late reply by its transaction id and
//! drops it, so one silent unit does not cost its neighbours their
//! connection. The unit is demoted after `demote_after` timeouts in a row
//! ([`super::demotion`]), and the connection is dropped only when every unit
//! behind it has timed out since the last answer (the endpoint itself has
//! stopped answering). After a transport or protocol error the stream is
//! out of step or broken, so the connection is dropped and re-opened before
//! the next request (an RTU link resynchronises itself and is re-opened only
//! when its stream broke). A Modbus exception is a proper answer and keeps it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;

use super::demotion::{Units, backoff};
use super::link::{Link, io_reason, tcp_connect};
use super::pipeline::{PipeLink, Pipeline};
use super::tcp::CallError;

use super::stats::EndpointStats;
use super::trace;
use super::{ReadError, Words};
use crate::cluster::Fence;
use crate::registry::{Device, LogFrames, RegisterKind, RequestLimits, Transport, UnitId};

/// First wait before reconnecting after a failed connect; doubles per failure.
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two connect attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Pause before retrying a request the device answered with "server busy" (exception 6).
pub const BUSY_PAUSE: Duration = Duration::from_millis(100);

/// A Modbus endpoint (a host:port or a serial line) and its (at most one)
/// open connection.
pub struct Endpoint {
    host: String,
    port: u16,
    transport: Transport,
    conn: Mutex<Connection>,
    stats: Arc<EndpointStats>,
    /// Set when the gateway takes several outstanding transactions
    /// (`max_in_flight` above 1): requests then take the pipelined path.
    pipeline: Option<Pipeline>,
    /// This instance's cluster lease (`run --cluster`): no request goes out
    /// once it has run out.
    fence: Option<Arc<Fence>>,
    /// When this link was handed to another instance, in microseconds since
    /// the epoch (`i64::MAX`: not handed over); see `Fleet::hand_over`.
    handover: AtomicI64,
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
    /// The connection of a pipelined endpoint (instead of `link`).
    pipe: Option<Arc<PipeLink>>,
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
        self.connect_succeeded();
    }

    fn connect_succeeded(&mut self) {
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
        write!(f, "Endpoint({self})")
    }
}

/// `host:port` or the serial line, as logs and messages name an endpoint.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport.serial() {
            Some(line) => write!(f, "{line}"),
            None => write!(f, "{}:{}", self.host, self.port),
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
            pipeline: None,
            fence: None,
            handover: AtomicI64::new(i64::MAX),
        }
    }

    /// The endpoint `device` is reached through (shared by every device with
    /// the same `Device::endpoint`), with its `max_in_flight`.
    pub fn for_device(device: &Device) -> Self {
        Self::with_transport(device.host.clone(), device.port, device.transport.clone())
            .with_max_in_flight(device.limits.max_in_flight)
    }

    /// Lets up to `n` requests to different units be outstanding at once
    /// (`max_in_flight`); 1, the default, keeps one at a time. Only Modbus
    /// TCP can match answers to requests (RTU has no transaction id), so
    /// other transports always keep one at a time (validation refuses more).
    pub fn with_max_in_flight(mut self, n: u8) -> Self {
        self.pipeline = (n > 1 && self.transport == Transport::Tcp).then(|| Pipeline::new(n));
        self
    }

    /// Sends no request once `fence` has closed (a clustered instance).
    pub fn with_fence(mut self, fence: Option<Arc<Fence>>) -> Self {
        self.fence = fence;
        self
    }

    /// Whether this instance may no longer send requests here: its cluster
    /// lease ran out.
    pub fn fenced(&self) -> bool {
        self.fence.as_ref().is_some_and(|f| !f.is_open())
    }

    /// Hands the link over from `at` (see `Fleet::hand_over`).
    pub fn hand_over_at(&self, at: DateTime<Utc>) {
        self.handover
            .store(at.timestamp_micros(), Ordering::Release);
    }

    /// When the link was handed over, if it was.
    pub fn handover_at(&self) -> Option<DateTime<Utc>> {
        match self.handover.load(Ordering::Acquire) {
            i64::MAX => None,
            micros => DateTime::from_timestamp_micros(micros),
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
            // A pipelined endpoint is shared request by request instead.
            conn: match self.pipeline {
                None => Some(self.conn.lock().await),
                Some(_) => None,
            },
        }
    }
}

/// Exclusive use of an endpoint's connection for the duration of one poll.
pub struct Session<'a> {
    endpoint: &'a Endpoint,
    /// Held for the whole poll, except on a pipelined endpoint.
    conn: Option<MutexGuard<'a, Connection>>,
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
            // Checked before every request, retries included: the fence
            // closes on time even while the poll is under way.
            if self.endpoint.fenced() {
                return (sent, Err(ReadError::Fenced));
            }
            // Frame logging (commissioning) reads the clock only when on.
            let traced = (limits.log_frames != LogFrames::Off).then(Instant::now);
            let result = match &self.endpoint.pipeline {
                // Boxed so that the pipelined path's state does not enlarge
                // the request future of every in-step endpoint's devices.
                Some(pipeline) => {
                    Box::pin(self.endpoint.read_pipelined(
                        pipeline,
                        unit,
                        kind,
                        (start, count),
                        timeout,
                        limits,
                    ))
                    .await
                }
                // One clock read serves the demotion check and the latency.
                None => {
                    let clock = Instant::now();
                    match self.demoted(unit, clock) {
                        (_, Some(demoted)) => Err(demoted),
                        (health, None) => {
                            let result = self
                                .attempt(unit, kind, start, count, timeout, limits)
                                .await;
                            self.endpoint
                                .stats
                                .record(clock.elapsed(), result.as_ref().map(|_| ()));
                            heard(self.endpoint, self.conn(), health, &result, limits);
                            result
                        }
                    }
                }
            };
            // A demoted unit's request never went out: nothing to show.
            if let Some(clock) = traced
                && !matches!(result, Err(ReadError::Demoted { .. }))
            {
                let request = (unit, kind, start, count);
                trace::exchange(
                    limits.log_frames,
                    self.endpoint,
                    request,
                    attempt,
                    clock.elapsed(),
                    &result,
                );
            }
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

    fn conn(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("only a pipelined endpoint's session holds no connection")
    }

    /// The unit's place in the endpoint's health table, and why the unit
    /// must not be asked `now`, if it is demoted.
    fn demoted(&mut self, unit: UnitId, now: Instant) -> (usize, Option<ReadError>) {
        let units = &mut self.conn().units;
        let health = units.unit(unit.0, now);
        (health, units.get(health).demoted(now))
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
        let endpoint = self.endpoint;
        loop {
            self.open(limits).await?;
            let link = self
                .conn()
                .link
                .as_mut()
                .expect("connection was just opened");
            let outcome = tokio::time::timeout(timeout, link.read(unit.0, kind, start, count))
                .await
                .ok();
            let late = link.take_late_replies();
            if late > 0 {
                endpoint
                    .stats
                    .late_replies
                    .fetch_add(late.into(), Ordering::Relaxed);
            }
            if let Some(Err(CallError::Stale(m))) = &outcome
                && !fresh
            {
                tracing::debug!(endpoint = %endpoint, reason = %m, "connection out of step before a request; reconnecting");
                self.conn().link = None;
                fresh = true;
                continue;
            }
            let result = outcome_of(outcome, count, timeout);
            if let Err(e) = &result
                && !link.survives(e)
            {
                // Out of step or broken: never reuse it (see the module
                // comment). A timeout alone leaves a TCP link in step (see
                // `tcp`) and an RTU link resynchronises (see `rtu`).
                self.conn().link = None;
            }
            return result;
        }
    }

    /// Opens the connection if there is none, unless the last connect failed
    /// and its backoff has not expired; waits `delay_after_connect` after
    /// opening it, for gateways that need a moment before the first request.
    async fn open(&mut self, limits: &RequestLimits) -> Result<(), ReadError> {
        if self.conn().link.is_some() {
            return Ok(());
        }
        if let (Some(at), Some(e)) = (self.conn().retry_at, &self.conn().last_error)
            && Instant::now() < at
        {
            return Err(e.clone());
        }
        match connect(self.endpoint, limits.connect_timeout).await {
            Ok(link) => {
                self.endpoint.stats.connects.fetch_add(1, Ordering::Relaxed);
                self.conn().connected(link);
                if !limits.delay_after_connect.is_zero() {
                    // Boxed: a timer inline would enlarge every request's future.
                    Box::pin(tokio::time::sleep(limits.delay_after_connect)).await;
                }
                Ok(())
            }
            Err(e) => Err(self.conn().connect_failed(e)),
        }
    }
}

/// What an attempt's outcome says about the unit and the endpoint: an
/// answer restores a demoted unit, a timeout counts towards demotion, and
/// when every unit behind the connection has timed out since the last
/// answer the endpoint has stopped answering and the connection is dropped.
fn heard(
    endpoint: &Endpoint,
    conn: &mut Connection,
    health: usize,
    result: &Result<Words, ReadError>,
    limits: &RequestLimits,
) {
    let changed = match result {
        Ok(_) => conn.units.answered(health),
        Err(e) if e.device_answered() => conn.units.answered(health),
        Err(ReadError::Timeout(_)) => {
            let changed = conn.units.timed_out(health, &limits.demotion);
            if conn.units.all_silent(Instant::now())
                && (conn.link.take().is_some() || conn.pipe.take().is_some())
            {
                tracing::info!(
                    endpoint = %endpoint,
                    "every unit behind the endpoint timed out since the last answer; reconnecting"
                );
            }
            changed
        }
        Err(_) => false,
    };
    if changed {
        endpoint
            .stats
            .demoted
            .store(conn.units.demoted_count(), Ordering::Relaxed);
    }
}

impl Endpoint {
    /// One request on a pipelined endpoint: at most `max_in_flight` at once,
    /// the connection's table locked only to look up the unit and the link
    /// and to record the outcome, never while the request is out.
    async fn read_pipelined(
        &self,
        pipeline: &Pipeline,
        unit: UnitId,
        kind: RegisterKind,
        (start, count): (u16, u16),
        timeout: Duration,
        limits: &RequestLimits,
    ) -> Result<Words, ReadError> {
        let _permit = pipeline
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let clock = Instant::now();
        let (health, link) = {
            let mut conn = self.conn.lock().await;
            let health = conn.units.unit(unit.0, clock);
            if let Some(demoted) = conn.units.get(health).demoted(clock) {
                return Err(demoted);
            }
            (health, self.open_pipe(&mut conn, limits).await?)
        };
        let result = outcome_of(
            link.read(unit.0, kind, start, count, timeout).await,
            count,
            timeout,
        );
        self.stats
            .record(clock.elapsed(), result.as_ref().map(|_| ()));
        let mut conn = self.conn.lock().await;
        if let Err(e) = &result
            && !matches!(e, ReadError::Timeout(_))
            && !e.device_answered()
            && conn.pipe.as_ref().is_some_and(|p| Arc::ptr_eq(p, &link))
        {
            conn.pipe = None;
        }
        heard(self, &mut conn, health, &result, limits);
        result
    }

    /// The pipelined connection, opened (and paced) if there is none or
    /// its reader found it broken; the caller holds the table meanwhile, so
    /// no request goes out before `delay_after_connect` has passed.
    async fn open_pipe(
        &self,
        conn: &mut Connection,
        limits: &RequestLimits,
    ) -> Result<Arc<PipeLink>, ReadError> {
        if conn.pipe.as_ref().is_some_and(|p| p.is_dead()) {
            conn.pipe = None;
        }
        if let Some(p) = &conn.pipe {
            return Ok(Arc::clone(p));
        }
        if let (Some(at), Some(e)) = (conn.retry_at, &conn.last_error)
            && Instant::now() < at
        {
            return Err(e.clone());
        }
        let stream = match tcp_connect(&self.host, self.port, limits.connect_timeout).await {
            Ok(stream) => stream,
            Err(e) => return Err(conn.connect_failed(e)),
        };
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(PipeLink::new(stream, Arc::clone(&self.stats)));
        conn.pipe = Some(Arc::clone(&link));
        conn.connect_succeeded();
        if !limits.delay_after_connect.is_zero() {
            tokio::time::sleep(limits.delay_after_connect).await;
        }
        Ok(link)
    }
}

/// Takes only the endpoint, so nothing borrowing the held connection lives
/// across the connect.
async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Link, ReadError> {
    // Boxed: connects are rare, and the connect's state inline (a timer, the
    // socket's or serial port's opening) would enlarge every request's
    // future, and so every device's task (BENCHMARKS.md).
    Box::pin(super::link::connect(
        &endpoint.host,
        endpoint.port,
        &endpoint.transport,
        timeout,
    ))
    .await
}

/// What a request of `count` values came to: its values, the device's
/// exception, or why there was no answer (`None`: none within `timeout`).
fn outcome_of(
    outcome: Option<Result<Result<Words, ExceptionCode>, CallError>>,
    count: u16,
    timeout: Duration,
) -> Result<Words, ReadError> {
    match outcome {
        None => Err(ReadError::Timeout(timeout)),
        Some(Ok(Ok(words))) => check_len(words, count),
        Some(Ok(Err(code))) => Err(ReadError::Exception(code)),
        Some(Err(CallError::Transport(e))) => Err(ReadError::Transport(io_reason(&e))),
        Some(Err(CallError::Protocol(m) | CallError::Stale(m))) => Err(ReadError::Protocol(m)),
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
