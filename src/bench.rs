//! `regpoll bench`: the benchmark driver behind `scripts/bench`.
//!
//! `fleet` measures `regpoll run` as users run it: it writes a devices.yaml,
//! starts `regpoll simulate` and `regpoll run` as separate processes (the
//! simulator's CPU is not regpoll's), lets the fleet warm up, and takes two
//! snapshots of `/api/stats` and of `/proc/<pid>` a measurement window apart.
//! Every figure is the difference of the two, so start-up (registry sync,
//! first connections) is not in it.
//!
//! `ingest` pushes synthetic readings through the history writer alone and
//! then the same rows through `psql`'s binary COPY into the same table, so
//! the ratio of the two compares regpoll's writer with the fastest way
//! PostgreSQL knows to take rows, on the same machine in the same run.
//!
//! `report` prints the table of every scenario's JSON and checks the targets.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};
use sqlx::{Connection as _, Executor as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::db::Db;
use crate::history::row::Row;
use crate::history::store::pgcopy;
use crate::history::writer::{self as history, BatchSettings, HistoryStats};
use crate::reading::{PollReport, Quality, Reading, Value};
use crate::telemetry::DistributionSnapshot;

/// Targets of the benchmark issue, checked by `report`.
pub const TARGET_LATENESS_P99_MS: f64 = 5.0;
pub const TARGET_CPU_US_PER_READING: f64 = 2.0;
pub const TARGET_RSS_KB_PER_DEVICE: f64 = 4.0;
pub const TARGET_REDIS_P99_MS: f64 = 10.0;
pub const TARGET_WRITER_RATIO: f64 = 0.9;

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
    /// Stalls of the history table made during the window (`--stall`).
    pub stall: Option<Stall>,
}

/// A disk stall made on purpose: `register_readings` held locked for `hold`
/// once every `every`, so the history writer's COPY waits as it does when
/// the database waits for its disk. On a VM's disk real stalls come and go
/// by the hour; this makes the memory and the tails of a stalled writer
/// measurable on demand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stall {
    pub hold: Duration,
    pub every: Duration,
}

/// Parses `HOLD/EVERY`, e.g. `800ms/4s`.
pub fn parse_stall(s: &str) -> Result<Stall, String> {
    let (hold, every) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not HOLD/EVERY; write e.g. 800ms/4s"))?;
    let hold = crate::registry::parse_duration(hold.trim())?;
    let every = crate::registry::parse_duration(every.trim())?;
    if hold.is_zero() || hold >= every {
        return Err(format!(
            "`{s}`: the hold must be longer than 0 and shorter than the time between stalls, e.g. 800ms/4s"
        ));
    }
    Ok(Stall { hold, every })
}

/// Holds `register_readings` locked for `hold` in a transaction of its own.
pub async fn stall_once(conn: &mut sqlx::PgConnection, hold: Duration) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    tx.execute("LOCK TABLE register_readings IN ACCESS EXCLUSIVE MODE")
        .await
        .context("cannot lock register_readings")?;
    sqlx::query("SELECT pg_sleep($1)")
        .bind(hold.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Makes stalls until told to stop (it ends the one under way first);
/// returns how many it made.
async fn make_stalls(
    url: String,
    stall: Stall,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<u64> {
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let mut made = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(stall.every - stall.hold) => {
                stall_once(&mut conn, stall.hold).await?;
                made += 1;
            }
            _ = &mut stop => break,
        }
    }
    conn.close().await?;
    Ok(made)
}

impl FleetSpec {
    /// A fleet to generate devices from, not to run: every 1 s, 100 units
    /// per port, no databases.
    fn layout(devices: usize, registers: usize) -> FleetSpec {
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
            stall: None,
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

/// Free loopback ports, found by binding and releasing them.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot find free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A fresh database `regpoll_bench_<name>` next to the one `admin_url` names;
/// returns its URL.
async fn fresh_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("scenario name `{name}` must be letters, digits and _ (it names a database)");
    }
    let db = format!("regpoll_bench_{name}");
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("cannot connect to {}", crate::db::redact_url(admin_url)))?;
    // The name is ours (a fixed prefix and the scenario name checked above).
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .await?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await?;
    conn.close().await?;
    let mut url = url::Url::parse(admin_url).context("the database URL is not a URL")?;
    url.set_path(&db);
    Ok(url.to_string())
}

/// A child process that is killed if the benchmark stops early.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let (user, system) = cpu_user_system(pid)?;
    Ok(user + system)
}

/// A process's user and system CPU seconds apart: the user part is the
/// program's own work, the system part mostly the kernel's TCP on its behalf.
pub fn cpu_user_system(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let (user, system) = (fields[11].parse::<f64>()?, fields[12].parse::<f64>()?);
    Ok((user / clock_ticks(), system / clock_ticks()))
}

/// This process's own user and system CPU seconds, to the microsecond
/// (`getrusage`): `/proc/<pid>/stat` counts in clock ticks of 10 ms, and the
/// bare loop at scenario a uses one or two of them in its window, too coarse
/// to compare with anything.
fn own_cpu_user_system() -> anyhow::Result<(f64, f64)> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage, and RUSAGE_SELF.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((secs(usage.ru_utime), secs(usage.ru_stime)))
}

/// [`own_cpu_user_system`], user and system together.
fn own_cpu_seconds() -> anyhow::Result<f64> {
    let (user, system) = own_cpu_user_system()?;
    Ok(user + system)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux build),
/// asked once: `cpu_seconds` runs in every snapshot and round.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Seconds the threads of a process have waited on a run queue for a CPU
/// (the second field of `/proc/<pid>/task/<tid>/schedstat`). On a box where
/// everything shares two cores this is where scheduling tails come from:
/// a thread that is runnable but not running.
pub fn run_queue_wait_s(pid: u32) -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between listing and reading; it is not counted.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .context("unreadable schedstat")?;
    }
    Ok(ns as f64 / 1e9)
}

