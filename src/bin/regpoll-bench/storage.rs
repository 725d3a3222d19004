//! The storage scenario: what a reading costs on disk.
//!
//! A slice of the bench fleet (the devices `fleet` polls, with the values
//! the simulator serves them: `regpoll::sim::expected_value`, so the
//! numbers compress as the fleet's do) is written over several simulated
//! days that end now, each device polled at the fleet's interval and spread
//! across it as the scheduler spreads them. The rows go through regpoll's
//! own history store (`HistoryStore::write`: binary COPY on PostgreSQL,
//! multi-row INSERT on SQLite) in the writer's batch size, and then:
//!
//! - PostgreSQL: after `VACUUM (ANALYZE)`, the table's and its indexes'
//!   bytes (`pg_table_size`, which counts TOAST and the free-space and
//!   visibility maps, `pg_indexes_size`, `pg_total_relation_size`); with
//!   TimescaleDB the hypertable's (`hypertable_detailed_size`) before and
//!   after `compress_chunk` over every chunk, and
//!   `hypertable_compression_stats`;
//! - the rollups `register_readings_1m` and `register_readings_hourly`,
//!   whatever each is on this database: nothing, a view (nothing stored),
//!   a table (regpoll's refresh job run over everything written first, as
//!   it would have been by now; then its bytes and rows), or a continuous
//!   aggregate (refreshed over the data set first, then
//!   `hypertable_detailed_size`);
//! - SQLite: the `dbstat` sums of each table and its indexes, and the
//!   file's size after a `wal_checkpoint(TRUNCATE)` (every page back in the
//!   main file, the WAL emptied).
//!
//! Bytes per reading barely depend on the fleet's size, so a slice stands
//! for the fleet: a plain table's rows and B-tree leaves are the same
//! whatever the number of registers, and TimescaleDB compresses each
//! register's rows of a chunk in batches of 1,000, which a register polled
//! every second fills 86 times a day. The figure would move for registers
//! polled so rarely that a chunk holds fewer than 1,000 of their rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use regpoll::db::{Db, has_timescaledb};
use regpoll::history::deadband::Deadbands;
use regpoll::history::rollup::{self, Horizon};
use regpoll::history::row::Row;
use regpoll::history::store::{HistoryStore, for_db};
use regpoll::history::writer::HistoryStats;
use regpoll::reading::PollReport;
use regpoll::registry::{Band, Deadband, Device, parse_duration};
use serde_json::{Value as Json, json};
use sqlx::{PgPool, SqlitePool};

use crate::database::fresh_database;
use crate::workload::numbered_fleet;

/// The scenario's shape (`regpoll-bench storage`).
#[derive(Debug, Clone, clap::Args)]
pub struct StorageSpec {
    /// Scenario name: names the database (regpoll_bench_NAME) and the result.
    #[arg(long, default_value = "storage")]
    pub name: String,
    /// Devices of the fleet slice written.
    #[arg(long, default_value_t = 4)]
    pub devices: usize,
    /// Registers per device.
    #[arg(long, default_value_t = 10)]
    pub registers: usize,
    /// Poll interval of every device (the fleet's: scenarios b and c poll
    /// every second).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub every: Duration,
    /// Simulated days of history, ending now. TimescaleDB's chunks are a
    /// day (from midnight UTC), so 3 days fill four of them, the first and
    /// the last in part.
    #[arg(long, default_value_t = 3)]
    pub days: u32,
    /// Each poll's timestamp is this many microseconds late at most (a
    /// pseudo-random amount below it, the same in every run): a real
    /// reading is stamped when its request is sent, a little after the
    /// firing (scenario c's lateness p99 is about 3 ms). Exact firings
    /// would flatter TimescaleDB's delta-of-delta timestamps. Must be less
    /// than the interval.
    #[arg(long, default_value_t = 1_000)]
    pub lateness_us: u64,
    /// The deadband leg's band (`deadband:` of devices.yaml, absolute, in
    /// the registers' units). The simulator's values step by 1 a second, so
    /// a band of B stores about one reading in B + 1 (and 0.5 none fewer).
    #[arg(long, default_value_t = 5.0)]
    pub deadband: f64,
    /// The deadband leg's heartbeat (`heartbeat:` of devices.yaml).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Rows of one write, as `run --batch-rows`.
    #[arg(long, default_value = regpoll::settings::BATCH_ROWS.default_text())]
    pub batch_rows: usize,
    /// Admin URL of a PostgreSQL server; a fresh database is created on it.
    #[arg(long, env = "REGPOLL_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Directory the SQLite file is written in (on the disk to measure); the
    /// file is removed afterwards.
    #[arg(long, default_value = ".")]
    pub sqlite_dir: PathBuf,
}

/// Days the data set may span: a month is plenty for several chunks, and
/// keeps a mistyped `--days` from filling the disk.
const MAX_DAYS: u32 = 31;

/// Rows the data set may hold: 500 million are about 50 GB in a plain
/// PostgreSQL table and as much again in SQLite.
const MAX_ROWS: u128 = 500_000_000;

