//! The pure-ingest scenario: synthetic readings through the history writer
//! alone, then the same rows through `psql`'s binary COPY into the same
//! table, round after round.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use regpoll::db::Db;
use regpoll::history::row::{Row, rows_of};
use regpoll::history::store::{COPY_STATEMENT, copy_bytes};
use regpoll::history::writer::{BatchSettings, HistoryStats, run_writer};
use regpoll::reading::PollReport;
use serde_json::{Value as Json, json};
use sqlx::{Executor as _, PgPool};

use crate::database::fresh_database;
use crate::proc_stats::own_cpu_seconds;
use crate::workload::synthetic_reports;

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

/// One pass of the reports through the history writer, as `run` sets it up.
async fn through_writer(
    db: &Db,
    reports: &[Arc<PollReport>],
    batch_rows: usize,
) -> anyhow::Result<(Duration, f64, u64)> {
    let stats = Arc::new(HistoryStats::default());
    let (tx, rx) = tokio::sync::mpsc::channel(regpoll::settings::HISTORY_QUEUE);
    let (_abort, abort_rx) = tokio::sync::watch::channel(false);
    let cpu0 = own_cpu_seconds()?;
    let started = Instant::now();
    let writer = tokio::spawn(run_writer(
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

async fn count_and_truncate(pool: &PgPool) -> anyhow::Result<u64> {
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
    // The writer's own connections, made as `run` makes them (migrations
    // included), and one of ours to count and empty the table between runs.
    let db = Db::postgres(&url).await?;
    let pool = PgPool::connect(&url)
        .await
        .context("cannot connect to the scenario's database")?;
    let reports = ingest_reports(spec.rows)?;
    let mut rows: Vec<Row> = Vec::with_capacity(spec.rows + 10);
    for r in &reports {
        rows_of(r, &mut rows);
    }
    rows.truncate(spec.rows);
    let reports = &reports[..spec.rows.div_ceil(10)];
    let rows_n = rows.len() as u64;
    let file = std::env::temp_dir().join(format!("regpoll-bench-{}.pgcopy", std::process::id()));
    std::fs::write(&file, copy_bytes(&rows))?;
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
            let stored = count_and_truncate(&pool).await?;
            if stored != rows_n {
                bail!("the writer stored {stored} of {rows_n} rows");
            }
            let started = Instant::now();
            let out = Command::new(&spec.psql)
                .arg(&url)
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
                .arg(COPY_STATEMENT)
                .stdin(std::fs::File::open(&file)?)
                .output()
                .with_context(|| format!("cannot run {}", spec.psql.display()))?;
            let psql_took = started.elapsed();
            if !out.status.success() {
                bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let stored = count_and_truncate(&pool).await?;
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
        "timescaledb": regpoll::db::has_timescaledb(&pool).await.unwrap_or(false),
    }))
}