/// Seconds during which at least one runnable task on the machine waited for
/// a CPU (pressure stall information, `/proc/pressure/cpu` "some total");
/// `None` on a kernel without it.
pub fn cpu_pressure_s() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = text.lines().find(|l| l.starts_with("some "))?;
    let total = some
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("total="))?;
    Some(total.parse::<f64>().ok()? / 1e6)
}

/// A `/proc/<pid>/status` field in KiB (VmHWM: peak resident set; VmRSS).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// `GET path` on the local API, as JSON.
async fn get_json(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<Json> {
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

struct Snapshot {
    at: Instant,
    stats: Json,
    /// regpoll's CPU seconds, the user part of them, and its threads'
    /// run-queue wait.
    cpu: f64,
    user: f64,
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
        cpu: user + system,
        user,
        run_wait: run_queue_wait_s(pid)?,
        sim_cpu: cpu_seconds(sim)?,
        sim_run_wait: run_queue_wait_s(sim)?,
        pressure: cpu_pressure_s(),
        stats,
    })
}

fn counter(stats: &Json, path: &[&str]) -> f64 {
    path.iter()
        .fold(stats, |v, k| &v[*k])
        .as_f64()
        .unwrap_or(0.0)
}

fn window_quantiles(a: &Json, b: &Json, name: &str) -> Json {
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

/// Runs one fleet scenario and returns its JSON result.
pub async fn fleet(spec: &FleetSpec) -> anyhow::Result<Json> {
    let exe = std::env::current_exe().context("cannot find the regpoll binary")?;
    let work = std::env::temp_dir().join(format!(
        "regpoll-bench-{}-{}",
        spec.name,
        std::process::id()
    ));
    std::fs::create_dir_all(&work)?;
    let result = fleet_in(spec, &exe, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn fleet_in(spec: &FleetSpec, exe: &Path, work: &Path) -> anyhow::Result<Json> {
    let say = |m: String| eprintln!("bench {}: {m}", spec.name);
    let ports = free_ports(spec.devices.div_ceil(spec.units_per_port))?;
    let yaml = work.join("devices.yaml");
    std::fs::write(&yaml, fleet_yaml(spec, &ports))?;
    if spec.stall.is_some() && spec.database_url.is_none() {
        bail!("--stall needs --database-url: it locks the PostgreSQL history table");
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
            .map_or("SQLite".to_string(), crate::db::redact_url),
        if spec.redis_url.is_some() {
            "on"
        } else {
            "off"
        }
    ));

    let sim_log_path = work.join("simulate.log");
    let sim_log = std::fs::File::create(&sim_log_path)?;
    let mut sim = Proc(
        Command::new(exe)
            .arg("simulate")
            .arg(&yaml)
            .stdout(Stdio::null())
            .stderr(sim_log)
            .spawn()
            .context("cannot start the simulator")?,
    );
    for port in &ports {
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

    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_ports(1)?[0]));
    let run_log_path = work.join("run.log");
    let mut run = Command::new(exe);
    run.arg("run")
        .arg("--devices")
        .arg(&yaml)
        .args(["--http", &http.to_string()])
        .arg("--data-dir")
        .arg(work.join("data"))
        .arg("--sqlite-path")
        .arg(work.join("regpoll.db"))
        .args(["--redis-prefix", &format!("bench-{}", spec.name)])
        .args(["--log", "info"])
        .env_remove("DATABASE_URL")
        .env_remove("REGPOLL_DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("REGPOLL_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&run_log_path)?);
    if let Some(url) = &database_url {
        run.env("REGPOLL_DATABASE_URL", url);
    }
    if let Some(url) = &spec.redis_url {
        run.env("REGPOLL_REDIS_URL", url);
    }
    let started = Instant::now();
    let mut run = Proc(run.spawn().context("cannot start regpoll run")?);
    let pid = run.0.id();

    // Up when every device is loaded and has been polled about once.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(Some(status)) = run.0.try_wait() {
            bail!(
                "regpoll run exited with {status} during start-up; its log:\n{}",
                tail(&run_log_path)
            );
        }
        if let Ok(s) = get_json(http, "/api/stats").await
            && s["devices"].as_u64() == Some(spec.devices as u64)
            && counter(&s, &["polls"]) >= spec.devices as f64
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("regpoll run did not poll every device within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    tokio::time::sleep(spec.duration).await;
    let s1 = snapshot(http, pid, sim_pid).await?;
    let stalls = match stalls {
        Some((stall, stop, task)) => {
            let _ = stop.send(());
            let made = task.await.context("the stall task panicked")??;
            json!({ "hold_ms": stall.hold.as_millis() as u64, "every_ms": stall.every.as_millis() as u64, "made": made })
        }
        None => Json::Null,
    };
    let hwm_kib = status_kib(pid, "VmHWM")?;
    let rss_kib = status_kib(pid, "VmRSS")?;

    // Stop as an operator would, and check that nothing was lost.
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = run.0.try_wait()? {
            break status;
        }
        if stopping.elapsed() > Duration::from_secs(60) {
            bail!("regpoll run did not stop within 60 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    let cpu = s1.cpu - s0.cpu;
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
        "cpu_user_us_per_reading": (s1.user - s0.user) * 1e6 / readings,
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

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Polls `ok` until it says true, it fails, or `limit` passes.
async fn wait_for(
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

/// One window of the floor: requests made, CPU seconds (and the user part
/// of them), wall seconds.
struct Window {
    requests: f64,
    cpu: f64,
    user: f64,
    secs: f64,
}

impl Window {
    fn us_per_reading(&self, registers: usize) -> f64 {
        self.cpu * 1e6 / (self.requests * registers as f64)
    }

    fn user_us_per_reading(&self, registers: usize) -> f64 {
        self.user * 1e6 / (self.requests * registers as f64)
    }
}

/// The floor's two windows: the requests alone, then with the sinks' bytes
/// sent as well (when the run had Redis or PostgreSQL).
struct Floor {
    requests: Window,
    with_sinks: Option<(Window, SinksSent)>,
}

/// What the sinks' replay has sent.
#[derive(Debug, Default, Clone, Copy)]
struct SinksSent {
    redis_bytes: u64,
    copies: u64,
    copy_rows: u64,
}

/// Words one benchmark device reads (see `device_yaml`: every fifth
/// register an f32).
fn device_words(registers: usize) -> u16 {
    (registers + registers / 5) as u16
}

/// The fleet's requests from the simplest loop that can make them: one
/// tokio-modbus connection per simulator port, sending its units' requests in
/// turn at the fleet's rate on a tokio runtime like `run`'s, with nothing
/// scheduled per device, decoded, checked or stored. Its CPU per reading is
/// what any poller on this machine pays for the TCP round trips alone
/// (system calls, loopback, wake-ups), the floor under regpoll's figure.
///
/// A second window adds what any poller keeping regpoll's contracts pays to
/// hand the values on (see [`SinkReplay`]): the same loop while the bytes
/// regpoll's writers would send for its polls go to the run's Redis and
/// PostgreSQL.
async fn bare_request_loop(
    spec: &FleetSpec,
    ports: &[u16],
    database_url: Option<&str>,
    window: Duration,
) -> anyhow::Result<Floor> {
    use tokio_modbus::client::{Reader as _, tcp};
    use tokio_modbus::prelude::SlaveContext as _;
    let replay = SinkReplay::prepare(spec, spec.redis_url.as_deref(), database_url).await?;
    let words = device_words(spec.registers);
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    // Every port's loop starts on the same phase step of the wall clock, as
    // regpoll's schedules fire: when a loop's period is a whole number of
    // steps (10 ms at b and c), its requests go out on the ticks where
    // regpoll's of that step do, all ports' together.
    let step = crate::schedule::phase_step(spec.every);
    let since_step = Duration::from_micros(
        (Utc::now().timestamp_micros() as u64) % step.as_micros().max(1) as u64,
    );
    let first_step = tokio::time::Instant::now() + step.saturating_sub(since_step) + step;
    for (p, port) in ports.iter().enumerate() {
        let units = spec
            .devices
            .saturating_sub(p * spec.units_per_port)
            .min(spec.units_per_port);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
        let mut ctx = tcp::connect(addr)
            .await
            .with_context(|| format!("bare loop: cannot connect to {addr}"))?;
        let count = Arc::clone(&count);
        let mut stop = stop_rx.clone();
        let period = spec.every / units.max(1) as u32;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first_step, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut unit = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                ctx.set_slave(tokio_modbus::Slave(unit as u8 + 1));
                unit = (unit + 1) % units;
                match ctx.read_holding_registers(0, words).await {
                    Ok(Ok(_)) => {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    other => return Err(anyhow::anyhow!("bare loop: {other:?}")),
                }
            }
            Ok(())
        }));
    }
    let measure = async || -> anyhow::Result<Window> {
        let (n0, (user0, sys0), t0) = (
            count.load(std::sync::atomic::Ordering::Relaxed),
            own_cpu_user_system()?,
            Instant::now(),
        );
        tokio::time::sleep(window).await;
        let (user1, sys1) = own_cpu_user_system()?;
        Ok(Window {
            requests: (count.load(std::sync::atomic::Ordering::Relaxed) - n0) as f64,
            cpu: user1 + sys1 - user0 - sys0,
            user: user1 - user0,
            secs: t0.elapsed().as_secs_f64(),
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = measure().await?;
    let with_sinks = match replay {
        Some(replay) => {
            eprintln!(
                "bench {}: measuring it again for {window:?} with the sinks' bytes sent as well",
                spec.name
            );
            let running = replay.start(Arc::clone(&count), stop_rx.clone());
            tokio::time::sleep(Duration::from_secs(1)).await;
            running.take_sent();
            let w = measure().await?;
            let sent = running.take_sent();
            let _ = stop.send(true);
            running.finish().await?;
            Some((w, sent))
        }
        None => None,
    };
    let _ = stop.send(true);
    for t in tasks {
        t.await??;
    }
    Ok(Floor {
        requests,
        with_sinks,
    })
}

/// The sinks' part of the floor: the bytes regpoll's writers send for a
/// poll, made before the window by the writers' own encoders from a
/// synthetic poll of the fleet's shape, so that the window holds only
/// sending them and taking the answers, as often as the writers would. To
/// Redis, the pipeline of each poll made since the last send, every 2 ms
/// (the writer's linger) or, when polls come less often, once a poll; the
/// answers are read and only checked for errors. To PostgreSQL, a binary
/// COPY of the rows owed whenever a batch would be full at the fleet's rate
/// or the batch delay is up, into a temporary table of `register_readings`'
/// shape.
struct SinkReplay {
    /// The connection, one poll's bytes, and the command that deletes the
    /// keys they write.
    redis: Option<(crate::latest::redis::connection::Stream, Vec<u8>, Vec<u8>)>,
    copy: Option<(sqlx::PgConnection, CopyBytes)>,
    readings_per_poll: usize,
    /// How often the bare loop polls, on average.
    poll_every: Duration,
}

/// Every how often the replay sends Redis the polls made meanwhile.
const REPLAY_LINGER: Duration = Duration::from_millis(2);

impl SinkReplay {
    async fn prepare(
        spec: &FleetSpec,
        redis_url: Option<&str>,
        database_url: Option<&str>,
    ) -> anyhow::Result<Option<SinkReplay>> {
        if redis_url.is_none() && database_url.is_none() {
            return Ok(None);
        }
        let polls = BatchSettings::default().max_rows.div_ceil(spec.registers);
        let reports = synthetic_reports(spec.devices.clamp(1, 100), spec.registers, polls)?;
        let redis = match redis_url {
            Some(url) => {
                let settings = crate::latest::redis::RedisSettings {
                    prefix: "regpoll-bench-floor".into(),
                    ttl: None,
                    ..Default::default()
                };
                let per_poll = crate::latest::redis::packed_report(&settings, &reports[0]);
                let keys = ["latest", "device"]
                    .map(|kind| format!("{}:{kind}:{}", settings.prefix, reports[0].device.name));
                let mut delete = crate::latest::redis::connection::Commands::default();
                delete
                    .command(3)
                    .arg(b"DEL")
                    .arg(keys[0].as_bytes())
                    .arg(keys[1].as_bytes());
                let stream = crate::latest::redis::connection::Target::parse(url)?
                    .connect(settings.timeout)
                    .await
                    .context("floor")?;
                Some((stream, per_poll, delete.into_bytes()))
            }
            None => None,
        };
        let copy = match database_url {
            Some(url) => {
                let mut conn = sqlx::PgConnection::connect(url)
                    .await
                    .context("floor: cannot connect to PostgreSQL")?;
                conn.execute(
                    "CREATE TEMP TABLE floor_readings (LIKE register_readings INCLUDING DEFAULTS)",
                )
                .await
                .context("floor: cannot create its table")?;
                let mut rows = Vec::new();
                for r in &reports {
                    crate::history::row::rows_of(r, &mut rows);
                }
                Some((conn, CopyBytes::of(&rows)))
            }
            None => None,
        };
        Ok(Some(SinkReplay {
            redis,
            copy,
            readings_per_poll: spec.registers,
            poll_every: spec.every / spec.devices.max(1) as u32,
        }))
    }

    fn start(
        self,
        polls: Arc<std::sync::atomic::AtomicU64>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> RunningReplay {
        use std::sync::atomic::Ordering::Relaxed;
        let sent = Arc::new(SentCounters::default());
        let mut tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
        if let Some((stream, per_poll, delete)) = self.redis {
            let crate::latest::redis::connection::Stream { mut rx, mut tx } = stream;
            let mut stop_w = stop.clone();
            let (polls, sent) = (Arc::clone(&polls), Arc::clone(&sent));
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(REPLAY_LINGER.max(self.poll_every));
                let mut last = polls.load(Relaxed);
                let mut out = Vec::new();
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop_w.wait_for(|s| *s) => break,
                    }
                    let now = polls.load(Relaxed);
                    out.clear();
                    for _ in last..now {
                        out.extend_from_slice(&per_poll);
                    }
                    last = now;
                    tx.write_all(&out).await.context("floor: Redis write")?;
                    sent.redis_bytes.fetch_add(out.len() as u64, Relaxed);
                }
                tx.write_all(&delete).await.context("floor: Redis write")?;
                Ok(())
            }));
            let mut stop_r = stop.clone();
            tasks.push(tokio::spawn(async move {
                // The answers are read as the writer reads them, and only
                // checked for errors.
                let mut inbox = Vec::with_capacity(64 * 1024);
                loop {
                    let n = tokio::select! {
                        n = rx.read_buf(&mut inbox) => n.context("floor: Redis read")?,
                        _ = stop_r.wait_for(|s| *s) => break,
                    };
                    if n == 0 {
                        // After the stop the writer sends its DEL and
                        // hangs up, and Redis closes its side: that end
                        // may be read before the stop is seen.
                        if *stop_r.borrow() {
                            break;
                        }
                        bail!("floor: Redis closed the connection");
                    }
                    let mut at = 0;
                    while let Some((len, error)) =
                        crate::latest::redis::connection::next_reply(&inbox[at..])?
                    {
                        if let Some(e) = error {
                            bail!("floor: Redis answered {}", String::from_utf8_lossy(e));
                        }
                        at += len;
                    }
                    inbox.drain(..at);
                }
                Ok(())
            }));
        }
        if let Some((mut conn, bytes)) = self.copy {
            let mut stop = stop.clone();
            let sent = Arc::clone(&sent);
            let per_poll = self.readings_per_poll;
            let statement =
                pgcopy::COPY_STATEMENT.replacen("register_readings", "floor_readings", 1);
            // The writer's rules (`BatchSettings`' defaults): a COPY when a
            // batch is full or the batch delay is up, whichever comes first
            // at the fleet's rate.
            let batch = BatchSettings::default();
            let rows_per_s = per_poll as f64 / self.poll_every.as_secs_f64();
            tasks.push(tokio::spawn(async move {
                let mut owed = 0;
                let mut last = polls.load(Relaxed);
                loop {
                    let to_fill = batch.max_rows.saturating_sub(owed) as f64 / rows_per_s;
                    let wait = Duration::from_secs_f64(to_fill).min(batch.max_delay);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                    let now = polls.load(Relaxed);
                    owed += (now - last) as usize * per_poll;
                    last = now;
                    while owed > 0 {
                        let rows = owed.min(batch.max_rows).min(bytes.rows());
                        let mut copy = conn.copy_in_raw(&statement).await?;
                        for piece in bytes.first(rows) {
                            copy.send(piece).await?;
                        }
                        copy.finish().await?;
                        owed -= rows;
                        sent.copies.fetch_add(1, Relaxed);
                        sent.copy_rows.fetch_add(rows as u64, Relaxed);
                        if owed < batch.max_rows {
                            break;
                        }
                    }
                }
                conn.close().await?;
                Ok(())
            }));
        }
        RunningReplay { sent, tasks }
    }
}

