//! What a registry reload changes in the latest values besides polls: the
//! registers a device no longer has, and the devices no longer polled. The
//! supervisor works them out; memory and Redis apply them, so a dashboard
//! never keeps a frozen "good" value of something that is not read any more.

use chrono::{DateTime, Utc};

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
        registers: Vec<String>,
        at: DateTime<Utc>,
    },
    /// The device is not polled any more: its latest values go and its
    /// state says why (`reason` for a skipped device).
    DeviceStopped {
        device: String,
        state: Stopped,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
}

impl Notice {
    pub fn device(&self) -> &str {
        match self {
            Notice::RegistersRemoved { device, .. } | Notice::DeviceStopped { device, .. } => {
                device
            }
        }
    }

    /// The message published on the device's update channel:
    /// `{"device","ts","removed":[…]}` or `{"device","ts","state","error"}`.
    pub fn message(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Notice::RegistersRemoved {
                device,
                registers,
                at,
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
            } => json!({
                "device": device,
                "ts": crate::reading::rfc3339(*at),
                "state": state.as_str(),
                "error": reason,
            }),
        }
    }
}
