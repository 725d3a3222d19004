//! Wires the pieces together and owns startup and graceful shutdown.
//!
//! Startup: open the database (migrating it), sync a devices.yaml when one is
//! given, load the active devices (and keep a copy of them, the registry
//! cache, in the data dir), start the sinks' writers, then the fleet: one
//! task per poll group. When PostgreSQL does not answer, the devices come
//! from the registry cache instead and the supervisor connects later
//! (`database`).
//!
//! While running, a supervisor (`supervise`) reloads the registry when it
//! changes (a PostgreSQL notification from the registry's triggers, or a
//! check every `reload_interval`, which also catches SQLite and an edited
//! devices.yaml) and restarts only the devices whose definition changed.
//!
//! Shutdown: stop starting polls, let in-flight polls finish (each request is
//! bounded by its timeout), close the queues so the writers drain them, and
//! wait for the writers for at most `shutdown_timeout`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::api::{self, ApiState};
use crate::cluster::ClusterView;
use crate::db::{Connectivity, Db, Outage};
use crate::fleet::{Counters, Fleet};
use crate::history::health::{self, StorageWatch};
use crate::history::jobs::JobWatch;
use crate::history::maintenance::{Job, Runs};
use crate::history::retention::{self, Tiers};
use crate::history::rollup;
use crate::history::writer::{self as history, BatchSettings, HistoryStats};
use crate::latest::memory::LatestMemory;
use crate::latest::redis::connection::Target;
use crate::latest::redis::{self as redis_sink, RedisStats};
use crate::registry::Device;
use crate::settings;
use crate::sink::Sinks;
use crate::stats::{ServiceStats, Sources};

mod database;
mod ownership;
mod reload;
mod supervise;

use database::{Reconnect, SyncSource};
use ownership::Ownership;
use supervise::{RegistryWatch, Supervision, supervise};

#[derive(Debug, Clone)]
pub struct Settings {
    /// PostgreSQL URL; `None` keeps history in `sqlite_path`.
    pub database_url: Option<String>,
    /// TLS settings over the URL's own `ssl*` parameters.
    pub database_tls: crate::db::PgTls,
    pub sqlite_path: PathBuf,
    /// Redis URL; `None` keeps latest values in memory only.
    pub redis_url: Option<String>,
    /// CA and client certificate for a `rediss://` URL.
    pub redis_tls: redis_sink::RedisTls,
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
    /// How long raw readings are kept (`None`: forever).
    pub retention: Option<Duration>,
    /// How long the 1-minute rollup is kept (`None`: forever).
    pub retention_1m: Option<Duration>,
    /// How long the hourly rollup is kept (`None`: forever).
    pub retention_1h: Option<Duration>,
    /// How often regpoll refreshes the rollups it keeps.
    pub rollup_interval: Duration,
    /// How often the database's health (TimescaleDB's background jobs,
    /// the tables' storage) is read.
    pub jobs_check_interval: Duration,
    /// Bound on each read of the database's health.
    pub db_health_timeout: Duration,
    /// Where the HTTP API listens (`None`: no HTTP). The command line
    /// defaults to `settings::HTTP`; the library default is off so that
    /// embedded and test services never compete for a port.
    pub http: Option<SocketAddr>,
    /// Limits of the HTTP API (requests at once, waits, timeout, its own
    /// database pool, the size of one answer).
    pub api: api::ApiLimits,
    /// Who may use the HTTP API (tokens), and HTTPS.
    pub http_access: api::auth::Access,
    /// Where the registry cache is kept (`None`: no cache, so no start
    /// while PostgreSQL is unreachable). The command line passes `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// Longest wait between two attempts to connect after a start without
    /// the database.
    pub database_retry_max: Duration,
    /// Share the fleet with the other instances on the same PostgreSQL
    /// database (`run --cluster`); `None`: poll every active device.
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            database_tls: crate::db::PgTls::default(),
            sqlite_path: PathBuf::from(settings::SQLITE_PATH.default_text()),
            redis_url: None,
            redis_tls: redis_sink::RedisTls::default(),
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
            retention_1m: retention::parse_rollup_retention_arg(
                settings::RETENTION_1M.default_text(),
            )
            .expect("the default retention parses")
            .resolve(
                retention::parse_retention(settings::RETENTION.default_text())
                    .expect("the default retention parses"),
            ),
            retention_1h: retention::parse_retention(settings::RETENTION_1H.default_text())
                .expect("the default retention parses"),
            rollup_interval: settings::ROLLUP_INTERVAL.default_duration(),
            jobs_check_interval: settings::JOBS_CHECK_INTERVAL.default_duration(),
            db_health_timeout: settings::DB_HEALTH_TIMEOUT.default_duration(),
            http: None,
            api: api::ApiLimits::default(),
            http_access: api::auth::Access::default(),
            data_dir: None,
            database_retry_max: settings::DATABASE_RETRY_MAX.default_duration(),
            cluster: None,
        }
    }
}