/// A binary COPY stream of some rows, encoded once, from which a COPY of
/// its first rows can be sent without encoding anything.
struct CopyBytes {
    header: Vec<u8>,
    tuples: Vec<u8>,
    /// Where each row's tuple ends in `tuples`.
    ends: Vec<usize>,
    trailer: Vec<u8>,
}

impl CopyBytes {
    fn of(rows: &[Row]) -> CopyBytes {
        let (mut header, mut tuples, mut trailer) = (Vec::new(), Vec::new(), Vec::new());
        pgcopy::header(&mut header);
        pgcopy::trailer(&mut trailer);
        let ends = rows
            .iter()
            .map(|r| {
                pgcopy::tuples(&mut tuples, std::slice::from_ref(r));
                tuples.len()
            })
            .collect();
        CopyBytes {
            header,
            tuples,
            ends,
            trailer,
        }
    }

    fn rows(&self) -> usize {
        self.ends.len()
    }

    /// The stream of the first `n` rows, in three pieces.
    fn first(&self, n: usize) -> [&[u8]; 3] {
        let end = if n == 0 { 0 } else { self.ends[n - 1] };
        [&self.header, &self.tuples[..end], &self.trailer]
    }
}

#[derive(Default)]
struct SentCounters {
    redis_bytes: std::sync::atomic::AtomicU64,
    copies: std::sync::atomic::AtomicU64,
    copy_rows: std::sync::atomic::AtomicU64,
}

