//! A value or row the database refuses never blocks the others: text with a
//! NUL is stored cut and uncertain, rows a constraint or trigger refuses are
//! quarantined (in `register_readings_rejected`, else `rejected.jsonl`, else
//! counted lost) while every other reading keeps arriving, and removing the
//! refusal needs no restart. Real PostgreSQL, SQLite and the simulator.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{http_get, simulate_with_faults, wait_for_polls};
use regpoll::app::{self, DeviceSource, Running, Settings};
use regpoll::db::Db;
use regpoll::history::writer::BatchSettings;
use regpoll::sim::{FaultAction, SimFault};

const FLEET: &str = r#"
defaults:
  host: 127.0.0.1
  every: 200ms
  timeout: 500ms
devices:
  - name: labeled
    port: {A}
    unit_id: 1
    registers:
      - { name: label, kind: holding, address: 10, type: string, length: 3 }
      - { name: level, kind: holding, address: 0, type: u16 }
  - name: meter
    port: {B}
    unit_id: 1
    registers:
      - { name: energy, kind: input, address: 0, type: u32 }
      - { name: power, kind: input, address: 2, type: i32 }
"#;

/// "AB\0CD" and one byte of padding, as a device that leaves old bytes
/// behind a NUL would send it.
fn nul_label() -> SimFault {
    SimFault {
        device: "labeled".into(),
        register: Some("label".into()),
        action: FaultAction::Words(vec![0x4142, 0x0043, 0x4400]),
    }
}

/// The service on the simulated fleet, its API address, and a database
/// handle of the test's own (the service closes its pool at shutdown).
async fn start(
    settings: Settings,
    faults: Vec<SimFault>,
) -> (common::SimFixture, Running, SocketAddr, Db) {
    let fixture = simulate_with_faults(FLEET, &["{A}", "{B}"], faults).await;
    let settings = Settings {
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..settings
    };
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .expect("service starts");
    let addr = running.http_addr().unwrap();
    let db = Db::open(settings.database_url.as_deref(), &settings.sqlite_path)
        .await
        .unwrap();
    wait_for_polls(&running, 2).await;
    (fixture, running, addr, db)
}

fn register_id(running: &Running, device: &str, register: &str) -> i32 {
    let d = running
        .devices()
        .into_iter()
        .find(|d| d.name == device)
        .unwrap();
    let i = d
        .registers
        .iter()
        .position(|r| *r.name == *register)
        .unwrap();
    d.register_id(i)
}

