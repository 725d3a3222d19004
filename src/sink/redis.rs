//! The Redis latest-value cache (keys and JSON as in DESIGN.md):
//! `<prefix>:latest:<device>` (hash: register → JSON value),
//! `<prefix>:device:<device>` (hash: poll state) and one message per poll on
//! `<prefix>:updates:<device>`. Polls pending together share one pipeline.
//!
//! Redis must never slow polling or history. Reports reach this writer through
//! a [`Coalescer`]: it keeps only the newest report of each poll group, so a
//! slow or absent Redis holds at most one pending report per group (never an
//! unbounded queue) and the fan-out never waits. While Redis cannot be
//! reached, reports wait there and are written the moment it is back; each
//! report rewrites every register of its group, so after an outage the latest
//! values are complete again within one poll. While Redis lags, update
//! messages of superseded polls are not published.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::json;
use std::collections::HashSet;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use tokio::sync::Notify;

use super::resp::{self, Commands, Stream, Target};
use crate::reading::{PollReport, Quality, Reading, Value};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "regpoll";
/// Time allowed for connecting to Redis and for each pipeline.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Most poll reports written in one pipeline.
const PIPELINE_REPORTS: usize = 256;
/// How long the writer lets reports gather before writing them together.
const LINGER: Duration = Duration::from_millis(2);
/// Most pipelines waiting for Redis's answer at once (see `run_writer`);
/// past it, reports gather in the coalescer, newest per poll group.
const MAX_IN_FLIGHT: usize = 4;

