//! Several `regpoll run --cluster` processes sharing one fleet through
//! PostgreSQL (issue 23). Each instance is a child process of the `regpoll`
//! binary, so a `kill -9` is a real crash. The simulator logs every request
//! with the connection it came on: that log is what proves that no device
//! is ever polled by two instances (each device's requests come from one
//! connection at a time, A's then B's, never interleaved), and the operating
//! system's socket table says which process each connection belongs to.
//!
//! The fleet is 60 devices on 12 endpoints (5 unit ids behind each
//! host:port) polled every 500 ms. Timings are shortened so the file runs
//! in well under a minute: a 2 s lease renewed every 250 ms with a 500 ms
//! fence margin. Each bound below is derived from them.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use regpoll::cluster::{link_of, owner_of};
use regpoll::registry::Device;
use regpoll::sim::{Bind, RequestLog, Simulator};
use sqlx::PgPool;

const ENDPOINTS: u16 = 12;
const UNITS: u8 = 5;
const INTERVAL: Duration = Duration::from_millis(500);
const LEASE: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_millis(250);
const FENCE_MARGIN: Duration = Duration::from_millis(500);
/// Lateness allowed for the scheduling of processes on the two cores the
/// test machine shares between test binaries.
const SLACK: Duration = Duration::from_millis(500);
/// From a `kill -9` to a dead instance's device's first request from its
/// new owner: its lease (renewed at most at the kill, so it ends no later
/// than the kill plus the lease), one heartbeat until a live instance sees
/// it expired and takes the endpoint, one interval until the device's first
/// firing there, and the slack. 3.25 s.
const TAKEOVER: Duration = LEASE
    .checked_add(HEARTBEAT)
    .unwrap()
    .checked_add(INTERVAL)
    .unwrap()
    .checked_add(SLACK)
    .unwrap();
/// The largest gap between two polls of a device that misses no firing:
/// one interval and 60 % of one for lateness (what the cold start test
/// allows too). A missed firing makes a gap of about two intervals.
const NO_MISSED_FIRING: Duration = Duration::from_millis(800);
/// History is written in batches that wait up to 200 ms (`--batch-delay`'s
/// default): the readings a killed process had not written yet die with it.
const BATCH_DELAY: Duration = Duration::from_millis(200);

/// The fleet's devices.yaml, endpoint `e` on port `port(e)`.
fn fleet_yaml(port: impl Fn(u16) -> u16) -> String {
    let mut yaml =
        String::from("defaults: { host: 127.0.0.1, every: 500ms, timeout: 1s }\ndevices:\n");
    for e in 0..ENDPOINTS {
        for u in 1..=UNITS {
            writeln!(
                yaml,
                "  - {{ name: d{e:02}-{u}, port: {}, unit_id: {u}, registers: [ {{ name: x, kind: holding, address: 0 }} ] }}",
                port(e)
            )
            .unwrap();
        }
    }
    yaml
}

/// The simulator serving the fleet with its request log on, and a fresh
/// database whose registry holds the fleet (`regpoll devices sync`), which
/// every instance reads.
struct Fleet {
    _sim: Simulator,
    log: Arc<RequestLog>,
    url: String,
    /// The devices as regpoll reaches them, by name.
    devices: BTreeMap<String, Device>,
    /// The simulator's (configured endpoint, unit id) → device name.
    names: HashMap<(String, u8), String>,
    dir: tempfile::TempDir,
}

/// One device's request as the simulator logged it.
#[derive(Debug, Clone, Copy)]
struct Served {
    at: DateTime<Utc>,
    connection: u64,
    /// The client's port: which process sent it (see `tcp_ports_of`).
    port: Option<u16>,
}