/// The rollups measured when they exist, finest first (the hourly one is
/// built on the 1-minute one where both are continuous aggregates, so it
/// is refreshed after it).
const ROLLUPS: [&str; 2] = ["register_readings_1m", "register_readings_hourly"];

/// The readings of a fleet slice over a span of time: device `d` of `n` is
/// polled at `from + k × every + d × every / n` (its firing, as the
/// scheduler spreads devices over their interval) plus a lateness below
/// `lateness_us`, for every `k` below `polls`, and each poll reads every
/// register of the device.
pub struct DataSet {
    devices: Vec<Arc<Device>>,
    every_us: i64,
    lateness_us: u64,
    from: DateTime<Utc>,
    polls: u64,
}

impl DataSet {
    /// The data set of `spec` ending at the last whole interval before `now`.
    pub fn new(spec: &StorageSpec, now: DateTime<Utc>) -> anyhow::Result<DataSet> {
        if spec.devices == 0 || spec.registers == 0 {
            bail!("--devices and --registers must be at least 1");
        }
        if spec.days == 0 || spec.days > MAX_DAYS {
            bail!(
                "--days {} is out of range: give 1 to {MAX_DAYS} (TimescaleDB's chunks are a day, so 3 or more fill several)",
                spec.days
            );
        }
        let every_us = i64::try_from(spec.every.as_micros()).unwrap_or(i64::MAX);
        let day_us = 86_400_000_000;
        if every_us < 1_000 || every_us > day_us {
            bail!(
                "--every {:?} is out of range: give 1ms to 24h (a day is one chunk)",
                spec.every
            );
        }
        if !(spec.deadband.is_finite() && spec.deadband >= 0.0) {
            bail!(
                "--deadband {} is not a band: give a width of 0 or more in the registers' units",
                spec.deadband
            );
        }
        if spec.lateness_us >= every_us as u64 {
            bail!(
                "--lateness-us {} is not less than --every {:?}: a poll that late would overrun its next firing",
                spec.lateness_us,
                spec.every
            );
        }
        let polls = i64::from(spec.days) * day_us / every_us;
        let rows = (polls as u128) * (spec.devices as u128) * (spec.registers as u128);
        if rows > MAX_ROWS {
            bail!(
                "{rows} rows (--devices × --registers × polls in --days at --every) is more than {MAX_ROWS}: about 100 bytes each on PostgreSQL; give fewer devices or days, or a longer interval"
            );
        }
        // One interval back from the last whole one, so that every poll,
        // late and spread as it is, is before `now`.
        let end_us = now.timestamp_micros() / every_us * every_us - every_us;
        let from = DateTime::from_timestamp_micros(end_us - polls * every_us)
            .context("the data set would start before the year -262143")?;
        Ok(DataSet {
            devices: numbered_fleet(spec.devices, spec.registers)?
                .into_iter()
                .map(Arc::new)
                .collect(),
            every_us,
            lateness_us: spec.lateness_us,
            from,
            polls: polls as u64,
        })
    }

    /// Puts the slice's devices in `db`'s registry, as `regpoll devices
    /// sync` does, and takes them back with the ids it gave them: the rollup
    /// refresh recomputes the registers of the registry, so rows under ids
    /// it does not know would never reach the rollups.
    pub async fn register(&mut self, db: &Db) -> anyhow::Result<()> {
        let devices: Vec<Device> = self.devices.iter().map(|d| (**d).clone()).collect();
        db.sync_devices(&devices).await?;
        let mut loaded = db.load_devices().await?.devices;
        for d in &mut self.devices {
            let i = loaded
                .iter()
                .position(|l| l.name == d.name)
                .with_context(|| {
                    format!("device {} is not in the registry after a sync", d.name)
                })?;
            *d = Arc::new(loaded.swap_remove(i));
        }
        Ok(())
    }

    /// Rows of the whole data set.
    pub fn rows(&self) -> u64 {
        self.polls
            * self
                .devices
                .iter()
                .map(|d| d.registers.len() as u64)
                .sum::<u64>()
    }

    /// Registers of the fleet slice.
    pub fn registers(&self) -> usize {
        self.devices.iter().map(|d| d.registers.len()).sum()
    }

    pub fn from(&self) -> DateTime<Utc> {
        self.from
    }

    /// The end of the last round of polls (its readings are at most one
    /// interval after it).
    pub fn to(&self) -> DateTime<Utc> {
        self.from + chrono::Duration::microseconds(self.polls as i64 * self.every_us)
    }

    /// When device `d` is polled the `k`-th time.
    fn poll_time(&self, k: u64, d: usize) -> DateTime<Utc> {
        let n = self.devices.len() as u64;
        let spread = d as i64 * self.every_us / n as i64;
        let late = match self.lateness_us {
            0 => 0,
            bound => (mix(k * n + d as u64) % bound) as i64,
        };
        self.from + chrono::Duration::microseconds(k as i64 * self.every_us + spread + late)
    }

