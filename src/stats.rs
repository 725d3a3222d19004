//! One snapshot of the service's counters. `/metrics`, `/api/stats` and the
//! summary a run ends with all render a [`ServiceStats`], so a counter is
//! read in one place and every view of it agrees.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, json};
use tokio::sync::watch;

use crate::fleet::Counters;
use crate::history::jobs::{JobWatch, JobsReport};
use crate::history::writer::{HistorySnapshot, HistoryStats};
use crate::latest::memory::LatestMemory;
use crate::latest::redis::{Coalescer, RedisSnapshot, RedisStats};
use crate::modbus::stats::EndpointSnapshot;
use crate::reading::{Quality, rfc3339};
use crate::registry::Device;
use crate::registry::rejections::Rejections;
use crate::sink::HistoryDepth;
use crate::telemetry::DistributionSnapshot;

/// Where the numbers come from: shared handles into the running service. It
/// holds no queue sender, so it never keeps a writer alive at shutdown.
#[derive(Clone)]
pub struct Sources {
    pub(crate) latest: Arc<LatestMemory>,
    pub(crate) devices: watch::Receiver<Vec<Arc<Device>>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) history: Arc<HistoryStats>,
    pub(crate) history_depth: HistoryDepth,
    /// The Redis writer's counters and its coalescer, when Redis is configured.
    pub(crate) redis: Option<(Arc<RedisStats>, Arc<Coalescer>)>,
    /// TimescaleDB's background jobs, as last read.
    pub(crate) jobs: Arc<JobWatch>,
    /// Active devices whose registry rows cannot be used.
    pub(crate) registry: Arc<Rejections>,
    /// This instance's view of its cluster (`run --cluster`).
    pub(crate) cluster: Option<Arc<crate::cluster::ClusterView>>,
    /// The last runs of regpoll's own history jobs (rollup refresh, retention).
    pub(crate) maintenance: Arc<crate::history::maintenance::Runs>,
}

/// The service's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStats {
    pub at: DateTime<Utc>,
    /// Devices being polled, and those whose last poll reached them.
    pub devices: usize,
    pub devices_up: usize,
    pub polls: u64,
    /// Firings skipped because the group's previous poll was still running.
    pub overruns: u64,
    /// Readings by quality, in [`Quality::ALL`]'s order.
    pub readings: [u64; 3],
    pub lateness: DistributionSnapshot,
    pub endpoints: Vec<EndpointSnapshot>,
    pub history: HistorySnapshot,
    /// `None` without Redis.
    pub redis: Option<RedisSnapshot>,
    /// TimescaleDB's background jobs (none without TimescaleDB).
    pub jobs: JobsReport,
    /// Active devices whose registry rows cannot be used, with the reason.
    pub registry_rejected: std::collections::BTreeMap<String, String>,
}

impl Sources {
    /// The last runs of regpoll's own history jobs (rollup refresh,
    /// retention), for the health views.
    pub fn maintenance(&self) -> &crate::history::maintenance::Runs {
        &self.maintenance
    }

    /// This instance's view of its cluster, when it runs in one.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::ClusterView>> {
        self.cluster.as_ref()
    }

    /// The history writer's counters alone (what `/ready` checks).
    pub fn history_snapshot(&self) -> HistorySnapshot {
        self.history.snapshot(self.history_depth.get())
    }

    pub fn snapshot(&self) -> ServiceStats {
        let c = &self.counters;
        ServiceStats {
            at: Utc::now(),
            devices: self.devices.borrow().len(),
            devices_up: self.latest.up_count(),
            polls: c.polls.load(std::sync::atomic::Ordering::Relaxed),
            overruns: c.overruns.load(std::sync::atomic::Ordering::Relaxed),
            readings: Quality::ALL.map(|q| c.readings(q)),
            lateness: c.lateness.snapshot(),
            endpoints: c.endpoints.snapshot(),
            history: self.history.snapshot(self.history_depth.get()),
            redis: self.redis.as_ref().map(|(s, q)| s.snapshot(q)),
            jobs: self.jobs.report(),
            registry_rejected: self
                .registry
                .snapshot()
                .into_iter()
                .map(|(d, r)| (d, r.reason))
                .collect(),
        }
    }
}

