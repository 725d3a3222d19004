//! What a registry reload changes in the latest values besides polls: the
//! registers a device no longer has, and the devices no longer polled. The
//! supervisor works them out; memory and Redis apply them, so a dashboard
//! never keeps a frozen "good" value of something that is not read any more.

use chrono::{DateTime, Utc};

use crate::registry::Tenant;

/// Why a device is no longer polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Deactivated, deleted, or left with no active register.
    Inactive,
    /// Its registry rows cannot be used and it has no previous good
    /// definition to poll.
    Skipped,
}

impl Stopped {
    pub fn as_str(self) -> &'static str {
        match self {
            Stopped::Inactive => "inactive",
            Stopped::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The device is still polled, but these registers are not (renamed or
    /// removed): their latest values go.
    RegistersRemoved {
        device: String,
        tenant: Option<Tenant>,
        registers: Vec<String>,
        at: DateTime<Utc>,
    },
    /// The device is not polled any more: its latest values go and its
    /// state says why (`reason` for a skipped device).
    DeviceStopped {
        device: String,
        tenant: Option<Tenant>,
        state: Stopped,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    /// The device's tenant changed (`from` is the one it had): its keys
    /// under the old tenant go, so that tenant's readers do not keep a
    /// frozen copy of a device that is no longer theirs. Nothing is
    /// published on the old channel.
    TenantChanged {
        device: String,
        from: Option<Tenant>,
    },
}

impl Notice {
    pub fn device(&self) -> &str {
        match self {
            Notice::RegistersRemoved { device, .. }
            | Notice::DeviceStopped { device, .. }
            | Notice::TenantChanged { device, .. } => device,
        }
    }

    /// The tenant whose keys the notice changes.
    pub fn tenant(&self) -> Option<&Tenant> {
        match self {
            Notice::RegistersRemoved { tenant, .. } | Notice::DeviceStopped { tenant, .. } => {
                tenant.as_ref()
            }
            Notice::TenantChanged { from, .. } => from.as_ref(),
        }
    }

    /// The message published on the device's update channel:
    /// `{"device","ts","removed":[…]}` or `{"device","ts","state","error"}`;
    /// `None` for a change that publishes nothing.
    pub fn message(&self) -> Option<serde_json::Value> {
        use serde_json::json;
        Some(match self {
            Notice::RegistersRemoved {
                device,
                registers,
                at,
                ..
            } => json!({
                "device": device,
                "ts": crate::reading::rfc3339(*at),
                "removed": registers,
            }),
            Notice::DeviceStopped {
                device,
                state,
                reason,
                at,
                ..
            } => json!({
                "device": device,
                "ts": crate::reading::rfc3339(*at),
                "state": state.as_str(),
                "error": reason,
            }),
            Notice::TenantChanged { .. } => return None,
        })
    }
}
