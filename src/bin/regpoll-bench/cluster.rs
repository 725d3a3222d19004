//! The cluster scenario: several `regpoll run --cluster` processes share
//! one fleet through the bench's PostgreSQL, as users run them.
//!
//! Each instance is a process of its own (its own `--instance-id`,
//! `--http` port and `--data-dir`) polling one simulator. What is owned is
//! a *link* (host:port), so the fleet is spread over many simulator ports
//! (`--units-per-port`, 10 in scripts/bench: 300 links for 3,000 devices),
//! or rendezvous hashing would have too few pieces to balance.
//!
//! Every figure comes from the database, not from the instances' logs:
//! `cluster_instances` and `cluster_owners` say who owns what since when
//! (`acquired_at`, on the database's clock), and the timestamps of each
//! device's first register in `register_readings` say when it was polled.
//! Everything runs on one machine, so the bench's, the database's and the
//! instances' clocks are one clock. In order:
//!
//! 1. settle: from starting the instances until the links are the balance
//!    of the live instances and every device has a reading taken after its
//!    link was last acquired;
//! 2. a window of CPU per reading of each instance, and polls per second
//!    summed over them (more than the firings would mean a device polled
//!    twice);
//! 3. kills: `kill -9` of one instance, then the time until its links are
//!    owned again, until each of its devices has a new reading, and each
//!    device's largest gap; the instance restarted and settled between
//!    kills;
//! 4. a join: one more instance, the links and devices that moved, and the
//!    largest gap of a moved device;
//! 5. the reference: one plain `regpoll run` (no cluster) with one
//!    instance's share of the fleet, on the same simulator, for the CPU
//!    per reading at the same load.
//!
//! Pure computations over the timestamps are in [`crate::handover`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use regpoll::registry::parse_duration;
use regpoll::schedule::Ticker;
use serde_json::{Value as Json, json};
use sqlx::PgPool;

use crate::database::fresh_database;
use crate::fleet::{
    FleetSpec, Proc, counter, free_ports, get_json, in_scratch_dir, run_command, start_simulator,
    stop, tail, wait_until_polling, window_quantiles,
};
use crate::handover::{
    AroundKill, Owners, Ts, firings, gaps, is_balanced, median_and_max, moved_links, secs_between,
    split, takeover,
};
use crate::proc_stats::cpu_user_system;
use crate::workload::fleet_yaml;

/// The scenario's shape (`regpoll-bench cluster`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterSpec {
    /// Scenario name: names the databases (regpoll_bench_NAME and
    /// regpoll_bench_NAME_single) and the result.
    #[arg(long, default_value = "cluster")]
    pub name: String,
    #[arg(long, default_value_t = 3000)]
    pub devices: usize,
    /// Registers per device.
    #[arg(long, default_value_t = 10)]
    pub registers: usize,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub every: Duration,
    /// Devices (unit ids) behind each simulator port. A port is what an
    /// instance owns, so there must be many of them to balance.
    #[arg(long, default_value_t = 10)]
    pub units_per_port: usize,
    /// Instances started together (one more joins at the end).
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    /// `kill -9`s, one instance after another, each restarted after.
    #[arg(long, default_value_t = 3)]
    pub kills: usize,
    /// Length of the CPU window (of the cluster, then of the single
    /// instance).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time between settling and the CPU window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Admin URL of a PostgreSQL server; fresh databases are made on it.
    #[arg(long, env = "REGPOLL_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(long, env = "REGPOLL_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

/// How long a settle, a takeover or a join may take before the scenario
/// gives up: far above the default lease (5 s) and heartbeat (1 s).
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// Runs the cluster scenario with the `regpoll` binary at `product` and
/// returns its JSON result.
pub async fn cluster(spec: &ClusterSpec, product: &Path) -> anyhow::Result<Json> {
    if spec.instances < 2 {
        bail!("--instances must be at least 2: a cluster of one has nobody to take over");
    }
    in_scratch_dir(&spec.name, async |work| {
        cluster_in(spec, product, work).await
    })
    .await
}

/// One `regpoll run --cluster` process, restartable under the same id.
struct Instance {
    id: String,
    http: SocketAddr,
    dir: PathBuf,
    proc: Option<Proc>,
    /// Times started, which numbers its logs (one per life).
    lives: u32,
}

impl Instance {
    fn log(&self) -> PathBuf {
        self.dir.join(format!("run-{}.log", self.lives))
    }