impl ServiceStats {
    pub fn readings(&self, quality: Quality) -> u64 {
        self.readings[quality.index()]
    }

    /// Modbus requests sent and failed, over every endpoint.
    pub fn modbus_requests(&self) -> (u64, u64) {
        self.endpoints.iter().fold((0, 0), |(r, e), s| {
            (r + s.requests, e + s.errors.iter().sum::<u64>())
        })
    }

    /// The form `/api/stats` serves: totals since start and fine-grained
    /// distributions, from which the quantiles of any time window can be
    /// computed by subtracting two answers (the benchmark does).
    pub fn to_json(&self) -> serde_json::Value {
        let h = &self.history;
        let (requests, errors) = self.modbus_requests();
        let readings: Map<String, serde_json::Value> = Quality::ALL
            .iter()
            .map(|q| (q.as_str().to_string(), json!(self.readings(*q))))
            .collect();
        let redis = self.redis.clone().unwrap_or_else(|| RedisSnapshot {
            polls_written: 0,
            failures: 0,
            coalesced: 0,
            visible: DistributionSnapshot::empty(),
        });
        json!({
            "at": rfc3339(self.at),
            "devices": self.devices,
            "devices_up": self.devices_up,
            "polls": self.polls,
            "overruns": self.overruns,
            "readings": readings,
            "modbus_requests": requests,
            "modbus_errors": errors,
            "history": {
                "rows_written": h.rows_written,
                "batches": h.batches,
                "failures": h.failures,
                "duplicates": h.duplicates,
                "rows_lost": h.rows_lost,
                "rows_rejected": h.rows_rejected,
                "rows_spooled": h.rows_spooled,
                "rows_replayed": h.rows_replayed,
                "spool_damage": h.spool_damage,
                "spool_bytes": h.spool_bytes,
                "queue_depth": h.queue_depth,
                "reports_dropped": h.reports_dropped,
                "deadband_suppressed": h.deadband_suppressed,
                "rows_waiting": h.rows_waiting,
                "last_write": opt_rfc3339(h.last_write),
            },
            "redis": {
                "polls_written": redis.polls_written,
                "failures": redis.failures,
                "coalesced": redis.coalesced,
            },
            "timescaledb_jobs": self.jobs.jobs.as_ref().map(|jobs| {
                jobs.iter().map(|j| j.to_json(self.at)).collect::<Vec<_>>()
            }),
            "registry": { "rejected": self.registry_rejected },
            "distributions": {
                "lateness": self.lateness.to_json(),
                "history_write": h.write_latency.to_json(),
                "redis_visible": redis.visible.to_json(),
            },
        })
    }

    /// Logs the counters as one line: the summary a run ends with.
    pub fn log_summary(&self, message: &str) {
        let ms = |d: &DistributionSnapshot, q: f64| {
            d.quantiles(&[q]).map_or(0.0, |v| v[0].as_secs_f64() * 1e3)
        };
        let h = &self.history;
        let (redis_polls_written, redis_coalesced) = self
            .redis
            .as_ref()
            .map_or((0, 0), |r| (r.polls_written, r.coalesced));
        tracing::info!(
            polls = self.polls,
            rows_written = h.rows_written,
            rows_lost = h.rows_lost,
            rows_rejected = h.rows_rejected,
            reports_dropped = h.reports_dropped,
            deadband_suppressed = h.deadband_suppressed,
            duplicates = h.duplicates,
            rows_spooled = h.rows_spooled,
            rows_replayed = h.rows_replayed,
            spool_damage = h.spool_damage,
            spool_bytes = h.spool_bytes,
            write_p50_ms = ms(&h.write_latency, 0.5),
            write_p99_ms = ms(&h.write_latency, 0.99),
            redis_polls_written,
            redis_coalesced,
            overruns = self.overruns,
            lateness_p50_ms = ms(&self.lateness, 0.5),
            lateness_p99_ms = ms(&self.lateness, 0.99),
            lateness_max_ms = ms(&self.lateness, 1.0),
            "{message}"
        );
    }
}

fn opt_rfc3339(t: Option<DateTime<Utc>>) -> serde_json::Value {
    t.map_or(serde_json::Value::Null, |t| json!(rfc3339(t)))
}
