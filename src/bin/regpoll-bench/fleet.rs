//! The fleet scenario: `regpoll run` as users run it. It writes a
//! devices.yaml, starts `regpoll simulate` and `regpoll run` as separate
//! processes (the simulator's CPU is not regpoll's), lets the fleet warm
//! up, and takes two snapshots of `/api/stats` and of `/proc/<pid>` a
//! measurement window apart. Every figure is the difference of the two, so
//! start-up (registry sync, first connections) is not in it. Then the
//! floor ([`crate::floor`]) runs against the same simulator.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use regpoll::telemetry::DistributionSnapshot;
use serde_json::{Value as Json, json};
use sqlx::Connection as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::database::fresh_database;
use crate::floor::bare_request_loop;
use crate::outage::{Outage, make_outage};
use crate::proc_stats::{
    cpu_pressure_s, cpu_seconds, cpu_user_system, run_queue_wait_s, status_kib,
};
use crate::stall::{Stall, make_stalls};
use crate::workload::fleet_yaml;

#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub name: String,
    pub devices: usize,
    pub registers: usize,
    pub every: Duration,
    pub duration: Duration,
    pub warmup: Duration,
    pub units_per_port: usize,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    /// The CA of a `rediss://` Redis (regpoll's `--redis-ca`).
    pub redis_ca: Option<PathBuf>,
    /// Stalls of the history table made during the window (`--stall`).
    pub stall: Option<Stall>,
    /// A database outage made during the window (`--outage`).
    pub outage: Option<Outage>,
    /// Chromium, to open the status page after the window (`--page`).
    pub page: Option<PathBuf>,
}

/// Free loopback ports, found by binding and releasing them.
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot find free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A child process that is killed if the benchmark stops early.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `GET path` on the local API, as JSON.
pub(crate) async fn get_json(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<Json> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP answer")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(serde_json::from_str(body)?)
}

/// The service's `/api/stats`.
pub(crate) async fn stats_of(addr: std::net::SocketAddr) -> anyhow::Result<Json> {
    get_json(addr, "/api/stats").await
}

struct Snapshot {
    at: Instant,
    stats: Json,
    /// regpoll's user and system CPU seconds, and its threads' run-queue
    /// wait.
    user: f64,
    system: f64,
    run_wait: f64,
    /// The same of the simulator, which shares the cores.
    sim_cpu: f64,
    sim_run_wait: f64,
    pressure: Option<f64>,
}

async fn snapshot(addr: std::net::SocketAddr, pid: u32, sim: u32) -> anyhow::Result<Snapshot> {
    let stats = get_json(addr, "/api/stats").await?;
    let (user, system) = cpu_user_system(pid)?;
    Ok(Snapshot {
        at: Instant::now(),
        user,
        system,
        run_wait: run_queue_wait_s(pid)?,
        sim_cpu: cpu_seconds(sim)?,
        sim_run_wait: run_queue_wait_s(sim)?,
        pressure: cpu_pressure_s(),
        stats,
    })
}

pub(crate) fn counter(stats: &Json, path: &[&str]) -> f64 {
    path.iter()
        .fold(stats, |v, k| &v[*k])
        .as_f64()
        .unwrap_or(0.0)
}

pub(crate) fn window_quantiles(a: &Json, b: &Json, name: &str) -> Json {
    let d = |s: &Json| DistributionSnapshot::from_json(&s["distributions"][name]);
    let (Some(a), Some(b)) = (d(a), d(b)) else {
        return Json::Null;
    };
    let w = b.since(&a);
    match w.quantiles(&[0.5, 0.99, 0.999, 1.0]) {
        Some(q) => {
            let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
            json!({ "count": w.count(), "p50_ms": ms(q[0]), "p99_ms": ms(q[1]), "p999_ms": ms(q[2]), "max_ms": ms(q[3]) })
        }
        None => json!({ "count": 0 }),
    }
}

/// The product binary the fleet scenario runs: `given` (`--regpoll`,
/// `BENCH_REGPOLL`) or else the `regpoll` beside this executable, where
/// cargo builds both.
pub fn regpoll_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()
            .context(
                "cannot tell where regpoll-bench is, to find regpoll beside it; pass --regpoll",
            )?
            .with_file_name("regpoll"),
    };
    if !path.is_file() {
        bail!(
            "no regpoll binary at {}: build it with cargo build --profile dist, or pass --regpoll",
            path.display()
        );
    }
    Ok(path)
}

/// Runs one fleet scenario with the `regpoll` binary at `product` and
/// returns its JSON result.
pub async fn fleet(spec: &FleetSpec, product: &Path) -> anyhow::Result<Json> {
    in_scratch_dir(&spec.name, async |work| fleet_in(spec, product, work).await).await
}

