//! The latest value of every register and the poll state of every device, kept
//! in memory. It is always on: it serves the demo's summary and the HTTP API,
//! and is the latest-value cache when no Redis is configured.
//!
//! Each device has a [`Slot`] of its own, which its poll groups hold, so a
//! poll's update locks only its own device. Looking the device up by name in
//! one map under one lock was a twentieth of regpoll's CPU at 10,000 devices
//! (hashing the name, comparing it, and the lock's cache line moving between
//! the two cores on every poll; perf, BENCHMARKS.md).
//!
//! Std locks (not tokio's) because none is held across an `.await` and the
//! critical sections are short.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::reading::{PollReport, Quality, Reading, Value, state_name};
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
        crate::latest::contract::latest_json(
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
    /// Its unit is demoted: not asked until its backoff expires.
    pub demoted: bool,
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
    devices: RwLock<HashMap<String, Arc<Slot>>>,
    updates: Arc<watch::Sender<u64>>,
}

/// One device's latest values, empty until its first poll. Its poll groups
/// hold it (see [`LatestMemory::slot`]) and update it without going through
/// the map.
#[derive(Debug)]
pub struct Slot {
    entry: Mutex<Option<Entry>>,
    /// Counts updates, so a watcher (a test) can await the next one instead
    /// of sleeping.
    updates: Arc<watch::Sender<u64>>,
}

/// What is kept per device: values by register index, next to the device
/// they index. Names and units are read from the device when someone asks,
/// so a poll allocates nothing here but the box of a new text or detail (see
/// `Stored`); a map keyed by cloned register names cost 1.4 KB a device and
/// ten allocations a poll.
#[derive(Debug)]
struct Entry {
    device: Arc<Device>,
    state: DeviceState,
    values: Vec<Option<Stored>>,
}

/// One register's latest value, kept small because a fleet holds one per
/// register: 100,000 at 10,000 devices of ten registers. A `Value` and an
/// `Option<String>` detail inline made it 64 bytes, though almost every slot
/// is a good number with no detail; here the number or bool, its quality and
/// its exact timestamp are inline (32 bytes), and only the rare parts, a
/// `string` register's text and the detail of a bad or uncertain value, are
/// boxed.
#[derive(Debug, Clone)]
struct Stored {
    ts: DateTime<Utc>,
    /// The number, or 1.0 / 0.0 for a bool (as `Value::as_f64`); unused for
    /// `Kind::None` and `Kind::Text`.
    num: f64,
    kind: Kind,
    quality: Quality,
    /// `None` for a good number or bool, so those cost no allocation.
    rare: Option<Box<Rare>>,
}

/// Which `Value` a `Stored` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Bool,
    Number,
    Text,
}

#[derive(Debug, Clone, Default)]
struct Rare {
    /// The text when the kind is `Text`, else empty (its buffer is kept for
    /// the next text while the box lives).
    text: String,
    detail: Option<String>,
}

impl Stored {
    fn new(r: &Reading) -> Self {
        let mut stored = Self {
            ts: r.ts,
            num: 0.0,
            kind: Kind::None,
            quality: r.quality,
            rare: None,
        };
        stored.set(r);
        stored
    }

    /// Overwrites in place: a good number replacing a good number allocates
    /// nothing; a text or detail reuses the box and its buffers, and the box
    /// is freed once neither is left (a device back from an outage does not
    /// keep ten boxes of stale error text).
    fn set(&mut self, r: &Reading) {
        let (kind, num) = match &r.value {
            Value::None => (Kind::None, 0.0),
            Value::Bool(b) => (Kind::Bool, f64::from(u8::from(*b))),
            Value::Number(n) => (Kind::Number, *n),
            Value::Text(_) => (Kind::Text, 0.0),
        };
        self.kind = kind;
        self.num = num;
        self.quality = r.quality;
        self.ts = r.ts;
        let text = r.value.as_text();
        if text.is_none() && r.detail.is_none() {
            self.rare = None;
            return;
        }
        let rare = self.rare.get_or_insert_with(Box::default);
        rare.text.clear();
        rare.text.push_str(text.unwrap_or_default());
        rare.detail.clone_from(&r.detail);
    }

    fn value(&self) -> Value {
        match self.kind {
            Kind::None => Value::None,
            Kind::Bool => Value::Bool(self.num != 0.0),
            Kind::Number => Value::Number(self.num),
            Kind::Text => Value::Text(
                self.rare
                    .as_ref()
                    .map(|r| r.text.clone())
                    .unwrap_or_default(),
            ),
        }
    }

