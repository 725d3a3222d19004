//! Wires the pieces together and owns startup and graceful shutdown.
//!
//! Startup: open the database (migrating it), sync a devices.yaml when one is
//! given, load the active devices, start the sinks' writers, then the fleet:
//! one task per poll group.
//!
//! While running, a supervisor reloads the registry when it changes (a
//! PostgreSQL notification from the registry's triggers, or a check every
//! `reload_interval`, which also catches SQLite and an edited devices.yaml)
//! and restarts only the devices whose definition changed.
//!
//! Shutdown: stop starting polls, let in-flight polls finish (each request is
//! bounded by its timeout), close the queues so the writers drain them, and
//! wait for the writers for at most `shutdown_timeout`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::postgres::PgListener;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::{self, ApiState};
use crate::db::Db;
use crate::fleet::{Counters, Fleet};
use crate::history::retention;
use crate::history::writer::{self as history, BatchSettings, HistoryStats};
use crate::latest::memory::LatestMemory;
use crate::latest::redis::connection::Target;
use crate::latest::redis::{self as redis_sink, RedisStats};
use crate::registry::Device;
use crate::settings;
use crate::sink::Sinks;
use crate::stats::{ServiceStats, Sources};

#[derive(Debug, Clone)]
pub struct Settings {
    /// PostgreSQL URL; `None` keeps history in `sqlite_path`.
    pub database_url: Option<String>,
    pub sqlite_path: PathBuf,
    /// Redis URL; `None` keeps latest values in memory only.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// Bound on connecting to Redis and on each pipeline's answer.
    pub redis_timeout: Duration,
    /// How long the Redis writer lets reports gather into one pipeline.
    pub redis_linger: Duration,
    /// A devices.yaml to sync into the registry before loading it.
    pub devices_file: Option<PathBuf>,
    pub batch: BatchSettings,
    /// Poll reports that may wait for the history writer.
    pub history_queue: usize,
    /// Expiry of each device's Redis keys, refreshed at every write.
    pub redis_ttl: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub reload_interval: Duration,
    /// How long readings are kept (`None`: forever).
    pub retention: Option<Duration>,
    /// Where the HTTP API listens (`None`: no HTTP). The command line
    /// defaults to `settings::HTTP`; the library default is off so that
    /// embedded and test services never compete for a port.
    pub http: Option<SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            sqlite_path: PathBuf::from(settings::SQLITE_PATH.default_text()),
            redis_url: None,
            redis_prefix: settings::REDIS_PREFIX.default_text().to_string(),
            redis_timeout: settings::REDIS_TIMEOUT.default_duration(),
            redis_linger: settings::REDIS_LINGER.default_duration(),
            devices_file: None,
            batch: BatchSettings::default(),
            history_queue: settings::HISTORY_QUEUE,
            redis_ttl: None,
            shutdown_timeout: settings::SHUTDOWN_TIMEOUT.default_duration(),
            reload_interval: settings::RELOAD_INTERVAL.default_duration(),
            retention: retention::parse_retention(settings::RETENTION.default_text())
                .expect("the default retention parses"),
            http: None,
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

/// A running service.
pub struct Running {
    pub db: Db,
    pub latest: Arc<LatestMemory>,
    devices: watch::Receiver<Vec<Arc<Device>>>,
    stop: watch::Sender<bool>,
    abort_writers: watch::Sender<bool>,
    supervisor: JoinHandle<()>,
    retention_job: Option<JoinHandle<()>>,
    sinks: Sinks,
    history: JoinHandle<()>,
    redis: Option<JoinHandle<()>>,
    stats: Sources,
    shutdown_timeout: Duration,
    /// Turns false when shutdown begins (`/ready` then answers 503).
    scheduling: watch::Sender<bool>,
    http: Option<(SocketAddr, JoinHandle<()>)>,
    stop_http: watch::Sender<bool>,
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

    let retention_job = match (
        retention::set_policy(&db, settings.retention).await?,
        settings.retention,
    ) {
        (false, Some(keep)) => Some(tokio::spawn(retention_loop(db.clone(), keep))),
        _ => None,
    };

    let latest = Arc::new(LatestMemory::default());
    let (abort_writers, abort_rx) = watch::channel(false);
    let (history_tx, history_rx) = mpsc::channel(settings.history_queue.max(1));
    let history_stats = Arc::new(HistoryStats::default());
    let history = tokio::spawn(history::run_writer(
        db.clone(),
        history_rx,
        settings.batch.clone(),
        Arc::clone(&history_stats),
        abort_rx,
    ));
    let redis_stats = Arc::new(RedisStats::default());
    let mut redis_target = None;
    let (redis_queue, redis) = match &settings.redis_url {
        Some(url) => {
            let target = Target::parse(url)?;
            redis_target = Some(target.clone());
            let queue = Arc::new(redis_sink::Coalescer::default());
            let redis_settings = redis_sink::RedisSettings {
                prefix: settings.redis_prefix.clone(),
                ttl: settings.redis_ttl,
                timeout: settings.redis_timeout,
                linger: settings.redis_linger,
            };
            let task = tokio::spawn(redis_sink::run_writer(
                target,
                redis_settings,
                Arc::clone(&queue),
                Arc::clone(&redis_stats),
            ));
            (Some(queue), Some(task))
        }
        None => (None, None),
    };
    let sinks = Sinks::new(
        Arc::clone(&latest),
        history_tx,
        Arc::clone(&history_stats),
        redis_queue.clone(),
    );

