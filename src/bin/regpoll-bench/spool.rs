//! `spool`: the disk spool's throughput, as the history writer uses it
//! during an outage: batches appended as records, one fsync per spill round
//! (`--per-sync` batches), then every segment read back as a replay does.
//! The fleet's full rate is 100,000 readings a second at 10,000 devices.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use regpoll::history::row::{Row, rows_of};
use regpoll::history::spool::Spool;
use serde_json::{Value as Json, json};

use crate::workload;

pub struct SpoolSpec {
    pub name: String,
    pub rows: usize,
    pub batch_rows: usize,
    /// Batches appended between two fsyncs.
    pub per_sync: usize,
    /// Where the spool is written; a fresh directory under it is used.
    pub dir: PathBuf,
}

pub fn spool(spec: &SpoolSpec) -> anyhow::Result<Json> {
    let dir = spec
        .dir
        .join(format!("regpoll-bench-spool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let result = measure(spec, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(spec: &SpoolSpec, dir: &std::path::Path) -> anyhow::Result<Json> {
    // One batch of the benchmark fleet's readings (10 registers a device).
    let reports = workload::synthetic_reports(100, 10, spec.batch_rows.div_ceil(10))?;
    let mut batch: Vec<Row> = Vec::with_capacity(spec.batch_rows);
    for r in &reports {
        rows_of(r, &mut batch);
    }
    batch.truncate(spec.batch_rows);
    let batches = spec.rows.div_ceil(spec.batch_rows);
    let mut spool = Spool::open(dir, None)?;
    let started = Instant::now();
    for b in 0..batches {
        spool.append_pieces(&[&batch])?;
        if (b + 1) % spec.per_sync.max(1) == 0 || b + 1 == batches {
            spool.sync()?;
        }
    }
    let append_s = started.elapsed().as_secs_f64();
    let bytes = spool.bytes();
    spool.seal();
    let started = Instant::now();
    let mut read_rows = 0;
    for path in spool.segments()? {
        read_rows += Spool::read(&path)?
            .batches
            .iter()
            .map(Vec::len)
            .sum::<usize>();
    }
    let read_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        read_rows == batches * spec.batch_rows,
        "read back {read_rows} rows of {}",
        batches * spec.batch_rows
    );
    let rows = (batches * spec.batch_rows) as f64;
    Ok(json!({
        "scenario": spec.name,
        "kind": "spool",
        "rows": rows,
        "batch_rows": spec.batch_rows,
        "batches_per_fsync": spec.per_sync,
        "bytes": bytes,
        "bytes_per_row": bytes as f64 / rows,
        "append_rows_per_s": (rows / append_s).round(),
        "append_mb_per_s": bytes as f64 / 1e6 / append_s,
        "read_rows_per_s": (rows / read_s).round(),
    }))
}