pub fn rfc3339(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A latest value as JSON (the Redis hash field contract, also served by the
/// HTTP API): `detail` only when the quality is not good.
pub fn latest_json(
    value: &Value,
    quality: Quality,
    ts: DateTime<Utc>,
    unit: Option<&str>,
    detail: Option<&str>,
) -> serde_json::Value {
    let mut v = json!({
        "value": value.to_json(),
        "quality": quality.as_str(),
        "ts": rfc3339(ts),
        "unit": unit,
    });
    if quality != Quality::Good {
        v["detail"] = json!(detail);
    }
    v
}

/// Writes `ts` as `rfc3339` does (UTC, milliseconds, `Z`) without the
/// formatting machinery: it runs for every value of every poll.
fn push_rfc3339(out: &mut Vec<u8>, ts: DateTime<Utc>) {
    use chrono::{Datelike as _, Timelike as _};
    // The naive UTC time, so that the fields below are not each computed
    // through the time zone (Utc's offset is zero, but adding it is not free).
    let ts = ts.naive_utc();
    let year = ts.year();
    if !(0..=9999).contains(&year) {
        out.extend_from_slice(rfc3339(ts.and_utc()).as_bytes());
        return;
    }
    let digits = |out: &mut Vec<u8>, v: u32, n: u32| {
        for i in (0..n).rev() {
            out.push(b'0' + ((v / 10u32.pow(i)) % 10) as u8);
        }
    };
    digits(out, year as u32, 4);
    out.push(b'-');
    digits(out, ts.month(), 2);
    out.push(b'-');
    digits(out, ts.day(), 2);
    out.push(b'T');
    digits(out, ts.hour(), 2);
    out.push(b':');
    digits(out, ts.minute(), 2);
    out.push(b':');
    // A leap second shows as :60, as chrono writes it.
    let nanos = ts.nanosecond();
    digits(out, ts.second() + nanos / 1_000_000_000, 2);
    out.push(b'.');
    digits(out, (nanos % 1_000_000_000) / 1_000_000, 3);
    out.push(b'Z');
}

/// A JSON string or number, written by serde_json (escaping, shortest
/// round-trip floats) without building a `serde_json::Value`.
fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing a string or a number into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Where a timestamp was last written into a buffer, to copy rather than
/// format again: the readings of one request share theirs.
type LastTs = Option<(DateTime<Utc>, std::ops::Range<usize>)>;

/// The bytes of [`latest_json`] for one reading, written straight into `out`.
fn push_latest_json(out: &mut Vec<u8>, report: &PollReport, r: &Reading, last_ts: &mut LastTs) {
    out.extend_from_slice(b"{\"value\":");
    match &r.value {
        Value::None => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) if n.is_finite() => push_json(out, n),
        Value::Number(_) => out.extend_from_slice(b"null"),
        Value::Text(t) => push_json(out, t.as_str()),
    }
    out.extend_from_slice(b",\"quality\":\"");
    out.extend_from_slice(r.quality.as_str().as_bytes());
    out.extend_from_slice(b"\",\"ts\":\"");
    match last_ts {
        Some((ts, at)) if *ts == r.ts => out.extend_from_within(at.clone()),
        _ => {
            let from = out.len();
            push_rfc3339(out, r.ts);
            *last_ts = Some((r.ts, from..out.len()));
        }
    }
    out.extend_from_slice(b"\",\"unit\":");
    match &report.register(r).unit {
        Some(u) => push_json(out, u),
        None => out.extend_from_slice(b"null"),
    }
    if r.quality != Quality::Good {
        out.extend_from_slice(b",\"detail\":");
        match &r.detail {
            Some(d) => push_json(out, d.as_str()),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

/// Appends one poll's commands to `out`: the latest values, the device
/// state, expiry, and the update message.
///
/// It runs for every poll, so each register's JSON is written once: into the
/// update message, whose bytes the latest-values hash then copies, and keys
/// are written from their pieces. Building them through the redis crate's
/// command helpers (a `Vec` per value, commands that grow by doubling, keys
/// made with `format!`) was a sixth of regpoll's CPU at 10,000 devices
/// (perf, BENCHMARKS.md).
fn add_report(
    out: &mut Commands,
    scratch: &mut Scratch,
    settings: &RedisSettings,
    report: &PollReport,
) {
    use std::io::Write as _;
    let prefix = settings.prefix.as_bytes();
    let device = report.device.name.as_bytes();
    let latency_ms = report.latency.as_secs_f64() * 1000.0;
    let state: &[u8] = if report.reachable { b"up" } else { b"down" };

    // {"device","ts","state","latency_ms","error","values":{…}}, as DESIGN.md.
    let n = report.readings.len();
    let Scratch { msg, spans } = scratch;
    msg.clear();
    spans.clear();
    msg.extend_from_slice(b"{\"device\":");
    push_json(msg, &*report.device.name);
    msg.extend_from_slice(b",\"ts\":\"");
    let started = msg.len();
    push_rfc3339(msg, report.started);
    let started = started..msg.len();
    msg.extend_from_slice(b"\",\"state\":\"");
    msg.extend_from_slice(state);
    msg.extend_from_slice(b"\",\"latency_ms\":");
    push_json(msg, &latency_ms);
    msg.extend_from_slice(b",\"error\":");
    match &report.error {
        Some(e) => push_json(msg, e.as_str()),
        None => msg.extend_from_slice(b"null"),
    }
    msg.extend_from_slice(b",\"values\":{");
    // Where each register's JSON sits in the message.
    let mut last_ts = None;
    for (i, r) in report.readings.iter().enumerate() {
        if i > 0 {
            msg.push(b',');
        }
        push_json(msg, &*report.register(r).name);
        msg.push(b':');
        let from = msg.len();
        push_latest_json(msg, report, r, &mut last_ts);
        spans.push(from..msg.len());
    }
    msg.extend_from_slice(b"}}");
    let started = &msg[started];

    let key = |kind: &'static [u8]| -> [&[u8]; 3] { [prefix, kind, device] };
    if n > 0 {
        out.command(2 + 2 * n)
            .arg(b"HSET")
            .arg_parts(&key(b":latest:"));
        for (r, span) in report.readings.iter().zip(spans.iter()) {
            out.arg(report.register(r).name.as_bytes())
                .arg(&msg[span.clone()]);
        }
    }

    let error = report.error.as_deref();
    // As `{latency_ms:.3}` writes it, from whole microseconds: formatting a
    // float to fixed decimals takes the slow exact path of the formatter.
    let mut latency = [0u8; 48];
    // In u64: formatting and dividing a u128 (`as_nanos`) is slower.
    let us = report.latency.as_secs().saturating_mul(1_000_000)
        + u64::from((report.latency.subsec_nanos() + 500) / 1000);
    let room = {
        let mut at = &mut latency[..];
        // 48 bytes hold any u64 of milliseconds and its decimals.
        let _ = write!(at, "{}.{:03}", us / 1000, us % 1000);
        at.len()
    };
    let latency = &latency[..latency.len() - room];
    let args = 8 + 2 * usize::from(report.reachable) + 2 * usize::from(error.is_some());
    out.command(args)
        .arg(b"HSET")
        .arg_parts(&key(b":device:"))
        .arg(b"state")
        .arg(state)
        .arg(b"last_poll")
        .arg(started)
        .arg(b"latency_ms")
        .arg(latency);
    if report.reachable {
        out.arg(b"last_success").arg(started);
    }
    match error {
        Some(e) => {
            out.arg(b"error").arg(e.as_bytes());
        }
        None => {
            out.command(3)
                .arg(b"HDEL")
                .arg_parts(&key(b":device:"))
                .arg(b"error");
        }
    }
    if let Some(ttl) = settings.ttl {
        let secs = ttl.as_secs().max(1).min(i64::MAX as u64).to_string();
        for kind in [&b":latest:"[..], b":device:"] {
            out.command(3)
                .arg(b"EXPIRE")
                .arg_parts(&key(kind))
                .arg(secs.as_bytes());
        }
    }
    out.command(3)
        .arg(b"PUBLISH")
        .arg_parts(&key(b":updates:"))
        .arg(msg);
}

/// Buffers [`add_report`] reuses from one report to the next, so that a
/// poll's commands are built without allocating.
#[derive(Default)]
struct Scratch {
    /// The update message, which the latest-values hash copies from.
    msg: Vec<u8>,
    /// Where each register's JSON sits in `msg`.
    spans: Vec<std::ops::Range<usize>>,
}

/// The bytes the writer sends to Redis for `report` alone: what the
/// benchmark's floor replays to measure the cost of sending them.
pub fn packed_report(settings: &RedisSettings, report: &PollReport) -> Vec<u8> {
    let mut out = Commands::default();
    add_report(&mut out, &mut Scratch::default(), settings, report);
    out.into_bytes()
}

/// The readiness probe's connection (`/ready` sends PING on it). It
/// connects lazily, so the service starts even while Redis is down; the
/// writer has a connection of its own ([`run_writer`]).
pub fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url)
        .with_context(|| format!("invalid REDIS_URL {}", crate::db::redact_url(url)))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, config)
        .context("cannot set up the Redis connection")
}

/// Counters the writer keeps; shared with whoever reports on it.
#[derive(Debug, Default)]
pub struct RedisStats {
    pub polls_written: AtomicU64,
    pub failures: AtomicU64,
    /// From the end of a poll (its last response) to Redis acknowledging its
    /// values: how stale a dashboard reading Redis can be beyond the schedule.
    pub visible: crate::telemetry::Histogram,
    /// The same, fine-grained for quantiles (`/api/stats`).
    pub visible_distribution: crate::telemetry::Distribution,
}

/// Reports not yet written, one per poll group.
#[derive(Debug, Default)]
struct Pending {
    reports: HashSet<ByGroup>,
    closed: bool,
}

/// A report that hashes and compares as its poll group: the device and its
/// first register (groups do not share registers). The set keys on the
/// report itself rather than on a copy of the device's name made for every
/// poll. Reports without readings are never kept.
#[derive(Debug)]
struct ByGroup(Arc<PollReport>);

impl ByGroup {
    fn group(&self) -> (&str, usize) {
        let first = self.0.readings.first().map_or(usize::MAX, |r| r.index);
        (&self.0.device.name, first)
    }
}

impl PartialEq for ByGroup {
    fn eq(&self, other: &Self) -> bool {
        self.group() == other.group()
    }
}

impl Eq for ByGroup {}

impl std::hash::Hash for ByGroup {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.group().hash(state);
    }
}

