//! `regpoll run`: the service, until SIGTERM or Ctrl-C.

use std::time::Duration;

use super::load_file;
use crate::app::{self, DeviceSource, Settings};
use crate::cli::RunArgs;
use crate::history::writer::BatchSettings;

pub(super) async fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.devices {
        // Validate before touching the database, so a bad file changes nothing.
        load_file(path)?;
    }
    let settings = settings(args);
    let running = app::start(&settings, DeviceSource::Registry).await?;
    app::shutdown_signal().await;
    tracing::info!("shutting down: finishing polls and flushing queues");
    let summary = running.shutdown().await?;
    log_summary(&summary);
    Ok(())
}

/// The service's settings from the command line.
fn settings(args: RunArgs) -> Settings {
    Settings {
        database_url: args.db.database_url(),
        redis_url: args.sinks.redis_url(),
        sqlite_path: args.db.sqlite_path,
        redis_prefix: args.sinks.redis_prefix,
        redis_ttl: args.sinks.redis_ttl,
        devices_file: args.devices,
        batch: BatchSettings {
            spool_after: args.sinks.spool_after,
            spool_dir: Some(args.sinks.data_dir.join("spool")),
            max_rows: args.sinks.batch_rows.max(1),
            max_delay: args.sinks.batch_delay,
        },
        shutdown_timeout: args.sinks.shutdown_timeout,
        reload_interval: args.reload_interval,
        retention: args.sinks.retention.0,
        http: args.http.0,
        ..Settings::default()
    }
}

fn log_summary(summary: &app::RunSummary) {
    tracing::info!(
        polls = summary.polls,
        rows_written = summary.rows_written,
        rows_lost = summary.rows_lost,
        duplicates = summary.duplicates,
        rows_spooled = summary.rows_spooled,
        rows_replayed = summary.rows_replayed,
        spool_damage = summary.spool_damage,
        spool_bytes = summary.spool_bytes,
        write_p50_ms = quantile_ms(&summary.write_latency, 0),
        write_p99_ms = quantile_ms(&summary.write_latency, 1),
        redis_polls_written = summary.redis_polls_written,
        redis_coalesced = summary.redis_coalesced,
        overruns = summary.overruns,
        lateness_p50_ms = quantile_ms(&summary.lateness, 0),
        lateness_p99_ms = quantile_ms(&summary.lateness, 1),
        lateness_max_ms = quantile_ms(&summary.lateness, 2),
        "stopped"
    );
}

/// Quantile `i` of a run's recorded durations, in milliseconds (0 when none).
fn quantile_ms(q: &Option<Vec<Duration>>, i: usize) -> f64 {
    q.as_ref().map_or(0.0, |q| q[i].as_secs_f64() * 1e3)
}
