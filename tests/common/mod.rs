//! Helpers shared by the integration tests: a fresh PostgreSQL database per
//! test, the Redis URL with a key prefix of its own, and the simulator started
//! on free ports with a devices.yaml rewritten to point at them.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use regpoll::app::Running;
use regpoll::config;
use regpoll::registry::Device;
use regpoll::sim::{Bind, Simulator};

/// Fails loudly (never skips) when the test services are missing.
fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests with scripts/test, which starts PostgreSQL and Redis and exports it")
    })
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{tag}_{}_{}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates an empty database on the test server and returns its URL.
pub async fn fresh_postgres() -> String {
    use sqlx::Executor as _;
    let admin = required_env("TEST_DATABASE_URL");
    let name = unique("regpoll_test");
    let pool = sqlx::PgPool::connect(&admin)
        .await
        .expect("cannot connect to TEST_DATABASE_URL");
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("cannot create a test database");
    pool.close().await;
    let mut url = url::Url::parse(&admin).expect("TEST_DATABASE_URL is not a URL");
    url.set_path(&name);
    url.to_string()
}

/// The test Redis and a key prefix no other test uses.
pub fn redis() -> (String, String) {
    (required_env("TEST_REDIS_URL"), unique("regpoll_test"))
}

/// A simulator serving a devices.yaml template. Placeholders such as `{A}`
/// stand for ports: each becomes a free port the simulator listens on, and
/// `{DEAD}` a port where nothing listens (connections are refused).
pub struct SimFixture {
    pub sim: Simulator,
    pub yaml: String,
    pub devices: Vec<Device>,
}

pub async fn simulate(template: &str, placeholders: &[&str]) -> SimFixture {
    simulate_with_faults(template, placeholders, Vec::new()).await
}

/// [`simulate`], with devices misbehaving as `faults` say.
pub async fn simulate_with_faults(
    template: &str,
    placeholders: &[&str],
    faults: Vec<regpoll::sim::SimFault>,
) -> SimFixture {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let template = template.replace("{DEAD}", &dead.to_string());
    let dummy = |i: usize| 10_000 + i as u16;
    let mut staged = template.clone();
    for (i, p) in placeholders.iter().enumerate() {
        staged = staged.replace(p, &dummy(i).to_string());
    }
    let staged_devices = config::parse(&staged, "test.yaml").expect("test template must be valid");
    let served: Vec<Device> = staged_devices
        .iter()
        .filter(|d| d.port != dead)
        .cloned()
        .collect();
    let sim = Simulator::start_with_faults(&served, Bind::Ephemeral, faults)
        .await
        .expect("simulator must start");
    let mut yaml = template;
    for (i, p) in placeholders.iter().enumerate() {
        let d = served
            .iter()
            .find(|d| d.port == dummy(i))
            .expect("placeholder is used by a device");
        yaml = yaml.replace(p, &sim.addr_of(d).unwrap().port().to_string());
    }
    let devices = config::parse(&yaml, "test.yaml").unwrap();
    SimFixture { sim, yaml, devices }
}

/// The simulator for `devices` (each endpoint on a free port, misbehaving
/// as `faults` say), and the devices pointed at the ports it listens on.
pub async fn start_sim(
    devices: &[Device],
    faults: Vec<regpoll::sim::SimFault>,
) -> (Simulator, Vec<std::sync::Arc<Device>>) {
    let sim = Simulator::start_with_faults(devices, Bind::Ephemeral, faults)
        .await
        .unwrap();
    let moved = devices
        .iter()
        .map(|d| {
            std::sync::Arc::new(Device {
                port: sim.addr_of(d).unwrap().port(),
                ..d.clone()
            })
        })
        .collect();
    (sim, moved)
}

/// Every reading of `report` good and equal to what the simulator served
/// (at the reading's second or the next: the value may step meanwhile).
pub fn assert_all_good(report: &regpoll::reading::PollReport) {
    for r in &report.readings {
        let reg = report.register(r);
        assert_eq!(
            r.quality,
            regpoll::reading::Quality::Good,
            "{}.{}: {:?}",
            report.device.name,
            reg.name,
            r.detail
        );
        let now = r.ts;
        let ok = [now, now + chrono::Duration::seconds(1)]
            .iter()
            .any(|&t| regpoll::sim::expected_value(&report.device.name, reg, t) == r.value);
        assert!(
            ok,
            "{}.{} = {:?} is not the simulator's value",
            report.device.name, reg.name, r.value
        );
    }
}

