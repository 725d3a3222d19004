//! The Redis latest-value cache (keys and JSON as in DESIGN.md):
//! `<prefix>:latest:<device>` (hash: register → JSON value),
//! `<prefix>:device:<device>` (hash: poll state) and one message per poll on
//! `<prefix>:updates:<device>`. One pipeline per poll.
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
use serde_json::{Map, json};
use std::collections::HashMap;

use tokio::sync::Notify;

use crate::reading::{PollReport, Quality, Reading, Value};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "regpoll";
/// Time allowed for connecting to Redis and for each pipeline.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

pub fn rfc3339(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The JSON of one register's latest value.
pub fn value_json(report: &PollReport, r: &Reading) -> serde_json::Value {
    latest_json(
        &r.value,
        r.quality,
        r.ts,
        report.register(r).unit.as_deref(),
        r.detail.as_deref(),
    )
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

/// The message published on `<prefix>:updates:<device>` after each poll.
pub fn update_message(
    report: &PollReport,
    values: Map<String, serde_json::Value>,
) -> serde_json::Value {
    json!({
        "device": report.device.name,
        "ts": rfc3339(report.started),
        "state": if report.reachable { "up" } else { "down" },
        "latency_ms": report.latency.as_secs_f64() * 1000.0,
        "error": report.error,
        "values": values,
    })
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

    /// Everything pending, or `None` once closed and drained.
    async fn take(&self) -> Option<Vec<Arc<PollReport>>> {
        loop {
            {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if !pending.reports.is_empty() {
                    return Some(pending.reports.drain().map(|(_, r)| r).collect());
                }
                if pending.closed {
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }
}

/// Writes what the coalescer holds until it is closed and drained.
pub async fn run_writer(
    mut con: ConnectionManager,
    settings: RedisSettings,
    queue: Arc<Coalescer>,
    stats: Arc<RedisStats>,
) {
    while let Some(reports) = queue.take().await {
        for report in reports {
            match write_report(&mut con, &settings, &report).await {
                Ok(()) => {
                    stats.polls_written.fetch_add(1, Ordering::Relaxed);
                    let answered = report.started
                        + chrono::Duration::from_std(report.latency).unwrap_or_default();
                    let visible = (Utc::now() - answered).to_std().unwrap_or_default();
                    stats.visible.record(visible);
                    stats.visible_distribution.record(visible);
                }
                Err(e) => {
                    // Log the first failure of a run of failures, not every one.
                    if stats
                        .failures
                        .fetch_add(1, Ordering::Relaxed)
                        .is_multiple_of(100)
                    {
                        tracing::warn!(error = %e, device = %report.device.name, "cannot write latest values to Redis");
                    }
                }
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

async fn write_report(
    con: &mut ConnectionManager,
    settings: &RedisSettings,
    report: &PollReport,
) -> redis::RedisResult<()> {
    let prefix = settings.prefix.as_str();
    let device = &report.device.name;
    // Each register's JSON is built once: it goes into the hash and, whole,
    // into the update message.
    let values: Map<String, serde_json::Value> = report
        .readings
        .iter()
        .map(|r| (report.register(r).name.clone(), value_json(report, r)))
        .collect();
    let fields: Vec<(&str, String)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_string()))
        .collect();
    let mut state: Vec<(&str, String)> = vec![
        (
            "state",
            if report.reachable { "up" } else { "down" }.to_string(),
        ),
        ("last_poll", rfc3339(report.started)),
        (
            "latency_ms",
            format!("{:.3}", report.latency.as_secs_f64() * 1000.0),
        ),
    ];
    if report.reachable {
        state.push(("last_success", rfc3339(report.started)));
    }
    let state_key = format!("{prefix}:device:{device}");
    let latest_key = format!("{prefix}:latest:{device}");
    let mut pipe = redis::pipe();
    if !values.is_empty() {
        pipe.hset_multiple(&latest_key, &fields).ignore();
    }
    pipe.hset_multiple(&state_key, &state).ignore();
    match &report.error {
        Some(e) => pipe.hset(&state_key, "error", e).ignore(),
        None => pipe.hdel(&state_key, "error").ignore(),
    };
    if let Some(ttl) = settings.ttl {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        pipe.expire(&latest_key, secs).ignore();
        pipe.expire(&state_key, secs).ignore();
    }
    pipe.publish(
        format!("{prefix}:updates:{device}"),
        update_message(report, values).to_string(),
    )
    .ignore();
    pipe.query_async::<()>(con).await
}