impl Settings {
    /// The retention of each tier of history.
    pub fn retention_tiers(&self) -> Tiers {
        Tiers {
            raw: self.retention,
            minute: self.retention_1m,
            hour: self.retention_1h,
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
    /// Reads the database's health (TimescaleDB's job statistics, the
    /// tables' storage); aborted at shutdown.
    jobs_watch: JoinHandle<()>,
    sinks: Sinks,
    history: JoinHandle<()>,
    redis: Option<JoinHandle<()>>,
    stats: Sources,
    shutdown_timeout: Duration,
    /// Turns false when shutdown begins (`/ready` then answers 503).
    scheduling: watch::Sender<bool>,
    http: Option<(SocketAddr, JoinHandle<()>)>,
    stop_http: watch::Sender<bool>,
    connectivity: Connectivity,
    /// The cluster task (`run --cluster`) and how to ask it to leave.
    cluster: Option<ClusterTask>,
    /// Held until the service has stopped (see [`lock_data_dir`]).
    _data_dir_lock: Option<std::fs::File>,
}

struct ClusterTask {
    leave: oneshot::Sender<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Starts the service; it runs until [`Running::shutdown`].
pub async fn start(settings: &Settings, source: DeviceSource) -> anyhow::Result<Running> {
    // Every setting that can be wrong is checked before anything is
    // written: a bad Redis URL must not leave a half-synced registry.
    let redis_target = settings
        .redis_url
        .as_deref()
        .map(|url| Target::parse(url, &settings.redis_tls))
        .transpose()?;
    settings
        .retention_tiers()
        .check()
        .map_err(anyhow::Error::msg)?;
    let http_access = http_access(settings)?;
    let data_dir_lock = settings
        .data_dir
        .as_deref()
        .map(lock_data_dir)
        .transpose()?;
    if let Some(cluster) = &settings.cluster {
        cluster.check()?;
        if settings.database_url.is_none() {
            anyhow::bail!(
                "--cluster needs PostgreSQL: the instances share the fleet through its tables, and an SQLite file belongs to one machine; give --database-url (or REGPOLL_DATABASE_URL), or run without --cluster"
            );
        }
    }
    let (db, unreachable) = database::open(settings).await?;
    let mut cache = database::cache_writer(settings, &db);
    let sync_source = match source {
        DeviceSource::Devices(d) => Some(SyncSource::Devices(d)),
        DeviceSource::Registry => settings.devices_file.clone().map(SyncSource::File),
    };
    let connectivity = Connectivity::default();
    let maintenance = Maintenance {
        tiers: settings.retention_tiers(),
        rollup_every: settings.rollup_interval,
        runs: Arc::default(),
    };
    // Before the sync: an edit from here on is synced by the supervisor.
    let mut watcher = RegistryWatch::new(settings.devices_file.clone(), settings.reload_interval);
    let (to_poll, retention_job, cold) = match unreachable {
        None => {
            if let Some(source) = &sync_source {
                database::sync(&db, &source.devices()?).await?;
            }
            // Rejected rows are logged once each when applied below.
            let loaded = db.load_active_devices().await?;
            let retention_job = start_maintenance(&db, &maintenance).await?;
            watcher.listen_on(&db).await;
            (loaded, retention_job, None)
        }
        Some(error) => {
            let devices = database::cached_devices(settings, &db, &error, sync_source.as_ref())?;
            let devices = crate::registry::store::Loaded {
                devices,
                ..Default::default()
            };
            connectivity.set_down(format!("{error:#}"));
            let cold = Reconnect {
                connectivity: connectivity.clone(),
                retry_max: settings.database_retry_max,
                sync: sync_source,
                maintenance: maintenance.clone(),
            };
            (devices, None, Some(cold))
        }
    };
    if to_poll.devices.is_empty() {
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
        settings.batch.clone(),
        Arc::clone(&history_stats),
        abort_rx,
    ));
    let redis_stats = Arc::new(RedisStats::default());
    let (redis_queue, redis) = match &redis_target {
        Some(target) => {
            let queue = Arc::new(redis_sink::Coalescer::default());
            let redis_settings = redis_sink::RedisSettings {
                prefix: settings.redis_prefix.clone(),
                ttl: settings.redis_ttl,
                timeout: settings.redis_timeout,
                linger: settings.redis_linger,
            };
            let task = tokio::spawn(redis_sink::run_writer(
                target.clone(),
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

    let jobs = Arc::new(JobWatch::default());
    let storage = Arc::new(StorageWatch::default());
    // Its own connection, whose statements the server cancels after the
    // timeout: a slow catalog read never holds one the writer needs.
    let timeout = settings.db_health_timeout;
    let jobs_watch = tokio::spawn(health::watch(
        db.api_pool(1, timeout, timeout),
        Arc::clone(&jobs),
        Arc::clone(&storage),
        settings.jobs_check_interval,
        timeout,
    ));
    let (stop, stop_rx) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let mut fleet = Fleet::new(sinks.clone(), Arc::clone(&counters));
    let view = settings
        .cluster
        .clone()
        .map(|c| Arc::new(ClusterView::new(c)));
    let (cluster_commands, commands_rx) = mpsc::channel(16);
    let (links_tx, links_rx) = watch::channel(Arc::default());
    let mut ownership = match &view {
        Some(view) => {
            fleet = fleet.with_fence(Arc::clone(&view.fence));
            Some(Ownership::new(links_tx, commands_rx))
        }
        None => None,
    };
    let devices = fleet.devices();
    let stats = Sources {
        latest: Arc::clone(&latest),
        devices: devices.clone(),
        counters,
        history: history_stats,
        history_depth: sinks.history_depth_probe(),
        redis: redis_queue.map(|q| (redis_stats, q)),
        jobs: Arc::clone(&jobs),
        storage,
        registry: Arc::default(),
        cluster: view.clone(),
        maintenance: Arc::clone(&maintenance.runs),
    };
    // After a start from the cache, the cache is not rewritten from itself.
    let fresh = cold.is_none();
    reload::apply(
        &mut fleet,
        to_poll,
        &stats.registry,
        cache.as_mut().filter(|_| fresh),
        true,
        ownership.as_mut(),
    )
    .await;
    let supervision = Supervision {
        db: db.clone(),
        watcher,
        cache,
        rejections: Arc::clone(&stats.registry),
        cold,
        cluster: ownership,
    };
    let supervisor = tokio::spawn(supervise(fleet, supervision, stop_rx));
    let (scheduling, scheduling_rx) = watch::channel(true);
    let (stop_http, stop_http_rx) = watch::channel(false);
    let http = match settings.http {
        Some(addr) => {
            let limits = settings.api.clone();
            let query_db = db.api_pool(limits.db_connections, limits.wait, limits.timeout);
            let state = ApiState::new(
                db.clone(),
                query_db,
                limits,
                stats.clone(),
                redis_target,
                scheduling_rx,
                connectivity.clone(),
            )
            .with_auth(http_access.auth);
            let (bound, task) = match api::serve(addr, state, http_access.tls, stop_http_rx).await {
                Ok(served) => served,
                Err(e) => {
                    // Leave nothing running behind the error.
                    let _ = stop.send(true);
                    let _ = supervisor.await;
                    return Err(e);
                }
            };
            tracing::info!(
                address = %bound,
                https = settings.http_access.tls.is_some(),
                tokens = settings.http_access.tokens.is_set(),
                "HTTP API listening"
            );
            Some((bound, task))
        }
        None => None,
    };
    // Joined once the API is bound, so the others see its address.
    let cluster = match (view, db.as_postgres()) {
        (Some(view), Some(_)) => {
            if let Some((bound, _)) = &http {
                view.set_address(bound.to_string());
            }
            let heartbeat = view.settings.heartbeat;
            // Its own small pool: a renewal never waits behind a history
            // write for a connection, and a statement the server does not
            // answer within a heartbeat is cancelled.
            let pool = db
                .api_pool(2, heartbeat, heartbeat)
                .as_postgres()
                .cloned()
                .expect("a PostgreSQL database gives a PostgreSQL pool");
            let (leave, leave_rx) = oneshot::channel();
            let wiring = crate::cluster::Wiring {
                links: links_rx,
                fleet: cluster_commands,
                leave: leave_rx,
            };
            let task = tokio::spawn(crate::cluster::run(pool, view, wiring));
            Some(ClusterTask { leave, task })
        }
        _ => None,
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
        jobs_watch,
        sinks,
        history,
        redis,
        stats,
        shutdown_timeout: settings.shutdown_timeout,
        scheduling,
        http,
        stop_http,
        connectivity,
        cluster,
        _data_dir_lock: data_dir_lock,
    })
}

/// The API's token check and TLS configuration, read before anything
/// starts, so a bad token file or certificate changes nothing.
struct HttpAccess {
    auth: Arc<api::auth::Auth>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

fn http_access(settings: &Settings) -> anyhow::Result<HttpAccess> {
    let access = &settings.http_access;
    if let Some(addr) = settings.http {
        api::auth::check_exposure(addr, access)?;
    }
    let auth = Arc::new(api::auth::Auth::load(access)?);
    let tls = access
        .tls
        .as_ref()
        .map(api::tls::TlsFiles::server_config)
        .transpose()?;
    Ok(HttpAccess { auth, tls })
}

/// Takes the data dir for this process: its spool and registry cache are
/// one process's, and two processes replaying one spool would write its
/// readings twice. Several instances of a cluster on one machine each need
/// their own `--data-dir`. The lock is the operating system's (released
/// when the process ends, however it ends); a file system that cannot lock
/// is only warned about.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    let path = dir.join("regpoll.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another regpoll process uses the data dir {} (its spool and registry cache belong to one process); give each process its own --data-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot lock the data dir; make sure no other regpoll process uses it");
        }
    }
    Ok(file)
}

/// What regpoll's own maintenance of the history needs: each tier's
/// retention, the rollup refresh interval, and where the runs are recorded.
#[derive(Debug, Clone)]
pub(crate) struct Maintenance {
    pub tiers: Tiers,
    pub rollup_every: Duration,
    pub runs: Arc<Runs>,
}

/// Sets TimescaleDB's retention and refresh policies, then starts regpoll's
/// own maintenance task (aborted at shutdown): the rollup refresh (which
/// ends at once on TimescaleDB) and, without TimescaleDB's policies, the
/// job that deletes expired rows of each tier.
async fn start_maintenance(db: &Db, m: &Maintenance) -> anyhow::Result<Option<JoinHandle<()>>> {
    let by_policy = retention::set_policy(db, &m.tiers).await?;
    let (db, m) = (db.clone(), m.clone());
    Ok(Some(tokio::spawn(async move {
        let deleting = async {
            if !by_policy {
                retention_loop(&db, &m).await;
            }
        };
        let refreshing = rollup::refresh_loop(
            db.clone(),
            m.rollup_every,
            m.tiers.horizon(),
            Arc::clone(&m.runs),
        );
        tokio::join!(deleting, refreshing);
    })))
}

/// Deletes expired rows of each tier every `RETENTION_EVERY` (databases
/// without TimescaleDB's retention policies). Aborted at shutdown.
async fn retention_loop(db: &Db, m: &Maintenance) {
    let tiers = m.tiers;
    if tiers.raw.is_none() && tiers.minute.is_none() && tiers.hour.is_none() {
        return;
    }
    loop {
        let started = chrono::Utc::now();
        match retention::delete_older(db, &tiers).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(deleted = n, "expired rows deleted");
                }
                m.runs.record(Job::Retention, started, Ok(n));
            }
            Err(e) => {
                let text = crate::db::error_text(e.as_ref());
                tracing::warn!(error = %text, "cannot delete expired rows; will retry");
                m.runs.record(Job::Retention, started, Err(text));
            }
        }
        tokio::time::sleep(retention::RETENTION_EVERY).await;
    }
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

