//! Several regpoll instances sharing one fleet through PostgreSQL
//! (`regpoll run --cluster`).
//!
//! The unit of ownership is the *link*: a host:port, or a serial line's
//! path. Every device behind one link is polled by the same instance, since
//! gateways and serial buses accept few connections.
//!
//! Leases, not advisory locks: an advisory lock lives as long as one
//! database connection, so ownership would hang on a pooled connection's
//! life and a partitioned instance could not tell when it has lost it,
//! whereas a lease has a deadline both sides can reason about. Each
//! instance holds one row in `cluster_instances` (migration 0014) and
//! renews its `lease_until` every heartbeat; the links it owns reference
//! its row. An instance whose lease has expired on the database's clock is
//! deleted by whichever instance sees it first, and the delete cascades to
//! its links: that is the only way a link passes from a dead owner to a
//! live one. A renewal is one row however many links are owned.
//!
//! Never polled twice: an instance fences itself. It takes the time on its
//! own monotonic clock *before* sending a renewal; the database stamps the
//! lease from its own clock, later. So the lease, as the others see it,
//! ends no earlier than `sent + lease`; the instance stops sending requests
//! at `sent + lease - fence_margin` ([`Fence`]), checked before every
//! request. Wall-clock skew between machines does not enter.
//!
//! Balance: rendezvous hashing of each link over the live instances, so a
//! join or a leave moves about 1/N of the links. A local serial line
//! (`transport: rtu`) is hashed over the instances whose machine has its
//! device path only, so the box with the RS-485 adapter polls that bus (and
//! a standby wired to the same bus takes over). A link moves release
//! first: its owner stops polling it (in-flight polls finish), then deletes
//! its ownership and records when its last poll ended (`cluster_handoffs`);
//! the new owner starts at the first firing after that, so a planned move
//! loses no firing and polls none twice.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::registry::{Device, stable_hash};

mod fence;
pub mod store;
mod task;

pub use fence::Fence;
pub use task::{Command, LinkInfo, Links, Wiring, run};

/// How an instance takes part in a cluster (`run --cluster`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub instance_id: String,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub fence_margin: Duration,
    /// Where this instance's HTTP API listens, shown to the others
    /// (set by the service once it is bound).
    pub address: Option<String>,
}

impl ClusterSettings {
    /// Refuses timings that would let an instance fence itself between two
    /// healthy heartbeats, or never.
    pub fn check(&self) -> anyhow::Result<()> {
        let id = self.instance_id.trim();
        if id.is_empty() || id.len() > 200 {
            anyhow::bail!("--instance-id must be 1 to 200 characters");
        }
        if self.heartbeat.is_zero() || self.fence_margin.is_zero() {
            anyhow::bail!("--cluster-heartbeat and --cluster-fence-margin must be above 0");
        }
        if self.heartbeat + self.fence_margin >= self.lease {
            anyhow::bail!(
                "--cluster-lease ({}) must be longer than --cluster-heartbeat ({}) plus --cluster-fence-margin ({}): otherwise one late heartbeat stops polling; e.g. a lease of 5s with a 1s heartbeat and a 1s margin",
                crate::registry::format_duration(self.lease),
                crate::registry::format_duration(self.heartbeat),
                crate::registry::format_duration(self.fence_margin)
            );
        }
        Ok(())
    }

    /// The longest a dead instance's devices wait for a new owner, before
    /// their next firing: its lease, then up to one heartbeat until another
    /// instance sees it expired.
    pub fn takeover_bound(&self) -> Duration {
        self.lease + self.heartbeat
    }
}

/// The host name and process id: unique among running processes, and
/// readable in `/api/cluster`.
pub fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "regpoll".to_string());
    format!("{host}-{}", std::process::id())
}

/// The link a device is reached through: what is owned.
pub fn link_of(device: &Device) -> String {
    device.endpoint()
}