/// Runs `scenario` in a scratch directory of its own under TMPDIR (devices
/// files, logs, data dirs), removed afterwards whatever the outcome.
pub(crate) async fn in_scratch_dir(
    name: &str,
    scenario: impl AsyncFnOnce(&Path) -> anyhow::Result<Json>,
) -> anyhow::Result<Json> {
    let work = std::env::temp_dir().join(format!("regpoll-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .with_context(|| format!("cannot create the scratch dir {}", work.display()))?;
    let result = scenario(&work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn fleet_in(spec: &FleetSpec, product: &Path, work: &Path) -> anyhow::Result<Json> {
    let say = |m: String| eprintln!("bench {}: {m}", spec.name);
    let ports = free_ports(spec.devices.div_ceil(spec.units_per_port))?;
    let yaml = work.join("devices.yaml");
    std::fs::write(&yaml, fleet_yaml(spec, &ports))?;
    if spec.stall.is_some() && spec.database_url.is_none() {
        bail!("--stall needs --database-url: it locks the PostgreSQL history table");
    }
    if spec.outage.is_some() && spec.database_url.is_none() {
        bail!("--outage needs --database-url: it makes the PostgreSQL database unreachable");
    }
    let database_url = match &spec.database_url {
        Some(admin) => Some(fresh_database(admin, &spec.name).await?),
        None => None,
    };
    say(format!(
        "{} devices × {} registers every {:?} over {} simulator ports; database {}, redis {}",
        spec.devices,
        spec.registers,
        spec.every,
        ports.len(),
        database_url
            .as_deref()
            .map_or("SQLite".to_string(), regpoll::db::redact_url),
        if spec.redis_url.is_some() {
            "on"
        } else {
            "off"
        }
    ));

    let sim = start_simulator(product, &yaml, &ports, work).await?;

    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_ports(1)?[0]));
    let run_log_path = work.join("run.log");
    let mut run = run_command(
        product,
        http,
        &work.join("data"),
        &run_log_path,
        database_url.as_deref(),
        spec.redis_url.as_deref(),
        &format!("bench-{}", spec.name),
    )?;
    if let Some(ca) = &spec.redis_ca {
        run.arg("--redis-ca").arg(ca);
    }
    run.arg("--devices")
        .arg(&yaml)
        .arg("--sqlite-path")
        .arg(work.join("regpoll.db"));
    let started = Instant::now();
    let mut run = Proc(run.spawn().context("cannot start regpoll run")?);
    let pid = run.0.id();

    wait_until_polling(&mut run, http, spec.devices, &run_log_path).await?;
    say(format!(
        "polling after {:.1} s; warming up for {:?}",
        started.elapsed().as_secs_f64(),
        spec.warmup
    ));
    tokio::time::sleep(spec.warmup).await;
    let sim_pid = sim.0.id();
    let s0 = snapshot(http, pid, sim_pid).await?;
    let stalls = match (spec.stall, &database_url) {
        (Some(stall), Some(url)) => {
            say(format!(
                "measuring for {:?}, register_readings locked for {:?} every {:?}",
                spec.duration, stall.hold, stall.every
            ));
            let (stop, stopped) = tokio::sync::oneshot::channel();
            Some((
                stall,
                stop,
                tokio::spawn(make_stalls(url.clone(), stall, stopped)),
            ))
        }
        _ => {
            say(format!("measuring for {:?}", spec.duration));
            None
        }
    };
    let outage = match (spec.outage, &spec.database_url, &database_url) {
        (Some(outage), Some(admin), Some(url)) => {
            say(format!(
                "the database unreachable {:?} into the window for {:?}",
                outage.at, outage.length
            ));
            let db = url.rsplit('/').next().unwrap_or_default().to_string();
            Some(tokio::spawn(make_outage(admin.clone(), db, http, outage)))
        }
        _ => None,
    };
    tokio::time::sleep(spec.duration).await;
    let s1 = snapshot(http, pid, sim_pid).await?;
    // After the window: the outage's replay may outlast it.
    let outage = match outage {
        Some(task) => task.await.context("the outage task panicked")??,
        None => Json::Null,
    };
    let stalls = match stalls {
        Some((stall, stop, task)) => {
            let _ = stop.send(());
            let made = task.await.context("the stall task panicked")??;
            json!({ "hold_ms": stall.hold.as_millis() as u64, "every_ms": stall.every.as_millis() as u64, "made": made })
        }
        None => Json::Null,
    };
    // The status page, after the window and for as long, on the same fleet.
    let page = match &spec.page {
        Some(chromium) => {
            say(format!("the status page open for {:?}", spec.duration));
            let shot = crate::page::screenshot_path(spec.devices);
            crate::page::page(chromium, http, spec.duration, &shot, work).await?
        }
        None => Json::Null,
    };
    let hwm_kib = status_kib(pid, "VmHWM")?;
    let rss_kib = status_kib(pid, "VmRSS")?;

    // Stop as an operator would, and check that nothing was lost.
    let status = stop(&mut run).await?;
    let log = std::fs::read_to_string(&run_log_path).unwrap_or_default();
    let stop_line = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped"))
        .unwrap_or("");
    let field = |name: &str| -> Option<u64> {
        stop_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
    };
    let stored = match &database_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM register_readings")
                .fetch_one(&mut conn)
                .await?;
            conn.close().await?;
            Some(n as u64)
        }
        None => None,
    };

    let secs = s1.at.duration_since(s0.at).as_secs_f64();
    let delta = |path: &[&str]| counter(&s1.stats, path) - counter(&s0.stats, path);
    let readings = delta(&["readings", "good"])
        + delta(&["readings", "uncertain"])
        + delta(&["readings", "bad"]);
    let polls = delta(&["polls"]);
    // Each part's difference, then their sum: the sum of the totals'
    // difference could round one ulp under the user part alone when the
    // system time did not move in a short window.
    let user = s1.user - s0.user;
    let cpu = user + (s1.system - s0.system);
    let expected_polls = spec.devices as f64 * secs / spec.every.as_secs_f64();
    let mut result = json!({
        "scenario": spec.name,
        "kind": "fleet",
        "devices": spec.devices,
        "registers_per_device": spec.registers,
        "every_s": spec.every.as_secs_f64(),
        "simulator_ports": ports.len(),
        "window_s": (secs * 100.0).round() / 100.0,
        "database": if database_url.is_some() { "postgres" } else { "sqlite" },
        "redis": spec.redis_url.is_some(),
        "redis_tls": spec.redis_url.as_deref().is_some_and(|u| u.starts_with("rediss:")),
        "polls_per_s": polls / secs,
        "expected_polls_per_s": expected_polls / secs,
        "modbus_requests_per_s": delta(&["modbus_requests"]) / secs,
        "modbus_errors": delta(&["modbus_errors"]),
        "readings_per_s": readings / secs,
        "readings_bad": delta(&["readings", "bad"]),
        "rows_written_per_s": delta(&["history", "rows_written"]) / secs,
        "overruns": delta(&["overruns"]),
        "missed_polls": delta(&["overruns"]),
        "lateness": window_quantiles(&s0.stats, &s1.stats, "lateness"),
        "redis_visible": window_quantiles(&s0.stats, &s1.stats, "redis_visible"),
        "history_write": window_quantiles(&s0.stats, &s1.stats, "history_write"),
        "cpu_s": cpu,
        "cpu_s_per_million_readings": cpu / (readings / 1e6),
        "cpu_us_per_reading": cpu * 1e6 / readings,
        "cpu_user_us_per_reading": user * 1e6 / readings,
        // How busy the shared box was: the share of the window in which
        // some runnable task waited for a CPU, and how long each process's
        // threads waited in all, per second.
        "box": {
            "cpu_pressure_some_pct": s1.pressure.zip(s0.pressure).map(|(b, a)| (b - a) * 100.0 / secs),
            "regpoll_cpu_pct": cpu * 100.0 / secs,
            "regpoll_run_queue_wait_ms_per_s": (s1.run_wait - s0.run_wait) * 1e3 / secs,
            "simulator_cpu_pct": (s1.sim_cpu - s0.sim_cpu) * 100.0 / secs,
            "simulator_run_queue_wait_ms_per_s": (s1.sim_run_wait - s0.sim_run_wait) * 1e3 / secs,
        },
        "peak_rss_kib": hwm_kib,
        "rss_kib": rss_kib,
        "peak_rss_kib_per_device": hwm_kib as f64 / spec.devices as f64,
        "exit_ok": status.success(),
        "rows_written_total": field("rows_written"),
        "rows_lost": field("rows_lost"),
        "rows_in_database": stored,
        "history_queue_depth_at_end": counter(&s1.stats, &["history", "queue_depth"]),
        "stalls": stalls,
        "outage": outage,
        "page": page,
    });
    if !status.success() {
        bail!(
            "regpoll run exited with {status} after SIGTERM; its log:\n{}",
            tail(&run_log_path)
        );
    }
    // The floor, against the same simulator now that regpoll has stopped.
    let floor_window = spec
        .duration
        .clamp(Duration::from_secs(2), Duration::from_secs(15));
    say(format!(
        "measuring a bare request loop at the same rate for {floor_window:?}"
    ));
    let floor = bare_request_loop(spec, &ports, database_url.as_deref(), floor_window).await?;
    let requests = &floor.requests;
    result["floor"] = json!({
        "requests_per_s": requests.requests / requests.secs,
        "cpu_us_per_request": requests.cpu * 1e6 / requests.requests,
        "cpu_us_per_reading": requests.us_per_reading(spec.registers),
        "cpu_user_us_per_reading": requests.user_us_per_reading(spec.registers),
    });
    if let Some((w, sent)) = &floor.with_sinks {
        result["floor"]["with_sinks"] = json!({
            "requests_per_s": w.requests / w.secs,
            "cpu_us_per_reading": w.us_per_reading(spec.registers),
            "cpu_user_us_per_reading": w.user_us_per_reading(spec.registers),
            "redis_mb_per_s": sent.redis_bytes as f64 / 1e6 / w.secs,
            "copies": sent.copies,
            "copy_rows_per_s": sent.copy_rows as f64 / w.secs,
        });
    }
    say(format!(
        "{:.0} polls/s, {:.0} readings/s, lateness p99 {} ms, {} missed, {:.2} µs CPU/reading, {:.2} KiB peak RSS/device",
        polls / secs,
        readings / secs,
        result["lateness"]["p99_ms"],
        result["missed_polls"],
        result["cpu_us_per_reading"].as_f64().unwrap_or(f64::NAN),
        result["peak_rss_kib_per_device"]
            .as_f64()
            .unwrap_or(f64::NAN),
    ));
    Ok(result)
}

