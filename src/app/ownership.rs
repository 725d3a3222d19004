//! The supervisor's side of a cluster: which links this instance owns, and
//! so which of the registry's devices its fleet polls. The cluster task
//! decides (see `cluster`); this applies its decisions to the fleet and
//! tells it what the registry holds.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{mpsc, watch};

use crate::cluster::{Command, LinkInfo, Links, link_of};
use crate::fleet::Fleet;
use crate::registry::{Device, Transport};

pub(super) struct Ownership {
    owned: HashSet<String>,
    /// The registry's active devices as last loaded (rejected rows replaced
    /// by the definition being polled, as `reload::apply` decides).
    all: Vec<Device>,
    names: HashSet<String>,
    links: watch::Sender<Arc<Links>>,
    pub(super) commands: mpsc::Receiver<Command>,
}

impl Ownership {
    pub(super) fn new(links: watch::Sender<Arc<Links>>, commands: mpsc::Receiver<Command>) -> Self {
        Self {
            owned: HashSet::new(),
            all: Vec::new(),
            names: HashSet::new(),
            links,
            commands,
        }
    }

    /// Takes the registry's devices, tells the cluster task their links,
    /// and returns those this instance owns.
    pub(super) fn set_registry(&mut self, all: Vec<Device>) -> Vec<Device> {
        let mut links = Links::new();
        for d in &all {
            let info = links.entry(link_of(d)).or_insert(LinkInfo {
                devices: 0,
                serial: matches!(d.transport, Transport::Rtu(_)),
            });
            info.devices += 1;
        }
        self.links.send_if_modified(|current| {
            let changed = **current != links;
            if changed {
                *current = Arc::new(links);
            }
            changed
        });
        self.names = all.iter().map(|d| d.name.clone()).collect();
        self.all = all;
        self.mine()
    }

    /// Whether `device` is an active device of the registry.
    pub(super) fn in_registry(&self, device: &str) -> bool {
        self.names.contains(device)
    }

    fn mine(&self) -> Vec<Device> {
        self.all
            .iter()
            .filter(|d| self.owned.contains(&link_of(d)))
            .cloned()
            .collect()
    }

    /// Carries out one of the cluster task's commands.
    pub(super) async fn apply(&mut self, command: Command, fleet: &mut Fleet) {
        match command {
            Command::Own(links) => {
                for (link, resume) in links {
                    tracing::debug!(link = %link, resume = ?resume, "acquired");
                    if let Some(at) = resume {
                        fleet.resume_after(link.clone(), at);
                    }
                    self.owned.insert(link);
                }
                let changes = fleet.reconcile(self.mine()).await;
                tracing::info!(
                    started = changes.started.len(),
                    "polling the devices of acquired endpoints"
                );
            }
            Command::Release { links, done } => {
                for link in &links {
                    self.owned.remove(link);
                }
                // Firings up to `at` are polled here (also one due but not
                // yet started when the stop comes), later ones by the next
                // owner.
                let at = Utc::now();
                tracing::debug!(links = ?links, at = %at, "handing over");
                fleet.hand_over(&links, at);
                // Returns once the released devices' in-flight polls ended.
                let changes = fleet.reconcile(self.mine()).await;
                tracing::debug!(
                    stopped = changes.stopped.len(),
                    "stopped the devices of released endpoints"
                );
                let _ = done.send(at);
            }
        }
    }
}
