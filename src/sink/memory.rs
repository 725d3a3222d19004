//! The latest value of every register and the poll state of every device, kept
//! in memory. It is always on: it serves the demo's summary and the HTTP API,
//! and is the latest-value cache when no Redis is configured.
//!
//! A std `RwLock` (not tokio's) because no lock is held across an `.await` and
//! the critical sections are a few map inserts.

use std::collections::BTreeMap;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::reading::{PollReport, Quality, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct LatestValue {
    pub value: Value,
    pub quality: Quality,
    pub ts: DateTime<Utc>,
    pub unit: Option<String>,
    pub detail: Option<String>,
}

impl LatestValue {
    /// The same JSON as the Redis hash field.
    pub fn to_json(&self) -> serde_json::Value {
        crate::sink::redis::latest_json(
            &self.value,
            self.quality,
            self.ts,
            self.unit.as_deref(),
            self.detail.as_deref(),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    pub up: bool,
    pub last_poll: DateTime<Utc>,
    pub last_success: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub latency_ms: f64,
    pub polls: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceLatest {
    pub state: DeviceState,
    pub values: BTreeMap<String, LatestValue>,
}

#[derive(Debug)]
pub struct LatestMemory {
    devices: RwLock<BTreeMap<String, DeviceLatest>>,
    /// Counts updates, so a watcher (the demo, a test) can await the next one
    /// instead of sleeping.
    updates: watch::Sender<u64>,
}

impl Default for LatestMemory {
    fn default() -> Self {
        Self {
            devices: RwLock::default(),
            updates: watch::Sender::new(0),
        }
    }
}

impl LatestMemory {
    /// A receiver that changes after every update.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.updates.subscribe()
    }

    pub fn update(&self, report: &PollReport) {
        self.apply(report);
        self.updates.send_modify(|n| *n += 1);
    }

    fn apply(&self, report: &PollReport) {
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        let name = &report.device.name;
        let entry = devices.entry(name.clone()).or_insert_with(|| DeviceLatest {
            state: DeviceState {
                up: false,
                last_poll: report.started,
                last_success: None,
                error: None,
                latency_ms: 0.0,
                polls: 0,
            },
            values: BTreeMap::new(),
        });
        let s = &mut entry.state;
        s.up = report.reachable;
        s.last_poll = report.started;
        if report.reachable {
            s.last_success = Some(report.started);
        }
        s.error.clone_from(&report.error);
        s.latency_ms = report.latency.as_secs_f64() * 1000.0;
        s.polls += 1;
        for r in &report.readings {
            let reg = report.register(r);
            entry.values.insert(
                reg.name.clone(),
                LatestValue {
                    value: r.value.clone(),
                    quality: r.quality,
                    ts: r.ts,
                    unit: reg.unit.clone(),
                    detail: r.detail.clone(),
                },
            );
        }
    }

    /// Forgets a device (it was deactivated or removed).
    pub fn remove(&self, device: &str) {
        self.devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(device);
    }

    pub fn device(&self, name: &str) -> Option<DeviceLatest> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn snapshot(&self) -> BTreeMap<String, DeviceLatest> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
