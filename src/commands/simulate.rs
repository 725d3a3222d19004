//! `regpoll simulate`: a devices.yaml served as Modbus TCP devices.

use std::path::Path;

use anyhow::Context as _;

use super::load_file;
use crate::app;
use crate::registry::Device;
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

/// One line per listening address with the devices (and unit ids) behind
/// it, so they can be read by hand (`regpoll read ADDR --unit N …`).
pub(super) fn print_served(sim: &Simulator, devices: &[Device]) {
    let mut endpoints: Vec<_> = sim.endpoints().collect();
    endpoints.sort();
    for (endpoint, addr) in endpoints {
        let units: Vec<String> = devices
            .iter()
            .filter(|d| d.endpoint() == endpoint)
            .map(|d| format!("{} (unit {})", d.name, d.unit_id.0))
            .collect();
        println!("serving {addr}: {}", units.join(", "));
    }
}
