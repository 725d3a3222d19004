//! A start while PostgreSQL refuses connections: `run` polls the devices of
//! the registry cache the run before left in the data dir, keeps the
//! readings, says `database: …` on /ready, and once the database is back
//! stores every reading taken meanwhile, exactly once and without gaps.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use regpoll::app::{self, DeviceSource, Settings};
use regpoll::history::writer::BatchSettings;
use regpoll::registry::cache;

const FLEET: &str = "defaults: { host: 127.0.0.1, port: {A}, every: 500ms }\ndevices:\n  - name: a\n    registers: [ { name: x, kind: holding, address: 0 }, { name: y, kind: input, address: 0, type: f32 } ]\n  - name: b\n    unit_id: 2\n    registers: [ { name: x, kind: coil, address: 0 } ]\n";

fn settings(url: &str, data: &Path) -> Settings {
    Settings {
        database_url: Some(url.to_string()),
        data_dir: Some(data.to_path_buf()),
        batch: BatchSettings {
            spool_after: 20,
            spool_dir: Some(data.join("spool")),
            retry_max: Duration::from_millis(500),
            ..BatchSettings::default()
        },
        database_retry_max: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(30),
        ..Settings::default()
    }
}

/// Waits until `done` holds, checking every 50 ms (what it waits for
/// happens in the database or in another task, which cannot be awaited).
async fn within(limit: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_polls_from_the_cache_and_stores_every_reading_once_the_database_is_back() {
    let fixture = common::simulate(FLEET, &["{A}"]).await;
    let url = common::fresh_postgres().await;
    let data = tempfile::tempdir().unwrap();
    let mut settings = settings(&url, data.path());

    // An earlier run with the database leaves the registry cache behind.
    let first = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .unwrap();
    common::wait_for_polls(&first, 2).await;
    let first = first.shutdown().await.unwrap();
    assert!(cache::path_in(data.path()).exists());

    common::set_reachable(&url, false).await;
    settings.http = Some("127.0.0.1:0".parse().unwrap());
    let started = Instant::now();
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .expect("a start with a registry cache needs no database");
    let second_started = chrono::Utc::now() - chrono::Duration::milliseconds(100);
    common::wait_for_polls(&running, 2).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "polling started at once: {:?}",
        started.elapsed()
    );
    let outage = running
        .database_outage()
        .expect("the database is still away");
    let http = running.http_addr().unwrap();
    let ready = common::http_get(http, "/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let reasons = ready.json()["reasons"].to_string();
    assert!(
        reasons.contains("database: not connected since") && reasons.contains("(retrying)"),
        "{reasons}"
    );
    assert!(
        reasons.contains("not currently accepting connections"),
        "{reasons}"
    );
    println!("while down: {outage:?}");

    // 5 s of outage: 10 polls of each device, beyond the 20 rows kept in memory.
    common::wait_for_polls(&running, 12).await;
    common::set_reachable(&url, true).await;
    within(Duration::from_secs(10), "reconnecting", async || {
        running.database_outage().is_none()
    })
    .await;
    within(Duration::from_secs(10), "/ready turning 200", async || {
        common::http_get(http, "/ready").await.status == 200
    })
    .await;
    let polls = running.latest.device("a").unwrap().state.polls;
    common::wait_for_polls(&running, polls + 3).await;
    let second = running.shutdown().await.unwrap();
    println!("{second:?}");
    assert_eq!(second.history.rows_lost, 0);
    assert!(second.history.rows_spooled > 0, "{second:?}");
    assert_eq!(second.history.spool_bytes, 0, "the spool was replayed");

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM register_readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Polls of a read 2 registers, of b one; the primary key rules out
    // duplicates, so equal counts mean every reading is there exactly once.
    let readings = |s: &regpoll::stats::ServiceStats| s.history.rows_written;
    assert_eq!(stored as u64, readings(&first) + readings(&second));
    let per_device: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM register_readings r JOIN devices d ON d.id = r.device_id WHERE d.name = 'a' AND ts >= $1",
    )
    .bind(second_started)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        per_device >= 2 * 15,
        "{per_device} readings of a since the cold start"
    );
    // No gap above 1.6 × the interval in any register since the cold start.
    let gaps: Vec<(i32, f64)> = sqlx::query_as(
        "SELECT register_id, max(gap) FROM (SELECT register_id, \
         extract(epoch FROM ts - lag(ts) OVER (PARTITION BY register_id ORDER BY ts))::float8 AS gap \
         FROM register_readings WHERE ts >= $1) g GROUP BY register_id ORDER BY register_id",
    )
    .bind(second_started)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(gaps.len(), 3, "{gaps:?}");
    assert!(gaps.iter().all(|(_, g)| *g <= 0.8), "{gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_cache_is_reported_and_ignored() {
    let fixture = common::simulate(FLEET, &["{A}"]).await;
    let url = common::fresh_postgres().await;
    let data = tempfile::tempdir().unwrap();
    let path = cache::path_in(data.path());
    std::fs::write(
        &path,
        b"{\"format\": \"regpoll registry cache\", \"version\": 1, \"maps\": [[",
    )
    .unwrap();
    let settings = settings(&url, data.path());

    // With the database away, a damaged cache is no registry: a clear refusal.
    common::set_reachable(&url, false).await;
    let refused = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .err()
        .expect("no usable registry");
    let message = format!("{refused:#}");
    assert!(message.contains("is damaged"), "{message}");
    assert!(
        message.contains(&data.path().display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("not currently accepting connections"),
        "{message}"
    );

    // With the database, it is ignored and replaced by a good one.
    common::set_reachable(&url, true).await;
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .unwrap();
    let cached = cache::load(&path, &running.db.location()).unwrap();
    assert_eq!(cached.devices.len(), 2);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_rewritten_when_the_registry_changes_while_running() {
    let fixture = common::simulate(FLEET, &["{A}"]).await;
    let url = common::fresh_postgres().await;
    let data = tempfile::tempdir().unwrap();
    let only_a = fixture
        .yaml
        .split("  - name: b")
        .next()
        .unwrap()
        .to_string();
    let (_dir, file) = common::write_yaml(&only_a);
    let settings = Settings {
        devices_file: Some(file.clone()),
        reload_interval: Duration::from_millis(200),
        ..settings(&url, data.path())
    };
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    let path = cache::path_in(data.path());
    let names = || {
        let mut n: Vec<String> = cache::load(&path, &running.db.location())
            .map(|l| l.devices.into_iter().map(|d| d.name).collect())
            .unwrap_or_default();
        n.sort();
        n
    };
    assert_eq!(names(), ["a"]);
    std::fs::write(&file, &fixture.yaml).unwrap();
    within(Duration::from_secs(10), "the cache holding b", async || {
        names() == ["a", "b"]
    })
    .await;
    running.shutdown().await.unwrap();
}
