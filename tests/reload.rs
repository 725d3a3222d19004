//! Hot reload while polling: registry changes made by SQL (PostgreSQL) or by
//! editing the devices file reach the running service within 5 s, only the
//! affected devices restart, and an untouched device keeps its rhythm.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use regpoll::app::{self, DeviceSource, Running, Settings};
use regpoll::db::Db;
use regpoll::reading::Value;
use regpoll::sim::expected_value;
use sqlx::Executor as _;

const FLEET: &str = r#"
defaults: { host: 127.0.0.1, port: {A}, every: 200ms }
devices:
  - name: keep
    unit_id: 1
    registers: [ { name: r, kind: holding, address: 0 } ]
  - name: change
    unit_id: 2
    registers: [ { name: r, kind: holding, address: 0 } ]
  - name: off
    unit_id: 3
    registers: [ { name: r, kind: holding, address: 0 } ]
  - name: added
    unit_id: 4
    registers: [ { name: r, kind: holding, address: 0 } ]
"#;

/// Waits (on updates, not by sleeping) until `done` holds; returns how long it took.
async fn within_5s(running: &Running, what: &str, done: impl Fn(&Running) -> bool) -> Duration {
    let started = Instant::now();
    let mut updates = running.latest.subscribe();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !done(running) {
            updates.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} not visible within 5 s"));
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_changes_reach_the_running_service_and_leave_other_devices_alone() {
    let fixture = common::simulate(FLEET, &["{A}"]).await;
    let url = common::fresh_postgres().await;
    let db = Db::postgres(&url).await.unwrap();
    let initial: Vec<_> = fixture
        .devices
        .iter()
        .filter(|d| d.name != "added")
        .cloned()
        .collect();
    db.sync_devices(&initial).await.unwrap();
    // A long periodic check: only the NOTIFY from the triggers can be this fast.
    let settings = Settings {
        database_url: Some(url.clone()),
        reload_interval: Duration::from_secs(60),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    common::wait_for_polls(&running, 3).await;
    let Db::Postgres(pool) = &db else {
        unreachable!()
    };

    let port = fixture.devices[0].port;
    pool.execute(sqlx::AssertSqlSafe(format!(
        "WITH d AS (INSERT INTO devices (name, host, port, unit_id, every_ms, timeout_ms) VALUES ('added', '127.0.0.1', {port}, 4, 200, 1000) RETURNING id) \
         INSERT INTO device_register_map (device_id, name, kind, address, data_type) SELECT id, 'r', 'holding', 0, 'u16' FROM d"
    )))
    .await
    .unwrap();
    let t = within_5s(&running, "an added device", |r| {
        r.latest.device("added").is_some_and(|d| d.state.polls >= 2)
    })
    .await;
    println!("added device polled after {t:?}");

    pool.execute("UPDATE device_register_map SET scale = 0.5 WHERE name = 'r' AND device_id = (SELECT id FROM devices WHERE name = 'change')").await.unwrap();
    let reg = fixture
        .devices
        .iter()
        .find(|d| d.name == "change")
        .unwrap()
        .registers[0]
        .clone();
    let t = within_5s(&running, "a changed scale", |r| {
        let v = r.latest.device("change").unwrap().values["r"].clone();
        [v.ts, v.ts + chrono::Duration::seconds(1)]
            .iter()
            .any(|&ts| match expected_value("change", &reg, ts) {
                Value::Number(n) => v.value == Value::Number(n * 0.5),
                _ => false,
            })
    })
    .await;
    println!("new scale applied after {t:?}");

    pool.execute("UPDATE devices SET active = false WHERE name = 'off'")
        .await
        .unwrap();
    let t = within_5s(&running, "a deactivated device", |r| {
        r.devices().iter().all(|d| d.name != "off") && r.latest.device("off").is_none()
    })
    .await;
    println!("deactivated device stopped after {t:?}");
    let polling: Vec<String> = running.devices().iter().map(|d| d.name.clone()).collect();
    assert_eq!(polling, ["added", "change", "keep"]);

    let keep_latest = Arc::clone(&running.latest);
    common::wait_for_polls(&running, 6).await;
    running.shutdown().await.unwrap();
    assert!(keep_latest.device("keep").unwrap().state.up);

    // The untouched device polled every 200 ms throughout: no gap, no double poll.
    let ts: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT ts FROM register_readings_named WHERE device = 'keep' ORDER BY ts",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(ts.len() >= 6);
    for pair in ts.windows(2) {
        let gap = (pair[1] - pair[0]).num_milliseconds();
        assert!(
            (150..=250).contains(&gap),
            "`keep` polls {gap} ms apart: {ts:?}"
        );
    }
    // The deactivated device stopped: nothing of it after the change was seen.
    let off_last: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT max(ts) FROM register_readings_named WHERE device = 'off'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(off_last.unwrap() < *ts.last().unwrap() - chrono::Duration::milliseconds(400));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_devices_file_reaches_the_running_service() {
    let fixture = common::simulate(FLEET, &["{A}"]).await;
    let cut = fixture.yaml.find("  - name: added").unwrap();
    let (dir, path) = common::write_yaml(&fixture.yaml[..cut]);
    let settings = Settings {
        sqlite_path: dir.path().join("r.db"),
        devices_file: Some(path.clone()),
        reload_interval: Duration::from_millis(200),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    common::wait_for_polls(&running, 2).await;

    // An invalid edit is refused and changes nothing.
    std::fs::write(
        &path,
        fixture.yaml.replace("kind: holding", "kind: holdings"),
    )
    .unwrap();
    let mut updates = running.latest.subscribe();
    for _ in 0..10 {
        updates.changed().await.unwrap();
    }
    assert_eq!(running.devices().len(), 3);

    std::fs::write(&path, &fixture.yaml).unwrap();
    within_5s(&running, "a device added to the file", |r| {
        r.latest.device("added").is_some_and(|d| d.state.polls >= 1)
    })
    .await;
    assert_eq!(running.devices().len(), 4);
    running.shutdown().await.unwrap();
}
