//! `regpoll devices sync|list|show`: the device registry.

use std::path::Path;

use super::{load_file, open_db};
use crate::cli::DbArgs;

pub(super) async fn sync(file: &Path, db: &DbArgs) -> anyhow::Result<()> {
    let devices = load_file(file)?;
    let db = open_db(db).await?;
    let report = db.sync_devices(&devices).await?;
    println!("{report}");
    db.close().await;
    Ok(())
}

pub(super) async fn list(args: &DbArgs) -> anyhow::Result<()> {
    let db = open_db(args).await?;
    let loaded = db.load_devices().await?;
    println!(
        "{:<20} {:<24} {:<12} {:>4} {:>9} {:>6}  {:<12} SCHEDULE",
        "NAME", "ENDPOINT", "TRANSPORT", "UNIT", "REGISTERS", "ACTIVE", "TENANT"
    );
    for d in &loaded.devices {
        let transport = match d.transport.serial() {
            Some(line) => format!("rtu {}", line.settings()),
            None => d.transport.as_str().to_string(),
        };
        println!(
            "{:<20} {:<24} {:<12} {:>4} {:>9} {:>6}  {:<12} {}",
            d.name,
            d.endpoint(),
            transport,
            d.unit_id.0,
            d.registers.len(),
            if d.active { "yes" } else { "no" },
            d.tenant_name().unwrap_or("-"),
            d.schedule.describe()
        );
    }
    for p in &loaded.problems {
        eprintln!("warning: {p}");
    }
    db.close().await;
    Ok(())
}

/// One device and its registers, as the registry holds them (a device's
/// deadband from devices.yaml is shown on each register it applies to).
pub(super) async fn show(name: &str, args: &DbArgs) -> anyhow::Result<()> {
    let db = open_db(args).await?;
    let loaded = db.load_devices().await?;
    db.close().await;
    let Some(d) = loaded.devices.iter().find(|d| d.name == name) else {
        let skipped = loaded
            .problems
            .iter()
            .find(|p| p.contains(&format!("`{name}`")));
        anyhow::bail!(
            "{}",
            skipped.cloned().unwrap_or_else(|| format!(
                "no device `{name}` in the registry; `regpoll devices list` shows the names"
            ))
        );
    };
    println!(
        "{} at {} unit {}, {}, {}{}",
        d.name,
        d.endpoint(),
        d.unit_id.0,
        d.schedule.describe(),
        if d.active { "active" } else { "inactive" },
        d.tenant_name()
            .map_or(String::new(), |t| format!(", tenant {t}"))
    );
    println!(
        "{:<24} {:<9} {:>7} {:<7} {:<8} {:<16} HISTORY",
        "REGISTER", "KIND", "ADDRESS", "TYPE", "UNIT", "SCHEDULE"
    );
    for r in d.registers.iter() {
        println!(
            "{:<24} {:<9} {:>7} {:<7} {:<8} {:<16} {}",
            r.name,
            r.kind.as_str(),
            r.address.0,
            r.data_type.as_str(),
            r.unit.as_deref().unwrap_or("-"),
            r.schedule
                .as_deref()
                .map_or("device's".to_string(), |s| s.describe()),
            r.deadband
                .as_deref()
                .map_or("every reading".to_string(), |b| b.describe()),
        );
    }
    Ok(())
}
