//! The Redis latest-value cache (keys and JSON as in DESIGN.md):
//! `<prefix>:latest:<device>` (hash: register → JSON value),
//! `<prefix>:device:<device>` (hash: poll state) and one message per poll on
//! `<prefix>:updates:<device>`. One pipeline per poll.
//!
//! Redis must never slow polling or history: reports reach this writer through
//! a bounded queue that the fan-out never waits on, and `ConnectionManager`
//! reconnects by itself. A report that finds the queue full is skipped; the
//! next poll of that device writes every register again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::{Map, json};
use tokio::sync::mpsc;

use crate::reading::{PollReport, Quality, Reading};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "regpoll";
/// Time allowed for connecting to Redis and for each pipeline.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

pub fn rfc3339(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The JSON of one register's latest value.
pub fn value_json(report: &PollReport, r: &Reading) -> serde_json::Value {
    let reg = report.register(r);
    let mut v = json!({
        "value": r.value.to_json(),
        "quality": r.quality.as_str(),
        "ts": rfc3339(r.ts),
        "unit": reg.unit,
    });
    if r.quality != Quality::Good {
        v["detail"] = json!(r.detail);
    }
    v
}

/// The message published on `<prefix>:updates:<device>` after each poll.
pub fn update_message(report: &PollReport) -> serde_json::Value {
    let values: Map<String, serde_json::Value> = report
        .readings
        .iter()
        .map(|r| (report.register(r).name.clone(), value_json(report, r)))
        .collect();
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
}

/// Writes each report it receives until the channel closes.
pub async fn run_writer(
    mut con: ConnectionManager,
    prefix: String,
    mut rx: mpsc::Receiver<Arc<PollReport>>,
    stats: Arc<RedisStats>,
) {
    while let Some(report) = rx.recv().await {
        match write_report(&mut con, &prefix, &report).await {
            Ok(()) => {
                stats.polls_written.fetch_add(1, Ordering::Relaxed);
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

async fn write_report(
    con: &mut ConnectionManager,
    prefix: &str,
    report: &PollReport,
) -> redis::RedisResult<()> {
    let device = &report.device.name;
    let values: Vec<(String, String)> = report
        .readings
        .iter()
        .map(|r| {
            (
                report.register(r).name.clone(),
                value_json(report, r).to_string(),
            )
        })
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
    let mut pipe = redis::pipe();
    if !values.is_empty() {
        pipe.hset_multiple(format!("{prefix}:latest:{device}"), &values)
            .ignore();
    }
    pipe.hset_multiple(&state_key, &state).ignore();
    match &report.error {
        Some(e) => pipe.hset(&state_key, "error", e).ignore(),
        None => pipe.hdel(&state_key, "error").ignore(),
    };
    pipe.publish(
        format!("{prefix}:updates:{device}"),
        update_message(report).to_string(),
    )
    .ignore();
    pipe.query_async::<()>(con).await
}