/// Waits (by awaiting updates, not sleeping) until every device of the run has
/// completed at least `polls` polls. Panics after 30 s.
pub async fn wait_for_polls(running: &Running, polls: u64) {
    let mut updates = running.latest.subscribe();
    let want = running.devices().len();
    let done = || {
        let snap = running.latest.snapshot();
        snap.len() == want && snap.values().all(|d| d.state.polls >= polls)
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        while !done() {
            updates
                .changed()
                .await
                .expect("latest values stopped updating");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "devices did not reach {polls} polls in 30 s: {:#?}",
            running.latest.snapshot()
        )
    });
}

/// Writes `yaml` to a fresh temporary directory and returns both (the
/// directory is removed when dropped).
pub fn write_yaml(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devices.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

/// An HTTP answer: status, body, and the body as JSON when it is JSON.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

impl HttpAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// GET `path` from `addr` over HTTP/1.0 (so the answer is never chunked and
/// ends when the server closes): enough for testing the API without a client
/// library.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> HttpAnswer {
    http_get_as(addr, path, None).await
}

/// `http_get` with `Authorization: Bearer <token>` when a token is given.
#[allow(dead_code)]
pub async fn http_get_as(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the API at {addr}: {e}"));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the API did not answer within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).expect("the answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head}"));
    HttpAnswer {
        status,
        body: body.to_string(),
    }
}

/// Refuses new connections to the database of `url` and ends the open ones
/// (or lets them in again).
pub async fn set_reachable(url: &str, reachable: bool) {
    use sqlx::Executor as _;
    let admin = sqlx::PgPool::connect(&std::env::var("TEST_DATABASE_URL").unwrap())
        .await
        .unwrap();
    let db = url.rsplit('/').next().unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS {reachable}"
        )))
        .await
        .unwrap();
    if !reachable {
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
            )))
            .await
            .unwrap();
    }
    admin.close().await;
}

/// Starts the fixture's devices with `settings` and the API on a free port.
pub async fn start_with_api(
    fixture: &SimFixture,
    settings: regpoll::app::Settings,
) -> (Running, std::net::SocketAddr) {
    let settings = regpoll::app::Settings {
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..settings
    };
    let running = regpoll::app::start(
        &settings,
        regpoll::app::DeviceSource::Devices(fixture.devices.clone()),
    )
    .await
    .expect("service starts");
    let addr = running.http_addr().expect("HTTP is on");
    (running, addr)
}

/// Renders the page in headless Chromium for `budget` of virtual time
/// (spent only while no request is pending, so every request the page makes
/// in that time is answered), optionally saving a screenshot; returns the
/// DOM and the wall-clock time Chromium took from its start to the dump.
pub async fn render_page(url: &str, budget: Duration, shot: Option<&Path>) -> (String, Duration) {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = chromium(profile.path());
    cmd.arg(format!("--virtual-time-budget={}", budget.as_millis()));
    if let Some(path) = shot {
        cmd.arg(format!("--screenshot={}", path.display()));
    }
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.arg(url).output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    let took = started.elapsed();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && dom.contains("data-summary"),
        "chromium failed or painted no summary ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        dom
    );
    (dom, took)
}

/// Headless Chromium (installed by scripts/test) with a throwaway profile,
/// none of its calls home (refused here, and noise on the shared cores) and
/// the page's DOM dumped to stdout. At the lowest priority: the browser
/// runs on the operator's machine, not beside regpoll; here it shares two
/// cores with the service, whose polling lateness tests measure.
pub fn chromium(profile: &std::path::Path) -> tokio::process::Command {
    let chromium = required_env("REGPOLL_TEST_CHROMIUM");
    let mut cmd = tokio::process::Command::new("nice");
    cmd.args(["-n", "19"])
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1600",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .kill_on_drop(true);
    cmd
}

/// The `regpoll` binary run to its end in `dir`, with none of the
/// environment's database, Redis or log settings.
pub fn regpoll(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("REGPOLL_LOG")
        .output()
        .expect("regpoll runs")
}

/// A command's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `regpoll` service (`run`) whose log lines arrive on `lines` as it
/// writes them.
pub struct Service {
    child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
}