impl Fleet {
    async fn start() -> Fleet {
        let staged = regpoll::config::parse(&fleet_yaml(|e| 10_000 + e), "cluster.yaml").unwrap();
        // 60 devices × 2 requests a second × under a minute, many times over.
        let log = RequestLog::new(1_000_000);
        let sim = Simulator::start_with_log(&staged, Bind::Ephemeral, Vec::new(), Arc::clone(&log))
            .await
            .expect("the simulator starts");
        let names = staged
            .iter()
            .map(|d| ((d.endpoint(), d.unit_id.0), d.name.clone()))
            .collect();
        let first_of = |e: u16| &staged[usize::from(e) * usize::from(UNITS)];
        let yaml = fleet_yaml(|e| sim.addr_of(first_of(e)).unwrap().port());
        let devices = regpoll::config::parse(&yaml, "cluster.yaml")
            .unwrap()
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        let url = common::fresh_postgres().await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("devices.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let synced = common::regpoll(
            &[
                "devices",
                "sync",
                file.to_str().unwrap(),
                "--database-url",
                &url,
            ],
            dir.path(),
        );
        assert!(
            synced.status.success(),
            "devices sync failed: {}",
            common::text(&synced.stderr)
        );
        Fleet {
            _sim: sim,
            log,
            url,
            devices,
            names,
            dir,
        }
    }

    async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.unwrap()
    }

    /// Every link (host:port) of the fleet.
    fn links(&self) -> BTreeSet<String> {
        self.devices.values().map(link_of).collect()
    }

    /// The devices behind `links`.
    fn devices_on(&self, links: &BTreeSet<String>) -> Vec<String> {
        self.devices
            .values()
            .filter(|d| links.contains(&link_of(d)))
            .map(|d| d.name.clone())
            .collect()
    }

    /// The link of each of `ids`' rendezvous choice.
    fn balance(&self, ids: &[&str]) -> BTreeMap<String, String> {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.links()
            .into_iter()
            .map(|l| {
                let owner = owner_of(&l, &ids).unwrap().to_string();
                (l, owner)
            })
            .collect()
    }

    /// Each device's requests since `from`, in the order served.
    fn requests(&self, from: DateTime<Utc>) -> BTreeMap<String, Vec<Served>> {
        assert_eq!(self.log.dropped(), 0, "the request log overflowed");
        let mut out: BTreeMap<String, Vec<Served>> = BTreeMap::new();
        for r in self.log.entries().into_iter().filter(|r| r.at >= from) {
            let name = &self.names[&(r.endpoint.to_string(), r.unit)];
            out.entry(name.clone()).or_default().push(Served {
                at: r.at,
                connection: r.connection,
                port: r.peer.map(|p| p.port()),
            });
        }
        out
    }

    /// Waits until every device has been polled `polls` times since `from`.
    async fn wait_for_polls(&self, from: DateTime<Utc>, polls: usize) {
        within(Duration::from_secs(15), "the devices' polls", async || {
            let seen = self.requests(from);
            seen.len() == self.devices.len() && seen.values().all(|r| r.len() >= polls)
        })
        .await;
    }

    /// Waits until the owners table is the rendezvous balance of the links
    /// over `ids` and every device has been polled twice since: settled.
    async fn settle(&self, pool: &PgPool, ids: &[&str]) -> DateTime<Utc> {
        let want = self.balance(ids);
        let mut last = BTreeMap::new();
        let started = Instant::now();
        while last != want {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the owners did not settle on the balance over {ids:?} in 20 s:\nowners {last:#?}\nwanted {want:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            last = owners(pool).await;
        }
        let settled = Utc::now();
        self.wait_for_polls(settled, 2).await;
        settled
    }

    /// Each device's readings stored between `from` and `to`.
    async fn readings(
        &self,
        pool: &PgPool,
        devices: &[String],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> BTreeMap<String, Vec<DateTime<Utc>>> {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT d.name, r.ts FROM register_readings r JOIN devices d ON d.id = r.device_id
             WHERE d.name = ANY($1) AND r.ts BETWEEN $2 AND $3 ORDER BY d.name, r.ts",
        )
        .bind(devices)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await
        .unwrap();
        let mut out: BTreeMap<String, Vec<DateTime<Utc>>> = BTreeMap::new();
        for (name, ts) in rows {
            out.entry(name).or_default().push(ts);
        }
        out
    }

    /// Fails, naming the device, if any device's requests since `from` came
    /// from a connection again after another connection had served it: two
    /// instances polling it at once.
    fn assert_never_polled_by_two(&self, from: DateTime<Utc>) {
        for (name, served) in self.requests(from) {
            if let Some(problem) = interleaving(&served) {
                panic!("{name} was polled by two connections at once: {problem}");
            }
        }
    }
}

