//! The supervisor: keeps the fleet equal to the registry while running.
//! After a start without the database it first waits for the database
//! (see [`database`](super::database)), then syncs and reloads; from then
//! on it reloads whenever the registry may have changed, and keeps the
//! registry cache in `--data-dir` equal to what it loaded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::ownership::Ownership;
use crate::cluster::Command;
use crate::db::Db;
use crate::fleet::Fleet;
use crate::registry::cache::CacheWriter;
use crate::registry::rejections::Rejections;

/// What the supervisor works with besides the fleet.
pub(super) struct Supervision {
    pub db: Db,
    /// Listening already, unless the database was away at start.
    pub watcher: RegistryWatch,
    pub cache: Option<CacheWriter>,
    /// The devices whose registry rows cannot be used (shared with the API).
    pub rejections: Arc<Rejections>,
    /// Set after a start without the database: connect first.
    pub cold: Option<super::database::Reconnect>,
    /// Which links this instance owns, in a cluster.
    pub cluster: Option<Ownership>,
}

/// Keeps the fleet equal to the registry until told to stop, then stops it.
pub(super) async fn supervise(
    mut fleet: Fleet,
    mut s: Supervision,
    mut stop: watch::Receiver<bool>,
) {
    let mut reloader = Reloader {
        db: s.db,
        cache: s.cache,
        rejections: s.rejections,
        cluster: s.cluster,
    };
    let db = reloader.db.clone();
    let mut retention = None;
    let mut fingerprint = None;
    if let Some(cold) = s.cold {
        let connected = {
            let connect = cold.until_connected(&db);
            tokio::pin!(connect);
            loop {
                let command = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break false,
                    () = &mut connect => break true,
                    Some(command) = next_command(&mut reloader.cluster) => command,
                };
                reloader.command(command, &mut fleet).await;
            }
        };
        if !connected {
            fleet.stop_all().await;
            return;
        }
        retention = cold.after_connect(&db).await;
        s.watcher.listen_on(&db).await;
        // Read before loading, so that a change made meanwhile is seen by
        // the next check; when the load fails, the next check reloads.
        let before = db.registry_fingerprint().await.ok().flatten();
        if reloader.reload(&mut fleet).await {
            fingerprint = before;
        }
    } else {
        fingerprint = db.registry_fingerprint().await.ok().flatten();
    }
    let mut watcher = s.watcher;
    loop {
        let woke = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            n = watcher.changed() => Ok(n),
            Some(command) = next_command(&mut reloader.cluster) => Err(command),
        };
        let notified = match woke {
            Ok(notified) => notified,
            Err(command) => {
                reloader.command(command, &mut fleet).await;
                continue;
            }
        };
        watcher.sync_file_if_changed(&db).await;
        // A notification always reloads. The periodic check reloads only when
        // the registry's fingerprint moved: loading 10,000 devices every
        // 2 s for nothing would cost more CPU than polling some of them.
        let now = {
            let db = db.clone();
            reloader
                .serving_commands(&mut fleet, async move {
                    db.registry_fingerprint().await.ok().flatten()
                })
                .await
        };
        if !notified && now.is_some() && now == fingerprint {
            continue;
        }
        fingerprint = now;
        if !reloader.reload(&mut fleet).await {
            fingerprint = None;
        }
    }
    if let Some(job) = retention {
        job.abort();
    }
    fleet.stop_all().await;
}

/// The cluster task's next command; never, outside a cluster.
async fn next_command(cluster: &mut Option<Ownership>) -> Option<Command> {
    match cluster {
        Some(o) => o.commands.recv().await,
        None => std::future::pending().await,
    }
}

/// Loads the registry into the fleet and the cache.
struct Reloader {
    db: Db,
    cache: Option<CacheWriter>,
    rejections: Arc<Rejections>,
    cluster: Option<Ownership>,
}

impl Reloader {
    async fn command(&mut self, command: Command, fleet: &mut Fleet) {
        if let Some(o) = &mut self.cluster {
            o.apply(command, fleet).await;
        }
    }

    /// Awaits a read of the registry while carrying out the cluster's
    /// commands: a database that stops answering (cut off, a silent
    /// network) must not hold up a fenced instance's release of its devices,
    /// which the cluster task waits for. The read runs as a task of its own
    /// and is never cancelled: a query dropped mid-flight on a TLS
    /// connection loses its pooled connection for good (sqlx issue 4349).
    async fn serving_commands<T: Send + 'static>(
        &mut self,
        fleet: &mut Fleet,
        read: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let mut read = tokio::spawn(read);
        loop {
            tokio::select! {
                done = &mut read => {
                    return done.unwrap_or_else(|e| match e.try_into_panic() {
                        Ok(panic) => std::panic::resume_unwind(panic),
                        Err(e) => panic!("the registry read was cancelled: {e}"),
                    });
                }
                Some(command) = next_command(&mut self.cluster) => self.command(command, fleet).await,
            }
        }
    }

    /// Makes the fleet equal to the registry's active devices; false when
    /// the registry cannot be read (the devices being polled are kept).
    async fn reload(&mut self, fleet: &mut Fleet) -> bool {
        let db = self.db.clone();
        let loaded = self.serving_commands(fleet, async move { db.load_active_devices().await });
        let loaded = match loaded.await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    error = crate::db::error_text(e.as_ref()),
                    "cannot reload the registry; keeping the devices being polled"
                );
                return false;
            }
        };
        // Each rejected device is logged once, when its reason changes.
        let changes = super::reload::apply(
            fleet,
            loaded,
            &self.rejections,
            self.cache.as_mut(),
            false,
            self.cluster.as_mut(),
        )
        .await;
        if !changes.is_empty() {
            tracing::info!(started = ?changes.started, restarted = ?changes.restarted, stopped = ?changes.stopped, "registry reloaded");
        }
        true
    }
}

/// Says when the registry may have changed: at once on a PostgreSQL
/// notification, otherwise every `interval`; and syncs the devices.yaml given
/// to `run --devices` when its content changes.
pub(super) struct RegistryWatch {
    listener: Option<PgListener>,
    interval: Duration,
    file: Option<(PathBuf, u64)>,
}

/// Channel the registry triggers notify (migrations/postgres/0005).
const REGISTRY_CHANNEL: &str = "regpoll_registry";

impl RegistryWatch {
    /// A watch of `file` as it is now (so an edit made from here on is
    /// synced); it listens for notifications once [`listen_on`](Self::listen_on).
    pub(super) fn new(file: Option<PathBuf>, interval: Duration) -> Self {
        let file = file.map(|p| {
            let h = content_hash(&p);
            (p, h)
        });
        Self {
            listener: None,
            interval,
            file,
        }
    }

    /// Listens for the registry triggers' notifications (PostgreSQL only).
    pub(super) async fn listen_on(&mut self, db: &Db) {
        if let Some(pool) = db.as_postgres() {
            self.listener = Self::listen(pool).await;
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
            .inspect_err(|e| {
                tracing::warn!(
                    error = crate::db::error_text(e),
                    "cannot LISTEN for registry changes; checking every reload interval"
                )
            })
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
                    error = crate::db::error_text(e.as_ref()),
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
