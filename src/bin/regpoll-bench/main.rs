//! `regpoll-bench`: the benchmark driver behind `scripts/bench`, a program
//! of its own beside `regpoll` that uses only regpoll's public library API
//! and, for the service's own figures, its `/api/stats` endpoint.
//!
//! `fleet` measures `regpoll run` as users run it, in processes of their
//! own started from the `regpoll` binary ([`fleet`]), and the floor under
//! its CPU figure ([`floor`]).
//!
//! `cluster` runs several `regpoll run --cluster` processes on one fleet
//! and measures settling, takeovers after `kill -9`, a join, and the CPU
//! per reading of each instance ([`cluster`]).
//!
//! `ingest` pushes synthetic readings through the history writer alone and
//! then the same rows through `psql`'s binary COPY into the same table, so
//! the ratio of the two compares regpoll's writer with the fastest way
//! PostgreSQL knows to take rows, on the same machine in the same run
//! ([`ingest`]).
//!
//! `storage` writes days of the fleet's readings through the history store
//! and reports the bytes a reading takes on disk: PostgreSQL (and
//! TimescaleDB before and after compression, when installed), the rollups,
//! SQLite ([`storage`]).
//!
//! `widen` times the f32 widening on the decode path ([`widen`]).
//!
//! `report` prints the table of every scenario's JSON and checks the
//! targets ([`report`]).

