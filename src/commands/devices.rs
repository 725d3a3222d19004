//! `regpoll devices sync|list`: the device registry.

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
        "{:<20} {:<24} {:<12} {:>4} {:>9} {:>6}  SCHEDULE",
        "NAME", "ENDPOINT", "TRANSPORT", "UNIT", "REGISTERS", "ACTIVE"
    );
    for d in &loaded.devices {
        let transport = match d.transport.serial() {
            Some(line) => format!("rtu {}", line.settings()),
            None => d.transport.as_str().to_string(),
        };
        println!(
            "{:<20} {:<24} {:<12} {:>4} {:>9} {:>6}  {}",
            d.name,
            d.endpoint(),
            transport,
            d.unit_id.0,
            d.registers.len(),
            if d.active { "yes" } else { "no" },
            d.schedule.describe()
        );
    }
    for p in &loaded.problems {
        eprintln!("warning: {p}");
    }
    db.close().await;
    Ok(())
}
