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

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::settings;

/// Most poll reports written in one pipeline.
const PIPELINE_REPORTS: usize = 256;
/// Most pipelines waiting for Redis's answer at once (see `run_writer`);
/// past it, reports gather in the coalescer, newest per poll group.
const MAX_IN_FLIGHT: usize = 4;

pub mod coalescer;
mod commands;
pub mod connection;
mod writer;

pub use coalescer::Coalescer;
pub use commands::packed_report;
pub use writer::{RedisStats, run_writer};

/// The readiness probe's connection (`/ready` sends PING on it). It
/// connects lazily, so the service starts even while Redis is down; the
/// writer has a connection of its own ([`run_writer`]).
pub fn connect(url: &str, timeout: Duration) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url)
        .with_context(|| format!("invalid REDIS_URL {}", crate::db::redact_url(url)))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, config)
        .context("cannot set up the Redis connection")
}

/// Key naming and expiry, and the writer's timing (defaults and reasons in
/// [`crate::settings`]).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub prefix: String,
    /// Expiry set on a device's keys at every write, so devices that are gone
    /// disappear; `None` keeps them.
    pub ttl: Option<Duration>,
    /// Time allowed for connecting to Redis and for each pipeline's answer.
    pub timeout: Duration,
    /// How long the writer lets reports gather before writing them together.
    pub linger: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            prefix: settings::REDIS_PREFIX.default_text().to_string(),
            ttl: None,
            timeout: settings::REDIS_TIMEOUT.default_duration(),
            linger: settings::REDIS_LINGER.default_duration(),
        }
    }
}

#[cfg(test)]
mod tests;