    /// Every poll's report, in the order polls deliver them: the fleet's
    /// first round, then the second, and so on. Every reading is good.
    pub fn reports(&self) -> impl Iterator<Item = PollReport> + '_ {
        (0..self.polls).flat_map(move |k| {
            self.devices.iter().enumerate().map(move |(d, device)| {
                let ts = self.poll_time(k, d);
                crate::workload::good_report(Arc::clone(device), ts, |_, reg| {
                    regpoll::sim::expected_value(&device.name, reg, ts)
                })
            })
        })
    }

    /// Every row history stores, as the history writer makes them of the
    /// reports: through the deadband filter, which passes every reading of
    /// a register without a deadband.
    pub fn iter(&self) -> impl Iterator<Item = Row> + '_ {
        let mut filter = Deadbands::new(Arc::new(HistoryStats::default()));
        self.reports().flat_map(move |report| {
            let mut rows = Vec::with_capacity(report.readings.len());
            filter.rows_of(&report, &mut rows);
            rows
        })
    }

    /// The same polls with `deadband` on every register, as devices.yaml's
    /// `deadband:` and `heartbeat:` set it.
    pub fn with_deadband(&self, deadband: &Deadband) -> DataSet {
        let devices = self
            .devices
            .iter()
            .map(|d| {
                let mut d = (**d).clone();
                d.registers = d
                    .registers
                    .iter()
                    .map(|r| {
                        let mut r = r.clone();
                        r.deadband = Some(Box::new(*deadband));
                        r
                    })
                    .collect();
                Arc::new(d)
            })
            .collect();
        DataSet { devices, ..*self }
    }
}

/// A well-spread 64-bit hash of `x` (SplitMix64's finaliser): the same
/// lateness for the same poll in every run, without a random generator.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes of a relation or a database split the way the report shows them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    /// The rows themselves (with PostgreSQL's TOAST and maps).
    pub table: i64,
    pub index: i64,
    pub total: i64,
}

impl Sizes {
    /// As JSON, with each figure also divided by `rows`.
    pub fn json(&self, rows: u64) -> Json {
        json!({
            "table_bytes": self.table,
            "index_bytes": self.index,
            "total_bytes": self.total,
            "bytes_per_reading": {
                "table": per_reading(self.table, rows),
                "index": per_reading(self.index, rows),
                "total": per_reading(self.total, rows),
            },
        })
    }
}

/// `bytes` shared out over `rows` readings; none for no rows.
pub fn per_reading(bytes: i64, rows: u64) -> Option<f64> {
    (rows > 0).then(|| bytes as f64 / rows as f64)
}

/// How long the writes took (the generation of the rows in between is not
/// counted) and how many rows the store said were new.
struct Fill {
    busy: Duration,
    /// Rows handed to the store.
    fed: u64,
    written: u64,
}

impl Fill {
    fn json(&self) -> Json {
        let s = self.busy.as_secs_f64();
        json!({
            "write_s": s,
            "rows_per_s": (s > 0.0).then(|| self.written as f64 / s),
        })
    }
}

/// Writes `rows` through `store` in batches of `batch_rows`, one
/// `HistoryStore::write` each as the history writer makes them.
async fn fill(
    store: &dyn HistoryStore,
    rows: impl Iterator<Item = Row>,
    batch_rows: usize,
) -> anyhow::Result<Fill> {
    let mut f = Fill {
        busy: Duration::ZERO,
        fed: 0,
        written: 0,
    };
    let mut batch = Vec::with_capacity(batch_rows);
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        batch.clear();
        batch.extend(rows.by_ref().take(batch_rows));
        f.fed += batch.len() as u64;
        let started = Instant::now();
        f.written += store.write(&[&batch]).await?;
        f.busy += started.elapsed();
    }
    Ok(f)
}

/// Runs the storage scenario.
pub async fn storage(spec: &StorageSpec) -> anyhow::Result<Json> {
    let say = |m: String| eprintln!("bench {}: {m}", spec.name);
    let mut data = DataSet::new(spec, Utc::now())?;
    let batch_rows = spec.batch_rows.max(1);
    say(format!(
        "{} rows: {} devices × {} registers every {:?} from {} to {}",
        data.rows(),
        spec.devices,
        spec.registers,
        spec.every,
        data.from(),
        data.to()
    ));
    let at = |name| Where {
        spec,
        name,
        batch_rows,
    };
    let all = leg(&at(&spec.name), &mut data, &say).await?;
    let deadband = Deadband {
        band: Band::Absolute(spec.deadband),
        heartbeat: Some(spec.heartbeat),
    };
    let mut banded = data.with_deadband(&deadband);
    let name = format!("{}_deadband", spec.name);
    let mut with_deadband = leg(&at(&name), &mut banded, &say).await?;
    with_deadband["deadband"] = json!(spec.deadband);
    with_deadband["heartbeat_s"] = json!(spec.heartbeat.as_secs_f64());
    with_deadband["leg"] = json!(format!(
        "deadband {} + heartbeat {}",
        spec.deadband,
        regpoll::registry::format_duration(spec.heartbeat)
    ));
    Ok(json!({
        "scenario": spec.name,
        "kind": "storage",
        "data_set": {
            "devices": spec.devices,
            "registers_per_device": spec.registers,
            "registers": data.registers(),
            "every_s": spec.every.as_secs_f64(),
            "lateness_us_below": spec.lateness_us,
            "days": spec.days,
            "from": data.from().to_rfc3339(),
            "to": data.to().to_rfc3339(),
            "rows": data.rows(),
            "batch_rows": batch_rows,
            "values": "regpoll::sim::expected_value, as the simulator serves the bench fleet",
        },
        "legs": [all, with_deadband],
    }))
}

