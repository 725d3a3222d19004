//! The latest value of every register and the poll state of every device, kept
//! in memory. It is always on: it serves the demo's summary and the HTTP API,
//! and is the latest-value cache when no Redis is configured.
//!
//! A std `RwLock` (not tokio's) because no lock is held across an `.await` and
//! the critical sections are a few map inserts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::reading::{PollReport, Quality, Value};
use crate::registry::Device;

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
    devices: RwLock<HashMap<String, Entry>>,
    /// Counts updates, so a watcher (the demo, a test) can await the next one
    /// instead of sleeping.
    updates: watch::Sender<u64>,
}

/// What is kept per device: values by register index, next to the device
/// they index. Names and units are read from the device when someone asks,
/// so a poll allocates nothing here but a changed detail; a map keyed by
/// cloned register names cost 1.4 KB a device and ten allocations a poll.
#[derive(Debug)]
struct Entry {
    device: Arc<Device>,
    state: DeviceState,
    values: Vec<Option<Stored>>,
}

#[derive(Debug, Clone)]
struct Stored {
    value: Value,
    quality: Quality,
    ts: DateTime<Utc>,
    detail: Option<String>,
}

impl Entry {
    fn view(&self) -> DeviceLatest {
        let values = self
            .device
            .registers
            .iter()
            .zip(&self.values)
            .filter_map(|(reg, v)| {
                let v = v.as_ref()?;
                Some((
                    reg.name.to_string(),
                    LatestValue {
                        value: v.value.clone(),
                        quality: v.quality,
                        ts: v.ts,
                        unit: reg.unit.as_deref().map(str::to_string),
                        detail: v.detail.clone(),
                    },
                ))
            })
            .collect();
        DeviceLatest {
            state: self.state.clone(),
            values,
        }
    }

    /// Follows a reloaded device (a new `Arc`, maybe other registers): values
    /// move to their register's new index by name; removed registers go.
    fn rebind(&mut self, device: &Arc<Device>) {
        if Arc::ptr_eq(&self.device, device) {
            return;
        }
        let mut old: HashMap<&str, Stored> = self
            .device
            .registers
            .iter()
            .zip(self.values.drain(..))
            .filter_map(|(reg, v)| Some((&*reg.name, v?)))
            .collect();
        let values = device
            .registers
            .iter()
            .map(|reg| old.remove(&*reg.name))
            .collect();
        drop(old);
        self.values = values;
        self.device = Arc::clone(device);
    }
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
        let device = &report.device;
        let entry = match devices.get_mut(&device.name) {
            Some(e) => {
                e.rebind(device);
                e
            }
            None => devices.entry(device.name.clone()).or_insert_with(|| Entry {
                device: Arc::clone(device),
                state: DeviceState {
                    up: false,
                    last_poll: report.started,
                    last_success: None,
                    error: None,
                    latency_ms: 0.0,
                    polls: 0,
                },
                values: vec![None; device.registers.len()],
            }),
        };
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
            let Some(slot) = entry.values.get_mut(r.index) else {
                continue;
            };
            match slot {
                Some(v) => {
                    v.value.clone_from(&r.value);
                    v.quality = r.quality;
                    v.ts = r.ts;
                    v.detail.clone_from(&r.detail);
                }
                None => {
                    *slot = Some(Stored {
                        value: r.value.clone(),
                        quality: r.quality,
                        ts: r.ts,
                        detail: r.detail.clone(),
                    });
                }
            }
        }
    }

    /// How many devices answered their last poll.
    pub fn up_count(&self) -> usize {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| e.state.up)
            .count()
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
            .map(Entry::view)
    }

    /// Every device, by name. Builds a copy of everything: for summaries and
    /// tests, not for a per-request path at fleet scale.
    pub fn snapshot(&self) -> BTreeMap<String, DeviceLatest> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, e)| (name.clone(), e.view()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(yaml_registers: &str) -> Arc<Device> {
        let yaml = format!(
            "devices:\n  - name: meter-1\n    host: 127.0.0.1\n    registers:\n{yaml_registers}"
        );
        let mut devices = crate::config::parse(&yaml, "t.yaml").unwrap();
        Arc::new(devices.remove(0))
    }

    fn report(device: &Arc<Device>, values: &[(usize, f64)], secs: i64) -> PollReport {
        let ts = DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap();
        PollReport {
            device: Arc::clone(device),
            started: ts,
            latency: std::time::Duration::from_millis(3),
            error: None,
            reachable: true,
            readings: values
                .iter()
                .map(|&(index, v)| crate::reading::Reading {
                    index,
                    ts,
                    value: Value::Number(v),
                    quality: Quality::Good,
                    detail: None,
                })
                .collect(),
        }
    }

    const TWO: &str = "      - { name: volts, kind: holding, address: 0, type: u16, unit: V }\n      - { name: amps, kind: holding, address: 1, type: u16 }\n";

    #[test]
    fn keeps_the_latest_value_of_each_register_with_its_unit() {
        let mem = LatestMemory::default();
        let d = device(TWO);
        mem.update(&report(&d, &[(0, 230.0), (1, 5.0)], 0));
        // A poll group covering only `amps` leaves `volts` as it was.
        mem.update(&report(&d, &[(1, 6.0)], 1));
        let latest = mem.device("meter-1").unwrap();
        assert_eq!(latest.state.polls, 2);
        assert!(latest.state.up);
        let volts = &latest.values["volts"];
        assert_eq!(volts.value, Value::Number(230.0));
        assert_eq!(volts.unit.as_deref(), Some("V"));
        assert_eq!(latest.values["amps"].value, Value::Number(6.0));
        assert_eq!(latest.values["amps"].ts.timestamp(), 1_800_000_001);
        assert_eq!(mem.up_count(), 1);
        assert_eq!(mem.snapshot()["meter-1"], latest);
    }

    #[test]
    fn a_reloaded_device_keeps_values_by_register_name() {
        let mem = LatestMemory::default();
        let before = device(TWO);
        mem.update(&report(&before, &[(0, 230.0), (1, 5.0)], 0));
        // Reloaded: `amps` removed, `hz` added before `volts`, so `volts`
        // moved from index 0 to 1.
        let after = device(
            "      - { name: hz, kind: holding, address: 2, type: u16 }\n      - { name: volts, kind: holding, address: 0, type: u16, unit: V }\n",
        );
        mem.update(&report(&after, &[(0, 50.0)], 1));
        let latest = mem.device("meter-1").unwrap();
        let names: Vec<&str> = latest.values.keys().map(String::as_str).collect();
        assert_eq!(names, ["hz", "volts"]);
        assert_eq!(latest.values["volts"].value, Value::Number(230.0));
        assert_eq!(latest.values["hz"].value, Value::Number(50.0));
        mem.remove("meter-1");
        assert!(mem.device("meter-1").is_none());
    }
}
