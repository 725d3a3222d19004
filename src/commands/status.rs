//! `regpoll status`: the database's health for an operator without the HTTP
//! API (the service need not run): what the history tables cost on disk,
//! their chunks and compression, and TimescaleDB's background jobs. It
//! reads the catalogs only; it never migrates or writes.

use anyhow::Context as _;
use chrono::Utc;

use super::output::{number, print_aligned};
use crate::cli::StatusArgs;
use crate::db::{Db, redact_url};
use crate::history::health::{DatabaseHealth, TableStorage, format_bytes};

pub(super) async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let db = open(args).await?;
    let health = DatabaseHealth::read(&db, args.timeout).await;
    db.close().await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&health.to_json(Utc::now()))?
        );
    } else {
        print(&health);
    }
    match health.read_error() {
        Some(e) => anyhow::bail!("cannot read the database's health: {e}"),
        None => Ok(()),
    }
}

/// The database of `args`, answering: PostgreSQL on one connection whose
/// statements the server cancels after the timeout, SQLite read-only. An
/// unreachable database is an error naming it (password redacted).
async fn open(args: &StatusArgs) -> anyhow::Result<Db> {
    let timeout = args.timeout;
    let db = match args.db.database_url() {
        Some(url) => {
            let db = Db::postgres_lazy_with(&url, &args.db.database_tls())?
                .api_pool(1, timeout, timeout);
            db.probe(timeout).await.with_context(|| {
                format!(
                    "cannot reach the database at {}; check that PostgreSQL runs there and that --database-url (REGPOLL_DATABASE_URL or DATABASE_URL) is the service's",
                    redact_url(&url)
                )
            })?;
            db
        }
        None => {
            let path = &args.db.sqlite_path;
            if !path.is_file() {
                anyhow::bail!(
                    "no SQLite database at {}: regpoll creates it when it first runs; give the service's --sqlite-path (REGPOLL_SQLITE_PATH), or --database-url for PostgreSQL",
                    path.display()
                );
            }
            let db = Db::sqlite_read_only(path);
            db.probe(timeout).await?;
            db
        }
    };
    Ok(db)
}

fn print(h: &DatabaseHealth) {
    println!("database: {} at {}", h.kind, h.location);
    let tables = h.storage.report.as_ref().map(|r| &r.tables[..]);
    let rows: Vec<Vec<String>> = tables.unwrap_or_default().iter().map(table_row).collect();
    println!();
    print_aligned(
        &[
            "TABLE",
            "KIND",
            "SIZE",
            "INDEXES",
            "ROWS (EST.)",
            "CHUNKS",
            "COMPRESSED",
            "RATIO",
        ],
        &rows,
    );
    if let Some(f) = h.storage.report.as_ref().and_then(|r| r.sqlite.as_ref()) {
        println!(
            "\nsqlite file {}: {} (write-ahead log {}), {} pages of {} B, {} free",
            f.path,
            format_bytes(f.file_bytes as i64),
            format_bytes(f.wal_bytes as i64),
            f.page_count,
            f.page_size,
            f.freelist_count
        );
        if let Some(note) = &f.tables_note {
            println!("  {note}");
        }
    }
    if let Some(mark) = h.storage.report.as_ref().and_then(|r| r.rollup_watermark) {
        let age = crate::history::jobs::age(Some(mark), Utc::now());
        println!(
            "\nrollups complete up to {} ({}; regpoll's refresh job moves it every --rollup-interval)",
            crate::reading::rfc3339(mark),
            ago(age)
        );
    }
    if let Some(jobs) = &h.jobs.jobs {
        let now = Utc::now();
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .map(|j| {
                vec![
                    j.id.to_string(),
                    j.name.clone(),
                    j.last_run_status
                        .clone()
                        .unwrap_or_else(|| "never run".into()),
                    ago(j.last_run_age(now)),
                    ago(j.last_success_age(now)),
                    j.consecutive_failures.to_string(),
                    j.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        println!("\nTimescaleDB background jobs:");
        print_aligned(
            &[
                "JOB",
                "NAME",
                "STATUS",
                "LAST RUN",
                "LAST SUCCESS",
                "FAILING RUNS",
                "LAST ERROR",
            ],
            &rows,
        );
    }
}

fn table_row(t: &TableStorage) -> Vec<String> {
    let bytes = |b: Option<i64>| b.map_or_else(|| "-".into(), format_bytes);
    let count = |n: Option<i64>| n.map_or_else(|| "-".into(), |n| number(n as f64));
    vec![
        t.name.clone(),
        t.kind.as_str().into(),
        bytes(t.total_bytes),
        bytes(t.index_bytes),
        count(t.rows_estimate),
        count(t.chunks),
        count(t.compressed_chunks),
        t.compression
            .and_then(|c| c.ratio())
            .map_or_else(|| "-".into(), |r| format!("{r:.1}x")),
    ]
}

/// `12 s ago`, `3.2 h ago`; `never` without a time.
fn ago(age_s: Option<f64>) -> String {
    match age_s {
        None => "never".into(),
        Some(s) if s < 120.0 => format!("{s:.0} s ago"),
        Some(s) if s < 7200.0 => format!("{:.0} min ago", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1} h ago", s / 3600.0),
        Some(s) => format!("{:.1} d ago", s / 86_400.0),
    }
}