/// Where a connection serving a device came back after another one had
/// served it in between; `None` when each connection's requests form one
/// run (A A A B B: a handover, not double polling).
fn interleaving(served: &[Served]) -> Option<String> {
    let mut ended: HashSet<u64> = HashSet::new();
    let mut current: Option<u64> = None;
    let mut runs = Vec::new();
    for s in served {
        if current == Some(s.connection) {
            continue;
        }
        runs.push(format!(
            "{} from {}",
            s.connection,
            s.at.format("%H:%M:%S%.3f")
        ));
        if let Some(previous) = current {
            ended.insert(previous);
        }
        if ended.contains(&s.connection) {
            return Some(format!("connections in turn: {}", runs.join(", ")));
        }
        current = Some(s.connection);
    }
    None
}

/// The longest time between two consecutive times.
fn largest_gap(times: impl IntoIterator<Item = DateTime<Utc>>) -> Duration {
    let times: Vec<DateTime<Utc>> = times.into_iter().collect();
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
        .max()
        .unwrap_or_default()
}

/// Which instance owns each link, from the database.
async fn owners(pool: &PgPool) -> BTreeMap<String, String> {
    regpoll::cluster::store::owners(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Waits until `done` holds, checking every 50 ms (what it waits for
/// happens in other processes or the database, which cannot be awaited).
async fn within(limit: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// One `regpoll run --cluster` process. Dropped (a failed test), it is
/// killed rather than left running.
struct Instance {
    id: String,
    pid: u32,
    service: Option<common::Service>,
    log: Vec<String>,
    _data: tempfile::TempDir,
}

impl Instance {
    fn start(fleet: &Fleet, id: &str) -> Instance {
        Self::start_with_database(fleet, id, &fleet.url)
    }

    /// [`Instance::start`] with the fleet's database reached at `url` (a
    /// [`Relay`]).
    fn start_with_database(fleet: &Fleet, id: &str, url: &str) -> Instance {
        let data = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_regpoll"));
        command
            // The supervisor's and the cluster task's debug lines say when
            // each instance stopped, released and acquired which links: what
            // a failure's message needs (see `assert_no_missed_firing`).
            .args(["--log", "info,regpoll::app=debug,regpoll::cluster=debug"])
            .args(["run", "--cluster", "--instance-id", id, "--http", "off"])
            .args(["--database-url", url])
            .args(["--cluster-lease", &millis(LEASE)])
            .args(["--cluster-heartbeat", &millis(HEARTBEAT)])
            .args(["--cluster-fence-margin", &millis(FENCE_MARGIN)])
            .arg("--data-dir")
            .arg(data.path())
            .current_dir(fleet.dir.path());
        // Only what the command line says: no database, Redis or log
        // settings from the environment that runs the tests.
        for (name, _) in std::env::vars() {
            if name.starts_with("REGPOLL_") || name == "DATABASE_URL" || name == "REDIS_URL" {
                command.env_remove(name);
            }
        }
        let service = common::Service::start(&mut command);
        Instance {
            id: id.to_string(),
            pid: service.pid(),
            service: Some(service),
            log: Vec::new(),
            _data: data,
        }
    }

    /// Waits for a log line containing `needle` (every line read so far is
    /// kept in `log`).
    async fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            self.read_log();
            if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(
                started.elapsed() < limit,
                "{} did not log `{needle}` within {limit:?}:\n{}",
                self.id,
                self.log.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn read_log(&mut self) {
        if let Some(s) = &self.service {
            self.log.extend(s.lines.try_iter());
        }
    }

    /// `kill -9`, and waits until it has exited.
    fn kill(mut self) -> Vec<String> {
        let service = self.service.take().unwrap();
        self.log.extend(service.kill());
        std::mem::take(&mut self.log)
    }

    /// SIGTERM, and waits until it has exited.
    fn stop(mut self) -> Vec<String> {
        let service = self.service.take().unwrap();
        self.log.extend(service.stop());
        std::mem::take(&mut self.log)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            service.kill();
        }
    }
}

/// Stops every instance at once (so that none takes over another's
/// devices on the way out), for their last readings to be written; returns
/// their logs, each line after its instance's id.
fn stop_all(instances: Vec<Instance>) -> Vec<String> {
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let stopping: Vec<_> = instances
                .into_iter()
                .map(|i| {
                    let id = i.id.clone();
                    scope.spawn(move || i.stop().into_iter().map(move |l| format!("{id}: {l}")))
                })
                .collect();
            stopping
                .into_iter()
                .flat_map(|s| s.join().unwrap())
                .collect()
        })
    })
}

