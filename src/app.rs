//! Wires the pieces together and owns startup and graceful shutdown.
//!
//! Startup: open the database (migrating it), sync a devices.yaml when one is
//! given, load the active devices, start the sinks' writers, then one task per
//! device that polls it on its schedule.
//!
//! Shutdown: stop starting polls, let in-flight polls finish (each request is
//! bounded by its timeout), close the queues so the writers drain them, and
//! wait for the writers for at most `shutdown_timeout`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::db::Db;
use crate::modbus::endpoint::Endpoint;
use crate::poller::DevicePoller;
use crate::registry::Device;
use crate::schedule::{Lateness, Ticker};
use crate::sink::Sinks;
use crate::sink::history::{self, BatchSettings, HistoryStats};
use crate::sink::memory::LatestMemory;
use crate::sink::redis::{self as redis_sink, RedisStats};

/// Default SQLite file when no database URL is given.
pub const DEFAULT_SQLITE_PATH: &str = "regpoll.db";
/// Default bound on how long shutdown waits for the writers to drain.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Settings {
    /// PostgreSQL URL; `None` keeps history in `sqlite_path`.
    pub database_url: Option<String>,
    pub sqlite_path: PathBuf,
    /// Redis URL; `None` keeps latest values in memory only.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// A devices.yaml to sync into the registry before loading it.
    pub devices_file: Option<PathBuf>,
    pub batch: BatchSettings,
    pub history_queue: usize,
    pub redis_queue: usize,
    pub shutdown_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            sqlite_path: PathBuf::from(DEFAULT_SQLITE_PATH),
            redis_url: None,
            redis_prefix: redis_sink::DEFAULT_PREFIX.to_string(),
            devices_file: None,
            batch: BatchSettings::default(),
            history_queue: crate::sink::DEFAULT_HISTORY_QUEUE,
            redis_queue: crate::sink::DEFAULT_REDIS_QUEUE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// Where the devices to poll come from.
pub enum DeviceSource {
    /// The registry in the database (after syncing `Settings::devices_file`).
    Registry,
    /// This file's devices: synced into the registry, then loaded from it (the
    /// demo uses this to poll the simulator on ports chosen at run time).
    Devices(Vec<Device>),
}

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub polls: u64,
    pub overruns: u64,
    pub rows_written: u64,
    pub rows_lost: u64,
    pub redis_polls_written: u64,
    pub redis_skipped: u64,
}

/// A running service.
pub struct Running {
    pub db: Db,
    pub latest: Arc<LatestMemory>,
    pub devices: Vec<Arc<Device>>,
    stop: watch::Sender<bool>,
    abort_writers: watch::Sender<bool>,
    pollers: Vec<JoinHandle<()>>,
    sinks: Sinks,
    history: JoinHandle<()>,
    redis: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    history_stats: Arc<HistoryStats>,
    redis_stats: Arc<RedisStats>,
    shutdown_timeout: Duration,
}

#[derive(Debug, Default)]
struct Counters {
    polls: AtomicU64,
    overruns: AtomicU64,
    lateness: Lateness,
}