    fn detail(&self) -> Option<String> {
        self.rare.as_ref()?.detail.clone()
    }
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
                        value: v.value(),
                        quality: v.quality,
                        ts: v.ts,
                        unit: reg.unit.as_deref().map(str::to_string),
                        detail: v.detail(),
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
            updates: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Slot {
    pub fn update(&self, report: &PollReport) {
        self.apply(report);
        // Only tests watch; with nobody watching, telling nobody cost a
        // lock and a shared counter per poll. A receiver subscribed later
        // sees only later updates anyway.
        if self.updates.receiver_count() > 0 {
            self.updates.send_modify(|n| *n += 1);
        }
    }

    fn apply(&self, report: &PollReport) {
        let mut entry = self.lock();
        let device = &report.device;
        let entry = entry.get_or_insert_with(|| Entry {
            device: Arc::clone(device),
            state: DeviceState {
                up: false,
                demoted: false,
                last_poll: report.started,
                last_success: None,
                error: None,
                latency_ms: 0.0,
                polls: 0,
            },
            values: vec![None; device.registers.len()],
        });
        let first = entry.state.polls == 0;
        entry.rebind(device);
        let s = &mut entry.state;
        log_transition(&device.name, first, s.up, report);
        s.up = report.reachable;
        s.demoted = report.demoted;
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
                Some(v) => v.set(r),
                None => *slot = Some(Stored::new(r)),
            }
        }
    }

    fn view(&self) -> Option<DeviceLatest> {
        self.lock().as_ref().map(Entry::view)
    }

    /// Follows a reloaded definition at once, so registers it no longer
    /// has are not served until its first poll.
    fn follow(&self, device: &Arc<Device>) {
        if let Some(entry) = self.lock().as_mut() {
            entry.rebind(device);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Entry>> {
        self.entry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Logs a device going down (with the error) or coming back, once per
/// change: not at every poll. A first poll that fails counts as going down.
fn log_transition(device: &str, first: bool, was_up: bool, report: &PollReport) {
    let error = report.error.as_deref().unwrap_or("no answer");
    match (first, was_up, report.reachable) {
        (true, _, false) => tracing::warn!(device, error, "device is down from its first poll"),
        (false, true, false) => tracing::warn!(device, error, "device went down"),
        (false, false, true) => tracing::info!(device, "device is up again"),
        _ => {}
    }
}

impl LatestMemory {
    /// Drops the values of registers `device` (a reloaded definition) no
    /// longer has; the others stay.
    pub fn follow(&self, device: &Arc<Device>) {
        let slot = self
            .devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&device.name)
            .cloned();
        if let Some(slot) = slot {
            slot.follow(device);
        }
    }

    /// A receiver that changes after every update.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.updates.subscribe()
    }

    /// The device's slot, made on first asking; the same one for every
    /// version of the device until [`remove`](Self::remove).
    pub fn slot(&self, device: &Device) -> Arc<Slot> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = devices.get(&device.name) {
            return Arc::clone(slot);
        }
        drop(devices);
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        let slot = devices.entry(device.name.clone()).or_insert_with(|| {
            Arc::new(Slot {
                entry: Mutex::new(None),
                updates: Arc::clone(&self.updates),
            })
        });
        Arc::clone(slot)
    }

    /// Updates the report's device through its slot; pollers hold theirs.
    #[cfg(test)]
    fn update(&self, report: &PollReport) {
        self.slot(&report.device).update(report);
    }

    /// How many devices answered their last poll.
    pub fn up_count(&self) -> usize {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|slot| slot.lock().as_ref().is_some_and(|e| e.state.up))
            .count()
    }

    /// Forgets a device (it was deactivated or removed). Its poll groups
    /// have stopped by then; were one still to update its slot, the update
    /// would go nowhere.
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
            .and_then(|slot| slot.view())
    }

    /// The device's poll state alone, without copying its values (what a
    /// listing of every device needs).
    pub fn state(&self, name: &str) -> Option<DeviceState> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let slot = devices.get(name)?;
        slot.lock().as_ref().map(|e| e.state.clone())
    }

    /// The device's state, `up`, `down` or `demoted` (`None` before its
    /// first poll), read in place: the status page's listing asks it of
    /// every device.
    pub fn state_name(&self, name: &str) -> Option<&'static str> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let slot = devices.get(name)?;
        slot.lock()
            .as_ref()
            .map(|e| state_name(e.state.up, e.state.demoted))
    }

    /// Whether a latest value of the device is not good, read in place: the
    /// status page asks it of every device on each refresh, where a copy of
    /// the values (`device`) would allocate for each of them.
    pub fn has_value_not_good(&self, name: &str) -> bool {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        devices.get(name).is_some_and(|slot| {
            slot.lock().as_ref().is_some_and(|e| {
                e.values
                    .iter()
                    .flatten()
                    .any(|v| v.quality != Quality::Good)
            })
        })
    }

    /// Every device, by name. Builds a copy of everything: for summaries and
    /// tests, not for a per-request path at fleet scale.
    pub fn snapshot(&self) -> BTreeMap<String, DeviceLatest> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(name, slot)| Some((name.clone(), slot.view()?)))
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
            demoted: false,
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

    #[test]
    fn a_stored_value_stays_within_32_bytes() {
        // One per register: 100,000 at 10,000 devices of ten registers, so
        // every 8 bytes here is 0.8 MB (it was 64 bytes with `Value` and the
        // detail inline).
        assert!(std::mem::size_of::<Option<Stored>>() <= 32);
    }

    #[test]
    fn every_kind_of_value_round_trips_and_a_detail_goes_with_the_next_good_reading() {
        let mem = LatestMemory::default();
        let d = device(
            "      - { name: state, kind: holding, address: 0, type: u16 }\n      - { name: pump_on, kind: coil, address: 7 }\n      - { name: volts, kind: holding, address: 1, type: u16, unit: V }\n      - { name: serial, kind: holding, address: 300, type: string, length: 8 }\n      - { name: temp, kind: holding, address: 2, type: f32 }\n",
        );
        // Nanoseconds, to see the timestamp kept exactly.
        let ts = DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap();
        let reading = |index, value, quality, detail: Option<&str>| crate::reading::Reading {
            index,
            ts,
            value,
            quality,
            detail: detail.map(str::to_string),
        };
        let mut first = report(&d, &[], 0);
        first.readings = vec![
            reading(0, Value::None, Quality::Bad, Some("exception 2")),
            reading(1, Value::Bool(true), Quality::Good, None),
            reading(2, Value::Number(-4.8), Quality::Good, None),
            reading(3, Value::Text("SN-1".into()), Quality::Good, None),
            reading(
                4,
                Value::Number(f64::NAN),
                Quality::Uncertain,
                Some("not a number"),
            ),
        ];
        mem.update(&first);
        let latest = mem.device("meter-1").unwrap();
        let v = &latest.values;
        assert_eq!(
            v["state"],
            LatestValue {
                value: Value::None,
                quality: Quality::Bad,
                ts,
                unit: None,
                detail: Some("exception 2".into()),
            }
        );
        assert_eq!(v["pump_on"].value, Value::Bool(true));
        assert_eq!(v["pump_on"].detail, None);
        assert_eq!(v["volts"].value, Value::Number(-4.8));
        assert_eq!(v["volts"].unit.as_deref(), Some("V"));
        assert_eq!(v["volts"].ts, ts);
        assert_eq!(v["serial"].value, Value::Text("SN-1".into()));
        assert_eq!(v["serial"].quality, Quality::Good);
        assert!(matches!(v["temp"].value, Value::Number(n) if n.is_nan()));
        assert_eq!(v["temp"].quality, Quality::Uncertain);
        assert_eq!(v["temp"].detail.as_deref(), Some("not a number"));

        // The next poll: good values everywhere, the details gone; a false
        // bool and a text that changes kind to none with a detail.
        let mut second = report(&d, &[(0, 3.0), (2, 230.0), (4, 21.5)], 1);
        second
            .readings
            .push(reading(1, Value::Bool(false), Quality::Good, None));
        second
            .readings
            .push(reading(3, Value::None, Quality::Bad, Some("timeout")));
        mem.update(&second);
        let latest = mem.device("meter-1").unwrap();
        let v = &latest.values;
        assert_eq!(v["state"].value, Value::Number(3.0));
        assert_eq!(v["state"].quality, Quality::Good);
        assert_eq!(v["state"].detail, None);
        assert_eq!(v["state"].ts.timestamp(), 1_800_000_001);
        assert_eq!(v["pump_on"].value, Value::Bool(false));
        assert_eq!(v["serial"].value, Value::None);
        assert_eq!(v["serial"].detail.as_deref(), Some("timeout"));
        assert_eq!(v["temp"].value, Value::Number(21.5));
        assert_eq!(v["temp"].quality, Quality::Good);
        assert_eq!(v["temp"].detail, None);
        // Only the slot still holding a detail keeps its box.
        let slot = mem.slot(&d);
        let entry = slot.lock();
        let stored = entry.as_ref().unwrap().values.iter().flatten();
        assert_eq!(stored.filter(|s| s.rare.is_some()).count(), 1);
    }

    /// Log lines, captured.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_device_going_down_and_coming_back_is_logged_once_each() {
        let logs = Capture::default();
        let writer = {
            let logs = logs.clone();
            move || logs.clone()
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let mem = LatestMemory::default();
            let d = device(TWO);
            let down = |secs| PollReport {
                reachable: false,
                demoted: false,
                error: Some("connect: connection refused".into()),
                readings: Vec::new(),
                ..report(&d, &[], secs)
            };
            mem.update(&report(&d, &[(0, 1.0)], 0));
            mem.update(&report(&d, &[(0, 1.0)], 1));
            mem.update(&down(2));
            mem.update(&down(3));
            mem.update(&down(4));
            mem.update(&report(&d, &[(0, 1.0)], 5));
            mem.update(&report(&d, &[(0, 1.0)], 6));
        });
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("device went down")
                && lines[0].contains("meter-1")
                && lines[0].contains("connection refused"),
            "{text}"
        );
        assert!(lines[1].contains("device is up again"), "{text}");
    }

    #[test]
    fn a_reloaded_definition_drops_removed_registers_before_its_first_poll() {
        let mem = LatestMemory::default();
        let d = device(TWO);
        mem.update(&report(&d, &[(0, 230.0), (1, 5.0)], 0));
        let renamed = device(
            "      - { name: volts, kind: holding, address: 0, type: u16, unit: V }\n      - { name: current, kind: holding, address: 1, type: u16 }\n",
        );
        mem.follow(&renamed);
        let values = mem.device("meter-1").unwrap().values;
        assert_eq!(values.keys().collect::<Vec<_>>(), ["volts"]);
    }
}
