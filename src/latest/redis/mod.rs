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

use crate::settings;

/// Most poll reports written in one pipeline.
const PIPELINE_REPORTS: usize = 256;
/// Most pipelines waiting for Redis's answer at once (see `run_writer`);
/// past it, reports gather in the coalescer, newest per poll group.
const MAX_IN_FLIGHT: usize = 4;

mod coalescer;
mod commands;
pub(crate) mod connection;
mod tls;
mod writer;

pub use coalescer::Coalescer;
pub use commands::packed_report;
pub use connection::{ProtocolError, Reply, Stream, next_reply};
pub use tls::RedisTls;
pub use writer::{RedisSnapshot, RedisStats, run_writer};

/// A connection that sends bytes as they are and hands back Redis's
/// answers unparsed, opened as the writer opens its own (AUTH and SELECT
/// from the URL, TLS from `tls` for `rediss://`, within `timeout`). It is for tools that must send exactly
/// what the writer sends ([`packed_report`]) and pay what it pays to read
/// the answers ([`next_reply`]), such as the benchmark's floor; the service
/// itself uses [`run_writer`].
pub async fn connect_raw(url: &str, tls: &RedisTls, timeout: Duration) -> anyhow::Result<Stream> {
    connection::Target::parse(url, tls)?.connect(timeout).await
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