/// Runs `sql` (a count) on whichever database the service uses.
async fn count(db: &Db, sql: &str, id: i32) -> i64 {
    let q = sqlx::AssertSqlSafe(sql.to_string());
    match db {
        Db::Postgres(p) => sqlx::query_scalar(q).bind(id).fetch_one(p).await,
        Db::Sqlite(p) => sqlx::query_scalar(q).bind(id).fetch_one(p).await,
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn execute(db: &Db, sql: &str) {
    let q = sqlx::AssertSqlSafe(sql.to_string());
    match db {
        Db::Postgres(p) => sqlx::query(q).execute(p).await.map(|_| ()),
        Db::Sqlite(p) => sqlx::query(q).execute(p).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Waits until `cond` holds, checking every 50 ms (the writer and the
/// database run on their own; there is nothing to await). Panics after 30 s.
async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows of a register stored after `since` (µs since the epoch on SQLite).
async fn rows_since(db: &Db, register_id: i32, since: DateTime<Utc>) -> i64 {
    let q_pg = "SELECT count(*) FROM register_readings WHERE register_id = $1 AND ts > $2";
    let q_lite = "SELECT count(*) FROM register_readings WHERE register_id = $1 AND ts > $2";
    match db {
        Db::Postgres(p) => {
            sqlx::query_scalar(q_pg)
                .bind(register_id)
                .bind(since)
                .fetch_one(p)
                .await
        }
        Db::Sqlite(p) => {
            sqlx::query_scalar(q_lite)
                .bind(register_id)
                .bind(since.timestamp_micros())
                .fetch_one(p)
                .await
        }
    }
    .unwrap()
}

/// The stored label rows: (text, quality, detail).
async fn label_rows(db: &Db, id: i32) -> Vec<(Option<String>, String, Option<String>)> {
    let q = "SELECT value_text, quality, detail FROM register_readings WHERE register_id = $1";
    match db {
        Db::Postgres(p) => sqlx::query_as(q).bind(id).fetch_all(p).await,
        Db::Sqlite(p) => sqlx::query_as(q).bind(id).fetch_all(p).await,
    }
    .unwrap()
}

async fn nul_text_is_stored_cut_and_uncertain(settings: Settings) {
    let (_fixture, running, _addr, db) = start(settings, vec![nul_label()]).await;
    let label = register_id(&running, "labeled", "label");
    let energy = register_id(&running, "meter", "energy");
    let started = Utc::now();
    until("healthy rows and label rows arrive", || async {
        rows_since(&db, energy, started).await >= 3 && rows_since(&db, label, started).await >= 3
    })
    .await;
    let latest = running.latest.clone();
    let summary = running.shutdown().await.unwrap();
    let rows = label_rows(&db, label).await;
    assert!(!rows.is_empty());
    for row in &rows {
        assert_eq!(
            row,
            &(
                Some("AB".to_string()),
                "uncertain".to_string(),
                Some("text cut at a NUL byte at offset 2 (2 more bytes followed)".to_string())
            )
        );
    }
    // Nothing refused, nothing lost: every poll of every register is stored.
    assert_eq!(
        (summary.history.rows_rejected, summary.history.rows_lost),
        (0, 0)
    );
    let polls = latest.snapshot()["meter"].state.polls as i64;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM register_readings WHERE register_id = $1",
            energy
        )
        .await,
        polls
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_nul_text_cut_and_uncertain_while_other_devices_keep_arriving() {
    nul_text_is_stored_cut_and_uncertain(Settings {
        database_url: Some(common::fresh_postgres().await),
        ..Settings::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_nul_text_as_postgres_does() {
    let dir = tempfile::tempdir().unwrap();
    nul_text_is_stored_cut_and_uncertain(Settings {
        sqlite_path: dir.path().join("h.db"),
        ..Settings::default()
    })
    .await;
}

/// What /ready, /metrics and /api/stats say about rejected rows.
async fn rejected_as_served(addr: SocketAddr) -> (u64, u64, u64) {
    let ready = http_get(addr, "/ready").await;
    assert_eq!(
        ready.status, 200,
        "rejected rows alone do not make it unready: {}",
        ready.body
    );
    let body = ready.json();
    assert_eq!(body["ready"], true);
    let warning = body["warnings"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no warning: {body}"));
    let from_ready: u64 = warning
        .strip_prefix("history: ")
        .and_then(|w| w.strip_suffix(" rows rejected since start (see register_readings_rejected)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected warning: {warning}"));
    let metrics = http_get(addr, "/metrics").await.body;
    let from_metrics: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("regpoll_history_rows_rejected_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rejected counter in {metrics}"));
    let stats = http_get(addr, "/api/stats").await.json();
    let from_stats = stats["history"]["rows_rejected"].as_u64().unwrap();
    (from_ready, from_metrics, from_stats)
}

/// Refuses the rows of one register on a running service, then allows them
/// again: the rest keep arriving, the refused rows are quarantined with the
/// error, and once allowed the register is written again without a restart.
async fn a_refused_register_is_quarantined_and_writable_again(
    settings: Settings,
    refuse: &str,
    allow: &str,
) {
    let (_fixture, running, addr, db) = start(settings, Vec::new()).await;
    let level = register_id(&running, "labeled", "level");
    let energy = register_id(&running, "meter", "energy");
    execute(&db, &refuse.replace("{N}", &level.to_string())).await;
    let refused_at = Utc::now();
    let rejected_sql = "SELECT count(*) FROM register_readings_rejected WHERE register_id = $1 AND error LIKE '%poison%'";
    until(
        "refused rows are quarantined and the others keep arriving",
        || async {
            count(&db, rejected_sql, level).await >= 3
                && rows_since(&db, energy, refused_at).await >= 3
        },
    )
    .await;
    let in_table = count(&db, rejected_sql, level).await as u64;
    let (ready, metrics, stats) = rejected_as_served(addr).await;
    assert!(
        in_table <= ready && ready <= metrics && metrics <= stats,
        "table {in_table}, /ready {ready}, /metrics {metrics}, /api/stats {stats}"
    );
    assert_eq!(running.stats().history.rows_lost, 0);

    execute(&db, allow).await;
    let allowed_at = Utc::now();
    until("the register is written again", || async {
        rows_since(&db, level, allowed_at).await >= 2
    })
    .await;
    let latest = running.latest.clone();
    let summary = running.shutdown().await.unwrap();
    let rejected = count(
        &db,
        "SELECT count(*) FROM register_readings_rejected WHERE register_id = $1",
        level,
    )
    .await;
    let stored = count(
        &db,
        "SELECT count(*) FROM register_readings WHERE register_id = $1",
        level,
    )
    .await;
    let others = count(
        &db,
        "SELECT count(*) FROM register_readings_rejected WHERE register_id <> $1",
        level,
    )
    .await;
    // Every poll's reading of the register is either stored or quarantined,
    // once; no other register's rows were refused.
    let polls = latest.snapshot()["labeled"].state.polls as i64;
    assert_eq!(
        stored + rejected,
        polls,
        "stored {stored} + rejected {rejected}"
    );
    assert_eq!(others, 0);
    assert_eq!(summary.history.rows_rejected, rejected as u64);
    assert_eq!(summary.history.rows_lost, 0);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_a_constraint_refuses_are_quarantined_and_the_rest_keep_arriving() {
    a_refused_register_is_quarantined_and_writable_again(
        Settings {
            database_url: Some(common::fresh_postgres().await),
            ..Settings::default()
        },
        "ALTER TABLE register_readings ADD CONSTRAINT poison CHECK (register_id <> {N}) NOT VALID",
        "ALTER TABLE register_readings DROP CONSTRAINT poison",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_a_trigger_refuses_are_quarantined_and_the_rest_keep_arriving() {
    let dir = tempfile::tempdir().unwrap();
    a_refused_register_is_quarantined_and_writable_again(
        Settings {
            sqlite_path: dir.path().join("h.db"),
            ..Settings::default()
        },
        "CREATE TRIGGER poison BEFORE INSERT ON register_readings WHEN NEW.register_id = {N} \
         BEGIN SELECT RAISE(ABORT, 'poison: register refused'); END",
        "DROP TRIGGER poison",
    )
    .await;
}

/// Both tables refuse the register's rows: they go to the quarantine file in
/// the data directory, or, when that cannot be written, are counted lost.
/// Returns the summary.
async fn refused_by_both_tables(data_dir: &Path) -> regpoll::stats::ServiceStats {
    let settings = Settings {
        database_url: Some(common::fresh_postgres().await),
        batch: BatchSettings {
            spool_dir: Some(data_dir.join("spool")),
            ..BatchSettings::default()
        },
        ..Settings::default()
    };
    let (_fixture, running, _addr, db) = start(settings, Vec::new()).await;
    let level = register_id(&running, "labeled", "level");
    let energy = register_id(&running, "meter", "energy");
    execute(
        &db,
        &format!("ALTER TABLE register_readings_rejected ADD CONSTRAINT poison2 CHECK (register_id <> {level}) NOT VALID"),
    )
    .await;
    execute(
        &db,
        &format!("ALTER TABLE register_readings ADD CONSTRAINT poison CHECK (register_id <> {level}) NOT VALID"),
    )
    .await;
    let refused_at = Utc::now();
    until(
        "rows are refused by both tables while the others arrive",
        || async {
            running.stats().history.rows_rejected >= 3
                && rows_since(&db, energy, refused_at).await >= 3
        },
    )
    .await;
    let summary = running.shutdown().await.unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM register_readings_rejected WHERE register_id = $1",
            level
        )
        .await,
        0
    );
    db.close().await;
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_quarantine_table_refuses_too_go_to_the_file_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let summary = refused_by_both_tables(dir.path()).await;
    let text = std::fs::read_to_string(dir.path().join("rejected.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, summary.history.rows_rejected);
    for l in &lines {
        assert!(l["error"].as_str().unwrap().contains("\"poison\""), "{l}");
        assert!(
            l["quarantine_error"]
                .as_str()
                .unwrap()
                .contains("\"poison2\""),
            "{l}"
        );
        assert!(l["value"].is_number() && l["ts"].is_string(), "{l}");
    }
    assert_eq!(summary.history.rows_lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_nothing_can_keep_are_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    // A data directory that cannot be created, even by root: under a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let summary = refused_by_both_tables(&file.join("data")).await;
    assert!(summary.history.rows_rejected >= 3);
    assert_eq!(summary.history.rows_lost, summary.history.rows_rejected);
}

/// A spool written by an older version can hold text PostgreSQL cannot
/// (a NUL): neither the table nor the quarantine takes it, so it ends in the
/// quarantine file, and the rows around it are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_row_postgres_cannot_hold_goes_to_the_file_and_the_rest_is_written() {
    use regpoll::history::row::Row;
    use regpoll::history::spool::Spool;
    use regpoll::history::writer::{HistoryStats, run_writer};
    use regpoll::reading::Quality;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let rows: Vec<Row> = (0..10)
        .map(|i| {
            let ts = DateTime::from_timestamp_micros(1_700_000_000_000_000 + i).unwrap();
            let text = (i == 6).then_some("A\0B");
            Row::new(ts, 1, 1, None, text.or(Some("ok")), Quality::Good, None)
        })
        .collect();
    Spool::open(&spool_dir, None)
        .unwrap()
        .append(&rows)
        .unwrap();

    let db = Db::postgres(&common::fresh_postgres().await).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(tx);
    let stats = Arc::new(HistoryStats::default());
    let (_abort, abort_rx) = tokio::sync::watch::channel(false);
    let settings = BatchSettings {
        spool_dir: Some(spool_dir.clone()),
        ..BatchSettings::default()
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        run_writer(db.clone(), rx, settings, Arc::clone(&stats), abort_rx),
    )
    .await
    .expect("the writer replays the spool and ends");

    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM register_readings WHERE register_id = $1",
            1
        )
        .await,
        9
    );
    let text = std::fs::read_to_string(dir.path().join("rejected.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(line["value_text"], "A\0B");
    assert!(line["error"].as_str().unwrap().contains("22021"), "{line}");
    let s = stats.snapshot(0);
    assert_eq!(
        (
            s.rows_written,
            s.rows_rejected,
            s.rows_lost,
            s.rows_replayed
        ),
        (9, 1, 0, 10)
    );
    assert_eq!(
        std::fs::read_dir(&spool_dir).unwrap().count(),
        0,
        "spool emptied"
    );
    db.close().await;
}