/// Starts the service; it runs until [`Running::shutdown`].
pub async fn start(settings: &Settings, source: DeviceSource) -> anyhow::Result<Running> {
    let db = Db::open(settings.database_url.as_deref(), &settings.sqlite_path).await?;
    let from_file = match (source, &settings.devices_file) {
        (DeviceSource::Devices(d), _) => Some(d),
        (DeviceSource::Registry, Some(path)) => {
            Some(crate::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?)
        }
        (DeviceSource::Registry, None) => None,
    };
    if let Some(devices) = from_file {
        let report = db
            .sync_devices(&devices)
            .await
            .context("cannot sync devices into the registry")?;
        tracing::info!(
            added = report.added.len(),
            changed = report.changed.len(),
            deactivated = report.deactivated.len(),
            unchanged = report.unchanged,
            "registry synced"
        );
    }
    let loaded = db.load_active_devices().await?;
    for p in &loaded.problems {
        tracing::error!(problem = %p, "registry row cannot be used");
    }
    if loaded.devices.is_empty() {
        tracing::warn!(
            "no active devices in the registry; add some with `regpoll devices sync devices.yaml`"
        );
    }

    let latest = Arc::new(LatestMemory::default());
    let (abort_writers, abort_rx) = watch::channel(false);
    let (history_tx, history_rx) = mpsc::channel(settings.history_queue.max(1));
    let history_stats = Arc::new(HistoryStats::default());
    let history = tokio::spawn(history::run_writer(
        db.clone(),
        history_rx,
        settings.batch,
        Arc::clone(&history_stats),
        abort_rx,
    ));
    let redis_stats = Arc::new(RedisStats::default());
    let (redis_tx, redis) = match &settings.redis_url {
        Some(url) => {
            let con = redis_sink::connect(url)?;
            let (tx, rx) = mpsc::channel(settings.redis_queue.max(1));
            let task = tokio::spawn(redis_sink::run_writer(
                con,
                settings.redis_prefix.clone(),
                rx,
                Arc::clone(&redis_stats),
            ));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let sinks = Sinks::new(Arc::clone(&latest), history_tx, redis_tx);

    let (stop, stop_rx) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let mut endpoints: HashMap<String, Arc<Endpoint>> = HashMap::new();
    let mut devices = Vec::new();
    let mut pollers = Vec::new();
    for d in loaded.devices {
        let endpoint = endpoints
            .entry(d.endpoint())
            .or_insert_with(|| Arc::new(Endpoint::new(d.host.clone(), d.port)));
        let device = Arc::new(d);
        devices.push(Arc::clone(&device));
        for (schedule, members) in device.poll_groups() {
            let ticker = Ticker::new(
                &schedule,
                &format!("{}/{}", device.name, schedule.describe()),
            );
            let poller = DevicePoller::group(Arc::clone(&device), Arc::clone(endpoint), members);
            pollers.push(tokio::spawn(group_loop(
                poller,
                ticker,
                sinks.clone(),
                stop_rx.clone(),
                Arc::clone(&counters),
            )));
        }
    }
    tracing::info!(
        devices = devices.len(),
        endpoints = endpoints.len(),
        database = db.kind(),
        redis = settings.redis_url.is_some(),
        "polling started"
    );
    Ok(Running {
        db,
        latest,
        devices,
        stop,
        abort_writers,
        pollers,
        sinks,
        history,
        redis,
        counters,
        history_stats,
        redis_stats,
        shutdown_timeout: settings.shutdown_timeout,
    })
}

/// Polls one poll group on its schedule until told to stop. A poll still
/// running at its next firing skips that firing (an overrun); there is never
/// a burst of catch-up polls.
async fn group_loop(
    poller: DevicePoller,
    ticker: Ticker,
    sinks: Sinks,
    mut stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    let mut next = ticker.next_after(Utc::now());
    while let Some(due) = next {
        let wait = (due - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        counters
            .lateness
            .record((Utc::now() - due).to_std().unwrap_or_default());
        let report = poller.poll().await;
        sinks.deliver(report).await;
        counters.polls.fetch_add(1, Ordering::Relaxed);
        let (missed, following) = ticker.after_poll(due, Utc::now());
        if missed > 0 {
            counters.overruns.fetch_add(missed, Ordering::Relaxed);
            tracing::debug!(device = %poller.device().name, missed, "poll overran its schedule; skipped firings");
        }
        next = following;
    }
}

impl Running {
    pub fn polls(&self) -> u64 {
        self.counters.polls.load(Ordering::Relaxed)
    }

    pub fn overruns(&self) -> u64 {
        self.counters.overruns.load(Ordering::Relaxed)
    }

    /// Quantiles of schedule lateness over recent polls (see `schedule::Lateness`).
    pub fn lateness(&self, qs: &[f64]) -> Option<Vec<Duration>> {
        self.counters.lateness.quantiles(qs)
    }

    /// Stops polling, flushes every queue and returns what the run did.
    pub async fn shutdown(self) -> anyhow::Result<RunSummary> {
        let _ = self.stop.send(true);
        for p in self.pollers {
            let _ = p.await;
        }
        let redis_skipped = self.sinks.redis_skipped();
        // The last senders: once dropped, the writers drain their queues and end.
        drop(self.sinks);
        let writers = async {
            let _ = self.history.await;
            if let Some(r) = self.redis {
                let _ = r.await;
            }
        };
        tokio::pin!(writers);
        if tokio::time::timeout(self.shutdown_timeout, &mut writers)
            .await
            .is_err()
        {
            tracing::error!(
                timeout_s = self.shutdown_timeout.as_secs_f64(),
                "writers did not finish in time; giving up on what they hold"
            );
            let _ = self.abort_writers.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut writers).await;
        }
        self.db.close().await;
        Ok(RunSummary {
            polls: self.counters.polls.load(Ordering::Relaxed),
            overruns: self.counters.overruns.load(Ordering::Relaxed),
            rows_written: self.history_stats.rows_written.load(Ordering::Relaxed),
            rows_lost: self.history_stats.rows_lost.load(Ordering::Relaxed),
            redis_polls_written: self.redis_stats.polls_written.load(Ordering::Relaxed),
            redis_skipped,
        })
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
