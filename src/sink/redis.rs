//! The Redis latest-value cache (keys and JSON as in DESIGN.md):
//! `<prefix>:latest:<device>` (hash: register → JSON value),
//! `<prefix>:device:<device>` (hash: poll state) and one message per poll on
//! `<prefix>:updates:<device>`. Polls pending together share one pipeline.
//!
//! Redis must never slow polling or history. Reports reach this writer through
//! a [`Coalescer`]: it keeps only the newest report of each poll group, so a
//! slow or absent Redis holds at most one pending report per group (never an
//! unbounded queue) and the fan-out never waits. `ConnectionManager`
//! reconnects by itself; each report rewrites every register of its group, so
//! after an outage the latest values are complete again within one poll.
//! While Redis lags, update messages of superseded polls are not published.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::json;
use std::collections::HashMap;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use tokio::sync::Notify;

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
    let year = ts.year();
    if !(0..=9999).contains(&year) {
        out.extend_from_slice(rfc3339(ts).as_bytes());
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

/// The bytes of [`latest_json`] for one reading, written straight into `out`.
fn push_latest_json(out: &mut Vec<u8>, report: &PollReport, r: &Reading) {
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
    push_rfc3339(out, r.ts);
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

/// Appends one poll's commands to `pipe`: the latest values, the device
/// state, expiry, and the update message.
///
/// It runs for every poll, so each command is built at its final size and
/// each register's JSON is written once: into the update message, whose
/// bytes the latest-values hash then copies. Building them through the
/// crate's command helpers (a `Vec` per value, commands that grow by
/// doubling, keys made with `format!`) was a sixth of regpoll's CPU at
/// 10,000 devices (perf, BENCHMARKS.md).
fn add_report(pipe: &mut redis::Pipeline, settings: &RedisSettings, report: &PollReport) {
    use redis::RedisWrite as _;
    use std::io::Write as _;
    let prefix = settings.prefix.as_str();
    let device = report.device.name.as_str();
    let mut started = Vec::with_capacity(24);
    push_rfc3339(&mut started, report.started);
    let latency_ms = report.latency.as_secs_f64() * 1000.0;
    let state = if report.reachable { "up" } else { "down" };

    // {"device","ts","state","latency_ms","error","values":{…}}, as DESIGN.md.
    let n = report.readings.len();
    let mut msg = Vec::with_capacity(160 + device.len() + n * 128);
    msg.extend_from_slice(b"{\"device\":");
    push_json(&mut msg, device);
    msg.extend_from_slice(b",\"ts\":\"");
    msg.extend_from_slice(&started);
    msg.extend_from_slice(b"\",\"state\":\"");
    msg.extend_from_slice(state.as_bytes());
    msg.extend_from_slice(b"\",\"latency_ms\":");
    push_json(&mut msg, &latency_ms);
    msg.extend_from_slice(b",\"error\":");
    match &report.error {
        Some(e) => push_json(&mut msg, e.as_str()),
        None => msg.extend_from_slice(b"null"),
    }
    msg.extend_from_slice(b",\"values\":{");
    // Where each register's JSON sits in the message.
    let mut spans = Vec::with_capacity(n);
    for (i, r) in report.readings.iter().enumerate() {
        if i > 0 {
            msg.push(b',');
        }
        push_json(&mut msg, &*report.register(r).name);
        msg.push(b':');
        let from = msg.len();
        push_latest_json(&mut msg, report, r);
        spans.push(from..msg.len());
    }
    msg.extend_from_slice(b"}}");

    let key = |cmd: &mut redis::Cmd, kind: &str| {
        let mut w = cmd.writer_for_next_arg();
        // Writing into the command's buffer cannot fail.
        let _ = write!(w, "{prefix}:{kind}:{device}");
    };
    let key_len = prefix.len() + device.len() + 10;
    if n > 0 {
        let data = 4
            + key_len
            + report
                .readings
                .iter()
                .zip(&spans)
                .map(|(r, span)| report.register(r).name.len() + span.len())
                .sum::<usize>();
        let mut cmd = redis::Cmd::with_capacity(2 + 2 * n, data);
        cmd.arg("HSET");
        key(&mut cmd, "latest");
        for (r, span) in report.readings.iter().zip(spans) {
            cmd.arg(&*report.register(r).name).arg(&msg[span]);
        }
        pipe.add_command(cmd).ignore();
    }

    let error = report.error.as_deref();
    let mut cmd = redis::Cmd::with_capacity(12, 96 + key_len + error.map_or(0, str::len));
    cmd.arg("HSET");
    key(&mut cmd, "device");
    cmd.arg("state").arg(state).arg("last_poll").arg(&started);
    cmd.arg("latency_ms");
    let _ = write!(cmd.writer_for_next_arg(), "{latency_ms:.3}");
    if report.reachable {
        cmd.arg("last_success").arg(&started);
    }
    if let Some(e) = error {
        cmd.arg("error").arg(e);
    }
    pipe.add_command(cmd).ignore();
    if error.is_none() {
        let mut cmd = redis::Cmd::with_capacity(3, 9 + key_len);
        cmd.arg("HDEL");
        key(&mut cmd, "device");
        cmd.arg("error");
        pipe.add_command(cmd).ignore();
    }
    if let Some(ttl) = settings.ttl {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        for kind in ["latest", "device"] {
            let mut cmd = redis::Cmd::with_capacity(3, 32 + key_len);
            cmd.arg("EXPIRE");
            key(&mut cmd, kind);
            cmd.arg(secs);
            pipe.add_command(cmd).ignore();
        }
    }
    let mut cmd = redis::Cmd::with_capacity(3, 8 + key_len + msg.len());
    cmd.arg("PUBLISH");
    key(&mut cmd, "updates");
    cmd.arg(msg);
    pipe.add_command(cmd).ignore();
}

/// The bytes the writer sends to Redis for `report` alone: what the
/// benchmark's floor replays to measure the cost of sending them.
pub fn packed_report(settings: &RedisSettings, report: &PollReport) -> Vec<u8> {
    let mut pipe = redis::pipe();
    add_report(&mut pipe, settings, report);
    pipe.get_packed_pipeline()
}

/// Connects lazily: the writer starts even while Redis is down.
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

/// Reports not yet written, keyed by poll group (device, first register).
#[derive(Debug, Default)]
struct Pending {
    reports: HashMap<(String, usize), Arc<PollReport>>,
    closed: bool,
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
    /// Keeps `report` as its group's newest (a group is identified by the
    /// device and its first register: groups do not share registers).
    pub fn push(&self, report: Arc<PollReport>) {
        let Some(first) = report.readings.first().map(|r| r.index) else {
            return;
        };
        let key = (report.device.name.clone(), first);
        let replaced = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reports
            .insert(key, report);
        if replaced.is_some() {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        self.wake.notify_one();
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
        pending.reports.drain().map(|(_, r)| r).collect()
    }
}

/// Writes what the coalescer holds until it is closed and drained.
pub async fn run_writer(
    con: ConnectionManager,
    settings: RedisSettings,
    queue: Arc<Coalescer>,
    stats: Arc<RedisStats>,
) {
    // Pipelines still waiting for Redis's answer. A new one is sent without
    // waiting for them (the connection is multiplexed and Redis runs them in
    // the order sent, so a newer report still lands last): a report that
    // arrives while one is in flight would otherwise wait out that round
    // trip as well as its own, which was the tail of response -> Redis at
    // 10,000 devices (round trips of 1-7 ms on a busy box, BENCHMARKS.md).
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
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
    let mut open = true;
    loop {
        tokio::select! {
            Some((chunk, result)) = in_flight.next(), if !in_flight.is_empty() => {
                record(&stats, &chunk, result);
            }
            more = queue.wait(), if open && !lingering && in_flight.len() < MAX_IN_FLIGHT => {
                if more {
                    linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                    lingering = true;
                } else {
                    open = false;
                }
            }
            () = &mut linger, if lingering => {
                lingering = false;
                // Each pipeline keeps the reports it carries, moved out of
                // the drained list rather than cloned from it.
                let mut reports = queue.drain().into_iter();
                loop {
                    let chunk: Vec<_> = reports.by_ref().take(PIPELINE_REPORTS).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    let mut pipe = redis::pipe();
                    for report in &chunk {
                        add_report(&mut pipe, &settings, report);
                    }
                    let mut con = con.clone();
                    in_flight.push(Box::pin(async move {
                        let result = pipe.query_async::<()>(&mut con).await;
                        (chunk, result)
                    }));
                }
            }
            else => break,
        }
    }
}

/// A pipeline sent to Redis, with the reports it carries.
type InFlight = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Vec<Arc<PollReport>>, redis::RedisResult<()>)> + Send>,
>;

/// Counts one pipeline's outcome: each report's time from its last response
/// to now, when Redis has acknowledged it, or a failure.
fn record(stats: &RedisStats, chunk: &[Arc<PollReport>], result: redis::RedisResult<()>) {
    match result {
        Ok(()) => {
            let now = Utc::now();
            stats
                .polls_written
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            for report in chunk {
                let answered =
                    report.started + chrono::Duration::from_std(report.latency).unwrap_or_default();
                let visible = (now - answered).to_std().unwrap_or_default();
                stats.visible.record(visible);
                stats.visible_distribution.record(visible);
            }
        }
        Err(e) => {
            // Log the first failure of a run of failures, not every one.
            let before = stats
                .failures
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if before / 100 != (before + chunk.len() as u64) / 100 || before == 0 {
                tracing::warn!(error = %e, polls = chunk.len(), "cannot write latest values to Redis");
            }
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
            push_latest_json(&mut out, &report, r);
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
        let mut pipe = redis::pipe();
        add_report(&mut pipe, &settings, &report);
        let cmds = unpack(&pipe.get_packed_pipeline());
        let names: Vec<&str> = cmds.iter().map(|c| c[0].as_str()).collect();
        assert_eq!(names, ["HSET", "HSET", "PUBLISH"]);
        assert_eq!(cmds[0][1], "p:latest:boiler-1");
        let fields: Vec<&str> = cmds[0][2..].iter().step_by(2).map(String::as_str).collect();
        assert_eq!(fields, ["t", "on", "sn", "p"]);
        for (r, json) in report.readings.iter().zip(cmds[0][3..].iter().step_by(2)) {
            let mut want = Vec::new();
            push_latest_json(&mut want, &report, r);
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
        let mut pipe = redis::pipe();
        add_report(&mut pipe, &settings, &report);
        let cmds = unpack(&pipe.get_packed_pipeline());
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
        let mut pipe = redis::pipe();
        add_report(&mut pipe, &settings, &report);
        let packed = String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();
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
}