/// A TCP relay to PostgreSQL for one instance: cutting it is that
/// instance's network losing the database (its connections closed, new ones
/// refused) while the others keep theirs.
struct Relay {
    /// The database's URL through the relay.
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(url: &str) -> Relay {
        let mut url = url::Url::parse(url).unwrap();
        let upstream = format!(
            "{}:{}",
            url.host_str().expect("TEST_DATABASE_URL names a host"),
            url.port().unwrap_or(5432)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(listener.local_addr().unwrap().port()))
            .unwrap();
        let task = tokio::spawn(async move {
            // Dropped with this task when it is aborted: every relayed
            // connection closes with it.
            let mut relayed = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                relayed.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay {
            url: url.to_string(),
            task,
        }
    }

    /// Closes every connection through it and refuses new ones.
    fn cut(&self) {
        self.task.abort();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The (local, remote) ports of the TCP sockets `pid` holds (Linux's
/// /proc): which process a connection the simulator logged came from. The
/// remote port is part of the key because Linux gives one local port to
/// several sockets of different processes when their destinations differ
/// (an instance's connection to PostgreSQL and another's to a device).
fn tcp_ports_of(pid: u32) -> HashSet<(u16, u16)> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let t = target.to_str()?;
                    Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        for fields in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            if fields.len() > 9 && inodes.contains(fields[9]) {
                let port = |field: &str| {
                    field
                        .rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                };
                if let (Some(local), Some(remote)) = (port(fields[1]), port(fields[2])) {
                    ports.insert((local, remote));
                }
            }
        }
    }
    ports
}

/// (client port, server port) → instance id, for the connections open now.
fn peers(instances: &[&Instance]) -> HashMap<(u16, u16), String> {
    instances
        .iter()
        .flat_map(|i| tcp_ports_of(i.pid).into_iter().map(|p| (p, i.id.clone())))
        .collect()
}

/// The fleet polled by three instances, settled.
struct Cluster {
    fleet: Fleet,
    pool: PgPool,
    instances: Vec<Instance>,
    /// Before the first instance started: the log's start.
    started: DateTime<Utc>,
    /// When the three had settled.
    settled: DateTime<Utc>,
}

impl Cluster {
    async fn start() -> Cluster {
        let fleet = Fleet::start().await;
        let pool = fleet.pool().await;
        let started = Utc::now();
        let instances = ["i1", "i2", "i3"]
            .iter()
            .map(|id| Instance::start(&fleet, id))
            .collect();
        let settled = fleet.settle(&pool, &["i1", "i2", "i3"]).await;
        Cluster {
            fleet,
            pool,
            instances,
            started,
            settled,
        }
    }

    fn ids(&self) -> Vec<&str> {
        self.instances.iter().map(|i| i.id.as_str()).collect()
    }

    /// Takes out the instance owning the most links (ties: the first by
    /// id), so that it has devices to hand over; with those devices.
    async fn take_busiest(&mut self) -> (Instance, Vec<String>) {
        let owned = owners(&self.pool).await;
        let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
        for o in owned.values() {
            *counts.entry(o).or_default() += 1;
        }
        let most = counts.values().copied().max().unwrap();
        let id = counts.into_iter().find(|(_, n)| *n == most).unwrap().0;
        let devices = self.fleet.devices_on(&links_of(&owned, id));
        let at = self.instances.iter().position(|i| &i.id == id).unwrap();
        (self.instances.remove(at), devices)
    }

    /// Waits until the remaining instances have settled and polled every
    /// device three times more, checks that no device was ever polled by
    /// two, and returns the time.
    async fn resettle(&self) -> DateTime<Utc> {
        let settled = self.fleet.settle(&self.pool, &self.ids()).await;
        self.fleet.wait_for_polls(settled, 3).await;
        self.fleet.assert_never_polled_by_two(self.started);
        Utc::now()
    }
}

fn links_of(owners: &BTreeMap<String, String>, id: &str) -> BTreeSet<String> {
    owners
        .iter()
        .filter(|(_, o)| *o == id)
        .map(|(l, _)| l.clone())
        .collect()
}

/// A planned move (release, then acquire after the last poll) misses no
/// firing: no gap above [`NO_MISSED_FIRING`] between `devices`' requests in
/// the simulator's log, nor between their stored readings, over `window`.
/// Stops the instances first, so that their last readings are written.
async fn assert_no_missed_firing(
    cluster: Cluster,
    devices: &[String],
    (from, until): (DateTime<Utc>, DateTime<Utc>),
    what: &str,
) {
    let Cluster {
        fleet,
        pool,
        instances,
        ..
    } = cluster;
    let served = fleet.requests(from);
    let logs = stop_all(instances);
    let stored = fleet.readings(&pool, devices, from, until).await;
    for name in devices {
        let requests: Vec<&Served> = served[name].iter().filter(|s| s.at <= until).collect();
        let requested = largest_gap(requests.iter().map(|s| s.at));
        let written = largest_gap(stored[name].iter().copied());
        assert!(
            requested <= NO_MISSED_FIRING && written <= NO_MISSED_FIRING,
            "{name}: across {what}, gaps of {requested:?} between requests and {written:?} between stored readings; bound {NO_MISSED_FIRING:?}\nrequests (time, connection): {}\n{}",
            requests
                .iter()
                .map(|s| format!("{} {}", s.at.format("%H:%M:%S%.3f"), s.connection))
                .collect::<Vec<_>>()
                .join(", "),
            logs.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_poll_every_device_exactly_once() {
    let Cluster {
        fleet,
        pool,
        instances,
        settled,
        ..
    } = Cluster::start().await;
    fleet.wait_for_polls(settled, 6).await;
    let until = Utc::now();
    let ports = peers(&instances.iter().collect::<Vec<_>>());

    // The database: every link owned, by one instance each (the primary
    // key), as rendezvous balances them.
    let owned = owners(&pool).await;
    assert_eq!(
        owned.keys().cloned().collect::<BTreeSet<_>>(),
        fleet.links()
    );
    assert_eq!(owned, fleet.balance(&["i1", "i2", "i3"]));

    // The simulator: over the settled window each device's requests came
    // on one connection, each endpoint's too, and that connection belongs
    // to the process of the instance the database names as owner.
    let served = fleet.requests(settled);
    assert_eq!(served.len(), 60, "every device was polled");
    let mut by_link: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (name, requests) in &served {
        let requests: Vec<&Served> = requests.iter().filter(|s| s.at <= until).collect();
        let connections: BTreeSet<u64> = requests.iter().map(|s| s.connection).collect();
        assert_eq!(
            connections.len(),
            1,
            "{name} on connections {connections:?}"
        );
        let link = link_of(&fleet.devices[name]);
        let port = requests[0].port.expect("a TCP client");
        let server = fleet.devices[name].port;
        assert_eq!(
            ports.get(&(port, server)),
            Some(&owned[&link]),
            "{name}'s connection (port {port}) belongs to its owner's process"
        );
        by_link.entry(link).or_default().extend(connections);
    }
    for (link, connections) in &by_link {
        assert_eq!(
            connections.len(),
            1,
            "{link} on connections {connections:?}"
        );
    }

    // The history: one reading per firing, not one per instance.
    let window = (until - settled).to_std().unwrap();
    let firings = (window.as_millis() / INTERVAL.as_millis()) as usize;
    stop_all(instances);
    let names: Vec<String> = fleet.devices.keys().cloned().collect();
    let stored = fleet.readings(&pool, &names, settled, until).await;
    for name in &names {
        let n = stored.get(name).map_or(0, Vec::len);
        assert!(
            (firings.saturating_sub(1)..=firings + 1).contains(&n),
            "{name}: {n} readings in {window:?} at {INTERVAL:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_devices_are_taken_over_within_the_bound_and_never_polled_twice() {
    let mut cluster = Cluster::start().await;
    let (victim, devices) = cluster.take_busiest().await;
    let id = victim.id.clone();
    let killed_at = Utc::now();
    tokio::task::block_in_place(|| victim.kill());
    let (fleet, pool) = (&cluster.fleet, &cluster.pool);
    // Its row stays until its lease has expired on the database's clock.
    let lease_until: DateTime<Utc> =
        sqlx::query_scalar("SELECT lease_until FROM cluster_instances WHERE instance_id = $1")
            .bind(&id)
            .fetch_one(pool)
            .await
            .expect("the killed instance's row is there until its lease expires");
    let until = cluster.resettle().await;

    // The simulator: each of its devices first heard from a new connection
    // after the lease had expired, within the takeover bound of the kill.
    let from = killed_at - chrono::Duration::seconds(2);
    let served = fleet.requests(from);
    let mut takeovers = Vec::new();
    for name in &devices {
        let requests = &served[name];
        let before = requests
            .iter()
            .rfind(|s| s.at < killed_at)
            .unwrap_or_else(|| panic!("{name} was not polled before the kill"))
            .connection;
        let first_new = requests
            .iter()
            .find(|s| s.at >= killed_at && s.connection != before)
            .unwrap_or_else(|| panic!("{name} was never polled by its new owner"));
        let takeover = (first_new.at - killed_at).to_std().unwrap();
        assert!(
            first_new.at >= lease_until,
            "{name} was polled at {} by its new owner, before the killed one's lease ended at {lease_until}",
            first_new.at
        );
        assert!(
            takeover <= TAKEOVER,
            "{name} taken over {takeover:?} after the kill, bound {TAKEOVER:?}"
        );
        let gap = largest_gap(requests.iter().map(|s| s.at));
        assert!(
            gap <= TAKEOVER + INTERVAL,
            "{name}: {gap:?} without a request, bound {:?}",
            TAKEOVER + INTERVAL
        );
        takeovers.push(takeover);
    }
    takeovers.sort();
    println!(
        "{} devices of {id} taken over {:?}..{:?} after the kill (bound {TAKEOVER:?})",
        devices.len(),
        takeovers[0],
        takeovers[takeovers.len() - 1]
    );

    // The history: the largest gap of its devices, around the kill.
    stop_all(std::mem::take(&mut cluster.instances));
    let stored = fleet.readings(pool, &devices, from, until).await;
    let bound = TAKEOVER + INTERVAL + BATCH_DELAY;
    for name in &devices {
        let ts = &stored[name];
        assert!(
            ts[0] < killed_at && *ts.last().unwrap() > killed_at,
            "{name}'s readings span the kill and the takeover: {ts:?}"
        );
        let gap = largest_gap(ts.iter().copied());
        assert!(
            gap <= bound,
            "{name}: a gap of {gap:?} in register_readings, bound {bound:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_instance_takes_about_a_quarter_and_none_is_polled_twice() {
    let mut cluster = Cluster::start().await;
    let before = owners(&cluster.pool).await;

    // The ports, hence the links, differ from run to run: pick the fourth's
    // id so that rendezvous gives it a real share (2 to 5 of the 12 links,
    // 3 on average), which the test then expects exactly.
    let fourth = (0..)
        .map(|n| format!("i4-{n}"))
        .find(|id: &String| {
            let share = links_of(&cluster.fleet.balance(&["i1", "i2", "i3", id]), id);
            (2..=5).contains(&share.len())
        })
        .unwrap();
    let expected = links_of(
        &cluster.fleet.balance(&["i1", "i2", "i3", &fourth]),
        &fourth,
    );
    let joined_at = Utc::now();
    let instance = Instance::start(&cluster.fleet, &fourth);
    cluster.instances.push(instance);
    let until = cluster.resettle().await;

    // Only the links rendezvous gives the fourth moved; all to it.
    let after = owners(&cluster.pool).await;
    let moved: BTreeSet<String> = after
        .iter()
        .filter(|(l, o)| before.get(*l) != Some(*o))
        .map(|(l, _)| l.clone())
        .collect();
    assert_eq!(moved, expected);
    let devices = cluster.fleet.devices_on(&moved);
    assert!(
        (5..=30).contains(&devices.len()),
        "{} of 60 devices moved",
        devices.len()
    );
    println!(
        "{} devices on {} links moved to {fourth}",
        devices.len(),
        moved.len()
    );
    let from = joined_at - chrono::Duration::seconds(1);
    assert_no_missed_firing(cluster, &devices, (from, until), "the move").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_over_without_a_missed_firing_or_double_polling() {
    let mut cluster = Cluster::start().await;
    let (leaver, devices) = cluster.take_busiest().await;
    let id = leaver.id.clone();
    let stopped_at = Utc::now();
    let said = tokio::task::block_in_place(|| leaver.stop());
    assert!(
        said.iter().any(|l| l.contains("left the cluster")),
        "{id} says it left:\n{}",
        said.join("\n")
    );
    println!("{id}'s log:\n{}", said.join("\n"));
    let until = cluster.resettle().await;
    let from = stopped_at - chrono::Duration::seconds(1);
    assert_no_missed_firing(cluster, &devices, (from, until), "the handover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_the_database_stops_polling_before_the_others_take_over() {
    let fleet = Fleet::start().await;
    let pool = fleet.pool().await;
    let ids = ["i1", "i2", "i3"];
    let mut relays = Vec::new();
    let mut instances = Vec::new();
    let started = Utc::now();
    for id in ids {
        let relay = Relay::start(&fleet.url).await;
        instances.push(Instance::start_with_database(&fleet, id, &relay.url));
        relays.push(relay);
    }
    fleet.settle(&pool, &ids).await;
    let owned = owners(&pool).await;
    let at = (0..ids.len())
        .max_by_key(|i| (links_of(&owned, ids[*i]).len(), std::cmp::Reverse(*i)))
        .unwrap();
    let devices = fleet.devices_on(&links_of(&owned, ids[at]));
    let cut_at = Utc::now();
    relays[at].cut();
    // Its row stays until its lease has expired on the database's clock.
    let lease_until: DateTime<Utc> =
        sqlx::query_scalar("SELECT lease_until FROM cluster_instances WHERE instance_id = $1")
            .bind(ids[at])
            .fetch_one(&pool)
            .await
            .expect("the cut instance's row is there until its lease expires");
    let mut cut = instances.remove(at);
    cut.wait_for_log("stopped polling", LEASE + SLACK).await;
    let survivors: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    let settled = fleet.settle(&pool, &survivors).await;
    fleet.wait_for_polls(settled, 3).await;
    fleet.assert_never_polled_by_two(started);

    // Each of its devices: the cut instance's last request came before its
    // lease could expire, the new owner's first after it had.
    let served = fleet.requests(started);
    let mut margins = Vec::new();
    for name in &devices {
        let requests = &served[name];
        let old = requests.iter().rfind(|s| s.at < cut_at).unwrap().connection;
        let last_old = requests.iter().rfind(|s| s.connection == old).unwrap();
        let first_new = requests
            .iter()
            .find(|s| s.at > cut_at && s.connection != old)
            .unwrap_or_else(|| panic!("{name} was never polled by its new owner"));
        assert!(
            last_old.at < lease_until && first_new.at >= lease_until,
            "{name}: last polled by the cut instance at {}, first by its new owner at {}, the lease ended at {lease_until}",
            last_old.at,
            first_new.at
        );
        let takeover = (first_new.at - cut_at).to_std().unwrap();
        assert!(
            takeover <= TAKEOVER,
            "{name} taken over {takeover:?} after the cut, bound {TAKEOVER:?}"
        );
        margins.push((lease_until - last_old.at).to_std().unwrap());
    }
    margins.sort();
    println!(
        "{} devices of {}: last polled {:?}..{:?} before its lease ended (fence margin {FENCE_MARGIN:?})",
        devices.len(),
        ids[at],
        margins[0],
        margins[margins.len() - 1]
    );
    tokio::task::block_in_place(|| cut.kill());
    stop_all(instances);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_with_a_held_id_waits_for_the_lease_and_polls_nothing_until_then() {
    let fleet = Fleet::start().await;
    let pool = fleet.pool().await;
    let first = Instance::start(&fleet, "same");
    fleet.settle(&pool, &["same"]).await;
    let mut second = Instance::start(&fleet, "same");
    second
        .wait_for_log(
            "a live instance holds this --instance-id",
            Duration::from_secs(10),
        )
        .await;
    // Two more heartbeats of the second's waiting: not one connection of
    // its process reaches the simulator.
    let waiting = Utc::now();
    fleet.wait_for_polls(waiting, 2).await;
    let its_ports = tcp_ports_of(second.pid);
    let from_second: Vec<(String, Served)> = fleet
        .requests(waiting)
        .into_iter()
        .flat_map(|(n, s)| s.into_iter().map(move |s| (n.clone(), s)))
        .filter(|(n, s)| {
            let server = fleet.devices[n].port;
            s.port.is_some_and(|p| its_ports.contains(&(p, server)))
        })
        .collect();
    assert!(
        from_second.is_empty(),
        "the waiting instance polled: {from_second:?}"
    );

    let killed_at = Utc::now();
    let before_kill: HashSet<u64> = fleet
        .requests(waiting)
        .values()
        .flatten()
        .map(|s| s.connection)
        .collect();
    tokio::task::block_in_place(|| first.kill());
    let lease_until: DateTime<Utc> =
        sqlx::query_scalar("SELECT lease_until FROM cluster_instances WHERE instance_id = 'same'")
            .fetch_one(&pool)
            .await
            .expect("the killed instance's row is there until its lease expires");
    second
        .wait_for_log("joined the cluster", TAKEOVER + Duration::from_secs(5))
        .await;
    fleet.settle(&pool, &["same"]).await;
    let first_poll = fleet
        .requests(killed_at)
        .values()
        .flatten()
        .filter(|s| !before_kill.contains(&s.connection))
        .map(|s| s.at)
        .min()
        .expect("the second instance polls");
    assert!(
        first_poll >= lease_until,
        "the second polled at {first_poll}, before the first's lease ended at {lease_until}"
    );
    assert!(
        (first_poll - killed_at).to_std().unwrap() <= TAKEOVER,
        "the second polled {:?} after the kill, bound {TAKEOVER:?}",
        first_poll - killed_at
    );
    stop_all(vec![second]);
}

#[test]
fn cluster_with_sqlite_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(["run", "--cluster", "--http", "off", "--sqlite-path"])
        .arg(dir.path().join("history.db"))
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REGPOLL_DATABASE_URL")
        .env_remove("REGPOLL_CLUSTER")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("`run --cluster` with SQLite still running after 20 s: it must refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("--cluster") && err.contains("PostgreSQL"),
        "the refusal names the flag and what it needs: {err}"
    );
}
