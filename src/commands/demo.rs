//! `regpoll demo`: the simulator and the poller in one process, with a live
//! summary, to show the whole thing working with one command.

use std::net::{SocketAddr, TcpListener};
use std::time::Instant;

use anyhow::Context as _;

use super::simulate::print_served;
use super::{BUNDLED_DEVICES, load_file};
use crate::app::{self, DeviceSource, Settings};
use crate::cli::DemoArgs;
use crate::config;
use crate::registry::Device;
use crate::sim::{Bind, Simulator};

pub(super) async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let (name, mut devices) = demo_devices(&args)?;
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
    let settings = Settings {
        sqlite_path: args.sqlite_path.clone(),
        http: free_http(args.http.0),
        http_access: args.access.access()?,
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(devices.clone())).await?;
    println!(
        "regpoll demo: simulating and polling {} devices from the {name}; history in {}; Ctrl-C to stop",
        running.devices().len(),
        args.sqlite_path.display()
    );
    if let Some(addr) = running.http_addr() {
        println!("status page: http://{addr}/   (API: /api/devices, /metrics, /ready)");
    }
    summarise_until_stopped(&running, &args).await;
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

/// The devices to demonstrate and where they came from.
fn demo_devices(args: &DemoArgs) -> anyhow::Result<(String, Vec<Device>)> {
    Ok(match &args.devices {
        Some(path) => (path.display().to_string(), load_file(path)?),
        None => (
            "bundled devices.yaml".to_string(),
            config::parse(BUNDLED_DEVICES, "devices.yaml (bundled)")?,
        ),
    })
}

/// The demo must start wherever it is run: when the API's port is taken,
/// take a free one rather than fail.
fn free_http(http: Option<SocketAddr>) -> Option<SocketAddr> {
    if let Some(addr) = http
        && addr.port() != 0
        && TcpListener::bind(addr).is_err()
    {
        println!(
            "port {} is taken; serving the status page on a free port",
            addr.port()
        );
        return Some(SocketAddr::new(addr.ip(), 0));
    }
    http
}

/// Prints a summary every `args.every` until Ctrl-C.
async fn summarise_until_stopped(running: &app::Running, args: &DemoArgs) {
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
            running,
            started.elapsed().as_secs_f64(),
            (polls - last_polls) as f64 / args.every.as_secs_f64(),
        );
        last_polls = polls;
    }
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