/// Waits until `regpoll run` at `http` has loaded `devices` devices and
/// polled about as many times; its log (`log`) is shown if it exits first.
pub(crate) async fn wait_until_polling(
    run: &mut Proc,
    http: std::net::SocketAddr,
    devices: usize,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(Some(status)) = run.0.try_wait() {
            bail!(
                "regpoll run exited with {status} during start-up; its log:\n{}",
                tail(log)
            );
        }
        if let Ok(s) = get_json(http, "/api/stats").await
            && s["devices"].as_u64() == Some(devices as u64)
            && counter(&s, &["polls"]) >= devices as f64
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("regpoll run did not poll every device within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops `regpoll run` as an operator would (SIGTERM) and waits for it.
pub(crate) async fn stop(run: &mut Proc) -> anyhow::Result<std::process::ExitStatus> {
    Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status()?;
    let stopping = Instant::now();
    loop {
        if let Some(status) = run.0.try_wait()? {
            return Ok(status);
        }
        if stopping.elapsed() > Duration::from_secs(60) {
            bail!("regpoll run did not stop within 60 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `regpoll simulate` serving `yaml`, once it listens on every one of
/// `ports`; its log goes to `work`/simulate.log.
pub(crate) async fn start_simulator(
    product: &Path,
    yaml: &Path,
    ports: &[u16],
    work: &Path,
) -> anyhow::Result<Proc> {
    let sim_log_path = work.join("simulate.log");
    let sim_log = std::fs::File::create(&sim_log_path)?;
    let mut sim = Proc(
        Command::new(product)
            .arg("simulate")
            .arg(yaml)
            .stdout(Stdio::null())
            .stderr(sim_log)
            .spawn()
            .context("cannot start the simulator")?,
    );
    for port in ports {
        wait_for(Duration::from_secs(60), || {
            if let Ok(Some(status)) = sim.0.try_wait() {
                bail!(
                    "the simulator exited with {status} during start-up; its log:\n{}",
                    tail(&sim_log_path)
                );
            }
            Ok(std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok())
        })
        .await
        .with_context(|| format!("the simulator does not listen on port {port}"))?;
    }
    Ok(sim)
}

/// `regpoll run` as every scenario starts it: its API on `http`, its spool
/// under `data_dir`, its log to `log`, and only the database and Redis
/// given (none taken from the bench's own environment).
pub(crate) fn run_command(
    product: &Path,
    http: std::net::SocketAddr,
    data_dir: &Path,
    log: &Path,
    database_url: Option<&str>,
    redis_url: Option<&str>,
    redis_prefix: &str,
) -> anyhow::Result<Command> {
    let mut run = Command::new(product);
    run.arg("run")
        .args(["--http", &http.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--redis-prefix", redis_prefix])
        .args(["--log", "info"])
        .env_remove("DATABASE_URL")
        .env_remove("REGPOLL_DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("REGPOLL_REDIS_URL")
        // The bench asks its own instance on loopback without a token.
        .env_remove("REGPOLL_HTTP_TOKENS")
        .env_remove("REGPOLL_HTTP_TOKEN_FILE")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(log)
                .with_context(|| format!("cannot create {}", log.display()))?,
        );
    if let Some(url) = database_url {
        run.env("REGPOLL_DATABASE_URL", url);
    }
    if let Some(url) = redis_url {
        run.env("REGPOLL_REDIS_URL", url);
    }
    Ok(run)
}

pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Polls `ok` until it says true, it fails, or `limit` passes.
pub(crate) async fn wait_for(
    limit: Duration,
    mut ok: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    while !ok()? {
        if Instant::now() > until {
            bail!("gave up after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
