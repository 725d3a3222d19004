//! The active devices whose registry rows regpoll cannot use, and why: what
//! `/ready` warns about, `/metrics` counts (`regpoll_registry_rejected`),
//! `/api/devices` lists as `skipped` and Redis shows. The supervisor sets it
//! at every load; a change is logged once, not at every reload.

use std::collections::BTreeMap;
use std::sync::RwLock;

/// Why one device's rows were refused, and what is polled meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    /// Its previous good definition is still polled (loaded before the rows
    /// went bad); otherwise the device is not polled at all (skipped).
    pub polling_previous: bool,
    /// The device's tenant, when its rows hold a valid one: who may see
    /// the rejection (the API's tenant scopes) and where its Redis keys are.
    pub tenant: Option<crate::registry::Tenant>,
}

impl Rejection {
    /// The name of the device's tenant, if it has one.
    pub fn tenant_name(&self) -> Option<&str> {
        self.tenant.as_ref().map(crate::registry::Tenant::as_str)
    }

    /// The `/ready` warning for `device`.
    pub fn warning(&self, device: &str) -> String {
        if self.polling_previous {
            format!(
                "registry: device {device}: row rejected, still polling its previous definition: {}",
                self.reason
            )
        } else {
            format!("registry: device {device} skipped: {}", self.reason)
        }
    }
}

#[derive(Debug, Default)]
pub struct Rejections(RwLock<BTreeMap<String, Rejection>>);

impl Rejections {
    /// Replaces the set; logs each device that is newly rejected, rejected
    /// for another reason, or fixed. Returns the devices newly skipped (not
    /// polled, and not skipped for this reason before), which Redis is told of.
    pub fn replace(&self, now: BTreeMap<String, Rejection>) -> Vec<(String, String)> {
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        let mut skipped = Vec::new();
        for (device, r) in &now {
            if current.get(device) == Some(r) {
                continue;
            }
            if r.polling_previous {
                tracing::error!(device = %device, reason = %r.reason, "registry row cannot be used; still polling the device's previous definition; fix the row");
            } else {
                tracing::error!(device = %device, reason = %r.reason, "registry row cannot be used; device skipped; fix the row");
                skipped.push((device.clone(), r.reason.clone()));
            }
        }
        for device in current.keys().filter(|d| !now.contains_key(*d)) {
            tracing::info!(device = %device, "registry rows of the device are usable again");
        }
        *current = now;
        skipped
    }

    pub fn get(&self, device: &str) -> Option<Rejection> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned()
    }

    /// Every rejected device, by name.
    pub fn snapshot(&self) -> BTreeMap<String, Rejection> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One `/ready` warning per rejected device.
    pub fn warnings(&self) -> Vec<String> {
        self.snapshot()
            .iter()
            .map(|(device, r)| r.warning(device))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(device: &str, reason: &str, previous: bool) -> BTreeMap<String, Rejection> {
        BTreeMap::from([(
            device.to_string(),
            Rejection {
                reason: reason.to_string(),
                polling_previous: previous,
                tenant: None,
            },
        )])
    }

    #[test]
    fn a_skipped_device_is_reported_once_until_its_reason_changes() {
        let r = Rejections::default();
        let bad = one("pump", "register `p`: unknown type `float`", false);
        assert_eq!(r.replace(bad.clone()).len(), 1);
        assert!(r.replace(bad).is_empty(), "same reason: nothing new");
        assert_eq!(r.replace(one("pump", "other", false)).len(), 1);
        assert_eq!(
            r.warnings(),
            vec!["registry: device pump skipped: other".to_string()]
        );
        r.replace(BTreeMap::new());
        assert!(r.warnings().is_empty() && r.get("pump").is_none());
    }

    #[test]
    fn a_device_still_polled_says_so_in_its_warning() {
        let r = Rejections::default();
        assert!(r.replace(one("pump", "bad", true)).is_empty());
        assert_eq!(
            r.warnings(),
            vec![
                "registry: device pump: row rejected, still polling its previous definition: bad"
                    .to_string()
            ]
        );
    }
}
