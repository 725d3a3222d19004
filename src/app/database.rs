//! Starting without the database. When PostgreSQL does not answer at start,
//! `run` polls the devices of the registry cache in `--data-dir` (the copy of
//! the last registry it loaded, with the ids readings are stored under). The
//! history writer gets the lazy pool: its writes fail until the database is
//! back, so the readings wait in memory and the spool as in any outage. The
//! supervisor meanwhile tries to connect with backoff ([`Reconnect`]); once
//! connected it migrates, syncs the devices file, reloads the registry and
//! starts retention, and the writer's next retry replays what was kept.
//!
//! Without a cache nothing can be polled into history: a reading is stored
//! under its register's id, which only the registry in the database
//! assigns, so a devices.yaml alone is not enough. `run` then exits with a
//! message that says so.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;

use super::Settings;
use crate::db::{Connectivity, Db, OpenError};
use crate::registry::Device;
use crate::registry::cache::{self, CacheError, CacheWriter};

/// The first wait before connecting again; it doubles up to
/// `Settings::database_retry_max`.
const RETRY_MIN: Duration = Duration::from_millis(250);

/// Opens the database of `settings`. PostgreSQL is opened lazily: when it
/// does not answer, the error comes back beside the handle, and the caller
/// decides whether it can start without it. A database that answers but
/// cannot be migrated is an error: that needs an operator, not a retry.
pub(super) async fn open(settings: &Settings) -> anyhow::Result<(Db, Option<anyhow::Error>)> {
    let Some(url) = &settings.database_url else {
        return Ok((Db::sqlite(&settings.sqlite_path).await?, None));
    };
    let db = Db::postgres_lazy_with(url, &settings.database_tls)?;
    match db.connect_and_migrate().await {
        Ok(()) => Ok((db, None)),
        Err(OpenError::Unreachable(e)) => Ok((db, Some(e))),
        Err(OpenError::Migration(e)) => Err(e),
    }
}

/// The registry cache of a PostgreSQL registry, when there is a data dir.
/// (SQLite is never unreachable: it needs no copy.)
pub(super) fn cache_writer(settings: &Settings, db: &Db) -> Option<CacheWriter> {
    let dir = settings.data_dir.as_ref()?;
    db.as_postgres()?;
    Some(CacheWriter::new(cache::path_in(dir), db.location()))
}

/// Where the devices to sync into the registry come from.
pub(super) enum SyncSource {
    /// Devices given by the caller (the demo).
    Devices(Vec<Device>),
    /// `run --devices`: read when the sync happens, so that a start without
    /// the database syncs the file as it is when the database answers.
    File(PathBuf),
}

impl SyncSource {
    pub(super) fn devices(&self) -> anyhow::Result<std::borrow::Cow<'_, [Device]>> {
        match self {
            SyncSource::Devices(d) => Ok(d.into()),
            SyncSource::File(path) => crate::config::load(path)
                .map(Into::into)
                .map_err(|e| anyhow::anyhow!("{e}")),
        }
    }
}

/// Syncs `devices` into the registry and logs what changed.
pub(super) async fn sync(db: &Db, devices: &[Device]) -> anyhow::Result<()> {
    let report = db
        .sync_devices(devices)
        .await
        .context("cannot sync devices into the registry")?;
    tracing::info!(
        added = report.added.len(),
        changed = report.changed.len(),
        deactivated = report.deactivated.len(),
        unchanged = report.unchanged,
        "registry synced"
    );
    Ok(())
}

/// The devices to poll while the database is unreachable: those of the
/// registry cache. Without a usable cache, an error that says what is
/// missing, where it was looked for, and why the database was not reached.
pub(super) fn cached_devices(
    settings: &Settings,
    db: &Db,
    unreachable: &anyhow::Error,
    sync: Option<&SyncSource>,
) -> anyhow::Result<Vec<Device>> {
    let found = match &settings.data_dir {
        Some(dir) => cache::load(&cache::path_in(dir), &db.location()),
        None => Err(CacheError::Missing(PathBuf::from(
            "<no data dir: the library's Settings::data_dir is None>",
        ))),
    };
    match found {
        Ok(loaded) => {
            for p in &loaded.problems {
                tracing::error!(problem = %p, "cached registry row cannot be used");
            }
            tracing::warn!(
                error = format!("{unreachable:#}"),
                devices = loaded.devices.len(),
                "PostgreSQL is unreachable; polling the devices of the registry cache, keeping their readings until it answers, and trying to connect"
            );
            Ok(loaded.devices)
        }
        Err(cache_error) => {
            if !matches!(cache_error, CacheError::Missing(_)) {
                tracing::error!(error = %cache_error, "registry cache cannot be used");
            }
            Err(no_registry(settings, unreachable, &cache_error, sync))
        }
    }
}

