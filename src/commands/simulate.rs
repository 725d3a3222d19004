//! `regpoll simulate`: a devices.yaml served as Modbus devices, each over
//! its transport (a serial device on a pseudo-terminal).

use std::path::Path;

use anyhow::Context as _;

use super::load_file;
use crate::app;
use crate::registry::{Device, SerialLine, Transport};
use crate::sim::fault::SimFault;
use crate::sim::{Bind, Simulator};

pub(super) async fn simulate(file: &Path, faults: Option<&Path>) -> anyhow::Result<()> {
    let devices = load_file(file)?;
    let faults = match faults {
        Some(path) => load_faults(path)?,
        None => Vec::new(),
    };
    for f in &faults {
        println!(
            "fault: device `{}`{}: {:?}",
            f.device,
            f.register
                .as_ref()
                .map(|r| format!(" register `{r}`"))
                .unwrap_or_default(),
            f.action
        );
    }
    let sim = Simulator::start_with_faults(&devices, Bind::AsConfigured, faults).await?;
    print_served(&sim, &devices);
    println!("simulating {} devices; Ctrl-C to stop", devices.len());
    app::shutdown_signal().await;
    Ok(())
}

fn load_faults(path: &Path) -> anyhow::Result<Vec<SimFault>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    crate::sim::fault::parse_faults(&text, &path.display().to_string()).map_err(anyhow::Error::msg)
}

/// One line per listening address or pseudo-terminal with the devices (and
/// unit ids) behind it, so they can be read by hand (`regpoll read ADDR
/// --unit N …`, or `--serial PTY` for a serial device).
pub(super) fn print_served(sim: &Simulator, devices: &[Device]) {
    let units = |endpoint: &str| {
        let on: Vec<&Device> = devices
            .iter()
            .filter(|d| d.endpoint() == endpoint)
            .collect();
        let names: Vec<String> = on
            .iter()
            .map(|d| format!("{} (unit {})", d.name, d.unit_id.0))
            .collect();
        (on.first().map(|d| d.transport.clone()), names.join(", "))
    };
    let mut endpoints: Vec<_> = sim.endpoints().collect();
    endpoints.sort();
    for (endpoint, addr) in endpoints {
        let (transport, names) = units(endpoint);
        match transport {
            Some(Transport::RtuOverTcp) => println!("serving {addr} (rtu-over-tcp): {names}"),
            _ => println!("serving {addr}: {names}"),
        }
    }
    let mut lines: Vec<_> = sim.serial_lines().collect();
    lines.sort();
    for (path, pty) in lines {
        let (transport, names) = units(path);
        let settings = transport
            .as_ref()
            .and_then(Transport::serial)
            .map(SerialLine::settings)
            .unwrap_or_default();
        println!(
            "serving {} (rtu {settings}, standing in for {path}): {names}",
            pty.display()
        );
    }
}