impl Service {
    /// Starts `command` (the binary with its arguments and environment)
    /// with its standard error read line by line.
    pub fn start(command: &mut std::process::Command) -> Service {
        use std::io::BufRead as _;
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("regpoll starts");
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Service {
            child,
            lines,
            reader,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends it at once (SIGKILL: a crash, the OOM killer), waits for it to
    /// exit, and returns the log lines not taken from `lines` yet.
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        self.lines.try_iter().collect()
    }

    /// Stops it as systemd does (SIGTERM), waits for it to exit, and
    /// returns the log lines not taken from `lines` yet.
    pub fn stop(mut self) -> Vec<String> {
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let _ = self.child.wait();
        let _ = self.reader.join();
        self.lines.try_iter().collect()
    }
}

/// A devices.yaml of `endpoints` gateways (ports from `first_port`) with
/// `units` devices each (named `e<endpoint>-u<unit>`, one u16 register `v`),
/// polled `every` with `timeout`: the shape the cluster tests share, where
/// what is owned is an endpoint.
pub fn gateways_yaml(
    endpoints: u16,
    units: u8,
    first_port: u16,
    every: &str,
    timeout: &str,
) -> String {
    let mut yaml =
        format!("defaults:\n  host: 127.0.0.1\n  every: {every}\n  timeout: {timeout}\ndevices:\n");
    for e in 0..endpoints {
        for u in 1..=units {
            yaml += &format!(
                "  - name: e{e}-u{u}\n    port: {}\n    unit_id: {u}\n    registers:\n      - {{ name: v, kind: holding, address: 0, type: u16 }}\n",
                first_port + e
            );
        }
    }
    yaml
}

/// Puts one device with `n` registers in the fresh registry of `db`, so
/// that register ids 1..=n exist: the rollup refresh recomputes the
/// registers of the registry, and some tests write rows under bare ids.
pub async fn register_ids(db: &regpoll::db::Db, n: usize) {
    let registers: String = (0..n)
        .map(|i| format!("      - {{ name: r{i}, kind: holding, address: {i} }}\n"))
        .collect();
    let yaml = format!(
        "devices:\n  - name: ids\n    host: 127.0.0.1\n    port: 5020\n    registers:\n{registers}"
    );
    let devices = config::parse(&yaml, "ids.yaml").unwrap();
    db.sync_devices(&devices).await.unwrap();
    let loaded = db.load_devices().await.unwrap();
    let ids = &loaded
        .devices
        .iter()
        .find(|d| d.name == "ids")
        .unwrap()
        .register_ids;
    assert_eq!(
        **ids,
        *(1..=n as i32).collect::<Vec<_>>(),
        "a fresh registry numbers from 1"
    );
}

/// Records that rows were written with SQL in the last `minutes` minutes
/// of history and refreshes the rollups, as README (Rollups) tells users
/// who write rows themselves: regpoll's own writes record their range.
pub async fn rollups_cover_sql_rows(db: &regpoll::db::Db, minutes: i32) {
    let regpoll::db::Db::Postgres(pool) = db else {
        panic!("expected PostgreSQL")
    };
    sqlx::query(
        "INSERT INTO rollup_invalidations (lo, hi) VALUES (now() - make_interval(mins => $1), now())",
    )
    .bind(minutes)
    .execute(pool)
    .await
    .unwrap();
    let horizon = regpoll::history::rollup::Horizon::default();
    regpoll::history::rollup::refresh(db, horizon)
        .await
        .unwrap();
}

/// A run of `devices_file` into a fresh PostgreSQL database and the test
/// Redis: its settings, a Redis client, and a subscription to `device`'s
/// update channel taken before the run starts, so no poll's message is
/// missed.
pub async fn postgres_and_redis(
    devices_file: std::path::PathBuf,
    device: &str,
) -> (regpoll::app::Settings, redis::Client, redis::aio::PubSub) {
    let database_url = fresh_postgres().await;
    let (redis_url, prefix) = redis();
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("{prefix}:updates:{device}"))
        .await
        .unwrap();
    let settings = regpoll::app::Settings {
        database_url: Some(database_url),
        redis_url: Some(redis_url),
        redis_prefix: prefix,
        devices_file: Some(devices_file),
        ..regpoll::app::Settings::default()
    };
    (settings, client, pubsub)
}
