//! What each subcommand does. Errors are printed with their whole cause chain;
//! the exit code is 0 on success, 1 on failure and 2 for an invalid devices.yaml.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;

use crate::app::{self, DeviceSource, Settings};
use std::collections::HashMap;
use std::sync::Arc;

use crate::cli::{
    Command, DbArgs, DemoArgs, DevicesCommand, FormatArgs, QueryCommand, ReadArgs, RunArgs,
};
use crate::config::{self, ConfigErrors};
use crate::db::Db;
use crate::history::query;
use crate::history::writer::BatchSettings;
use crate::modbus::endpoint::Endpoint;
use crate::modbus::plan::plan_group;
use crate::poller::DevicePoller;
use crate::reading::Quality;
use crate::reading::rfc3339;
use crate::registry::Device;
use crate::registry::{
    DataType, Register, RegisterKind, RequestLimits, Schedule, UnitId, WordOrder,
};
use crate::sim::{Bind, Simulator};

/// The devices.yaml shipped with regpoll, used by `regpoll demo`.
pub const BUNDLED_DEVICES: &str = include_str!("../devices.yaml");

pub async fn dispatch(command: Command) -> ExitCode {
    let result = match command {
        Command::Run(args) => run(args).await,
        Command::Simulate { file, faults } => simulate(&file, faults.as_deref()).await,
        Command::Demo(args) => demo(args).await,
        Command::Check { file, probe } => check(&file, probe).await,
        Command::Read(args) => read(args).await,
        Command::Devices(DevicesCommand::Sync { file, db }) => sync(&file, &db).await,
        Command::Devices(DevicesCommand::List(db)) => list(&db).await,
        Command::Query(q) => query(q).await,
        Command::Migrate(db) => migrate(&db).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ConfigErrors>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_file(path: &std::path::Path) -> anyhow::Result<Vec<Device>> {
    Ok(config::load(path)?)
}

async fn open_db(db: &DbArgs) -> anyhow::Result<Db> {
    Db::open(db.database_url().as_deref(), &db.sqlite_path).await
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.devices {
        // Validate before touching the database, so a bad file changes nothing.
        load_file(path)?;
    }
    let settings = Settings {
        database_url: args.db.database_url(),
        redis_url: args.sinks.redis_url(),
        sqlite_path: args.db.sqlite_path,
        redis_prefix: args.sinks.redis_prefix,
        redis_ttl: args.sinks.redis_ttl,
        devices_file: args.devices,
        batch: BatchSettings {
            spool_after: args.sinks.spool_after,
            spool_dir: Some(args.sinks.data_dir.join("spool")),
            max_rows: args.sinks.batch_rows.max(1),
            max_delay: args.sinks.batch_delay,
        },
        shutdown_timeout: args.sinks.shutdown_timeout,
        reload_interval: args.reload_interval,
        retention: args.sinks.retention.0,
        http: args.http.0,
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Registry).await?;
    app::shutdown_signal().await;
    tracing::info!("shutting down: finishing polls and flushing queues");
    running.shutdown().await?.log_summary("stopped");
    Ok(())
}

async fn simulate(file: &std::path::Path, faults: Option<&std::path::Path>) -> anyhow::Result<()> {
    let devices = load_file(file)?;
    let faults = match faults {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            crate::sim::fault::parse_faults(&text, &path.display().to_string())
                .map_err(anyhow::Error::msg)?
        }
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

/// One line per listening address with the devices (and unit ids) behind
/// it, so they can be read by hand (`regpoll read ADDR --unit N …`).
fn print_served(sim: &Simulator, devices: &[Device]) {
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

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let (name, mut devices) = match &args.devices {
        Some(path) => (path.display().to_string(), load_file(path)?),
        None => (
            "bundled devices.yaml".to_string(),
            config::parse(BUNDLED_DEVICES, "devices.yaml (bundled)")?,
        ),
    };
    // Free ports chosen now, so the demo never collides with anything running.
    let sim = Simulator::start(&devices, Bind::Ephemeral).await?;
    print_served(&sim, &devices);
    for d in &mut devices {
        let addr = sim
            .addr_of(d)
            .context("simulator has no address for a device")?;
        d.host = addr.ip().to_string();
        d.port = addr.port();
    }
    let mut settings = Settings {
        sqlite_path: args.sqlite_path.clone(),
        http: args.http.0,
        ..Settings::default()
    };
    // The demo must start wherever it is run: when the API's port is taken,
    // take a free one rather than fail.
    if let Some(addr) = settings.http
        && addr.port() != 0
        && std::net::TcpListener::bind(addr).is_err()
    {
        println!(
            "port {} is taken; serving the status page on a free port",
            addr.port()
        );
        settings.http = Some(std::net::SocketAddr::new(addr.ip(), 0));
    }
    let running = app::start(&settings, DeviceSource::Devices(devices.clone())).await?;
    println!(
        "regpoll demo: simulating and polling {} devices from the {name}; history in {}; Ctrl-C to stop",
        running.devices().len(),
        args.sqlite_path.display()
    );
    if let Some(addr) = running.http_addr() {
        println!("status page: http://{addr}/   (API: /api/devices, /metrics, /ready)");
    }
    let started = Instant::now();
    let mut ticker = tokio::time::interval(args.every);
    ticker.tick().await;
    let signal = app::shutdown_signal();
    tokio::pin!(signal);
    let mut last_polls = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut signal => break,
        }
        let polls = running.polls();
        print_summary(
            &running,
            started.elapsed().as_secs_f64(),
            (polls - last_polls) as f64 / args.every.as_secs_f64(),
        );
        last_polls = polls;
    }
    println!("stopping: flushing readings…");
    let summary = running.shutdown().await?;
    println!(
        "stopped after {} polls; {} readings stored in {}",
        summary.polls,
        summary.history.rows_written,
        args.sqlite_path.display()
    );
    Ok(())
}

fn print_summary(running: &app::Running, elapsed_s: f64, polls_per_s: f64) {
    let snapshot = running.latest.snapshot();
    let up = snapshot.values().filter(|d| d.state.up).count();
    let lateness = match running.lateness(&[0.5, 0.99]) {
        Some(q) => format!(
            "lateness p50 {:.1} ms p99 {:.1} ms",
            q[0].as_secs_f64() * 1e3,
            q[1].as_secs_f64() * 1e3
        ),
        None => "lateness —".to_string(),
    };
    println!(
        "[{elapsed_s:6.1}s] devices up {up}/{} · {polls_per_s:.1} polls/s · {lateness} · {} overruns",
        running.devices().len(),
        running.overruns()
    );
    for (device, latest) in snapshot.iter() {
        let shown: Vec<String> = latest
            .values
            .iter()
            .take(3)
            .map(|(reg, v)| {
                let value = v.value.for_people();
                format!(
                    "{reg}={value}{} ({})",
                    v.unit
                        .as_deref()
                        .map(|u| format!(" {u}"))
                        .unwrap_or_default(),
                    v.quality
                )
            })
            .collect();
        println!("    {device:<14} {}", shown.join("  "));
    }
}

/// Prints one poll's readings, one register a line.
fn print_readings(report: &crate::reading::PollReport, indent: &str) {
    for r in &report.readings {
        let reg = report.register(r);
        let unit = reg
            .unit
            .as_deref()
            .map(|u| format!(" {u}"))
            .unwrap_or_default();
        let detail = r
            .detail
            .as_deref()
            .map(|d| format!("  {d}"))
            .unwrap_or_default();
        println!(
            "{indent}{:<16} {:>6} {:>14}{unit:<6} {:<9}{detail}",
            reg.name,
            reg.address.0,
            r.value.for_people(),
            r.quality.as_str()
        );
    }
}

async fn read(args: ReadArgs) -> anyhow::Result<()> {
    let (host, port) = match args.endpoint.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse::<u16>()
                .with_context(|| format!("`{p}` is not a port"))?,
        ),
        None => (args.endpoint.clone(), 502),
    };
    let (kind, start) = match (args.holding, args.input, args.coil, args.discrete) {
        (Some(a), _, _, _) => (RegisterKind::Holding, a),
        (_, Some(a), _, _) => (RegisterKind::Input, a),
        (_, _, Some(a), _) => (RegisterKind::Coil, a),
        (_, _, _, Some(a)) => (RegisterKind::Discrete, a),
        _ => anyhow::bail!("say what to read: --holding, --input, --coil or --discrete ADDR"),
    };
    let data_type: DataType = if kind.is_bit() {
        DataType::Bool
    } else {
        args.data_type.parse().map_err(anyhow::Error::msg)?
    };
    if !kind.is_bit() && matches!(data_type, DataType::Bool | DataType::String) {
        anyhow::bail!(
            "--type {} is not readable this way; use a number type (u16 … f64), or --coil/--discrete for bits",
            data_type.as_str()
        );
    }
    let (order, _) = WordOrder::parse(&args.order).map_err(anyhow::Error::msg)?;
    let width = u32::from(data_type.width());
    let last = u32::from(start) + u32::from(args.count.max(1)) * width - 1;
    anyhow::ensure!(
        last <= 65535,
        "{} values of {} from {start} run past address 65535",
        args.count,
        data_type.as_str()
    );
    let registers: Vec<Register> = (0..u32::from(args.count.max(1)))
        .map(|i| {
            let address = (u32::from(start) + i * width) as u16;
            Register::plain(
                format!("{}[{address}]", kind.as_str()),
                kind,
                address,
                data_type,
                order,
            )
        })
        .collect();
    let device = Device {
        id: 0,
        name: "read".into(),
        host: host.clone(),
        port,
        unit_id: UnitId(args.unit),
        active: true,
        schedule: Schedule::every(std::time::Duration::from_secs(1)),
        timeout: args.timeout,
        limits: RequestLimits {
            connect_timeout: args.timeout,
            retries: 0,
            ..RequestLimits::DEFAULT
        },
        tags: Default::default(),
        registers: registers.into(),
        register_ids: Box::default(),
    };
    let report = DevicePoller::new(Arc::new(device), Arc::new(Endpoint::new(host, port)))
        .poll()
        .await;
    println!(
        "{:<16} {:>6} {:>14}{:<6} {:<9}DETAIL",
        "REGISTER", "ADDR", "VALUE", "", "QUALITY"
    );
    print_readings(&report, "");
    // A script checking a device must be able to tell a failed read from a
    // good one without parsing the table: the table stays, the status fails.
    let bad = report
        .readings
        .iter()
        .filter(|r| r.quality == Quality::Bad)
        .count();
    if bad > 0 {
        let detail = report.error.as_deref().unwrap_or("no value");
        anyhow::bail!(
            "{bad} of {} values could not be read: {detail}; check the address, the unit id and the register kind",
            report.readings.len()
        );
    }
    Ok(())
}

