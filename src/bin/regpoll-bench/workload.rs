//! The synthetic fleet every scenario measures: the devices.yaml the
//! simulator serves and `regpoll run` polls, and poll reports of the same
//! shape for the scenarios that feed the sinks without polling.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regpoll::reading::{PollReport, Quality, Reading, Value};
use regpoll::registry::Device;

use crate::fleet::FleetSpec;

impl FleetSpec {
    /// A fleet to generate devices from, not to run: every 1 s, 100 units
    /// per port, no databases.
    pub fn layout(devices: usize, registers: usize) -> FleetSpec {
        FleetSpec {
            name: "layout".into(),
            devices,
            registers,
            every: Duration::from_secs(1),
            duration: Duration::ZERO,
            warmup: Duration::ZERO,
            units_per_port: 100,
            database_url: None,
            redis_url: None,
            redis_ca: None,
            stall: None,
            outage: None,
            page: None,
        }
    }
}

/// Holding registers of one benchmark device: mostly u16 (some scaled), every
/// fifth an f32, laid out back to back so a device of up to 100 registers is
/// one request (at most 125 words).
fn device_yaml(out: &mut String, i: usize, port: u16, unit: usize, registers: usize) {
    let _ = writeln!(out, "  - name: dev-{i:05}");
    let _ = writeln!(out, "    port: {port}");
    let _ = writeln!(out, "    unit_id: {unit}");
    let _ = writeln!(out, "    registers:");
    let mut address = 0;
    for r in 0..registers {
        let (ty, width, extra) = match r % 5 {
            4 => ("f32", 2, ""),
            1 => ("u16", 1, ", scale: 0.1"),
            _ => ("u16", 1, ""),
        };
        let _ = writeln!(
            out,
            "      - {{ name: r{r:03}, kind: holding, address: {address}, type: {ty}{extra} }}"
        );
        address += width;
    }
}

/// The devices.yaml of a fleet scenario, spread over `ports`.
pub fn fleet_yaml(spec: &FleetSpec, ports: &[u16]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "defaults: {{ host: 127.0.0.1, every: {}ms, timeout: 1s }}",
        spec.every.as_millis()
    );
    let _ = writeln!(out, "devices:");
    for i in 0..spec.devices {
        let port = ports[i / spec.units_per_port];
        let unit = i % spec.units_per_port + 1;
        device_yaml(&mut out, i, port, unit, spec.registers);
    }
    out
}

/// Words one benchmark device reads (see `device_yaml`: every fifth
/// register an f32).
pub fn device_words(registers: usize) -> u16 {
    (registers + registers / 5) as u16
}

/// `devices` benchmark devices of `registers` registers as the registry
/// would hand them out: device ids from 1, register ids from 1 in device
/// order (no database is asked; `register_readings` has no foreign keys).
pub fn numbered_fleet(devices: usize, registers: usize) -> anyhow::Result<Vec<Device>> {
    let spec = FleetSpec::layout(devices, registers);
    let mut devices = regpoll::config::parse(&fleet_yaml(&spec, &[502]), "bench.yaml")?;
    let mut last_id = 0;
    for (d, device) in devices.iter_mut().enumerate() {
        device.id = d as i32 + 1;
        let first = last_id + 1;
        last_id += device.registers.len() as i32;
        device.register_ids = (first..=last_id).collect();
    }
    Ok(devices)
}

/// `polls` synthetic poll reports of `devices` benchmark devices of
/// `registers` registers, one poll per second each, in the order polls
/// would deliver them.
pub fn synthetic_reports(
    devices: usize,
    registers: usize,
    polls: usize,
) -> anyhow::Result<Vec<Arc<PollReport>>> {
    let devices: Vec<Arc<Device>> = numbered_fleet(devices, registers)?
        .into_iter()
        .map(Arc::new)
        .collect();
    let base: DateTime<Utc> = DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
    Ok((0..polls)
        .map(|p| {
            let device = Arc::clone(&devices[p % devices.len()]);
            let ts = base + chrono::Duration::seconds((p / devices.len()) as i64);
            Arc::new(good_report(device, ts, |index, _| {
                Value::Number((p % 1000) as f64 * 0.5 + index as f64)
            }))
        })
        .collect())
}

/// A poll of `device` at `ts` that read every register well, the value of
/// each register from `value(index, register)`.
pub fn good_report(
    device: Arc<Device>,
    ts: DateTime<Utc>,
    value: impl Fn(usize, &regpoll::registry::Register) -> Value,
) -> PollReport {
    let readings = device
        .registers
        .iter()
        .enumerate()
        .map(|(index, reg)| Reading {
            index,
            ts,
            value: value(index, reg),
            quality: Quality::Good,
            detail: None,
        })
        .collect();
    PollReport {
        device,
        started: ts,
        latency: Duration::from_millis(1),
        error: None,
        reachable: true,
        demoted: false,
        readings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_yaml_is_a_valid_devices_file_with_one_request_per_device() {
        let spec = FleetSpec::layout(250, 100);
        let devices = regpoll::config::parse(&fleet_yaml(&spec, &[5020, 5021, 5022]), "t").unwrap();
        assert_eq!(devices.len(), 250);
        assert_eq!(devices[249].port, 5022);
        assert_eq!(devices[249].unit_id.0, 50);
        let plan = regpoll::modbus::plan::plan(&devices[0].registers, &devices[0].limits);
        assert_eq!(plan.len(), 1, "{plan:?}");
    }

    #[test]
    fn device_words_match_the_generated_layout() {
        // Every fifth register is an f32 (two words): 10 registers are 12 words.
        assert_eq!(device_words(10), 12);
        assert_eq!(device_words(100), 120);
        let spec = FleetSpec::layout(1, 10);
        let devices = regpoll::config::parse(&fleet_yaml(&spec, &[502]), "t.yaml").unwrap();
        let last = devices[0].registers.last().unwrap();
        assert_eq!(last.last_address() + 1, u32::from(device_words(10)));
    }
}