/// Rendezvous (highest random weight) hashing: the instance with the
/// highest score for `link` owns it. Stable across builds (FNV-1a, then a
/// finalizer so that similar names spread) and independent of the order
/// the instances are listed in.
pub fn owner_of<'a>(link: &str, instances: &'a [String]) -> Option<&'a str> {
    let link_hash = stable_hash(link);
    instances
        .iter()
        .max_by_key(|id| (score(link_hash, id), id.as_str()))
        .map(String::as_str)
}

fn score(link_hash: u64, instance: &str) -> u64 {
    // splitmix64's finalizer over the pair.
    let mut z = link_hash ^ stable_hash(instance).rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One instance as the last heartbeat saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Member {
    pub instance_id: String,
    /// Where its HTTP API listens, if it serves one.
    pub address: Option<String>,
    pub started_at: DateTime<Utc>,
    /// Seconds since its last renewal, on the database's clock.
    pub heartbeat_age_s: f64,
    pub links_owned: u32,
    pub devices_owned: u32,
    /// The serial lines (`transport: rtu`) of the registry that its machine
    /// has: only such an instance may own one.
    pub serial_lines: Vec<String>,
    /// Whether this is the instance answering.
    pub this: bool,
}

/// What this instance knows of its cluster, for `/api/cluster`, `/metrics`
/// and the status page. Updated by the cluster task every heartbeat.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// This instance's epoch in the cluster; `None` while it has not joined
    /// (the database is unreachable, or its id is held by a live instance).
    pub session: Option<i64>,
    /// The live instances, this one included, by id.
    pub members: Vec<Member>,
    pub links_owned: usize,
    pub devices_owned: usize,
    /// Whether this instance has stopped sending requests because it could
    /// not renew its lease in time.
    pub fenced: bool,
    /// Why the last heartbeat failed, until one succeeds.
    pub last_error: Option<String>,
    /// When the last heartbeat succeeded.
    pub renewed_at: Option<DateTime<Utc>>,
}

/// Counters of ownership changes since start.
#[derive(Debug, Default)]
pub struct Handovers {
    /// Links this instance acquired: free, released to it, or its own
    /// again after a restart.
    pub acquired: AtomicU64,
    /// Of those, links whose previous owner's lease had expired (a
    /// takeover after a crash or a partition).
    pub taken_over: AtomicU64,
    /// Links this instance released on purpose (a join moved them, or it
    /// stopped).
    pub released: AtomicU64,
    /// Times this instance fenced itself (lease not renewed in time) or
    /// found its lease gone. (The polls the fence cut are counted by the
    /// fleet, `Counters::fenced_polls`.)
    pub fenced: AtomicU64,
}

impl Handovers {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The cluster as this instance sees it: shared by the cluster task (which
/// writes it) and the API (which reads it).
#[derive(Debug)]
pub struct ClusterView {
    pub settings: ClusterSettings,
    pub handovers: Handovers,
    pub fence: std::sync::Arc<Fence>,
    snapshot: Mutex<Snapshot>,
    /// Where the HTTP API was bound, unless the settings name an address.
    bound: std::sync::OnceLock<String>,
}

impl ClusterView {
    pub fn new(settings: ClusterSettings) -> Self {
        Self {
            settings,
            handovers: Handovers::default(),
            fence: std::sync::Arc::new(Fence::default()),
            snapshot: Mutex::new(Snapshot::default()),
            bound: std::sync::OnceLock::new(),
        }
    }

    /// Where this instance's HTTP API listens, as shown to the others.
    pub fn address(&self) -> Option<&str> {
        self.settings
            .address
            .as_deref()
            .or(self.bound.get().map(String::as_str))
    }

    pub(crate) fn set_address(&self, address: String) {
        let _ = self.bound.set(address);
    }

    pub fn instance_id(&self) -> &str {
        &self.settings.instance_id
    }

    /// A copy of the last heartbeat's view.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.lock().clone();
        s.fenced = !self.fence.is_open();
        s
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.lock());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