async fn check(file: &std::path::Path, probe: bool) -> anyhow::Result<()> {
    check_plan(file)?;
    if probe {
        let devices = load_file(file)?;
        let mut endpoints: HashMap<String, Arc<Endpoint>> = HashMap::new();
        println!("probe (one read of every register):");
        for d in devices {
            let endpoint = Arc::clone(
                endpoints
                    .entry(d.endpoint())
                    .or_insert_with(|| Arc::new(Endpoint::new(d.host.clone(), d.port))),
            );
            let report = DevicePoller::new(Arc::new(d), endpoint).poll().await;
            println!(
                "  {} ({}, {:.1} ms)",
                report.device.name,
                if report.reachable { "up" } else { "down" },
                report.latency.as_secs_f64() * 1e3
            );
            print_readings(&report, "    ");
        }
    }
    Ok(())
}

fn check_plan(file: &std::path::Path) -> anyhow::Result<()> {
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
        let groups = d.poll_groups();
        println!(
            "  {} ({} unit {}{}): {} registers in {} poll group{}",
            d.name,
            d.endpoint(),
            d.unit_id.0,
            if d.active { "" } else { ", inactive" },
            d.registers.len(),
            groups.len(),
            if groups.len() == 1 { "" } else { "s" }
        );
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
    Ok(())
}