    let (stop, stop_rx) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let mut fleet = Fleet::new(sinks.clone(), Arc::clone(&counters));
    let devices = fleet.devices();
    let stats = Sources {
        latest: Arc::clone(&latest),
        devices: devices.clone(),
        counters,
        history: history_stats,
        history_depth: sinks.history_depth_probe(),
        redis: redis_queue.map(|q| (redis_stats, q)),
    };
    fleet.reconcile(loaded.devices).await;
    let watcher =
        RegistryWatch::new(&db, settings.devices_file.clone(), settings.reload_interval).await;
    let supervisor = tokio::spawn(supervise(fleet, db.clone(), watcher, stop_rx));
    let (scheduling, scheduling_rx) = watch::channel(true);
    let (stop_http, stop_http_rx) = watch::channel(false);
    let http = match settings.http {
        Some(addr) => {
            let state = ApiState::new(db.clone(), stats.clone(), redis_target, scheduling_rx);
            let (bound, task) = match api::serve(addr, state, stop_http_rx).await {
                Ok(served) => served,
                Err(e) => {
                    // Leave nothing running behind the error.
                    let _ = stop.send(true);
                    let _ = supervisor.await;
                    return Err(e);
                }
            };
            tracing::info!(address = %bound, "HTTP API listening");
            Some((bound, task))
        }
        None => None,
    };
    tracing::info!(
        devices = devices.borrow().len(),
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
        supervisor,
        retention_job,
        sinks,
        history,
        redis,
        stats,
        shutdown_timeout: settings.shutdown_timeout,
        scheduling,
        http,
        stop_http,
    })
}

/// Deletes expired readings every `RETENTION_EVERY` (databases without
/// TimescaleDB's retention policy). Aborted at shutdown.
async fn retention_loop(db: Db, keep: Duration) {
    loop {
        match retention::delete_older(&db, keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired readings deleted"),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "cannot delete expired readings; will retry"
            ),
        }
        tokio::time::sleep(retention::RETENTION_EVERY).await;
    }
}

/// Keeps the fleet equal to the registry until told to stop, then stops it.
async fn supervise(
    mut fleet: Fleet,
    db: Db,
    mut watcher: RegistryWatch,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_problems = Vec::new();
    let mut fingerprint = db.registry_fingerprint().await.ok().flatten();
    loop {
        let notified = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            n = watcher.changed() => n,
        };
        watcher.sync_file_if_changed(&db).await;
        // A notification always reloads. The periodic check reloads only when
        // the registry's fingerprint moved: loading 10,000 devices every
        // 2 s for nothing would cost more CPU than polling some of them.
        let now = db.registry_fingerprint().await.ok().flatten();
        if !notified && now.is_some() && now == fingerprint {
            continue;
        }
        fingerprint = now;
        let loaded = match db.load_active_devices().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot reload the registry; keeping the devices being polled"
                );
                continue;
            }
        };
        if loaded.problems != last_problems {
            for p in &loaded.problems {
                tracing::error!(problem = %p, "registry row cannot be used");
            }
            last_problems = loaded.problems;
        }
        let changes = fleet.reconcile(loaded.devices).await;
        if !changes.is_empty() {
            tracing::info!(started = ?changes.started, restarted = ?changes.restarted, stopped = ?changes.stopped, "registry reloaded");
        }
    }
    fleet.stop_all().await;
}

/// Says when the registry may have changed: at once on a PostgreSQL
/// notification, otherwise every `interval`; and syncs the devices.yaml given
/// to `run --devices` when its content changes.
struct RegistryWatch {
    listener: Option<PgListener>,
    interval: Duration,
    file: Option<(PathBuf, u64)>,
}

/// Channel the registry triggers notify (migrations/postgres/0005).
const REGISTRY_CHANNEL: &str = "regpoll_registry";

impl RegistryWatch {
    async fn new(db: &Db, file: Option<PathBuf>, interval: Duration) -> Self {
        let listener = match db.as_postgres() {
            Some(pool) => Self::listen(pool).await,
            None => None,
        };
        let file = file.map(|p| {
            let h = content_hash(&p);
            (p, h)
        });
        Self {
            listener,
            interval,
            file,
        }
    }