/// Where a leg writes: the database `regpoll_bench_<name>` on the spec's
/// server and a SQLite file named after it, in batches of `batch_rows`.
struct Where<'a> {
    spec: &'a StorageSpec,
    name: &'a str,
    batch_rows: usize,
}

/// One leg: the data set through the history store into a fresh PostgreSQL
/// database `regpoll_bench_<name>` and a SQLite file, each measured. Its
/// `rows` are those history stores of the `readings` polled (all of them
/// without a deadband).
async fn leg(at: &Where<'_>, data: &mut DataSet, say: &impl Fn(String)) -> anyhow::Result<Json> {
    let postgres = postgres_leg(at, data, say).await?;
    let sqlite = sqlite_leg(at, data, say).await?;
    let stored = postgres["rows_fed"].as_u64().unwrap_or(0);
    Ok(json!({
        "leg": "all readings",
        "readings": data.rows(),
        "rows": stored,
        "share_stored": per_reading(stored as i64, data.rows()),
        "postgres": postgres,
        "sqlite": sqlite,
    }))
}

/// PostgreSQL: a fresh database migrated as `run` migrates it, filled
/// through the store, then measured.
async fn postgres_leg(
    at: &Where<'_>,
    data: &mut DataSet,
    say: &impl Fn(String),
) -> anyhow::Result<Json> {
    let url = fresh_database(&at.spec.database_url, at.name).await?;
    let db = Db::postgres(&url).await?;
    let pool = db
        .as_postgres()
        .context("Db::postgres gave a pool that is not PostgreSQL")?
        .clone();
    let timescaledb = has_timescaledb(&pool).await?;
    data.register(&db).await?;
    let store = for_db(&db);
    let f = fill(store.as_ref(), data.iter(), at.batch_rows).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM register_readings")
        .fetch_one(&pool)
        .await?;
    say(format!(
        "PostgreSQL: {stored} rows stored in {:.1} s of writes",
        f.busy.as_secs_f64()
    ));
    let refresh = refresh_rollups(&db).await?;
    sqlx::raw_sql("VACUUM (ANALYZE) register_readings")
        .execute(&pool)
        .await
        .context("VACUUM (ANALYZE) register_readings failed")?;
    let rows = stored as u64;
    let columns = column_bytes(&pool).await?;
    let (plain, hypertable) = if timescaledb {
        (Json::Null, hypertable_sizes(&pool, rows, say).await?)
    } else {
        (
            relation_sizes(&pool, "register_readings").await?.json(rows),
            Json::Null,
        )
    };
    let rollups = rollup_sizes(&pool, timescaledb, rows).await?;
    db.close().await;
    Ok(json!({
        "timescaledb": timescaledb,
        "rows_fed": f.fed,
        "rows_written": f.written,
        "rows_stored": stored,
        "fill": f.json(),
        "plain": plain,
        "hypertable": hypertable,
        "column_bytes": columns,
        "rollup_refresh": refresh,
        "rollups": rollups,
    }))
}

/// `hypertable_detailed_size` of a hypertable or continuous aggregate
/// (TimescaleDB looks up the aggregate's own hypertable). Its table bytes
/// are given here with the TOAST bytes, as `pg_table_size` counts them.
async fn detailed_size(pool: &PgPool, relation: &str) -> anyhow::Result<Sizes> {
    let (table, index, toast, total): (Option<i64>, Option<i64>, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "SELECT table_bytes, index_bytes, toast_bytes, total_bytes \
             FROM hypertable_detailed_size($1::regclass)",
        )
        .bind(relation)
        .fetch_one(pool)
        .await
        .with_context(|| format!("cannot read hypertable_detailed_size of {relation}"))?;
    Ok(Sizes {
        table: table.unwrap_or(0) + toast.unwrap_or(0),
        index: index.unwrap_or(0),
        total: total.unwrap_or(0),
    })
}