    fn start(
        &mut self,
        product: &Path,
        database_url: &str,
        spec: &ClusterSpec,
    ) -> anyhow::Result<()> {
        self.lives += 1;
        let mut run = run_command(
            product,
            self.http,
            &self.dir.join("data"),
            &self.log(),
            Some(database_url),
            spec.redis_url.as_deref(),
            &format!("bench-{}", spec.name),
        )?;
        run.args(["--cluster", "--instance-id", &self.id]);
        let child = run
            .spawn()
            .with_context(|| format!("cannot start instance {}", self.id))?;
        self.proc = Some(Proc(child));
        Ok(())
    }

    fn pid(&self) -> anyhow::Result<u32> {
        Ok(self
            .proc
            .as_ref()
            .with_context(|| format!("instance {} is not running", self.id))?
            .0
            .id())
    }

    /// Fails, with the end of its log, if it has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(proc) = &mut self.proc
            && let Some(status) = proc.0.try_wait()?
        {
            bail!(
                "instance {} exited with {status}; its log:\n{}",
                self.id,
                tail(&self.log())
            );
        }
        Ok(())
    }

    /// `kill -9`, and waits until it is gone.
    fn kill(&mut self) -> anyhow::Result<()> {
        let mut proc = self
            .proc
            .take()
            .with_context(|| format!("instance {} is not running", self.id))?;
        proc.0.kill()?;
        proc.0.wait()?;
        Ok(())
    }

    /// Stops it with SIGTERM, as an operator would; fails unless it exits
    /// cleanly.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut proc) = self.proc.take() {
            let status = stop(&mut proc).await?;
            if !status.success() {
                bail!(
                    "instance {} exited with {status} after SIGTERM; its log:\n{}",
                    self.id,
                    tail(&self.log())
                );
            }
        }
        Ok(())
    }
}

/// A device as the scenario follows it: the link it is reached through and
/// the id of its first register, whose readings stand for the device's.
struct Followed {
    name: String,
    link: String,
    register: i32,
    /// Its firings, as the fleet schedules them (its one poll group).
    ticker: Ticker,
}

/// The database side: who owns what, and when devices were read.
struct Watch {
    pool: PgPool,
    /// Every link, sorted.
    links: Vec<String>,
    devices_per_link: BTreeMap<String, u32>,
    devices: Vec<Followed>,
}

/// Ownership as the database has it at one moment.
struct Ownership {
    /// The instances whose lease has not expired, sorted.
    members: Vec<String>,
    owners: Owners,
    acquired: BTreeMap<String, Ts>,
}

/// The moment the cluster settled, and how.
struct Settled {
    /// The last of the first readings that made it settled.
    at: Ts,
    owners: Owners,
    acquired: BTreeMap<String, Ts>,
}