/// The newest unwritten report of each poll group, and a wake-up for the writer.
#[derive(Debug, Default)]
pub struct Coalescer {
    pending: std::sync::Mutex<Pending>,
    wake: Notify,
    /// Reports replaced by a newer one before they were written.
    pub coalesced: AtomicU64,
}

impl Coalescer {
    /// Keeps `report` as its group's newest.
    pub fn push(&self, report: Arc<PollReport>) {
        if report.readings.is_empty() {
            return;
        }
        let replaced = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reports
            .replace(ByGroup(report));
        if replaced.is_some() {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    /// Puts back reports whose pipeline was lost with its connection, unless
    /// a newer report of the same group came meanwhile.
    fn requeue(&self, reports: Vec<Arc<PollReport>>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for report in reports {
            // A set keeps what it has when an equal one is inserted.
            pending.reports.insert(ByGroup(report));
        }
    }

    fn is_closed(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed
    }

    /// No more reports will come; the writer ends once it has written the rest.
    pub fn close(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.wake.notify_one();
    }

    /// Waits until something is pending (true) or the queue is closed and
    /// drained (false).
    async fn wait(&self) -> bool {
        loop {
            {
                let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if !pending.reports.is_empty() {
                    return true;
                }
                if pending.closed {
                    return false;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Everything pending (after `wait` said there is some).
    fn drain(&self) -> Vec<Arc<PollReport>> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.reports.drain().map(|g| g.0).collect()
    }
}

/// How long the writer waits before connecting again after Redis could not
/// be reached. Reports wait in the coalescer meanwhile (newest per group), so
/// the moment Redis is back every group's latest values are written, even
/// those of devices polled once an hour. A refused connection costs a few
/// system calls, so trying ten times a second costs nothing worth saving.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Writes what the coalescer holds until it is closed and drained.
///
/// One task owns the connection: it builds each pipeline into the bytes it
/// writes, writes them without waiting for earlier pipelines' answers (Redis
/// runs commands in the order sent, so a newer report still lands last), and
/// counts the answers off as they arrive. A pipeline not fully answered
/// within [`REDIS_TIMEOUT`] of being sent, a protocol error or a closed
/// connection drops the connection; the reports of every pipeline still
/// waiting go back into the coalescer unless a newer one of the same group is
/// there, so they are written after reconnecting (their update message may
/// then be published twice). An error answer (say WRONGTYPE, because
/// something else wrote the key) fails that poll's report only.
pub async fn run_writer(
    target: Target,
    settings: RedisSettings,
    queue: Arc<Coalescer>,
    stats: Arc<RedisStats>,
) {
    let mut link: Option<Link> = None;
    // Runs while reports gather before the next pipeline. Let polls gather
    // for a moment, then write them all in one pipeline: at thousands of
    // polls a second a round trip per poll costs more CPU than the polls
    // themselves. The linger bounds what it adds to a value's way into
    // Redis. (Skipping it when reports arrived during the last write halved
    // the p50 at 10,000 devices but not the p99, and cost 20 % more CPU per
    // reading.) Answers that come meanwhile are taken as they come, so their
    // time to visible is not stretched.
    let linger = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(linger);
    let mut lingering = false;
    // Set when a pipeline is sent on an idle connection. When it fires at a
    // pipeline already answered, it is set again to the deadline of the
    // oldest one still waiting (rather than reset after every answer).
    let watchdog = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(watchdog);
    let mut retry = Retry {
        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        armed: false,
    };
    // Whether the last attempt to reach Redis failed (logged once a run).
    let mut down = false;
    // Connections lost so far (the first and every 100th are logged: a
    // Redis that accepts and then drops every connection, say one at its
    // client limit, would otherwise log ten times a second).
    let mut losses = 0u64;
    let mut open = true;
    loop {
        let in_flight = link.as_ref().map_or(0, |l| l.waiting.len());
        let busy = link.as_ref().is_some_and(Link::busy);
        tokio::select! {
            answered = next_answer(&mut link), if busy => match answered {
                Ok(sent) => record(&stats, &sent),
                Err(e) => {
                    lose(&mut link, &e, &queue, &stats, &mut losses);
                    retry.arm();
                }
            },
            () = &mut watchdog, if in_flight > 0 => {
                let late = link
                    .as_ref()
                    .and_then(|l| l.waiting.front())
                    .map(|s| s.deadline);
                match late {
                    Some(deadline) if deadline > tokio::time::Instant::now() => {
                        watchdog.as_mut().reset(deadline);
                    }
                    _ => {
                        let e = anyhow::anyhow!(
                            "Redis did not answer within {} ms",
                            REDIS_TIMEOUT.as_millis()
                        );
                        lose(&mut link, &e, &queue, &stats, &mut losses);
                        retry.arm();
                    }
                }
            }
            () = &mut retry.sleep, if retry.armed => retry.armed = false,
            more = queue.wait(), if open && !lingering && !retry.armed && in_flight < MAX_IN_FLIGHT => {
                if more {
                    linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                    lingering = true;
                } else {
                    open = false;
                }
            }
            () = &mut linger, if lingering => {
                lingering = false;
                if link.is_none() {
                    if retry.armed {
                        // The connection was lost while reports gathered:
                        // they wait for the retry, as after a failed connect.
                        continue;
                    }
                    match target.connect(REDIS_TIMEOUT).await {
                        Ok(stream) => {
                            if down {
                                tracing::info!(redis = target.shown(), "connected to Redis again");
                            }
                            down = false;
                            link = Some(Link::new(stream));
                        }
                        Err(e) => {
                            if !down {
                                tracing::warn!(error = %format!("{e:#}"), "cannot reach Redis; latest values wait, newest per poll group, until it is back");
                            }
                            down = true;
                            if queue.is_closed() {
                                // Shutting down: nothing more will come, and
                                // what is left cannot be written.
                                let left = queue.drain();
                                stats.failures.fetch_add(left.len() as u64, Ordering::Relaxed);
                            } else {
                                retry.arm();
                            }
                            continue;
                        }
                    }
                }
                let Some(l) = link.as_mut() else { continue };
                let was_idle = l.waiting.is_empty();
                // Each pipeline keeps the reports it carries, moved out of
                // the drained list rather than cloned from it.
                let mut reports = queue.drain().into_iter();
                loop {
                    let chunk: Vec<_> = reports.by_ref().take(PIPELINE_REPORTS).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    l.send(chunk, &settings);
                }
                if was_idle && let Some(first) = l.waiting.front() {
                    watchdog.as_mut().reset(first.deadline);
                }
            }
            else => break,
        }
    }
}

/// The writer's connection: bytes still to send, answers read but not yet
/// counted, and the pipelines waiting for them, oldest first.
struct Link {
    stream: Stream,
    /// Commands built and not yet all written; `written` bytes of them are.
    /// Pipelines built meanwhile are appended; it is emptied once all is out.
    outbox: Commands,
    scratch: Scratch,
    written: usize,
    inbox: Vec<u8>,
    waiting: std::collections::VecDeque<Sent>,
}

/// A pipeline written (or being written) and the answers it waits for.
struct Sent {
    reports: Vec<Arc<PollReport>>,
    /// How many commands the pipeline has up to the end of each report.
    ends: Vec<usize>,
    answered: usize,
    /// The report the next answer is for.
    current: usize,
    /// The reports one of whose commands Redis refused, and its first error.
    refused: Vec<usize>,
    error: Option<String>,
    deadline: tokio::time::Instant,
}

impl Sent {
    fn answer(&mut self, error: Option<&[u8]>) {
        while self.ends[self.current] <= self.answered {
            self.current += 1;
        }
        if let Some(e) = error {
            if self.refused.last() != Some(&self.current) {
                self.refused.push(self.current);
            }
            self.error
                .get_or_insert_with(|| String::from_utf8_lossy(e).into_owned());
        }
        self.answered += 1;
    }

    fn complete(&self) -> bool {
        self.ends.last().is_none_or(|&end| self.answered >= end)
    }
}

impl Link {
    fn new(stream: Stream) -> Link {
        Link {
            stream,
            outbox: Commands::with_capacity(64 * 1024),
            scratch: Scratch::default(),
            written: 0,
            inbox: Vec::with_capacity(4096),
            waiting: std::collections::VecDeque::new(),
        }
    }

    /// Builds one pipeline of `reports` and queues it to be written.
    fn send(&mut self, reports: Vec<Arc<PollReport>>, settings: &RedisSettings) {
        let before = self.outbox.count();
        let ends = reports
            .iter()
            .map(|report| {
                add_report(&mut self.outbox, &mut self.scratch, settings, report);
                self.outbox.count() - before
            })
            .collect();
        self.waiting.push_back(Sent {
            reports,
            ends,
            answered: 0,
            current: 0,
            refused: Vec::new(),
            error: None,
            deadline: tokio::time::Instant::now() + REDIS_TIMEOUT,
        });
    }

    fn unsent(&self) -> &[u8] {
        &self.outbox.bytes()[self.written..]
    }

    fn busy(&self) -> bool {
        !self.waiting.is_empty() || !self.unsent().is_empty()
    }

    /// Writes what is unsent and reads answers until the oldest pipeline is
    /// answered in full. Safe to cancel: a write or read that did not
    /// complete did nothing.
    async fn next_answer(&mut self) -> anyhow::Result<Sent> {
        loop {
            if let Some(sent) = self.count_answers()? {
                return Ok(sent);
            }
            let unsent = &self.outbox.bytes()[self.written..];
            let writing = !unsent.is_empty();
            tokio::select! {
                read = self.stream.rx.read_buf(&mut self.inbox) => {
                    if read.context("cannot read Redis's answers")? == 0 {
                        bail!("Redis closed the connection");
                    }
                }
                wrote = self.stream.tx.write(unsent), if writing => {
                    self.written += wrote.context("cannot write to Redis")?;
                    if self.unsent().is_empty() {
                        self.outbox.clear();
                        self.written = 0;
                    }
                }
            }
        }
    }

    /// Counts the answers read so far off the waiting pipelines; the oldest
    /// once all of its answers are in.
    fn count_answers(&mut self) -> anyhow::Result<Option<Sent>> {
        let mut at = 0;
        let mut done = None;
        while let Some(front) = self.waiting.front_mut() {
            let Some((len, error)) = resp::next_reply(&self.inbox[at..])? else {
                break;
            };
            at += len;
            front.answer(error);
            if front.complete() {
                done = self.waiting.pop_front();
                break;
            }
        }
        if self.waiting.is_empty() && at < self.inbox.len() && done.is_none() {
            bail!("Redis answered a command that was not sent");
        }
        self.inbox.drain(..at);
        Ok(done)
    }
}

/// The wait before connecting again, after a failed connect or a lost
/// connection.
struct Retry {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl Retry {
    fn arm(&mut self) {
        self.sleep
            .as_mut()
            .reset(tokio::time::Instant::now() + RECONNECT_DELAY);
        self.armed = true;
    }
}

/// [`Link::next_answer`], or never when there is no connection.
async fn next_answer(link: &mut Option<Link>) -> anyhow::Result<Sent> {
    match link {
        Some(l) => l.next_answer().await,
        None => std::future::pending().await,
    }
}

/// Drops the connection after `error`: the reports of every pipeline still
/// waiting are failures, and go back to the coalescer to be written again
/// (unless it is closed). The caller arms its [`Retry`].
fn lose(
    link: &mut Option<Link>,
    error: &anyhow::Error,
    queue: &Coalescer,
    stats: &RedisStats,
    losses: &mut u64,
) {
    let Some(l) = link.take() else { return };
    let reports: Vec<_> = l.waiting.into_iter().flat_map(|s| s.reports).collect();
    *losses += 1;
    if *losses % 100 == 1 {
        tracing::warn!(error = %format!("{error:#}"), polls = reports.len(), losses = *losses, "lost the Redis connection; its unanswered polls are written again after reconnecting");
    }
    stats
        .failures
        .fetch_add(reports.len() as u64, Ordering::Relaxed);
    // Shutting down, nothing is put back: against a Redis that takes
    // connections and drops them the writer would otherwise never end.
    if !queue.is_closed() {
        queue.requeue(reports);
    }
}

/// Counts one pipeline's outcome: for each report Redis took, its time
/// from its last response to now; the others are failures.
fn record(stats: &RedisStats, sent: &Sent) {
    let now = Utc::now();
    let mut refused = sent.refused.iter().peekable();
    for (i, report) in sent.reports.iter().enumerate() {
        if refused.next_if_eq(&&i).is_some() {
            continue;
        }
        let answered =
            report.started + chrono::Duration::from_std(report.latency).unwrap_or_default();
        let visible = (now - answered).to_std().unwrap_or_default();
        stats.visible.record(visible);
        stats.visible_distribution.record(visible);
    }
    let failed = sent.refused.len() as u64;
    stats
        .polls_written
        .fetch_add(sent.reports.len() as u64 - failed, Ordering::Relaxed);
    if let Some(e) = &sent.error {
        // Log the first failure of a run of failures, not every one.
        let before = stats.failures.fetch_add(failed, Ordering::Relaxed);
        if before / 100 != (before + failed) / 100 || before == 0 {
            tracing::warn!(error = %e, polls = failed, "Redis refused latest values");
        }
    }
}

/// Key naming and expiry.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub prefix: String,
    /// Expiry set on a device's keys at every write, so devices that are gone
    /// disappear; `None` keeps them.
    pub ttl: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> PollReport {
        let yaml = "devices:\n  - name: boiler-1\n    host: 127.0.0.1\n    port: 502\n    registers:\n      - { name: t, kind: holding, address: 0, type: f32, unit: \"°C\" }\n      - { name: on, kind: coil, address: 0 }\n      - { name: sn, kind: holding, address: 10, type: string, length: 2 }\n      - { name: p, kind: holding, address: 20 }\n";
        let device = Arc::new(crate::config::parse(yaml, "t").unwrap().remove(0));
        let ts = DateTime::parse_from_rfc3339("2026-11-23T10:00:00.1239Z")
            .unwrap()
            .with_timezone(&Utc);
        let reading = |index, value, quality, detail: Option<&str>| Reading {
            index,
            ts,
            value,
            quality,
            detail: detail.map(str::to_string),
        };
        PollReport {
            device,
            started: ts,
            latency: Duration::from_micros(1500),
            error: Some("exception 2 (illegal data address)".into()),
            reachable: true,
            readings: vec![
                reading(0, Value::Number(21.5), Quality::Good, None),
                reading(1, Value::Bool(true), Quality::Good, None),
                reading(
                    2,
                    Value::Text("A\"\n".into()),
                    Quality::Uncertain,
                    Some("odd"),
                ),
                reading(
                    3,
                    Value::None,
                    Quality::Bad,
                    Some("exception 2 (illegal data address)"),
                ),
            ],
        }
    }

    #[test]
    fn timestamps_are_written_as_rfc3339_writes_them() {
        for text in [
            "2026-11-23T10:00:00.1239Z",
            "1999-12-31T23:59:59.999999Z",
            "2024-02-29T00:00:00Z",
            "0001-01-01T00:00:00Z",
        ] {
            let ts = DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc);
            let mut out = Vec::new();
            push_rfc3339(&mut out, ts);
            assert_eq!(String::from_utf8(out).unwrap(), rfc3339(ts));
        }
    }

    #[test]
    fn the_byte_writer_matches_the_json_contract() {
        let report = report();
        for r in &report.readings {
            let mut out = Vec::new();
            push_latest_json(&mut out, &report, r, &mut None);
            let want = latest_json(
                &r.value,
                r.quality,
                r.ts,
                report.register(r).unit.as_deref(),
                r.detail.as_deref(),
            );
            assert_eq!(String::from_utf8(out).unwrap(), want.to_string());
        }
    }

    /// The commands of a packed pipeline, each as its arguments.
    fn unpack(packed: &[u8]) -> Vec<Vec<String>> {
        fn line<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let (l, r) = rest.split_at(end);
            *rest = &r[2..];
            l
        }
        let number = |l: &[u8], tag: u8| -> usize {
            assert_eq!(l[0], tag, "{}", String::from_utf8_lossy(l));
            std::str::from_utf8(&l[1..]).unwrap().parse().unwrap()
        };
        let mut rest = packed;
        let mut cmds = Vec::new();
        while !rest.is_empty() {
            let args = number(line(&mut rest), b'*');
            let mut cmd = Vec::new();
            for _ in 0..args {
                let len = number(line(&mut rest), b'$');
                cmd.push(String::from_utf8(rest[..len].to_vec()).unwrap());
                assert_eq!(&rest[len..len + 2], b"\r\n");
                rest = &rest[len + 2..];
            }
            cmds.push(cmd);
        }
        cmds
    }

    #[test]
    fn a_poll_is_its_hashes_and_message_and_an_error_is_set_with_the_state() {
        let mut report = report();
        let settings = RedisSettings {
            prefix: "p".into(),
            ttl: None,
        };
        let cmds = unpack(&packed_report(&settings, &report));
        let names: Vec<&str> = cmds.iter().map(|c| c[0].as_str()).collect();
        assert_eq!(names, ["HSET", "HSET", "PUBLISH"]);
        assert_eq!(cmds[0][1], "p:latest:boiler-1");
        let fields: Vec<&str> = cmds[0][2..].iter().step_by(2).map(String::as_str).collect();
        assert_eq!(fields, ["t", "on", "sn", "p"]);
        for (r, json) in report.readings.iter().zip(cmds[0][3..].iter().step_by(2)) {
            let mut want = Vec::new();
            push_latest_json(&mut want, &report, r, &mut None);
            assert_eq!(json.as_bytes(), want);
        }
        assert_eq!(
            cmds[1],
            [
                "HSET",
                "p:device:boiler-1",
                "state",
                "up",
                "last_poll",
                "2026-11-23T10:00:00.123Z",
                "latency_ms",
                "1.500",
                "last_success",
                "2026-11-23T10:00:00.123Z",
                "error",
                "exception 2 (illegal data address)"
            ]
        );
        assert_eq!(cmds[2][1], "p:updates:boiler-1");

        // A poll without an error clears the last one's; one that reached
        // nothing is down and has no last_success.
        report.error = None;
        report.reachable = false;
        let settings = RedisSettings {
            prefix: "p".into(),
            ttl: Some(Duration::from_secs(90)),
        };
        let cmds = unpack(&packed_report(&settings, &report));
        assert_eq!(cmds[1][2..4], ["state", "down"]);
        assert_eq!(cmds[1].len(), 8, "{:?}", cmds[1]);
        assert_eq!(cmds[2], ["HDEL", "p:device:boiler-1", "error"]);
        assert_eq!(cmds[3], ["EXPIRE", "p:latest:boiler-1", "90"]);
        assert_eq!(cmds[4], ["EXPIRE", "p:device:boiler-1", "90"]);
        assert_eq!(cmds[5][0], "PUBLISH");
        assert_eq!(cmds.len(), 6);
    }

    #[test]
    fn a_pipeline_carries_the_hashes_and_the_update_message() {
        let report = report();
        let settings = RedisSettings {
            prefix: "p".into(),
            ttl: Some(Duration::from_secs(60)),
        };
        let packed = String::from_utf8_lossy(&packed_report(&settings, &report)).into_owned();
        assert!(packed.contains("p:latest:boiler-1"));
        assert!(packed.contains("EXPIRE"));
        let message = packed
            .split("\r\n")
            .find(|l| l.starts_with("{\"device\""))
            .expect("update message");
        let parsed: serde_json::Value = serde_json::from_str(message).unwrap();
        assert_eq!(parsed["device"], "boiler-1");
        assert_eq!(parsed["ts"], "2026-11-23T10:00:00.123Z");
        assert_eq!(parsed["state"], "up");
        assert_eq!(parsed["latency_ms"], 1.5);
        assert_eq!(parsed["error"], "exception 2 (illegal data address)");
        assert_eq!(parsed["values"]["t"]["value"], 21.5);
        assert_eq!(parsed["values"]["t"]["unit"], "°C");
        assert_eq!(parsed["values"]["sn"]["value"], "A\"\n");
        assert_eq!(
            parsed["values"]["p"]["detail"],
            "exception 2 (illegal data address)"
        );
        let keys: Vec<&String> = parsed.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["device", "ts", "state", "latency_ms", "error", "values"]
        );
    }

    fn report_for(device: &str) -> Arc<PollReport> {
        let mut r = report();
        let mut d = (*r.device).clone();
        d.name = device.into();
        r.device = Arc::new(d);
        Arc::new(r)
    }

    /// A stand-in for Redis on a free port: it answers every command `:1`,
    /// or a WRONGTYPE error for keys with "wrongtype" in them, except that
    /// its first connection reads and never answers when `mute_first`. It
    /// keeps each connection's commands.
    async fn fake_redis(
        mute_first: bool,
    ) -> (String, Arc<std::sync::Mutex<Vec<Vec<Vec<String>>>>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            for n in 0.. {
                let (mut s, _) = listener.accept().await.unwrap();
                let log = Arc::clone(&log);
                let conn = {
                    let mut l = log.lock().unwrap();
                    l.push(Vec::new());
                    l.len() - 1
                };
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut answers = Vec::new();
                        while let Some((len, _)) = resp::next_reply(&buf).unwrap() {
                            let cmd = unpack(&buf[..len]).remove(0);
                            answers.extend_from_slice(if cmd.iter().any(|a| a.contains("wrongtype")) {
                                &b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"[..]
                            } else {
                                b":1\r\n"
                            });
                            log.lock().unwrap()[conn].push(cmd);
                            buf.drain(..len);
                        }
                        if !(mute_first && n == 0) {
                            s.write_all(&answers).await.unwrap();
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    fn start_writer(url: &str) -> (Arc<Coalescer>, Arc<RedisStats>, tokio::task::JoinHandle<()>) {
        let queue = Arc::new(Coalescer::default());
        let stats = Arc::new(RedisStats::default());
        let settings = RedisSettings {
            prefix: "p".into(),
            ttl: None,
        };
        let task = tokio::spawn(run_writer(
            Target::parse(url).unwrap(),
            settings,
            Arc::clone(&queue),
            Arc::clone(&stats),
        ));
        (queue, stats, task)
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_silent_redis_is_given_up_on_and_its_polls_written_after_reconnecting() {
        let (url, seen) = fake_redis(true).await;
        let (queue, stats, task) = start_writer(&url);
        let pushed = std::time::Instant::now();
        queue.push(report_for("boiler-1"));
        until("the poll to be written", || {
            stats.polls_written.load(Ordering::Relaxed) == 1
        })
        .await;
        let took = pushed.elapsed();
        assert!(took >= REDIS_TIMEOUT, "given up after {took:?}");
        assert!(
            took < REDIS_TIMEOUT * 2,
            "written again only after {took:?}"
        );
        assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.len(),
            2,
            "one connection given up on, one that answered"
        );
        for commands in &seen {
            assert_eq!(commands[0][..2], ["HSET", "p:latest:boiler-1"]);
        }
        queue.close();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_command_fails_its_own_poll_only() {
        let (url, seen) = fake_redis(false).await;
        let (queue, stats, task) = start_writer(&url);
        for device in ["a", "wrongtype", "b"] {
            queue.push(report_for(device));
        }
        queue.close();
        task.await.unwrap();
        assert_eq!(stats.polls_written.load(Ordering::Relaxed), 2);
        assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
        assert_eq!(stats.visible.count(), 2);
        // Redis ran the other commands of the pipeline all the same.
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].iter().filter(|c| c[0] == "PUBLISH").count(), 3);
    }

    #[tokio::test]
    async fn a_redis_that_is_not_there_keeps_the_newest_report_until_it_is() {
        // A port where nothing listens, then something does.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}/");
        let (queue, stats, task) = start_writer(&url);
        let mut old = report();
        old.latency = Duration::from_millis(1);
        let old = Arc::new(old);
        queue.push(old);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let newer = report_for("boiler-1");
        queue.push(Arc::clone(&newer));
        assert_eq!(
            stats.failures.load(Ordering::Relaxed),
            0,
            "waiting is not failing"
        );
        assert_eq!(queue.coalesced.load(Ordering::Relaxed), 1);

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(2), listener.accept())
            .await
            .expect("the writer tries again within its reconnect delay")
            .unwrap();
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut buf = Vec::new();
        let mut commands = Vec::new();
        while commands
            .last()
            .is_none_or(|c: &Vec<String>| c[0] != "PUBLISH")
        {
            s.read_buf(&mut buf).await.unwrap();
            while let Some((len, _)) = resp::next_reply(&buf).unwrap() {
                commands.extend(unpack(&buf[..len]));
                buf.drain(..len);
                s.write_all(b":1\r\n").await.unwrap();
            }
        }
        // Only the newest report of the group was written, once.
        assert_eq!(commands.iter().filter(|c| c[0] == "PUBLISH").count(), 1);
        let latency = &commands[1][commands[1].iter().position(|a| a == "latency_ms").unwrap() + 1];
        assert_eq!(latency, "1.500");
        until("the poll to be counted", || {
            stats.polls_written.load(Ordering::Relaxed) == 1
        })
        .await;
        queue.close();
        task.await.unwrap();
    }

    #[test]
    fn the_coalescer_keeps_the_newest_report_of_each_group() {
        let queue = Coalescer::default();
        let tagged = |device: &str, first: usize, latency_ms: u64| {
            let mut r = (*report_for(device)).clone();
            r.readings.retain(|x| x.index >= first);
            r.latency = Duration::from_millis(latency_ms);
            Arc::new(r)
        };
        queue.push(tagged("a", 0, 1));
        queue.push(tagged("a", 0, 2));
        // Another group of the same device, and the same registers of another device.
        queue.push(tagged("a", 2, 3));
        queue.push(tagged("b", 0, 4));
        assert_eq!(queue.coalesced.load(Ordering::Relaxed), 1);
        // Put back after a lost connection: only where nothing newer came.
        queue.requeue(vec![tagged("a", 0, 5), tagged("c", 0, 6)]);
        let mut kept: Vec<(String, usize, u128)> = queue
            .drain()
            .iter()
            .map(|r| {
                (
                    r.device.name.clone(),
                    r.readings[0].index,
                    r.latency.as_millis(),
                )
            })
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                ("a".into(), 0, 2),
                ("a".into(), 2, 3),
                ("b".into(), 0, 4),
                ("c".into(), 0, 6)
            ]
        );
    }

    #[tokio::test]
    async fn a_redis_that_drops_every_connection_is_retried_ten_times_a_second_and_shutdown_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
                drop(s);
            }
        });
        let (queue, stats, task) = start_writer(&url);
        queue.push(report_for("boiler-1"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = accepted.load(Ordering::Relaxed);
        assert!((3..=15).contains(&n), "{n} connections in a second");
        assert!(stats.failures.load(Ordering::Relaxed) >= 3);
        assert_eq!(stats.polls_written.load(Ordering::Relaxed), 0);
        queue.close();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the writer ends once closed, though Redis keeps dropping it")
            .unwrap();
    }
}
