//! `regpoll scan`: which unit ids answer behind an address, which addresses
//! of one table each of them reads, and the largest read each takes, found
//! by bounded probing ([`probe`]); progress on stderr as it goes, and a
//! devices.yaml skeleton of what was found on stdout ([`skeleton`]), so
//! `regpoll scan gw > devices.yaml` keeps the file and shows the progress.

mod probe;
mod skeleton;

use std::io::Write;
use std::time::Instant;

use crate::cli::ScanArgs;
use crate::modbus::endpoint::Endpoint;
use crate::registry::{UnitId, format_duration};
pub use probe::{Plan, Presence, Report};

pub(super) async fn scan(args: ScanArgs) -> anyhow::Result<()> {
    let (host, port, transport) = super::read::link(&args.link)?;
    let endpoint = Endpoint::with_transport(host.clone(), port, transport.clone());
    let plan = Plan {
        units: args.units.0,
        kind: args.kind,
        window: (args.addresses.first, args.addresses.last),
        timeout: args.timeout,
        resolution: args.resolution,
        max_time: args.max_time,
        max_requests: args.max_requests,
        log_frames: args.log_frames.unwrap_or_default(),
    };
    let report = scan_endpoint(&endpoint, &plan, &mut std::io::stderr()).await?;
    let answering: Vec<UnitId> = report.answering().collect();
    anyhow::ensure!(
        !answering.is_empty(),
        "no unit of {} answered at {endpoint}{}; check the address and port, --units and --timeout",
        units_text(&plan.units),
        report.stopped.as_ref().map_or(String::new(), |why| format!(
            " (the scan ended early: {why})"
        ))
    );
    match skeleton::skeleton(&host, port, &transport, plan.kind, &report) {
        Some(yaml) => {
            print!("{yaml}");
            Ok(())
        }
        None => anyhow::bail!(
            "unit {} answered, but no {} address of {}-{} could be read; try another --kind (holding, input, coil, discrete) or --addresses",
            units_text(&answering),
            plan.kind.as_str(),
            plan.window.0,
            plan.window.1
        ),
    }
}

/// Scans through `endpoint`, which may speak any transport, writing
/// progress to `progress` as it goes.
pub async fn scan_endpoint(
    endpoint: &Endpoint,
    plan: &Plan,
    progress: &mut dyn Write,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let _ = writeln!(
        progress,
        "scanning {endpoint}: unit{} {}, {} {}-{}, timeout {}",
        if plan.units.len() == 1 { "" } else { "s" },
        units_text(&plan.units),
        plan.kind.as_str(),
        plan.window.0,
        plan.window.1,
        format_duration(plan.timeout)
    );
    let mut session = endpoint.session().await;
    let report = probe::Scanner::new(&mut session, plan, progress)
        .run()
        .await?;
    let answering = report.answering().count();
    if let Some(why) = &report.stopped {
        let _ = writeln!(progress, "scan ended early: {why}");
    }
    let _ = writeln!(
        progress,
        "{answering} of {} units answer; {} requests in {:.1} s",
        report.presence.len(),
        report.requests,
        started.elapsed().as_secs_f64()
    );
    Ok(report)
}

/// `1-10,17`: runs of consecutive ids as ranges.
fn units_text(units: &[UnitId]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < units.len() {
        let mut j = i;
        while j + 1 < units.len() && u16::from(units[j + 1].0) == u16::from(units[j].0) + 1 {
            j += 1;
        }
        parts.push(if i == j {
            units[i].0.to_string()
        } else {
            format!("{}-{}", units[i].0, units[j].0)
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests;
