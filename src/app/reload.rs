//! One load of the registry applied to the fleet: which devices are polled
//! (a device whose rows went bad keeps its previous good definition), which
//! devices are rejected and why, and what the latest values must forget
//! (registers renamed or removed, devices no longer polled).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::Utc;

use crate::fleet::{Changes, Fleet};
use crate::latest::notice::{Notice, Stopped};
use crate::registry::Device;
use crate::registry::cache::CacheWriter;
use crate::registry::rejections::{Rejection, Rejections};
use crate::registry::store::Loaded;

use super::ownership::Ownership;

/// Makes the fleet poll `loaded` (in a cluster, those of its devices whose
/// links this instance owns); `first` at start, when the devices the
/// registry holds inactive are also marked so in Redis (they may have been
/// deactivated while regpoll was not running).
pub(super) async fn apply(
    fleet: &mut Fleet,
    loaded: Loaded,
    rejections: &Rejections,
    cache: Option<&mut CacheWriter>,
    first: bool,
    cluster: Option<&mut Ownership>,
) -> Changes {
    let before: BTreeMap<String, Arc<Device>> = fleet
        .devices()
        .borrow()
        .iter()
        .map(|d| (d.name.clone(), Arc::clone(d)))
        .collect();
    let mut wanted = loaded.devices;
    let mut rejected = BTreeMap::new();
    for r in loaded.rejected {
        let previous = before.get(&r.device);
        if let Some(previous) = previous {
            wanted.push(Device::clone(previous));
        }
        rejected.insert(
            r.device,
            Rejection {
                reason: r.reason,
                polling_previous: previous.is_some(),
                tenant: r.tenant,
            },
        );
    }
    let newly_skipped = rejections.replace(rejected);
    if let Some(cache) = cache {
        cache.store(&wanted).await;
    }
    // A device stopped here but still in the registry has moved to another
    // instance: it is neither inactive nor gone.
    let (wanted, elsewhere) = match cluster {
        Some(ownership) => {
            let mine = ownership.set_registry(wanted);
            (mine, Some(&*ownership))
        }
        None => (wanted, None),
    };
    let changes = fleet.reconcile(wanted).await;
    let after: BTreeMap<String, Arc<Device>> = fleet
        .devices()
        .borrow()
        .iter()
        .map(|d| (d.name.clone(), Arc::clone(d)))
        .collect();

    let at = Utc::now();
    let mut notices = Vec::new();
    let mut reloaded = Vec::new();
    for name in &changes.restarted {
        let (Some(old), Some(new)) = (before.get(name), after.get(name)) else {
            continue;
        };
        reloaded.push(Arc::clone(new));
        if old.tenant != new.tenant {
            notices.push(Notice::TenantChanged {
                device: name.clone(),
                from: old.tenant.clone(),
            });
        }
        let kept: HashSet<&str> = new.registers.iter().map(|r| &*r.name).collect();
        let registers: Vec<String> = old
            .registers
            .iter()
            .filter(|r| !kept.contains(&*r.name))
            .map(|r| r.name.to_string())
            .collect();
        if !registers.is_empty() {
            notices.push(Notice::RegistersRemoved {
                device: name.clone(),
                tenant: new.tenant.clone(),
                registers,
                at,
            });
        }
    }
    let mut told: HashSet<&str> = HashSet::new();
    for (device, reason) in &newly_skipped {
        told.insert(device);
        notices.push(Notice::DeviceStopped {
            device: device.clone(),
            tenant: rejections.get(device).and_then(|r| r.tenant),
            state: Stopped::Skipped,
            reason: Some(reason.clone()),
            at,
        });
    }
    // A stopped device's keys are where its last polled definition put them.
    let stopped = changes
        .stopped
        .iter()
        .map(|d| (d, before.get(d).and_then(|b| b.tenant.as_ref())));
    let idle = loaded.inactive.iter().filter(|_| first);
    let inactive = stopped.chain(idle.map(|(d, t)| (d, t.as_ref())));
    for (device, tenant) in inactive {
        if elsewhere.is_some_and(|o| o.in_registry(device)) {
            continue;
        }
        if told.insert(device) && rejections.get(device).is_none() {
            notices.push(Notice::DeviceStopped {
                device: device.clone(),
                tenant: tenant.cloned(),
                state: Stopped::Inactive,
                reason: None,
                at,
            });
        }
    }
    fleet.sinks().registry_changed(&reloaded, notices);
    changes
}