    /// The database outage going on since a start without the database, if
    /// any (`None` once connected).
    pub fn database_outage(&self) -> Option<Outage> {
        self.connectivity.outage()
    }

    /// The last runs of regpoll's own history jobs (rollup refresh, retention).
    pub fn maintenance(&self) -> &Runs {
        self.stats.maintenance()
    }

    /// What this instance knows of its cluster (`None` without `--cluster`).
    pub fn cluster(&self) -> Option<crate::cluster::Snapshot> {
        self.stats.cluster().map(|c| c.snapshot())
    }

    /// Where the HTTP API listens, when it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(a, _)| *a)
    }

    /// Stops polling, flushes every queue and returns what the run did: the
    /// counters once the writers are done.
    pub async fn shutdown(self) -> anyhow::Result<ServiceStats> {
        let _ = self.scheduling.send(false);
        if let Some(cluster) = self.cluster {
            // Hands the devices over before the fleet stops: the others
            // start at the first firing after this instance's last poll.
            let (done, left) = oneshot::channel();
            if cluster.leave.send(done).is_ok()
                && tokio::time::timeout(self.shutdown_timeout, left)
                    .await
                    .is_err()
            {
                tracing::warn!(
                    "leaving the cluster took too long; the others take over when this instance's lease expires"
                );
                cluster.task.abort();
            }
        }
        let _ = self.stop.send(true);
        let _ = self.supervisor.await;
        if let Some(job) = self.retention_job {
            job.abort();
        }
        self.jobs_watch.abort();
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
