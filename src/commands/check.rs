//! `regpoll check`: validate a devices.yaml, print every device's read plan
//! and, with `--probe`, read every register once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::load_file;
use super::output::{fail_if_bad, print_readings};
use crate::config;
use crate::modbus::endpoint::Endpoint;
use crate::modbus::plan::plan_group;
use crate::poller::DevicePoller;
use crate::reading::Quality;
use crate::registry::{Device, RequestLimits};

pub(super) async fn check(file: &Path, probe: bool) -> anyhow::Result<()> {
    check_plan(file)?;
    if probe {
        probe_all(load_file(file)?).await?;
    }
    Ok(())
}

/// Polls of one device a probe may spend learning its plan (see
/// `modbus::learn`): each spends at most `LEARN_REQUESTS_PER_POLL` extra
/// requests, so a few isolate the holes of any block; a plan still
/// learning after that is shown as it stands.
const PROBE_POLLS: usize = 8;

/// One read of every register, devices sharing an endpoint sharing its link,
/// polled again while a device's plan is still learning; prints what was
/// learned. Fails when any value could not be read.
async fn probe_all(devices: Vec<Device>) -> anyhow::Result<()> {
    let mut endpoints: HashMap<String, Arc<Endpoint>> = HashMap::new();
    let (mut bad, mut total, mut first) = (0, 0, None);
    println!("probe (one read of every register, once its plan is learned):");
    for d in devices {
        let endpoint = Arc::clone(
            endpoints
                .entry(d.endpoint())
                .or_insert_with(|| Arc::new(Endpoint::for_device(&d))),
        );
        let mut poller = DevicePoller::new(Arc::new(d), endpoint);
        let mut report = poller.poll().await;
        let mut polls = 1;
        while !poller.settled() && polls < PROBE_POLLS {
            report = poller.poll().await;
            polls += 1;
        }
        println!(
            "  {} ({}, {:.1} ms)",
            report.device.name,
            if report.reachable { "up" } else { "down" },
            report.latency.as_secs_f64() * 1e3
        );
        print_readings(&report, "    ");
        print_learned(&poller, polls);
        total += report.readings.len();
        for r in report.readings.iter().filter(|r| r.quality == Quality::Bad) {
            bad += 1;
            first.get_or_insert_with(|| {
                let detail = r.detail.as_deref().unwrap_or("no value");
                format!(
                    "{}.{}: {detail}",
                    report.device.name,
                    report.register(r).name
                )
            });
        }
    }
    fail_if_bad(bad, total, first.as_deref().unwrap_or_default())
}

/// What the device's plan learned, if anything: the summary, then one line
/// per block read and per value the device refuses.
fn print_learned(poller: &DevicePoller, polls: usize) {
    let Some(learned) = poller.learned() else {
        return;
    };
    let still = if poller.settled() {
        ""
    } else {
        "; still learning"
    };
    let s = if polls == 1 { "" } else { "s" };
    println!("    {learned} after {polls} poll{s}{still}");
    for line in learned.lines() {
        println!("      {line}");
    }
}

fn check_plan(file: &Path) -> anyhow::Result<()> {
    let devices = load_file(file)?;
    let registers: usize = devices.iter().map(|d| d.registers.len()).sum();
    let warnings = config::lint::warnings(&devices);
    println!(
        "{}: OK: {} devices, {} registers, {} warnings",
        file.display(),
        devices.len(),
        registers,
        warnings.len()
    );
    for w in &warnings {
        println!("  warning: device `{}`: {}", w.device, w.message);
    }
    for d in &devices {
        print_plan(d);
    }
    Ok(())
}

/// How requests to a device are paced and when it is demoted, e.g.
/// `200 ms after connect, 20 ms between requests, 1 in flight; demoted after 3 timeouts in a row, probed up to every 60 s`.
fn pacing(l: &RequestLimits) -> String {
    format!(
        "{} ms after connect, {} ms between requests, {} in flight; demoted after {} timeouts in a row, probed up to every {} s",
        l.delay_after_connect.as_millis(),
        l.pause.as_millis(),
        l.max_in_flight,
        l.demotion.after,
        l.demotion.max.as_secs(),
    )
}

/// A device's poll groups and the requests each one makes.
fn print_plan(d: &Device) {
    let groups = d.poll_groups();
    println!(
        "  {} ({} {} unit {}{}): {} registers in {} poll group{}",
        d.name,
        d.transport.as_str(),
        match d.transport.serial() {
            Some(line) => line.to_string(),
            None => d.endpoint(),
        },
        d.unit_id.0,
        if d.active { "" } else { ", inactive" },
        d.registers.len(),
        groups.len(),
        if groups.len() == 1 { "" } else { "s" }
    );
    println!("    pacing: {}", pacing(&d.limits));
    for (schedule, members) in groups {
        let p = plan_group(&d.registers, &members, &d.limits);
        let read: u32 = p.iter().map(|r| u32::from(r.count)).sum();
        let used: u32 = members
            .iter()
            .map(|&i| u32::from(d.registers[i].width()))
            .sum();
        println!(
            "    {}: {} requests, {read} addresses read, {used} used",
            schedule.describe(),
            p.len()
        );
        for r in &p {
            let names: Vec<&str> = r.registers.iter().map(|&i| &*d.registers[i].name).collect();
            let last = u32::from(r.start) + u32::from(r.count) - 1;
            println!(
                "      {:<8} {}..{last} ({}): {}",
                r.kind.as_str(),
                r.start,
                r.count,
                names.join(", ")
            );
        }
    }
}
