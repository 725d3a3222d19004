//! PostgreSQL unreachable for 20 s while polling: readings wait in memory,
//! overflow to the disk spool, and are replayed when it is back; every reading
//! ends up in the table exactly once, and polling never stalls.

mod common;

use std::sync::Arc;
use std::time::Duration;

use regpoll::app::{self, DeviceSource, Settings};
use regpoll::history::writer::BatchSettings;
use sqlx::Executor as _;

/// Refuses new connections to `db` and ends the open ones (or lets them in again).
async fn set_reachable(admin: &sqlx::PgPool, db: &str, reachable: bool) {
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS {reachable}"
        )))
        .await
        .unwrap();
    if !reachable {
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
            )))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_second_outage_loses_nothing_and_duplicates_nothing() {
    let yaml = "defaults: { host: 127.0.0.1, port: {A}, every: 200ms }\ndevices:\n  - name: a\n    registers: [ { name: x, kind: holding, address: 0 }, { name: y, kind: input, address: 0, type: f32 } ]\n  - name: b\n    unit_id: 2\n    registers: [ { name: x, kind: coil, address: 0 }, { name: y, kind: holding, address: 5, type: u32 } ]\n";
    let fixture = common::simulate(yaml, &["{A}"]).await;
    let url = common::fresh_postgres().await;
    let db_name = url.rsplit('/').next().unwrap().to_string();
    let admin = sqlx::PgPool::connect(&std::env::var("TEST_DATABASE_URL").unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        database_url: Some(url.clone()),
        // A small memory bound, so the outage reaches the disk spool.
        batch: BatchSettings {
            spool_after: 40,
            spool_dir: Some(dir.path().join("spool")),
            ..BatchSettings::default()
        },
        shutdown_timeout: Duration::from_secs(30),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .unwrap();
    common::wait_for_polls(&running, 3).await;

    set_reachable(&admin, &db_name, false).await;
    let polls_before = running.polls();
    let memory = Arc::clone(&running.latest);
    // 20 s of outage, measured in polls (2 devices × 5 polls/s): polling goes on.
    common::wait_for_polls(&running, memory.device("a").unwrap().state.polls + 100).await;
    assert!(
        running.polls() >= polls_before + 190,
        "polling stalled during the outage"
    );
    set_reachable(&admin, &db_name, true).await;

    common::wait_for_polls(&running, memory.device("a").unwrap().state.polls + 10).await;
    let summary = running.shutdown().await.unwrap();
    println!("{summary:?}");
    assert_eq!(summary.history.rows_lost, 0);
    assert!(
        summary.history.rows_spooled > 0,
        "the outage should have reached the spool: {summary:?}"
    );
    assert!(
        summary.history.rows_replayed >= summary.history.rows_spooled,
        "{summary:?}"
    );
    assert_eq!(summary.history.spool_damage, 0);
    assert_eq!(
        summary.history.spool_bytes, 0,
        "the spool was emptied by the replay"
    );
    let write = summary
        .history
        .write_latency
        .quantiles(&[0.5, 0.99, 1.0])
        .expect("batches were written");
    assert!(write[0] <= write[1] && write[1] <= write[2], "{write:?}");

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM register_readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Every poll read two registers; the primary key rules out duplicates, so
    // the count says every reading is there exactly once.
    assert_eq!(stored as u64, 2 * summary.polls, "{summary:?}");
    assert_eq!(stored as u64, summary.history.rows_written);
    let spool_files = std::fs::read_dir(dir.path().join("spool")).unwrap().count();
    assert_eq!(spool_files, 0, "the spool is empty after the replay");
}