    async fn listen(pool: &sqlx::PgPool) -> Option<PgListener> {
        let result = async {
            let mut l = PgListener::connect_with(pool).await?;
            l.listen(REGISTRY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        result
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "cannot LISTEN for registry changes; checking every reload interval"))
            .ok()
    }

    /// Waits for the next check; true when a notification caused it.
    async fn changed(&mut self) -> bool {
        let interval = self.interval;
        let notified = async {
            match &mut self.listener {
                Some(l) => l.recv().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let (notified, lost) = tokio::select! {
            ok = notified => (ok, !ok),
            () = tokio::time::sleep(interval) => (false, false),
        };
        if lost {
            tracing::warn!(
                "lost the registry notification channel; checking every reload interval"
            );
            self.listener = None;
        }
        notified
    }

    /// Syncs the devices.yaml into the registry when its content changed. An
    /// invalid file is reported and changes nothing.
    async fn sync_file_if_changed(&mut self, db: &Db) {
        let Some((path, seen)) = &mut self.file else {
            return;
        };
        let now = content_hash(path);
        if now == *seen {
            return;
        }
        *seen = now;
        match crate::config::load(path) {
            Ok(devices) => match db.sync_devices(&devices).await {
                Ok(report) => {
                    tracing::info!(file = %path.display(), added = ?report.added, changed = ?report.changed, deactivated = ?report.deactivated, "devices file changed; registry synced")
                }
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "cannot sync the changed devices file"
                ),
            },
            Err(e) => {
                tracing::error!(file = %path.display(), errors = %e, "devices file changed but is invalid; keeping the registry as it is")
            }
        }
    }
}

/// The file's length and CRC-32 (`u64::MAX` when unreadable): catches edits that keep
/// the size and modification time, which a metadata check would miss.
/// CRC-32 because it runs at memory speed: a byte-wise hash of a 6.5 MB file
/// of 10,000 devices every reload interval was 0.9 % of regpoll's CPU.
/// Read in 64 KiB pieces: reading the whole file put its size (7 MB for
/// 10,000 devices) on regpoll's peak memory every reload interval.
fn content_hash(path: &std::path::Path) -> u64 {
    use std::io::Read as _;
    let hash = || -> std::io::Result<u64> {
        let mut file = std::fs::File::open(path)?;
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    crc.update(&buf[..n]);
                    len += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((len << 32) | u64::from(crc.finalize()))
    };
    hash().unwrap_or(u64::MAX)
}

impl Running {
    /// Poll reports waiting for the history writer now.
    pub fn history_queue_depth(&self) -> usize {
        self.sinks.history_queue_depth()
    }

    /// The devices being polled now (hot reload changes them).
    pub fn devices(&self) -> Vec<Arc<Device>> {
        self.devices.borrow().clone()
    }

    pub fn polls(&self) -> u64 {
        self.stats.counters.polls.load(Ordering::Relaxed)
    }

    pub fn overruns(&self) -> u64 {
        self.stats.counters.overruns.load(Ordering::Relaxed)
    }

    /// Quantiles of schedule lateness over the run (see `telemetry::Distribution`).
    pub fn lateness(&self, qs: &[f64]) -> Option<Vec<Duration>> {
        self.stats.counters.lateness.quantiles(qs)
    }

    /// The service's counters now.
    pub fn stats(&self) -> ServiceStats {
        self.stats.snapshot()
    }

    /// Where the HTTP API listens, when it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(a, _)| *a)
    }

    /// Stops polling, flushes every queue and returns what the run did: the
    /// counters once the writers are done.
    pub async fn shutdown(self) -> anyhow::Result<ServiceStats> {
        let _ = self.scheduling.send(false);
        let _ = self.stop.send(true);
        let _ = self.supervisor.await;
        if let Some(job) = self.retention_job {
            job.abort();
        }
        self.sinks.close_redis();
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
        // The API stays up until the writers are done, so probes see the
        // shutdown (503 from /ready) and metrics stay readable meanwhile.
        let _ = self.stop_http.send(true);
        if let Some((_, task)) = self.http
            && tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
        {
            tracing::warn!("HTTP connections still open at shutdown; closing them");
        }
        self.db.close().await;
        Ok(self.stats.snapshot())
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

#[cfg(test)]
mod tests {
    use super::content_hash;

    #[test]
    fn content_hash_reads_the_whole_file_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.yaml");
        // Over two 64 KiB pieces, with a change only in the last one.
        let mut bytes: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let whole = ((bytes.len() as u64) << 32) | u64::from(crc32fast::hash(&bytes));
        assert_eq!(content_hash(&path), whole);
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_ne!(content_hash(&path), whole, "same length, last byte changed");
        assert_eq!(content_hash(&dir.path().join("missing.yaml")), u64::MAX);
    }
}