/// With TimescaleDB: the hypertable before and after compressing every
/// chunk, and TimescaleDB's own account of the compression.
async fn hypertable_sizes(pool: &PgPool, rows: u64, say: &impl Fn(String)) -> anyhow::Result<Json> {
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM show_chunks('register_readings')")
        .fetch_one(pool)
        .await?;
    let before = detailed_size(pool, "register_readings").await?;
    let started = Instant::now();
    let compressed: i64 = sqlx::query_scalar(
        "SELECT count(compress_chunk(c, if_not_compressed => true)) \
         FROM show_chunks('register_readings') c",
    )
    .fetch_one(pool)
    .await
    .context("cannot compress the chunks of register_readings")?;
    let took = started.elapsed().as_secs_f64();
    say(format!(
        "TimescaleDB: {compressed} of {chunks} chunks compressed in {took:.1} s"
    ));
    let after = detailed_size(pool, "register_readings").await?;
    let stats: (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT total_chunks, number_compressed_chunks, before_compression_total_bytes, \
         after_compression_total_bytes FROM hypertable_compression_stats('register_readings')",
    )
    .fetch_one(pool)
    .await
    .context("cannot read hypertable_compression_stats of register_readings")?;
    Ok(json!({
        "chunks": chunks,
        "uncompressed": before.json(rows),
        "compressed": after.json(rows),
        "compress_s": took,
        "compression_stats": {
            "total_chunks": stats.0,
            "number_compressed_chunks": stats.1,
            "before_compression_total_bytes": stats.2,
            "after_compression_total_bytes": stats.3,
        },
    }))
}

/// The average bytes each column takes in a row (`pg_column_size`; NULL
/// takes none, only its bit in the row header), and a whole row as a
/// composite value: what a schema change would save is read off these.
async fn column_bytes(pool: &PgPool) -> anyhow::Result<Json> {
    let widths: (f64, f64, f64, f64, f64, f64, f64, f64) = sqlx::query_as(
        "SELECT coalesce(avg(pg_column_size(ts)), 0)::float8, \
                coalesce(avg(pg_column_size(register_id)), 0)::float8, \
                coalesce(avg(pg_column_size(device_id)), 0)::float8, \
                coalesce(avg(pg_column_size(value)), 0)::float8, \
                coalesce(avg(pg_column_size(value_text)), 0)::float8, \
                coalesce(avg(pg_column_size(quality)), 0)::float8, \
                coalesce(avg(pg_column_size(detail)), 0)::float8, \
                coalesce(avg(pg_column_size(r.*)), 0)::float8 \
         FROM register_readings r",
    )
    .fetch_one(pool)
    .await
    .context("cannot read the column widths of register_readings")?;
    Ok(json!({
        "ts": widths.0, "register_id": widths.1, "device_id": widths.2, "value": widths.3,
        "value_text": widths.4, "quality": widths.5, "detail": widths.6, "row_as_composite": widths.7,
    }))
}

/// What a rollup relation is on this database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollupKind {
    Absent,
    View,
    Table,
    ContinuousAggregate,
}

impl RollupKind {
    /// From `pg_class.relkind` (none: no such relation) and whether
    /// TimescaleDB lists it as a continuous aggregate.
    pub fn of(relkind: Option<&str>, continuous: bool) -> RollupKind {
        match relkind {
            None => RollupKind::Absent,
            Some(_) if continuous => RollupKind::ContinuousAggregate,
            Some("r" | "p" | "m") => RollupKind::Table,
            Some(_) => RollupKind::View,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            RollupKind::Absent => "absent",
            RollupKind::View => "view",
            RollupKind::Table => "table",
            RollupKind::ContinuousAggregate => "continuous aggregate",
        }
    }
}

/// regpoll's own refresh of the rollup tables (plain PostgreSQL, SQLite)
/// over everything written, as its job would have done by now, timed. On
/// TimescaleDB it does nothing: the continuous aggregates are refreshed
/// where they are measured ([`rollup_sizes`]).
async fn refresh_rollups(db: &Db) -> anyhow::Result<Json> {
    let started = Instant::now();
    let everything = Horizon {
        raw: None,
        minute: None,
    };
    let rows = rollup::refresh(db, everything)
        .await
        .context("cannot refresh the rollups")?;
    Ok(json!({"rows": rows, "refresh_s": started.elapsed().as_secs_f64()}))
}

/// One rollup's line of the result: its rows, and its bytes shared out over
/// the `readings` of `register_readings` (what it adds to each reading).
fn rollup_json(
    name: &str,
    kind: RollupKind,
    rows: Option<i64>,
    sizes: Option<Sizes>,
    readings: u64,
) -> Json {
    json!({
        "relation": name,
        "kind": kind.text(),
        "rows": rows,
        "sizes": sizes.map(|s| s.json(readings)),
    })
}