fn no_registry(
    settings: &Settings,
    unreachable: &anyhow::Error,
    cache_error: &CacheError,
    sync: Option<&SyncSource>,
) -> anyhow::Error {
    let file = match sync {
        Some(SyncSource::File(path)) => format!(
            " The devices file {} is not enough on its own: every stored reading needs its register's id, which only the registry in the database assigns.",
            path.display()
        ),
        Some(SyncSource::Devices(_)) => " The devices given are not enough on their own: every stored reading needs its register's id, which only the registry in the database assigns.".to_string(),
        None => String::new(),
    };
    let dir = settings
        .data_dir
        .as_ref()
        .map_or_else(|| "no data dir".to_string(), |d| d.display().to_string());
    anyhow::anyhow!(
        "cannot start: the database is unreachable ({unreachable:#}) and there is no registry to poll from: {cache_error}.{file} \
         regpoll keeps a copy of the registry in its data dir ({dir}) after every load from the database: start it once while the database answers, \
         or point --data-dir (REGPOLL_DATA_DIR) at the directory that holds registry-cache.json"
    )
}

/// After a start without the database: what to do until it answers, and
/// once it does.
pub(super) struct Reconnect {
    pub connectivity: Connectivity,
    pub retry_max: Duration,
    pub sync: Option<SyncSource>,
    pub maintenance: super::Maintenance,
}

impl Reconnect {
    /// Tries to connect (and migrate) until it works, waiting 250 ms, then
    /// twice as long each time up to `retry_max`, with jitter. Logs when the
    /// error changes, not at every try; `/ready` shows the last one.
    pub(super) async fn until_connected(&self, db: &Db) {
        let mut wait = RETRY_MIN;
        let mut logged = self.connectivity.outage().map(|o| o.error);
        loop {
            tokio::time::sleep(crate::schedule::jittered(wait)).await;
            match db.connect_and_migrate().await {
                Ok(()) => {
                    let ended = self.connectivity.set_up();
                    let down_s = ended.map_or(0, |o| (chrono::Utc::now() - o.since).num_seconds());
                    tracing::info!(
                        down_s,
                        "connected to the database; syncing and reloading the registry, then writing the readings kept meanwhile"
                    );
                    return;
                }
                Err(e) => {
                    let text = e.to_string();
                    if logged.as_deref() != Some(&text) {
                        let kind = match e {
                            OpenError::Unreachable(_) => "still cannot reach the database",
                            OpenError::Migration(_) => {
                                "the database answers but cannot be migrated"
                            }
                        };
                        tracing::warn!(error = %text, retry_max_s = self.retry_max.as_secs_f64(), "{kind}; polling goes on and connecting is retried");
                        logged = Some(text.clone());
                    }
                    self.connectivity.set_down(text);
                    wait = (wait * 2).min(self.retry_max.max(RETRY_MIN));
                }
            }
        }
    }

    /// Once connected: syncs the devices (an invalid file is reported and
    /// leaves the registry as it is) and starts the maintenance of the
    /// history (retention, rollup refresh). The caller
    /// reloads the registry next.
    pub(super) async fn after_connect(self, db: &Db) -> Option<JoinHandle<()>> {
        if let Some(source) = &self.sync {
            let synced = match source.devices() {
                Ok(devices) => sync(db, &devices).await,
                Err(e) => Err(e),
            };
            if let Err(e) = synced {
                tracing::error!(
                    error = crate::db::error_text(e.as_ref()),
                    "cannot sync the devices into the registry; polling the registry as it is"
                );
            }
        }
        super::start_maintenance(db, &self.maintenance)
            .await
            .inspect_err(|e| {
                tracing::error!(
                    error = crate::db::error_text(e.as_ref()),
                    "cannot set up retention; old readings are not deleted until the next start"
                );
            })
            .ok()
            .flatten()
    }
}