struct RunningReplay {
    sent: Arc<SentCounters>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl RunningReplay {
    /// What was sent since the last call.
    fn take_sent(&self) -> SinksSent {
        use std::sync::atomic::Ordering::Relaxed;
        SinksSent {
            redis_bytes: self.sent.redis_bytes.swap(0, Relaxed),
            copies: self.sent.copies.swap(0, Relaxed),
            copy_rows: self.sent.copy_rows.swap(0, Relaxed),
        }
    }

    async fn finish(self) -> anyhow::Result<()> {
        for t in self.tasks {
            t.await.context("a floor replay task panicked")??;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct IngestSpec {
    pub name: String,
    pub rows: usize,
    pub rounds: usize,
    pub database_url: String,
    pub psql: PathBuf,
    /// The writer's batch size (`run --batch-rows`).
    pub batch_rows: usize,
}

/// Synthetic poll reports: 100 devices of 10 registers, one poll per second
/// each, `rows` readings in all, in the order polls would deliver them.
fn ingest_reports(rows: usize) -> anyhow::Result<Vec<Arc<PollReport>>> {
    synthetic_reports(100, 10, rows.div_ceil(10))
}

/// `polls` synthetic poll reports of `devices` benchmark devices of
/// `registers` registers, one poll per second each, in the order polls
/// would deliver them.
fn synthetic_reports(
    devices: usize,
    registers: usize,
    polls: usize,
) -> anyhow::Result<Vec<Arc<PollReport>>> {
    let spec = FleetSpec::layout(devices, registers);
    let mut devices = crate::config::parse(&fleet_yaml(&spec, &[502]), "ingest.yaml")?;
    let mut last_id = 0;
    for (d, device) in devices.iter_mut().enumerate() {
        device.id = d as i32 + 1;
        let first = last_id + 1;
        last_id += device.registers.len() as i32;
        device.register_ids = (first..=last_id).collect();
    }
    let devices: Vec<Arc<crate::registry::Device>> = devices.into_iter().map(Arc::new).collect();
    let base: DateTime<Utc> = DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
    Ok((0..polls)
        .map(|p| {
            let device = Arc::clone(&devices[p % devices.len()]);
            let ts = base + chrono::Duration::seconds((p / devices.len()) as i64);
            let readings = (0..device.registers.len())
                .map(|index| Reading {
                    index,
                    ts,
                    value: Value::Number((p % 1000) as f64 * 0.5 + index as f64),
                    quality: Quality::Good,
                    detail: None,
                })
                .collect();
            Arc::new(PollReport {
                device,
                started: ts,
                latency: Duration::from_millis(1),
                error: None,
                reachable: true,
                readings,
            })
        })
        .collect())
}

/// One pass of the reports through the history writer, as `run` sets it up.
async fn through_writer(
    db: &Db,
    reports: &[Arc<PollReport>],
    batch_rows: usize,
) -> anyhow::Result<(Duration, f64, u64)> {
    let stats = Arc::new(HistoryStats::default());
    let (tx, rx) = tokio::sync::mpsc::channel(crate::settings::HISTORY_QUEUE);
    let (_abort, abort_rx) = tokio::sync::watch::channel(false);
    let cpu0 = own_cpu_seconds()?;
    let started = Instant::now();
    let writer = tokio::spawn(history::run_writer(
        db.clone(),
        rx,
        BatchSettings {
            max_rows: batch_rows,
            ..BatchSettings::default()
        },
        Arc::clone(&stats),
        abort_rx,
    ));
    for r in reports {
        tx.send(Arc::clone(r))
            .await
            .map_err(|_| anyhow::anyhow!("the writer stopped"))?;
    }
    drop(tx);
    writer.await?;
    let took = started.elapsed();
    let cpu = own_cpu_seconds()? - cpu0;
    let failures = stats.failures.load(std::sync::atomic::Ordering::Relaxed);
    if failures > 0 {
        bail!("the writer had {failures} failed batches");
    }
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    Ok((took, cpu, batches))
}

async fn count_and_truncate(db: &Db) -> anyhow::Result<u64> {
    let Db::Postgres(pool) = db else {
        bail!("ingest needs PostgreSQL");
    };
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM register_readings")
        .fetch_one(pool)
        .await?;
    pool.execute("TRUNCATE register_readings").await?;
    Ok(n as u64)
}

/// Runs the pure-ingest scenario.
pub async fn ingest(spec: &IngestSpec) -> anyhow::Result<Json> {
    let say = |m: String| eprintln!("bench {}: {m}", spec.name);
    let url = fresh_database(&spec.database_url, &spec.name).await?;
    let db = Db::postgres(&url).await?;
    let reports = ingest_reports(spec.rows)?;
    let mut rows: Vec<Row> = Vec::with_capacity(spec.rows + 10);
    for r in &reports {
        crate::history::row::rows_of(r, &mut rows);
    }
    rows.truncate(spec.rows);
    let reports = &reports[..spec.rows.div_ceil(10)];
    let rows_n = rows.len() as u64;
    let file = std::env::temp_dir().join(format!("regpoll-bench-{}.pgcopy", std::process::id()));
    std::fs::write(&file, pgcopy::encode(&rows))?;
    drop(rows);
    say(format!(
        "{rows_n} rows, {} MB as PGCOPY; {} rounds of writer then psql",
        std::fs::metadata(&file)?.len() / 1_000_000,
        spec.rounds
    ));
    let mut writer_s = Vec::new();
    let mut writer_cpu = Vec::new();
    let mut psql_s = Vec::new();
    let result = async {
        for round in 1..=spec.rounds {
            let (took, cpu, batches) = through_writer(&db, reports, spec.batch_rows).await?;
            let stored = count_and_truncate(&db).await?;
            if stored != rows_n {
                bail!("the writer stored {stored} of {rows_n} rows");
            }
            let started = Instant::now();
            let out = Command::new(&spec.psql)
                .arg(&url)
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
                .arg(pgcopy::COPY_STATEMENT)
                .stdin(std::fs::File::open(&file)?)
                .output()
                .with_context(|| format!("cannot run {}", spec.psql.display()))?;
            let psql_took = started.elapsed();
            if !out.status.success() {
                bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let stored = count_and_truncate(&db).await?;
            if stored != rows_n {
                bail!("psql stored {stored} of {rows_n} rows");
            }
            say(format!(
                "round {round}: writer {:.2} s ({:.0} rows/s, {:.2} µs CPU/row, {batches} COPYs), psql COPY {:.2} s ({:.0} rows/s): {:.1} %",
                took.as_secs_f64(),
                rows_n as f64 / took.as_secs_f64(),
                cpu * 1e6 / rows_n as f64,
                psql_took.as_secs_f64(),
                rows_n as f64 / psql_took.as_secs_f64(),
                psql_took.as_secs_f64() / took.as_secs_f64() * 100.0
            ));
            writer_s.push(took.as_secs_f64());
            writer_cpu.push(cpu);
            psql_s.push(psql_took.as_secs_f64());
        }
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&file);
    result?;
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, p) = (median(&writer_s), median(&psql_s));
    // Each round runs the writer and psql back to back, under the same state
    // of the disk, so the ratio is taken per round and its median reported.
    // A ratio of the two medians would pair a fast round of one with a slow
    // round of the other: disk timings here vary by 40 % between rounds.
    let ratios: Vec<f64> = writer_s.iter().zip(&psql_s).map(|(w, p)| p / w).collect();
    Ok(json!({
        "scenario": spec.name,
        "kind": "ingest",
        "rows": rows_n,
        "rounds": spec.rounds,
        "batch_rows": spec.batch_rows,
        "writer_s": writer_s,
        "psql_s": psql_s,
        "writer_rows_per_s": rows_n as f64 / w,
        "psql_rows_per_s": rows_n as f64 / p,
        "writer_vs_psql_per_round": ratios,
        "writer_vs_psql": median(&ratios),
        "writer_vs_psql_of_medians": p / w,
        "writer_cpu_us_per_row": median(&writer_cpu) * 1e6 / rows_n as f64,
        "timescaledb": match &db {
            Db::Postgres(pool) => crate::db::has_timescaledb(pool).await.unwrap_or(false),
            Db::Sqlite(_) => false,
        },
    }))
}

fn f(v: &Json, key: &str) -> Option<f64> {
    v.get(key).and_then(Json::as_f64)
}

/// How a figure stands against its target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Met,
    Missed,
    /// Missed, but the bare request loop alone (the same requests at the
    /// same rate and nothing else) is already over the target: no poller
    /// making those requests on this machine can meet it. Not a failure.
    OutOfReach,
}

impl Verdict {
    fn of(ok: bool) -> Verdict {
        if ok { Verdict::Met } else { Verdict::Missed }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "ok",
            Verdict::Missed => "MISSED",
            Verdict::OutOfReach => {
                "out of reach on this machine (the bare request loop alone costs more)"
            }
        }
    }
}

/// The results table (Markdown) of the given scenario results, with the
/// targets checked; returns the table and whether every target was met.
pub fn report(results: &[Json]) -> (String, bool) {
    let mut out = String::new();
    let mut all_ok = true;
    let fleets: Vec<&Json> = results.iter().filter(|r| r["kind"] == "fleet").collect();
    if !fleets.is_empty() {
        let _ = writeln!(
            out,
            "| scenario | devices × regs @ every | polls/s | Modbus req/s | readings/s written | lateness p50 / p99 / p99.9 / max (ms) | overruns | missed | CPU s per 1M readings | CPU µs/reading | bare request loop µs/reading | bare loop + sinks' bytes µs/reading | peak RSS | KiB/device | RSS at end | response→Redis p99 (ms) |"
        );
        let _ = writeln!(
            out,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &fleets {
            let l = &r["lateness"];
            let num = |v: &Json, k: &str| f(v, k).map_or("—".into(), |x| format!("{x:.2}"));
            let _ = writeln!(
                out,
                "| {} | {} × {} @ {}s | {:.0} | {:.0} | {:.0} | {} / {} / {} / {} | {} | {} | {:.2} | {:.2} | {} | {} | {:.1} MiB | {:.2} | {:.1} MiB | {} |",
                r["scenario"].as_str().unwrap_or("?"),
                r["devices"],
                r["registers_per_device"],
                r["every_s"],
                f(r, "polls_per_s").unwrap_or(0.0),
                f(r, "modbus_requests_per_s").unwrap_or(0.0),
                f(r, "rows_written_per_s").unwrap_or(0.0),
                num(l, "p50_ms"),
                num(l, "p99_ms"),
                num(l, "p999_ms"),
                num(l, "max_ms"),
                r["overruns"],
                r["missed_polls"],
                f(r, "cpu_s_per_million_readings").unwrap_or(f64::NAN),
                f(r, "cpu_us_per_reading").unwrap_or(f64::NAN),
                num(&r["floor"], "cpu_us_per_reading"),
                num(&r["floor"]["with_sinks"], "cpu_us_per_reading"),
                f(r, "peak_rss_kib").unwrap_or(0.0) / 1024.0,
                f(r, "peak_rss_kib_per_device").unwrap_or(f64::NAN),
                f(r, "rss_kib").unwrap_or(0.0) / 1024.0,
                num(&r["redis_visible"], "p99_ms"),
            );
        }
    }
    if !fleets.is_empty() {
        let _ = writeln!(
            out,
            "\nWhat the shared box was doing in the same windows:\n\n| scenario | some task waiting for a CPU (% of the window) | regpoll CPU % | regpoll threads' run-queue wait (ms/s) | simulator CPU % | simulator's run-queue wait (ms/s) | history write p99 / max (ms) |\n|---|---|---|---|---|---|---|"
        );
        for r in &fleets {
            let b = &r["box"];
            let num = |v: &Json, k: &str| f(v, k).map_or("—".into(), |x| format!("{x:.1}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} / {} |",
                r["scenario"].as_str().unwrap_or("?"),
                num(b, "cpu_pressure_some_pct"),
                num(b, "regpoll_cpu_pct"),
                num(b, "regpoll_run_queue_wait_ms_per_s"),
                num(b, "simulator_cpu_pct"),
                num(b, "simulator_run_queue_wait_ms_per_s"),
                num(&r["history_write"], "p99_ms"),
                num(&r["history_write"], "max_ms"),
            );
        }
    }
    for r in results.iter().filter(|r| r["kind"] == "ingest") {
        let _ = writeln!(
            out,
            "\n| scenario | rows | regpoll writer rows/s (median) | psql binary COPY rows/s (median) | writer ÷ psql (median of rounds) | writer CPU µs/row |\n|---|---|---|---|---|---|\n| {} | {} | {:.0} | {:.0} | {:.1} % | {:.2} |",
            r["scenario"].as_str().unwrap_or("?"),
            r["rows"],
            f(r, "writer_rows_per_s").unwrap_or(0.0),
            f(r, "psql_rows_per_s").unwrap_or(0.0),
            f(r, "writer_vs_psql").unwrap_or(0.0) * 100.0,
            f(r, "writer_cpu_us_per_row").unwrap_or(f64::NAN),
        );
    }
    let _ = writeln!(out, "\nTargets:");
    let mut judge = |what: String, verdict: Verdict| {
        all_ok &= verdict != Verdict::Missed;
        let _ = writeln!(out, "- {what}: {}", verdict.text());
    };
    for r in &fleets {
        let name = r["scenario"].as_str().unwrap_or("?");
        let cpu = f(r, "cpu_us_per_reading").unwrap_or(f64::INFINITY);
        let alone = f(&r["floor"], "cpu_us_per_reading");
        let floor = match (alone, f(&r["floor"]["with_sinks"], "cpu_us_per_reading")) {
            (Some(x), Some(y)) => format!(
                " (a bare request loop alone: {x:.2}; with the sinks' bytes sent as well: {y:.2})"
            ),
            (Some(x), None) => format!(" (a bare request loop alone: {x:.2})"),
            _ => String::new(),
        };
        let verdict = if cpu <= TARGET_CPU_US_PER_READING {
            Verdict::Met
        } else if alone.is_some_and(|x| x > TARGET_CPU_US_PER_READING) {
            Verdict::OutOfReach
        } else {
            Verdict::Missed
        };
        judge(
            format!("({name}) CPU {cpu:.2} µs/reading ≤ {TARGET_CPU_US_PER_READING}{floor}"),
            verdict,
        );
        if let Some(p99) = f(&r["redis_visible"], "p99_ms") {
            judge(
                format!("({name}) response→Redis p99 {p99:.2} ms ≤ {TARGET_REDIS_P99_MS} ms"),
                Verdict::of(p99 <= TARGET_REDIS_P99_MS),
            );
        }
        judge(
            format!("({name}) rows lost {} = 0", r["rows_lost"]),
            Verdict::of(r["rows_lost"] == 0),
        );
        if r["devices"].as_u64() >= Some(10_000) {
            let p99 = f(&r["lateness"], "p99_ms").unwrap_or(f64::INFINITY);
            judge(
                format!("({name}) missed polls {} = 0", r["missed_polls"]),
                Verdict::of(f(r, "missed_polls") == Some(0.0)),
            );
            judge(
                format!("({name}) lateness p99 {p99:.2} ms ≤ {TARGET_LATENESS_P99_MS} ms"),
                Verdict::of(p99 <= TARGET_LATENESS_P99_MS),
            );
            let kib = f(r, "peak_rss_kib_per_device").unwrap_or(f64::INFINITY);
            judge(
                format!("({name}) peak RSS {kib:.2} KiB/device ≤ {TARGET_RSS_KB_PER_DEVICE}"),
                Verdict::of(kib <= TARGET_RSS_KB_PER_DEVICE),
            );
        }
    }
    for r in results.iter().filter(|r| r["kind"] == "ingest") {
        let ratio = f(r, "writer_vs_psql").unwrap_or(0.0);
        judge(
            format!(
                "({}) writer at {:.1} % of psql binary COPY ≥ {:.0} %",
                r["scenario"].as_str().unwrap_or("?"),
                ratio * 100.0,
                TARGET_WRITER_RATIO * 100.0
            ),
            Verdict::of(ratio >= TARGET_WRITER_RATIO),
        );
    }
    (out, all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_yaml_is_a_valid_devices_file_with_one_request_per_device() {
        let spec = FleetSpec::layout(250, 100);
        let devices = crate::config::parse(&fleet_yaml(&spec, &[5020, 5021, 5022]), "t").unwrap();
        assert_eq!(devices.len(), 250);
        assert_eq!(devices[249].port, 5022);
        assert_eq!(devices[249].unit_id.0, 50);
        let plan = crate::modbus::plan::plan(&devices[0].registers, &devices[0].limits);
        assert_eq!(plan.len(), 1, "{plan:?}");
    }

    #[test]
    fn own_cpu_counts_a_spinning_thread() {
        let total = || own_cpu_seconds().unwrap();
        let before = total();
        // Spins until 25 ms of CPU are counted (a thread that has ended is
        // still in RUSAGE_SELF), giving up after 5 s of wall time.
        let spun = std::thread::spawn(move || {
            let t = Instant::now();
            while total() - before < 0.025 {
                if t.elapsed() > Duration::from_secs(5) {
                    return false;
                }
            }
            true
        });
        assert!(spun.join().unwrap(), "25 ms of CPU never showed");
        assert!(total() - before >= 0.025);
    }

    #[test]
    fn proc_figures_of_this_process_are_read() {
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
        assert!(status_kib(std::process::id(), "VmHWM").unwrap() > 0);
        // Every thread's wait is summed: a busy thread of ours adds its own.
        let before = run_queue_wait_s(std::process::id()).unwrap();
        let spin = std::thread::spawn(|| {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(20) {}
        });
        spin.join().unwrap();
        assert!(run_queue_wait_s(std::process::id()).unwrap() >= before);
        if let Some(p) = cpu_pressure_s() {
            assert!(p >= 0.0);
        }
    }

    #[test]
    fn report_checks_the_targets() {
        let fleet = json!({"kind":"fleet","scenario":"c","devices":10000,"registers_per_device":10,"every_s":1.0,
            "polls_per_s":10000.0,"modbus_requests_per_s":10000.0,"rows_written_per_s":100000.0,
            "lateness":{"p50_ms":1.0,"p99_ms":2.0,"p999_ms":3.0,"max_ms":4.0},"overruns":0.0,"missed_polls":0.0,
            "cpu_s_per_million_readings":1.5,"cpu_us_per_reading":1.5,"peak_rss_kib":30000.0,
            "peak_rss_kib_per_device":3.0,"redis_visible":{"p99_ms":4.0},"rows_lost":0,
            "box":{"cpu_pressure_some_pct":21.25,"regpoll_cpu_pct":31.0,"regpoll_run_queue_wait_ms_per_s":48.5,
                "simulator_cpu_pct":19.0,"simulator_run_queue_wait_ms_per_s":12.0},
            "history_write":{"p99_ms":54.3,"max_ms":63.9}});
        let (table, ok) = report(std::slice::from_ref(&fleet));
        assert!(ok, "{table}");
        assert!(
            table.contains("| c | 21.2 | 31.0 | 48.5 | 19.0 | 12.0 | 54.3 / 63.9 |"),
            "{table}"
        );
        let mut slow = fleet.clone();
        slow["lateness"]["p99_ms"] = json!(7.5);
        let (table, ok) = report(&[slow]);
        assert!(!ok);
        assert!(
            table.contains("lateness p99 7.50 ms ≤ 5 ms: MISSED"),
            "{table}"
        );
        // A missed CPU target names the floor the bare request loop measured.
        let mut costly = fleet.clone();
        costly["cpu_us_per_reading"] = json!(4.25);
        costly["floor"] = json!({"cpu_us_per_reading": 1.75});
        let (table, ok) = report(&[costly.clone()]);
        assert!(!ok);
        assert!(
            table.contains("CPU 4.25 µs/reading ≤ 2 (a bare request loop alone: 1.75): MISSED"),
            "{table}"
        );
        assert!(table.contains("| 4.25 | 1.75 | — |"), "{table}");
        costly["floor"]["with_sinks"] = json!({"cpu_us_per_reading": 1.95});
        let (table, _) = report(&[costly]);
        assert!(
            table.contains("(a bare request loop alone: 1.75; with the sinks' bytes sent as well: 1.95): MISSED"),
            "{table}"
        );
        assert!(table.contains("| 4.25 | 1.75 | 1.95 |"), "{table}");
        // When the bare loop alone is over the target, no poller can meet
        // it here: said so, and not counted as a miss.
        let mut slow_rate = fleet.clone();
        slow_rate["cpu_us_per_reading"] = json!(5.0);
        slow_rate["floor"] = json!({"cpu_us_per_reading": 2.35});
        let (table, ok) = report(&[slow_rate]);
        assert!(ok, "{table}");
        assert!(
            table.contains("CPU 5.00 µs/reading ≤ 2 (a bare request loop alone: 2.35): out of reach on this machine"),
            "{table}"
        );
    }

    #[test]
    fn the_floor_sends_the_copy_of_any_first_rows_as_the_encoder_writes_it() {
        let reports = synthetic_reports(3, 10, 4).unwrap();
        let mut rows = Vec::new();
        for r in &reports {
            crate::history::row::rows_of(r, &mut rows);
        }
        let bytes = CopyBytes::of(&rows);
        assert_eq!(bytes.rows(), 40);
        for n in [0, 1, 17, 40] {
            assert_eq!(
                bytes.first(n).concat(),
                pgcopy::encode(&rows[..n]),
                "{n} rows"
            );
        }
    }

    #[test]
    fn stalls_are_written_hold_slash_every() {
        assert_eq!(
            parse_stall("800ms/4s"),
            Ok(Stall {
                hold: Duration::from_millis(800),
                every: Duration::from_secs(4)
            })
        );
        for bad in ["800ms", "4s/800ms", "0s/1s", "1s/1s", "x/4s"] {
            let e = parse_stall(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(
            parse_stall("4s/800ms")
                .unwrap_err()
                .contains("e.g. 800ms/4s")
        );
    }

    #[test]
    fn device_words_match_the_generated_layout() {
        // Every fifth register is an f32 (two words): 10 registers are 12 words.
        assert_eq!(device_words(10), 12);
        assert_eq!(device_words(100), 120);
        let spec = FleetSpec::layout(1, 10);
        let devices = crate::config::parse(&fleet_yaml(&spec, &[502]), "t.yaml").unwrap();
        let last = devices[0].registers.last().unwrap();
        assert_eq!(last.last_address() + 1, u32::from(device_words(10)));
    }
}