/// Each rollup's kind, rows and bytes on PostgreSQL. A continuous
/// aggregate is refreshed over all of the data first, so it holds what its
/// policy would have materialized by now; a table is measured as
/// [`refresh_rollups`] left it.
async fn rollup_sizes(pool: &PgPool, timescaledb: bool, readings: u64) -> anyhow::Result<Json> {
    let mut out = Vec::new();
    for name in ROLLUPS {
        let relkind: Option<String> =
            sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)")
                .bind(name)
                .fetch_optional(pool)
                .await?;
        let continuous = timescaledb
            && sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates \
                 WHERE view_name = $1)",
            )
            .bind(name)
            .fetch_one(pool)
            .await?;
        let kind = RollupKind::of(relkind.as_deref(), continuous);
        let sizes = match kind {
            RollupKind::Absent | RollupKind::View => None,
            RollupKind::Table => Some(relation_sizes(pool, name).await?),
            RollupKind::ContinuousAggregate => {
                // A procedure that may not run in a transaction: the simple
                // protocol, one statement; the name is one of ROLLUPS.
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CALL refresh_continuous_aggregate('{name}', NULL, NULL)"
                )))
                .execute(pool)
                .await
                .with_context(|| format!("cannot refresh the continuous aggregate {name}"))?;
                Some(detailed_size(pool, name).await?)
            }
        };
        // A view's count would aggregate the whole table for nothing.
        let rows: Option<i64> = match kind {
            RollupKind::Absent | RollupKind::View => None,
            _ => Some(
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
                    .fetch_one(pool)
                    .await?,
            ),
        };
        out.push(rollup_json(name, kind, rows, sizes, readings));
    }
    Ok(Json::Array(out))
}

/// A plain table's bytes: `pg_table_size` counts its TOAST table and its
/// free-space and visibility maps with the rows.
async fn relation_sizes(pool: &PgPool, name: &str) -> anyhow::Result<Sizes> {
    let (table, index, total): (i64, i64, i64) = sqlx::query_as(
        "SELECT pg_table_size($1::regclass), pg_indexes_size($1::regclass), \
         pg_total_relation_size($1::regclass)",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .with_context(|| format!("cannot read the size of {name}"))?;
    Ok(Sizes {
        table,
        index,
        total,
    })
}

/// SQLite: a fresh file in `--sqlite-dir`, filled through the store,
/// checkpointed, measured and removed.
async fn sqlite_leg(
    at: &Where<'_>,
    data: &mut DataSet,
    say: &impl Fn(String),
) -> anyhow::Result<Json> {
    let path = at.spec.sqlite_dir.join(format!(
        "regpoll-bench-{}-{}.sqlite",
        at.name,
        std::process::id()
    ));
    remove_sqlite(&path);
    let result = async {
        let db = Db::sqlite(&path).await?;
        let Db::Sqlite(pool) = &db else {
            bail!("Db::sqlite gave a pool that is not SQLite");
        };
        let pool = pool.clone();
        data.register(&db).await?;
        let f = fill(for_db(&db).as_ref(), data.iter(), at.batch_rows).await?;
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM register_readings")
            .fetch_one(&pool)
            .await?;
        say(format!(
            "SQLite: {stored} rows stored in {:.1} s of writes",
            f.busy.as_secs_f64()
        ));
        let refresh = refresh_rollups(&db).await?;
        let readings = stored as u64;
        let file = checkpointed_file_bytes(&pool, &path).await?;
        let sizes = dbstat_sizes(&pool, "register_readings").await?;
        let rollups = sqlite_rollups(&pool, readings).await?;
        db.close().await;
        Ok(json!({
            "rows_written": f.written,
            "rows_stored": stored,
            "fill": f.json(),
            "sizes": sizes.json(readings),
            "file": {
                "total_bytes": file,
                "bytes_per_reading": {"total": per_reading(file, readings)},
            },
            "rollup_refresh": refresh,
            "rollups": rollups,
            "measured_as": "dbstat page sums of each table and its indexes; the file's size after PRAGMA wal_checkpoint(TRUNCATE)",
        }))
    }
    .await;
    remove_sqlite(&path);
    result
}

/// The file's bytes once the WAL is checkpointed into it (every page back
/// in the main file): the readings, the rollups, the registry and free pages.
async fn checkpointed_file_bytes(pool: &SqlitePool, path: &Path) -> anyhow::Result<i64> {
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(pool)
        .await
        .context("cannot checkpoint the SQLite WAL")?;
    if busy != 0 {
        bail!("the SQLite checkpoint was blocked by a reader; the file size would leave pages out");
    }
    let file = std::fs::metadata(path)
        .with_context(|| format!("cannot read the size of {}", path.display()))?;
    Ok(file.len() as i64)
}

/// A SQLite table's pages and its indexes' (`dbstat`). A `WITHOUT ROWID`
/// table is its primary key's B-tree, so it has no index of its own.
async fn dbstat_sizes(pool: &SqlitePool, table: &str) -> anyhow::Result<Sizes> {
    let (rows, index): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(CASE WHEN name = $1 THEN pgsize END), 0), \
                coalesce(sum(CASE WHEN name <> $1 THEN pgsize END), 0) \
         FROM dbstat WHERE name IN (SELECT name FROM sqlite_schema \
                                    WHERE tbl_name = $1 AND type IN ('table', 'index'))",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .context("cannot read dbstat (SQLite built without SQLITE_ENABLE_DBSTAT_VTAB?)")?;
    Ok(Sizes {
        table: rows,
        index,
        total: rows + index,
    })
}