impl Watch {
    async fn new(database_url: &str, fleet: &[regpoll::registry::Device]) -> anyhow::Result<Watch> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(database_url)
            .await
            .context("cannot connect to the scenario's database")?;
        let first = fleet
            .first()
            .and_then(|d| d.registers.first())
            .context("the fleet has no device with a register")?;
        let ids: HashMap<String, i32> = sqlx::query_as(
            "SELECT d.name, m.id FROM devices d
             JOIN device_register_map m ON m.device_id = d.id
             WHERE m.name = $1",
        )
        .bind(&first.name)
        .fetch_all(&pool)
        .await?
        .into_iter()
        .collect();
        let mut devices = Vec::with_capacity(fleet.len());
        let mut devices_per_link = BTreeMap::new();
        for d in fleet {
            let link = regpoll::cluster::link_of(d);
            *devices_per_link.entry(link.clone()).or_insert(0) += 1;
            let schedule = &d.schedule;
            devices.push(Followed {
                ticker: Ticker::new(schedule, &format!("{}/{}", d.name, schedule.describe())),
                register: *ids.get(&d.name).with_context(|| {
                    format!("device {} is not in the registry after the sync", d.name)
                })?,
                name: d.name.clone(),
                link,
            });
        }
        Ok(Watch {
            pool,
            links: devices_per_link.keys().cloned().collect(),
            devices_per_link,
            devices,
        })
    }

    async fn ownership(&self) -> anyhow::Result<Ownership> {
        let members: Vec<String> = sqlx::query_scalar(
            "SELECT instance_id FROM cluster_instances WHERE lease_until > now() ORDER BY instance_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let rows: Vec<(String, String, Ts)> = sqlx::query_as(
            "SELECT o.link, i.instance_id, o.acquired_at
             FROM cluster_owners o JOIN cluster_instances i USING (session)",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut owners = Owners::new();
        let mut acquired = BTreeMap::new();
        for (link, owner, at) in rows {
            owners.insert(link.clone(), owner);
            acquired.insert(link, at);
        }
        Ok(Ownership {
            members,
            owners,
            acquired,
        })
    }

    /// For each (register, instant), the first reading of the register
    /// after the instant: one index probe each (the primary key is
    /// `(register_id, ts)`).
    async fn first_after(&self, probes: &[(i32, Ts)]) -> anyhow::Result<Vec<Option<Ts>>> {
        let ids: Vec<i32> = probes.iter().map(|p| p.0).collect();
        let after: Vec<Ts> = probes.iter().map(|p| p.1).collect();
        Ok(sqlx::query_scalar(
            "SELECT (SELECT min(r.ts) FROM register_readings r
                     WHERE r.register_id = p.id AND r.ts > p.after)
             FROM unnest($1::int[], $2::timestamptz[]) WITH ORDINALITY AS p(id, after, n)
             ORDER BY p.n",
        )
        .bind(&ids)
        .bind(&after)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Waits until every probe has a reading after it.
    async fn until_read(&self, probes: &[(i32, Ts)], what: &str) -> anyhow::Result<Vec<Ts>> {
        let until = Instant::now() + SETTLE_LIMIT;
        loop {
            let read = self.first_after(probes).await?;
            if read.iter().all(Option::is_some) {
                return Ok(read.into_iter().flatten().collect());
            }
            if Instant::now() > until {
                let missing = read.iter().filter(|r| r.is_none()).count();
                bail!("{what}: {missing} devices still had no reading after {SETTLE_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The reading timestamps of `registers` between `from` and `to`.
    async fn readings_between(
        &self,
        registers: &[i32],
        from: Ts,
        to: Ts,
    ) -> anyhow::Result<HashMap<i32, Vec<Ts>>> {
        let rows: Vec<(i32, Ts)> = sqlx::query_as(
            "SELECT register_id, ts FROM register_readings
             WHERE register_id = ANY($1) AND ts BETWEEN $2 AND $3",
        )
        .bind(registers)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut by_register: HashMap<i32, Vec<Ts>> = HashMap::new();
        for (register, ts) in rows {
            by_register.entry(register).or_default().push(ts);
        }
        Ok(by_register)
    }

    /// Waits until `members` are the live instances, the links are their
    /// balance, and every device has a reading taken after its link was
    /// last acquired.
    async fn settled(
        &self,
        members: &[String],
        running: &mut [&mut Instance],
    ) -> anyhow::Result<Settled> {
        let mut want = members.to_vec();
        want.sort();
        let until = Instant::now() + SETTLE_LIMIT;
        loop {
            for i in running.iter_mut() {
                i.check_running()?;
            }
            let o = self.ownership().await?;
            if o.members == want && is_balanced(&o.owners, &self.links, &want) {
                let probes: Vec<(i32, Ts)> = self
                    .devices
                    .iter()
                    .map(|d| (d.register, o.acquired[&d.link]))
                    .collect();
                let read = self.first_after(&probes).await?;
                if let Some(at) = read.iter().copied().collect::<Option<Vec<Ts>>>() {
                    // Nothing moved while the readings were looked up.
                    let again = self.ownership().await?;
                    if again.acquired == o.acquired && again.members == want {
                        return Ok(Settled {
                            at: at.into_iter().max().unwrap_or_else(Utc::now),
                            owners: o.owners,
                            acquired: o.acquired,
                        });
                    }
                }
            }
            if Instant::now() > until {
                let unowned = self
                    .links
                    .iter()
                    .filter(|l| !o.owners.contains_key(*l))
                    .count();
                bail!(
                    "the cluster did not settle within {SETTLE_LIMIT:?}: live instances {:?} (expected {want:?}), {unowned} of {} links unowned",
                    o.members,
                    self.links.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn devices_of<'a>(&'a self, links: &'a [String]) -> impl Iterator<Item = &'a Followed> {
        self.devices
            .iter()
            .filter(move |d| links.binary_search(&d.link).is_ok())
    }
}

/// One instance's stats and CPU at one moment.
struct Sample {
    at: Instant,
    stats: Json,
    user: f64,
    system: f64,
}

async fn sample(http: SocketAddr, pid: u32) -> anyhow::Result<Sample> {
    let stats = get_json(http, "/api/stats").await?;
    let (user, system) = cpu_user_system(pid)?;
    Ok(Sample {
        at: Instant::now(),
        stats,
        user,
        system,
    })
}

/// Polls, readings and CPU of one process between two samples.
fn window(a: &Sample, b: &Sample) -> Json {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let delta = |path: &[&str]| counter(&b.stats, path) - counter(&a.stats, path);
    let readings = ["good", "uncertain", "bad"]
        .iter()
        .map(|q| delta(&["readings", q]))
        .sum::<f64>();
    let user = b.user - a.user;
    let cpu = user + (b.system - a.system);
    json!({
        "window_s": (secs * 100.0).round() / 100.0,
        "polls_per_s": delta(&["polls"]) / secs,
        "readings_per_s": readings / secs,
        "cpu_pct": cpu * 100.0 / secs,
        "cpu_us_per_reading": cpu * 1e6 / readings,
        "cpu_user_us_per_reading": user * 1e6 / readings,
        "overruns": delta(&["overruns"]),
        "lateness": window_quantiles(&a.stats, &b.stats, "lateness"),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn cluster_in(spec: &ClusterSpec, product: &Path, work: &Path) -> anyhow::Result<Json> {
    let say = |m: String| eprintln!("bench {}: {m}", spec.name);
    let mut layout = FleetSpec::layout(spec.devices, spec.registers);
    layout.every = spec.every;
    layout.units_per_port = spec.units_per_port.max(1);
    let ports = free_ports(spec.devices.div_ceil(layout.units_per_port))?;
    let text = fleet_yaml(&layout, &ports);
    let yaml = work.join("devices.yaml");
    std::fs::write(&yaml, &text)?;
    let fleet = regpoll::config::parse(&text, "devices.yaml")?;
    let database_url = fresh_database(&spec.database_url, &spec.name).await?;
    say(format!(
        "{} × regpoll run --cluster, {} devices × {} registers every {:?} over {} simulator ports ({} units each); database {}",
        spec.instances,
        spec.devices,
        spec.registers,
        spec.every,
        ports.len(),
        layout.units_per_port,
        regpoll::db::redact_url(&database_url),
    ));
    let sim = start_simulator(product, &yaml, &ports, work).await?;
    sync_devices(product, &yaml, &database_url)?;
    let watch = Watch::new(&database_url, &fleet).await?;

    let https = free_ports(spec.instances + 1)?;
    let mut instances: Vec<Instance> = https
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let id = format!("bench-{}", i + 1);
            let dir = work.join(&id);
            Instance {
                http: SocketAddr::from(([127, 0, 0, 1], *port)),
                id,
                dir,
                proc: None,
                lives: 0,
            }
        })
        .collect();
    for i in &instances {
        std::fs::create_dir_all(&i.dir)?;
    }
    let (first, joiner) = instances.split_at_mut(spec.instances);
    let ids: Vec<String> = first.iter().map(|i| i.id.clone()).collect();

    // 1. Settle.
    let started = Utc::now();
    for i in first.iter_mut() {
        i.start(product, &database_url, spec)?;
    }
    let settled = watch
        .settled(&ids, &mut first.iter_mut().collect::<Vec<_>>())
        .await?;
    let settle_s = secs_between(started, settled.at);
    let split_at_start = split(&settled.owners, &watch.devices_per_link);
    say(format!(
        "settled {settle_s:.1} s after the start: {}",
        describe_split(&split_at_start)
    ));

    // 2. CPU per reading of each instance, and polls summed over them.
    say(format!(
        "warming up for {:?}, then measuring for {:?}",
        spec.warmup, spec.duration
    ));
    tokio::time::sleep(spec.warmup).await;
    let mut before = Vec::new();
    for i in first.iter() {
        before.push(sample(i.http, i.pid()?).await?);
    }
    let owners_before = watch.ownership().await?.owners;
    tokio::time::sleep(spec.duration).await;
    let mut per_instance = Vec::new();
    let mut polls_per_s = 0.0;
    for (i, a) in first.iter().zip(&before) {
        let b = sample(i.http, i.pid()?).await?;
        let mut w = window(a, &b);
        polls_per_s += w["polls_per_s"].as_f64().unwrap_or(0.0);
        let (links, devices) = split_at_start.get(&i.id).copied().unwrap_or_default();
        w["instance"] = json!(i.id);
        w["links"] = json!(links);
        w["devices"] = json!(devices);
        per_instance.push(w);
    }
    let moved_in_window = moved_links(&owners_before, &watch.ownership().await?.owners).len();
    let cpu: Vec<f64> = per_instance
        .iter()
        .filter_map(|w| w["cpu_us_per_reading"].as_f64())
        .collect();
    let expected_polls_per_s = spec.devices as f64 / spec.every.as_secs_f64();
    say(format!(
        "{polls_per_s:.0} polls/s summed over the instances ({expected_polls_per_s:.0} firings/s); CPU µs/reading per instance {cpu:.2?}"
    ));

    // 3. Kills.
    let mut kills = Vec::new();
    let mut current = settled;
    for k in 0..spec.kills {
        let victim = k % spec.instances;
        let id = first[victim].id.clone();
        let links: Vec<String> = current
            .owners
            .iter()
            .filter(|(_, owner)| **owner == id)
            .map(|(link, _)| link.clone())
            .collect();
        let devices: Vec<&Followed> = watch.devices_of(&links).collect();
        say(format!(
            "kill {}: kill -9 of {id} ({} links, {} devices)",
            k + 1,
            links.len(),
            devices.len()
        ));
        let kill_at = Utc::now();
        first[victim].kill()?;
        let probes: Vec<(i32, Ts)> = devices.iter().map(|d| (d.register, kill_at)).collect();
        let read = watch.until_read(&probes, "after the kill").await?;
        let o = watch.ownership().await?;
        let acquired: Vec<Option<Ts>> = links
            .iter()
            .map(|l| {
                o.acquired
                    .get(l)
                    .copied()
                    .filter(|at| *at > kill_at && o.owners.get(l) != Some(&id))
            })
            .collect();
        let last_read = read.iter().copied().max().unwrap_or(kill_at);
        let registers: Vec<i32> = devices.iter().map(|d| d.register).collect();
        let readings = watch
            .readings_between(
                &registers,
                kill_at - chrono::Duration::seconds(10),
                last_read,
            )
            .await?;
        let around: Vec<(String, AroundKill)> = devices
            .iter()
            .map(|d| {
                let ts = readings.get(&d.register).map_or(&[][..], Vec::as_slice);
                (d.name.clone(), AroundKill::of(kill_at, ts))
            })
            .collect();
        let t = takeover(kill_at, &acquired, &around)
            .with_context(|| format!("kill {} of {id}", k + 1))?;
        let restart_at = Utc::now();
        first[victim].start(product, &database_url, spec)?;
        current = watch
            .settled(&ids, &mut first.iter_mut().collect::<Vec<_>>())
            .await?;
        let resettle_s = secs_between(restart_at, current.at);
        say(format!(
            "kill {}: links owned again after {:.2} s, every device read again after {:.2} s, largest gap {:.2} s; {id} restarted and settled in {resettle_s:.1} s",
            k + 1,
            t.ownership_s,
            t.first_reading_s,
            t.largest_gap_s
        ));
        kills.push(json!({
            "instance": id,
            "links": links.len(),
            "devices": devices.len(),
            "ownership_s": round3(t.ownership_s),
            "first_reading_s": round3(t.first_reading_s),
            "largest_gap_s": round3(t.largest_gap_s),
            "resettle_s": round3(resettle_s),
        }));
    }
    let of_kills = |key: &str| {
        let xs: Vec<f64> = kills.iter().filter_map(|k| k[key].as_f64()).collect();
        median_and_max(&xs).map_or(Json::Null, |(p50, max)| json!({ "p50": p50, "max": max }))
    };
    let takeover_figures = json!({
        "ownership_s": of_kills("ownership_s"),
        "first_reading_s": of_kills("first_reading_s"),
        "largest_gap_s": of_kills("largest_gap_s"),
    });

    // 4. A join.
    let newcomer = &mut joiner[0];
    let mut all_ids = ids.clone();
    all_ids.push(newcomer.id.clone());
    // Three intervals after the last restart's rebalancing (itself a
    // release-then-acquire), so the join's window holds its own handovers
    // only.
    tokio::time::sleep(spec.every * 3).await;
    say(format!("{} joins", newcomer.id));
    let join_at = Utc::now();
    newcomer.start(product, &database_url, spec)?;
    let joined = {
        let mut running: Vec<&mut Instance> = first.iter_mut().collect();
        running.push(newcomer);
        watch.settled(&all_ids, &mut running).await?
    };
    let moved = moved_links(&current.owners, &joined.owners);
    let newcomer_id = all_ids[spec.instances].clone();
    let not_to_newcomer = moved
        .iter()
        .filter(|l| joined.owners.get(*l) != Some(&newcomer_id))
        .count();
    let moved_devices: Vec<&Followed> = watch.devices_of(&moved).collect();
    // One more firing of every moved device after the move, so the old
    // owners' last readings (written up to a batch delay after their
    // polls) are in before the gaps are measured.
    let after_move: Vec<(i32, Ts)> = moved_devices
        .iter()
        .map(|d| (d.register, joined.acquired[&d.link] + spec.every))
        .collect();
    let read = watch.until_read(&after_move, "after the join").await?;
    let registers: Vec<i32> = moved_devices.iter().map(|d| d.register).collect();
    let readings = watch
        .readings_between(
            &registers,
            join_at - chrono::Duration::from_std(spec.every * 3)?,
            read.iter().copied().max().unwrap_or(join_at),
        )
        .await?;
    let mut longest = Vec::with_capacity(moved_devices.len());
    let (mut polled_twice, mut lost_firings) = (0, 0);
    // Each device that lost a firing or had one polled twice, with when
    // its link changed hands: where in the handover it fell.
    let mut odd = Vec::new();
    for d in &moved_devices {
        let ts = readings.get(&d.register).map_or(&[][..], Vec::as_slice);
        let g = gaps(ts).with_context(|| {
            format!(
                "moved device {} has fewer than two readings around the join",
                d.name
            )
        })?;
        longest.push(g.longest.as_secs_f64());
        let every = spec.every;
        let f = firings(ts, every, |t| {
            d.ticker
                .next_after(t - chrono::Duration::from_std(every).ok()?)
        });
        polled_twice += f.polled_twice;
        lost_firings += f.lost;
        if f.lost > 0 || f.polled_twice > 0 {
            let acquired = joined.acquired[&d.link];
            odd.push(json!({
                "device": d.name,
                "link": d.link,
                "lost": f.lost,
                "polled_twice": f.polled_twice,
                "longest_gap_s": round3(g.longest.as_secs_f64()),
                "longest_gap_after": g.longest_after,
                "acquired_by_newcomer_after_it_s": round3(secs_between(g.longest_after, acquired)),
            }));
        }
    }
    let join = json!({
        "instance": newcomer_id,
        "links_moved": moved.len(),
        "devices_moved": moved_devices.len(),
        "share_moved": moved_devices.len() as f64 / spec.devices as f64,
        "links_moved_elsewhere": not_to_newcomer,
        "settle_s": round3(secs_between(join_at, joined.at)),
        "largest_gap_s": longest.iter().copied().reduce(f64::max).map(round3),
        // Each reading sorted onto the firing it belongs to (the device's
        // schedule): two on one firing is a double poll, none a lost one.
        "firings_polled_twice": polled_twice,
        "firings_lost": lost_firings,
        "devices_lost_or_twice": odd,
        "split": split_json(&split(&joined.owners, &watch.devices_per_link)),
    });
    say(format!(
        "join: {} devices ({} links) moved, {} of them elsewhere than to {newcomer_id}; firings lost {lost_firings}, polled twice {polled_twice}; largest gap of a moved device {} s",
        moved_devices.len(),
        moved.len(),
        not_to_newcomer,
        join["largest_gap_s"]
    ));
    for i in instances.iter_mut() {
        i.stop().await?;
    }

    // 5. One plain instance with one instance's share, for the CPU.
    let single = single_instance(spec, product, &ports, work).await?;
    drop(sim);
    say(format!(
        "one plain instance of {} devices: {:.2} µs CPU/reading",
        single["devices"], single["cpu_us_per_reading"]
    ));

    let lease = regpoll::settings::CLUSTER_LEASE.default_duration();
    let heartbeat = regpoll::settings::CLUSTER_HEARTBEAT.default_duration();
    Ok(json!({
        "scenario": spec.name,
        "kind": "cluster",
        "devices": spec.devices,
        "registers_per_device": spec.registers,
        "every_s": spec.every.as_secs_f64(),
        "simulator_ports": ports.len(),
        "units_per_port": layout.units_per_port,
        "links": watch.links.len(),
        "instances": spec.instances,
        "lease_s": lease.as_secs_f64(),
        "heartbeat_s": heartbeat.as_secs_f64(),
        "fence_margin_s": regpoll::settings::CLUSTER_FENCE_MARGIN.default_duration().as_secs_f64(),
        // A dead instance's lease runs out, another sees it within a
        // heartbeat, and its devices fire within one interval after that.
        "takeover_bound_s": (lease + heartbeat + spec.every).as_secs_f64(),
        "settle_s": round3(settle_s),
        "split": split_json(&split_at_start),
        "window": {
            "polls_per_s": polls_per_s,
            "expected_polls_per_s": expected_polls_per_s,
            "links_moved": moved_in_window,
            "instances": per_instance,
            "cpu_us_per_reading": median_and_max(&cpu).map(|(p50, max)| json!({ "p50": p50, "max": max })),
        },
        "single": single,
        "kills": kills,
        "takeover": takeover_figures,
        "join": join,
    }))
}

/// `regpoll devices sync`: the registry every instance loads.
fn sync_devices(product: &Path, yaml: &Path, database_url: &str) -> anyhow::Result<()> {
    let out = Command::new(product)
        .args(["devices", "sync"])
        .arg(yaml)
        .env_remove("DATABASE_URL")
        .env("REGPOLL_DATABASE_URL", database_url)
        .stdin(Stdio::null())
        .output()
        .context("cannot run regpoll devices sync")?;
    if !out.status.success() {
        bail!(
            "regpoll devices sync exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Links and devices of each instance, as JSON by instance.
fn split_json(split: &BTreeMap<String, (u32, u32)>) -> Json {
    split
        .iter()
        .map(|(id, (links, devices))| (id.clone(), json!({ "links": links, "devices": devices })))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn describe_split(split: &BTreeMap<String, (u32, u32)>) -> String {
    split
        .iter()
        .map(|(id, (links, devices))| format!("{id} {devices} devices ({links} links)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `regpoll run` without `--cluster` polling one instance's share of
/// the fleet (the first devices, whole ports), against a database of its
/// own and the same simulator: the single-instance CPU per reading at the
/// per-instance load.
async fn single_instance(
    spec: &ClusterSpec,
    product: &Path,
    ports: &[u16],
    work: &Path,
) -> anyhow::Result<Json> {
    let mut layout = FleetSpec::layout(spec.devices / spec.instances, spec.registers);
    layout.every = spec.every;
    layout.units_per_port = spec.units_per_port.max(1);
    let yaml = work.join("single.yaml");
    std::fs::write(&yaml, fleet_yaml(&layout, ports))?;
    let database_url = fresh_database(&spec.database_url, &format!("{}_single", spec.name)).await?;
    let http = SocketAddr::from(([127, 0, 0, 1], free_ports(1)?[0]));
    let dir = work.join("single");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("run.log");
    let mut run = run_command(
        product,
        http,
        &dir.join("data"),
        &log,
        Some(&database_url),
        spec.redis_url.as_deref(),
        &format!("bench-{}-single", spec.name),
    )?;
    run.arg("--devices").arg(&yaml);
    let mut run = Proc(run.spawn().context("cannot start the single regpoll run")?);
    wait_until_polling(&mut run, http, layout.devices, &log).await?;
    tokio::time::sleep(spec.warmup).await;
    let pid = run.0.id();
    let a = sample(http, pid).await?;
    tokio::time::sleep(spec.duration).await;
    let b = sample(http, pid).await?;
    let status = stop(&mut run).await?;
    if !status.success() {
        bail!(
            "the single regpoll run exited with {status} after SIGTERM; its log:\n{}",
            tail(&log)
        );
    }
    let mut w = window(&a, &b);
    w["devices"] = json!(layout.devices);
    w["links"] = json!(layout.devices.div_ceil(layout.units_per_port));
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cluster_of_one_is_refused_before_anything_starts() {
        let spec = ClusterSpec {
            name: "cluster".into(),
            devices: 30,
            registers: 10,
            every: Duration::from_secs(1),
            units_per_port: 10,
            instances: 1,
            kills: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            database_url: "postgres://127.0.0.1:1/none".into(),
            redis_url: None,
        };
        let e = cluster(&spec, Path::new("/nonexistent/regpoll"))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("--instances must be at least 2"),
            "{e}"
        );
    }
}