async fn sync(file: &std::path::Path, db: &DbArgs) -> anyhow::Result<()> {
    let devices = load_file(file)?;
    let db = open_db(db).await?;
    let report = db.sync_devices(&devices).await?;
    println!("{report}");
    db.close().await;
    Ok(())
}

async fn list(args: &DbArgs) -> anyhow::Result<()> {
    let db = open_db(args).await?;
    let loaded = db.load_devices().await?;
    println!(
        "{:<20} {:<24} {:>4} {:>9} {:>6}  SCHEDULE",
        "NAME", "ENDPOINT", "UNIT", "REGISTERS", "ACTIVE"
    );
    for d in &loaded.devices {
        println!(
            "{:<20} {:<24} {:>4} {:>9} {:>6}  {}",
            d.name,
            d.endpoint(),
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

async fn migrate(args: &DbArgs) -> anyhow::Result<()> {
    let db = open_db(args).await?;
    println!("{} schema is up to date", db.kind());
    db.close().await;
    Ok(())
}

async fn query(command: QueryCommand) -> anyhow::Result<()> {
    match command {
        QueryCommand::Latest { device, format, db } => {
            let db = open_db(&db).await?;
            let rows = query::latest(&db, &device).await;
            db.close().await;
            let rows = rows?;
            print_rows(
                &rows,
                format,
                &["REGISTER", "VALUE", "UNIT", "QUALITY", "TS", "DETAIL"],
                |r| {
                    vec![
                        r.register.clone(),
                        json_cell(&r.value),
                        r.unit.clone().unwrap_or_default(),
                        r.quality.clone().unwrap_or_else(|| "—".into()),
                        r.ts.map(rfc3339).unwrap_or_else(|| "never".into()),
                        r.detail.clone().unwrap_or_default(),
                    ]
                },
            )
        }
        QueryCommand::Range {
            device,
            register,
            since,
            until,
            bucket,
            limit,
            format,
            db,
        } => {
            let now = chrono::Utc::now();
            // `--since 1h` means an hour ago; an RFC 3339 time is taken as is.
            let instant = |flag: &str, text: &str| {
                let relative = query::parse_lookback(text).is_ok();
                let text = if relative {
                    format!("now-{text}")
                } else {
                    text.to_string()
                };
                query::parse_instant(&text, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
            };
            let q = query::RangeQuery {
                device,
                register: Some(register),
                from: instant("since", &since)?,
                to: instant("until", &until)?,
                bucket,
                limit,
            };
            query::validate(&q)?;
            let db = open_db(&db).await?;
            let rows = query::range(&db, &q).await;
            db.close().await;
            match rows? {
                query::Rows::Raw(rows) => {
                    print_rows(&rows, format, &["TS", "VALUE", "QUALITY", "DETAIL"], |r| {
                        vec![
                            rfc3339(r.ts),
                            r.value_text
                                .clone()
                                .or(r.value.map(number))
                                .unwrap_or_default(),
                            r.quality.clone(),
                            r.detail.clone().unwrap_or_default(),
                        ]
                    })
                }
                query::Rows::Buckets(rows) => print_rows(
                    &rows,
                    format,
                    &["BUCKET", "AVG", "MIN", "MAX", "COUNT"],
                    |r| {
                        vec![
                            rfc3339(r.bucket),
                            number(r.avg),
                            number(r.min),
                            number(r.max),
                            r.count.to_string(),
                        ]
                    },
                ),
            }
        }
    }
}

/// A number in a table, as people read it (see [`crate::reading::Value::for_people`]).
fn number(n: f64) -> String {
    crate::reading::Value::Number(n).for_people()
}

fn json_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints rows as JSON (their serde form), CSV (the serde field names as the
/// header) or an aligned table with the given columns.
fn print_rows<T: serde::Serialize>(
    rows: &[T],
    format: FormatArgs,
    columns: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if format.json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    if format.csv {
        let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .iter()
            .map(|r| match serde_json::to_value(r) {
                Ok(serde_json::Value::Object(m)) => Ok(m),
                Ok(_) => anyhow::bail!("a row is not an object"),
                Err(e) => Err(e.into()),
            })
            .collect::<anyhow::Result<_>>()?;
        let header: Vec<String> = match objects.first() {
            Some(first) => first.keys().cloned().collect(),
            None => columns.iter().map(|c| c.to_lowercase()).collect(),
        };
        println!("{}", csv_line(header.iter().map(String::as_str)));
        for o in &objects {
            let cells: Vec<String> = header
                .iter()
                .map(|k| o.get(k).map(json_cell).unwrap_or_default())
                .collect();
            println!("{}", csv_line(cells.iter().map(String::as_str)));
        }
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows.iter().map(&cells).collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .chain([columns[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.to_vec());
    for r in &table {
        line(r.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        eprintln!("no readings in that range");
    }
    Ok(())
}

/// One CSV record (RFC 4180): fields with a comma, quote or line break are
/// quoted, quotes doubled.
fn csv_line<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    fields
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::csv_line;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(
            csv_line(["a", "b,c", "say \"hi\"", "x\ny"].into_iter()),
            "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\""
        );
    }
}