/// Each rollup's kind, rows and bytes in SQLite, as [`refresh_rollups`]
/// left them.
async fn sqlite_rollups(pool: &SqlitePool, readings: u64) -> anyhow::Result<Json> {
    let mut out = Vec::new();
    for name in ROLLUPS {
        let kind: Option<String> =
            sqlx::query_scalar("SELECT type FROM sqlite_schema WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?;
        // sqlite_schema's type in pg_class's letters.
        let relkind = kind.map(|k| if k == "table" { "r" } else { "v" });
        let kind = RollupKind::of(relkind, false);
        let (rows, sizes) = match kind {
            RollupKind::Table => (
                Some(
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
                        .fetch_one(pool)
                        .await?,
                ),
                Some(dbstat_sizes(pool, name).await?),
            ),
            _ => (None, None),
        };
        out.push(rollup_json(name, kind, rows, sizes, readings));
    }
    Ok(Json::Array(out))
}

fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use regpoll::reading::Quality;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        spec: StorageSpec,
    }

    /// The spec of a command line's flags, separated by spaces.
    fn spec(args: &str) -> StorageSpec {
        let mut all = vec!["storage", "--database-url", "postgres://127.0.0.1/x"];
        all.extend(args.split_whitespace());
        Cli::try_parse_from(all).unwrap().spec
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_data_set_ends_at_the_last_whole_interval_and_spans_the_days() {
        let s = spec("--devices 2 --registers 3 --every 10s --days 3");
        let data = DataSet::new(&s, at("2026-12-05T10:00:07.5Z")).unwrap();
        assert_eq!(data.to(), at("2026-12-05T09:59:50Z"));
        assert_eq!(data.from(), at("2026-12-02T09:59:50Z"));
        // Late and spread as they are, every reading is in the past.
        assert!(data.iter().all(|r| r.ts < at("2026-12-05T10:00:07.5Z")));
        // 3 days of polls every 10 s, 6 registers each.
        assert_eq!(data.rows(), 3 * 8_640 * 6);
        assert_eq!(data.iter().count() as u64, data.rows());
        // From before one midnight to after the third: four 1-day chunks.
        let days: std::collections::BTreeSet<_> = data.iter().map(|r| r.ts.date_naive()).collect();
        assert_eq!(days.len(), 4);
    }

    #[test]
    fn devices_are_spread_across_the_interval_and_read_every_register() {
        let s = spec("--devices 4 --registers 2 --every 1s --days 1 --lateness-us 0");
        let data = DataSet::new(&s, at("2026-12-05T00:00:00Z")).unwrap();
        let first: Vec<Row> = data.iter().take(9).collect();
        let offsets: Vec<i64> = first
            .iter()
            .map(|r| (r.ts - data.from()).num_milliseconds())
            .collect();
        // Device by device a quarter second apart, then the next round.
        assert_eq!(offsets, [0, 0, 250, 250, 500, 500, 750, 750, 1000]);
        let ids: Vec<(i32, i32)> = first.iter().map(|r| (r.device_id, r.register_id)).collect();
        assert_eq!(
            ids,
            [
                (1, 1),
                (1, 2),
                (2, 3),
                (2, 4),
                (3, 5),
                (3, 6),
                (4, 7),
                (4, 8),
                (1, 1)
            ]
        );
    }

    #[test]
    fn polls_are_late_by_less_than_the_bound_and_never_out_of_order() {
        let s = spec("--devices 3 --registers 1 --every 1s --days 1");
        let data = DataSet::new(&s, at("2026-12-05T00:00:00Z")).unwrap();
        let mut last = [None; 3];
        let mut lates = std::collections::BTreeSet::new();
        for (i, row) in data.iter().take(30_000).enumerate() {
            let (k, d) = (i / 3, i % 3);
            let firing = data.from()
                + chrono::Duration::microseconds(k as i64 * 1_000_000 + d as i64 * 333_333);
            let late = (row.ts - firing).num_microseconds().unwrap();
            assert!(
                (0..1_000).contains(&late),
                "poll {k} of device {d}: {late} µs late"
            );
            lates.insert(late);
            assert!(last[d] < Some(row.ts));
            last[d] = Some(row.ts);
        }
        // Spread over the bound, not one value.
        assert!(lates.len() > 900, "{}", lates.len());
        // The same data set in every run.
        let again = DataSet::new(&s, at("2026-12-05T00:00:00Z")).unwrap();
        assert!(data.iter().take(1_000).eq(again.iter().take(1_000)));
    }

    #[test]
    fn a_deadband_leaves_out_the_steps_inside_the_band_as_the_writer_would() {
        let s = spec("--devices 2 --registers 5 --every 1s --days 1 --lateness-us 0");
        let data = DataSet::new(&s, at("2026-12-05T00:00:00Z")).unwrap();
        // Without a deadband every reading is a row.
        assert_eq!(data.iter().count() as u64, data.rows());
        let banded = data.with_deadband(&Deadband {
            band: Band::Absolute(5.0),
            heartbeat: Some(Duration::from_secs(900)),
        });
        assert_eq!(banded.rows(), data.rows());
        let rows: Vec<Row> = banded.iter().collect();
        // The values step by 1 a second: a row when the value is more than
        // 5 from the last stored one, every sixth second, and at each wrap.
        let share = rows.len() as f64 / data.rows() as f64;
        assert!((1.0 / 7.0..1.0 / 5.0).contains(&share), "{share}");
        let one: Vec<&Row> = rows.iter().filter(|r| r.register_id == 1).collect();
        assert_eq!(one[0].ts, data.from(), "the first reading is stored");
        assert!(
            one.windows(2)
                .all(|w| (w[1].ts - w[0].ts).num_seconds() <= 900),
            "the heartbeat stores one at least every 15 minutes"
        );
    }

    #[test]
    fn values_are_what_the_simulator_serves_the_bench_fleet() {
        let s = spec("--devices 2 --registers 10 --every 1s --days 1");
        let data = DataSet::new(&s, at("2026-12-05T00:00:00Z")).unwrap();
        let fleet = numbered_fleet(2, 10).unwrap();
        for row in data.iter().take(2_000) {
            let device = &fleet[row.device_id as usize - 1];
            let index = device
                .register_ids
                .iter()
                .position(|&id| id == row.register_id);
            let reg = &device.registers[index.unwrap()];
            let want = regpoll::sim::expected_value(&device.name, reg, row.ts);
            assert_eq!(row.value(), want.as_f64(), "{row:?}");
            assert_eq!(row.quality, Quality::Good);
        }
        // They change from second to second, as the fleet's do.
        let one: Vec<Option<f64>> = data.iter().step_by(20).take(5).map(|r| r.value()).collect();
        assert!(one.windows(2).all(|w| w[0] != w[1]), "{one:?}");
    }

    #[test]
    fn a_data_set_out_of_range_is_refused_with_the_flag_to_fix() {
        let now = at("2026-12-05T00:00:00Z");
        let e = |args: &str| DataSet::new(&spec(args), now).err().unwrap().to_string();
        assert!(e("--days 0").contains("--days 0 is out of range"));
        assert!(e("--days 400").contains("give 1 to 31"));
        assert!(e("--every 25h").contains("--every"));
        assert!(e("--every 1ms --days 31 --lateness-us 0").contains("is more than 500000000"));
        assert!(e("--devices 0").contains("--devices"));
        assert!(e("--registers 0").contains("--registers"));
        assert!(e("--every 1ms --lateness-us 1000").contains("would overrun"));
        assert!(e("--deadband=-1").contains("--deadband -1 is not a band"));
        assert!(e("--deadband NaN").contains("is not a band"));
        assert!(e("--deadband inf").contains("is not a band"));
        // A week is the longest duration parse_duration takes at all.
        assert!(Cli::try_parse_from(["storage", "--database-url", "x", "--every", "8d"]).is_err());
        assert!(DataSet::new(&spec("--every 24h --days 1"), now).is_ok());
    }

    #[test]
    fn bytes_per_reading_divide_each_part_by_the_rows() {
        let s = Sizes {
            table: 6_000,
            index: 3_000,
            total: 9_000,
        };
        let j = s.json(100);
        assert_eq!(j["bytes_per_reading"]["table"], 60.0);
        assert_eq!(j["bytes_per_reading"]["index"], 30.0);
        assert_eq!(j["bytes_per_reading"]["total"], 90.0);
        assert_eq!(j["total_bytes"], 9_000);
        // No rows: no figure rather than a division by zero.
        assert!(s.json(0)["bytes_per_reading"]["total"].is_null());
    }

    #[test]
    fn a_rollup_is_what_the_catalog_says_it_is() {
        assert_eq!(RollupKind::of(None, false), RollupKind::Absent);
        assert_eq!(RollupKind::of(Some("v"), false), RollupKind::View);
        assert_eq!(RollupKind::of(Some("r"), false), RollupKind::Table);
        assert_eq!(RollupKind::of(Some("m"), false), RollupKind::Table);
        // TimescaleDB's continuous aggregate is a view over its own hypertable.
        assert_eq!(
            RollupKind::of(Some("v"), true),
            RollupKind::ContinuousAggregate
        );
    }

    #[tokio::test]
    async fn fill_writes_every_row_once_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::sqlite(&dir.path().join("t.sqlite")).await.unwrap();
        let s = spec("--devices 3 --registers 5 --every 1m --days 1");
        let data = DataSet::new(&s, at("2026-12-05T00:00:00Z")).unwrap();
        let f = fill(for_db(&db).as_ref(), data.iter(), 1_000)
            .await
            .unwrap();
        assert_eq!(f.written, 1_440 * 15);
        // A second pass is all duplicates: the store skips them.
        let again = fill(for_db(&db).as_ref(), data.iter(), 999).await.unwrap();
        assert_eq!(again.written, 0);
    }
}
