//! `regpoll run`: the service, until SIGTERM or Ctrl-C.

use super::load_file;
use crate::app::{self, DeviceSource, Settings};
use crate::cli::RunArgs;
use crate::history::writer::BatchSettings;
use crate::settings;

pub(super) async fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.devices {
        // Validate before touching the database, so a bad file changes nothing.
        load_file(path)?;
    }
    let settings = settings(args)?;
    let running = app::start(&settings, DeviceSource::Registry).await?;
    app::shutdown_signal().await;
    tracing::info!("shutting down: finishing polls and flushing queues");
    running.shutdown().await?.log_summary("stopped");
    Ok(())
}

/// The service's settings from the command line.
fn settings(args: RunArgs) -> anyhow::Result<Settings> {
    Ok(Settings {
        database_url: args.db.database_url(),
        database_tls: args.db.database_tls(),
        redis_url: args.sinks.redis_url(),
        redis_tls: args.sinks.redis_tls(),
        sqlite_path: args.db.sqlite_path,
        redis_prefix: args.sinks.redis_prefix,
        redis_ttl: args.sinks.redis_ttl,
        redis_timeout: args.sinks.redis_timeout,
        redis_linger: args.sinks.redis_linger,
        devices_file: args.devices,
        batch: BatchSettings {
            spool_after: args.sinks.spool_after,
            spool_dir: Some(args.sinks.data_dir.join(settings::SPOOL_SUBDIR)),
            max_rows: args.sinks.batch_rows.max(1),
            max_delay: args.sinks.batch_delay,
            retry_max: args.sinks.history_retry_max,
            memory_max: args.sinks.history_memory_max,
            spool_max: args.sinks.spool_max,
            stalled_after: args.sinks.history_stalled_after,
        },
        shutdown_timeout: args.sinks.shutdown_timeout,
        reload_interval: args.reload_interval,
        retention: args.sinks.retention.0,
        retention_1m: args.sinks.retention_1m.resolve(args.sinks.retention.0),
        retention_1h: args.sinks.retention_1h.0,
        rollup_interval: args.sinks.rollup_interval,
        jobs_check_interval: args.sinks.jobs_check_interval,
        db_health_timeout: args.sinks.db_health_timeout,
        http: args.http.0,
        api: args.api.limits(),
        data_dir: Some(args.sinks.data_dir),
        database_retry_max: args.database_retry_max,
        cluster: args.cluster.settings(),
        http_access: args.access.access()?,
        ..Settings::default()
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    /// The command line's defaults and the library's are the same settings:
    /// `regpoll run` with no flags is `Settings::default()`, except where the
    /// binary deliberately differs (it serves HTTP and keeps a spool).
    #[test]
    fn run_without_flags_is_the_default_settings() {
        let Command::Run(args) = Cli::parse_from(["regpoll", "run"]).command else {
            unreachable!("`run` parses as Run");
        };
        let mut from_cli = settings(*args).unwrap();
        assert_eq!(
            from_cli.http,
            Some(settings::HTTP.default_text().parse().unwrap())
        );
        assert_eq!(
            from_cli.batch.spool_dir,
            Some(std::path::Path::new("regpoll-data").join("spool"))
        );
        // The environment may name a database or Redis (DATABASE_URL, REDIS_URL).
        from_cli.database_url = None;
        from_cli.redis_url = None;
        from_cli.http = None;
        from_cli.batch.spool_dir = None;
        assert_eq!(
            from_cli.data_dir.take(),
            Some(std::path::PathBuf::from("regpoll-data"))
        );
        assert_eq!(
            format!("{from_cli:?}"),
            format!("{:?}", Settings::default())
        );
    }
}