mod cluster;
mod database;
mod fleet;
mod floor;
mod handover;
mod ingest;
mod outage;
mod page;
mod proc_stats;
mod report;
mod spool;
mod stall;
mod storage;
mod widen;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use regpoll::registry::parse_duration;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "regpoll-bench", version, about = "Benchmark scenarios of regpoll (what scripts/bench runs): a fleet polled by `regpoll run`, pure ingest through the history writer, the report", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
    /// Log filter in tracing's env-filter syntax, for the library code the
    /// bench runs in its own process (the history writer of `ingest`).
    /// Logs go to standard error.
    #[arg(long, global = true, env = "REGPOLL_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Simulate a fleet in its own process, poll it with `regpoll run`, and
    /// measure a window after a warm-up.
    Fleet {
        /// Scenario name: names the database (regpoll_bench_NAME) and the result.
        #[arg(long)]
        name: String,
        #[arg(long)]
        devices: usize,
        /// Registers per device.
        #[arg(long, default_value_t = 10)]
        registers: usize,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        every: Duration,
        /// Length of the measurement window.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Time between the first poll of every device and the window.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        warmup: Duration,
        /// Devices (unit ids) behind each simulator port.
        #[arg(long, default_value_t = 100)]
        units_per_port: usize,
        /// Admin URL of a PostgreSQL server; a fresh database is created on it.
        /// Without it, `run` uses SQLite.
        #[arg(long, env = "REGPOLL_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        #[arg(long, env = "REGPOLL_REDIS_URL", hide_env_values = true)]
        redis_url: Option<String>,
        /// PEM file of the CA of a rediss:// --redis-url, given to regpoll
        /// as --redis-ca (and used by the floor's Redis replay).
        #[arg(long)]
        redis_ca: Option<PathBuf>,
        /// Stall the history writer on purpose during the window: hold
        /// register_readings locked for HOLD once every EVERY (HOLD/EVERY,
        /// e.g. 800ms/4s), as a disk stall holds up a COPY. Needs
        /// --database-url.
        #[arg(long, value_name = "HOLD/EVERY", value_parser = stall::parse_stall)]
        stall: Option<stall::Stall>,
        /// Make the service's database unreachable AT into the window for
        /// LENGTH (AT/LENGTH, e.g. 10s/33s), as a stopped PostgreSQL is, and
        /// report the spool's size and the replay time. Needs --database-url;
        /// make the window long enough for the replay.
        #[arg(long, value_name = "AT/LENGTH", value_parser = outage::parse_outage)]
        outage: Option<outage::Outage>,
        /// After the window, open the status page in this headless
        /// Chromium for as long: first paint, requests per refresh by route,
        /// lateness with the page open, a screenshot under target/.
        #[arg(long, value_name = "CHROMIUM")]
        page: Option<PathBuf>,
        /// The regpoll binary to run as simulator and service; by default the
        /// `regpoll` beside this program, where cargo builds both.
        #[arg(long, value_name = "PATH", env = "BENCH_REGPOLL")]
        regpoll: Option<PathBuf>,
        /// Where to write the result as JSON.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run several `regpoll run --cluster` on one fleet and one PostgreSQL:
    /// settle time and split, CPU per reading of each instance against one
    /// plain instance at the same load, takeovers after `kill -9`, and the
    /// devices a join moves.
    Cluster {
        #[command(flatten)]
        spec: cluster::ClusterSpec,
        /// The regpoll binary to run as simulator and instances.
        #[arg(long, value_name = "PATH", env = "BENCH_REGPOLL")]
        regpoll: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Push readings through the history writer, then the same rows through
    /// `psql` binary COPY, into a fresh database; several rounds.
    Ingest {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Rounds of writer then psql; the median of the per-round ratios is
        /// reported. Single rounds on a VM's disk range from 60 % to 130 %,
        /// so keep it odd and large.
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Admin URL of a PostgreSQL server; a fresh database is created on it.
        #[arg(long, env = "REGPOLL_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The psql binary to compare with.
        #[arg(long, default_value = "psql")]
        psql: PathBuf,
        /// The writer's batch size, as `run --batch-rows`.
        #[arg(long, default_value = regpoll::settings::BATCH_ROWS.default_text())]
        batch_rows: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write days of a fleet slice's readings through the history store into
    /// a fresh PostgreSQL database and a SQLite file, and report the bytes a
    /// reading takes on disk in each.
    Storage {
        #[command(flatten)]
        spec: storage::StorageSpec,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Append readings to a disk spool as the history writer does during a
    /// database outage (one fsync per spill round), then read them back as
    /// a replay does; rows per second both ways.
    Spool {
        #[arg(long, default_value = "spool")]
        name: String,
        #[arg(long, default_value_t = 2_000_000)]
        rows: usize,
        /// Rows of one record, as `run --batch-rows`.
        #[arg(long, default_value = regpoll::settings::BATCH_ROWS.default_text())]
        batch_rows: usize,
        /// Records appended between two fsyncs (1: one fsync per record).
        #[arg(long, default_value_t = 1)]
        per_sync: usize,
        /// Directory on the disk to measure (the spool's, `--data-dir`).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the table of scenario results and check the targets; exits 1
    /// when a target is missed.
    Report {
        /// Result files written by `fleet` and `ingest`.
        files: Vec<PathBuf>,
        /// Where to write all results, with the machine, as one JSON file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Time the widening of f32 values through their shortest decimal on
    /// the decode path, in this process; prints nanoseconds per value.
    Widen {
        /// Values per pass.
        #[arg(long, default_value_t = 1_000_000)]
        values: usize,
        /// Passes; the fastest is reported.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Where to write the result JSON (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!(
                "error: --log / REGPOLL_LOG `{}` is not a log filter ({e}); use a level such as info or debug",
                cli.log
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Fleet {
            name,
            devices,
            registers,
            every,
            duration,
            warmup,
            units_per_port,
            database_url,
            redis_url,
            redis_ca,
            stall,
            outage,
            page,
            regpoll,
            out,
        } => {
            // Found before anything starts, so a missing build fails at once.
            let product = fleet::regpoll_binary(regpoll)?;
            let spec = fleet::FleetSpec {
                name,
                devices,
                registers,
                every,
                duration,
                warmup,
                units_per_port: units_per_port.max(1),
                database_url,
                redis_url,
                redis_ca,
                stall,
                outage,
                page,
            };
            write(out.as_deref(), &fleet::fleet(&spec, &product).await?)
        }
        BenchCommand::Cluster { spec, regpoll, out } => {
            let product = fleet::regpoll_binary(regpoll)?;
            write(out.as_deref(), &cluster::cluster(&spec, &product).await?)
        }
        BenchCommand::Ingest {
            name,
            rows,
            rounds,
            database_url,
            psql,
            batch_rows,
            out,
        } => {
            let spec = ingest::IngestSpec {
                name,
                rows,
                rounds: rounds.max(1),
                database_url,
                psql,
                batch_rows: batch_rows.max(1),
            };
            write(out.as_deref(), &ingest::ingest(&spec).await?)
        }
        BenchCommand::Storage { spec, out } => {
            write(out.as_deref(), &storage::storage(&spec).await?)
        }
        BenchCommand::Spool {
            name,
            rows,
            batch_rows,
            per_sync,
            dir,
            out,
        } => {
            let spec = spool::SpoolSpec {
                name,
                rows,
                batch_rows: batch_rows.max(1),
                per_sync,
                dir,
            };
            write(out.as_deref(), &spool::spool(&spec)?)
        }
        BenchCommand::Report { files, out } => report_files(&files, out.as_deref()),
        BenchCommand::Widen {
            values,
            rounds,
            out,
        } => write(
            out.as_deref(),
            &widen::widen(&widen::WidenSpec { values, rounds }),
        ),
    }
}

/// The report of the given result files, and with `out` all of them and
/// the machine (from the `BENCH_*` variables scripts/bench sets) as one JSON.
fn report_files(files: &[PathBuf], out: Option<&Path>) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        results.push(
            serde_json::from_str::<serde_json::Value>(&text)
                .with_context(|| format!("{} is not a result file", f.display()))?,
        );
    }
    let (table, ok) = report::report(&results);
    println!("{table}");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let all = serde_json::json!({
        "machine": {
            "cpu": env("BENCH_MACHINE_CPU"),
            "cores": env("BENCH_MACHINE_CORES"),
            "memory": env("BENCH_MACHINE_MEM"),
            "postgresql": env("BENCH_PG_VERSION"),
            "redis": env("BENCH_REDIS_VERSION"),
            "timescaledb": !env("BENCH_TIMESCALEDB").is_empty(),
        },
        "scenarios": results,
        "table": table,
        "targets_met": ok,
    });
    if let Some(out) = out {
        write(Some(out), &all)?;
    }
    if !ok {
        anyhow::bail!("some targets were missed (see the table)");
    }
    Ok(())
}

/// A result as JSON, to `out` or else to standard output.
fn write(out: Option<&Path>, result: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(result)?;
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_cluster_scenario_defaults_to_three_instances_on_300_ports() {
        let cli = Cli::try_parse_from([
            "regpoll-bench",
            "cluster",
            "--database-url",
            "postgres://127.0.0.1/x",
        ])
        .unwrap();
        let BenchCommand::Cluster { spec, .. } = cli.command else {
            panic!("not the cluster command");
        };
        assert_eq!((spec.devices, spec.units_per_port), (3000, 10));
        assert_eq!((spec.instances, spec.kills), (3, 3));
        assert_eq!(spec.every, Duration::from_secs(1));
        // Durations are checked where they are parsed.
        assert!(
            Cli::try_parse_from([
                "regpoll-bench",
                "cluster",
                "--database-url",
                "x",
                "--every",
                "soon"
            ])
            .is_err()
        );
    }
}
