//! PostgreSQL unreachable for 20 s while polling: readings wait in memory,
//! overflow to the disk spool, and are replayed when it is back; every reading
//! ends up in the table exactly once, and polling never stalls.

mod common;

use std::sync::Arc;
use std::time::Duration;

use regpoll::app::{self, DeviceSource, Settings};
use regpoll::history::writer::BatchSettings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_second_outage_loses_nothing_and_duplicates_nothing() {
    let yaml = "defaults: { host: 127.0.0.1, port: {A}, every: 200ms }\ndevices:\n  - name: a\n    registers: [ { name: x, kind: holding, address: 0 }, { name: y, kind: input, address: 0, type: f32 } ]\n  - name: b\n    unit_id: 2\n    registers: [ { name: x, kind: coil, address: 0 }, { name: y, kind: holding, address: 5, type: u32 } ]\n";
    let fixture = common::simulate(yaml, &["{A}"]).await;
    let url = common::fresh_postgres().await;
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

    common::set_reachable(&url, false).await;
    let polls_before = running.polls();
    let memory = Arc::clone(&running.latest);
    // 20 s of outage, measured in polls (2 devices × 5 polls/s): polling goes on.
    common::wait_for_polls(&running, memory.device("a").unwrap().state.polls + 100).await;
    assert!(
        running.polls() >= polls_before + 190,
        "polling stalled during the outage"
    );
    common::set_reachable(&url, true).await;

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

/// A fleet of `devices` devices of `registers` holding registers each,
/// polled every `every`, 100 unit ids behind each of the ports `{P0}`, `{P1}`, …
fn fleet_yaml(devices: usize, registers: usize, every: &str) -> (String, Vec<String>) {
    use std::fmt::Write as _;
    let ports: Vec<String> = (0..devices.div_ceil(100))
        .map(|p| format!("{{P{p}}}"))
        .collect();
    let mut yaml =
        format!("defaults: {{ host: 127.0.0.1, every: {every}, timeout: 2s }}\ndevices:\n");
    for d in 0..devices {
        let _ = writeln!(
            yaml,
            "  - name: dev-{d:04}\n    port: {}\n    unit_id: {}\n    registers:",
            ports[d / 100],
            d % 100 + 1
        );
        for r in 0..registers {
            let _ = writeln!(
                yaml,
                "      - {{ name: r{r}, kind: holding, address: {r} }}"
            );
        }
    }
    (yaml, ports)
}

async fn stored_rows(url: &str) -> i64 {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let n = sqlx::query_scalar("SELECT count(*) FROM register_readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// Waits until the history writer has caught up: the spool is replayed and
/// memory holds no more than the batch being gathered (`max_rows`).
async fn until_history_is_written(running: &app::Running, max_rows: u64) {
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let h = running.stats().history;
            if h.spool_bytes == 0 && h.rows_waiting <= max_rows && h.rows_written > 0 {
                return;
            }
            // The writer's progress cannot be awaited from outside.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("history did not catch up: {:?}", running.stats().history));
}

/// 1,000 devices (4,000 readings a second) with the history queue and the
/// memory backlog sized down to the fleet, as 10,000 devices fill the
/// default ones: a database outage longer than the pool's acquire timeout
/// skips no poll (overruns and lateness as in a window without outage) and
/// loses no reading; every reading is stored exactly once afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_outage_skips_no_poll_and_loses_no_reading() {
    let (yaml, ports) = fleet_yaml(1_000, 4, "1s");
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    let fixture = common::simulate(&yaml, &ports).await;
    let url = common::fresh_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        database_url: Some(url.clone()),
        // 1,000 reports: 1 s of this fleet, as the default queue is 1.6 s of
        // 10,000 devices. A writer that waits on the database (10 s for a
        // connection) would make the pollers wait within a second.
        history_queue: 1_000,
        batch: BatchSettings {
            max_rows: 1_000,
            spool_after: 4_000,
            spool_dir: Some(dir.path().join("spool")),
            ..BatchSettings::default()
        },
        shutdown_timeout: Duration::from_secs(60),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .unwrap();
    common::wait_for_polls(&running, 3).await;
    let polls_of = |running: &app::Running| {
        running
            .latest
            .snapshot()
            .values()
            .map(|d| d.state.polls)
            .min()
            .unwrap()
    };

    // A window without outage, then one of the same length (12 polls, longer
    // than the pool's 10 s acquire timeout) with the database unreachable.
    let s0 = running.stats();
    common::wait_for_polls(&running, polls_of(&running) + 12).await;
    let s1 = running.stats();
    common::set_reachable(&url, false).await;
    common::wait_for_polls(&running, polls_of(&running) + 12).await;
    let s2 = running.stats();
    common::set_reachable(&url, true).await;
    until_history_is_written(&running, 1_000).await;
    let summary = running.shutdown().await.unwrap();

    let p99 = |a: &regpoll::stats::ServiceStats, b: &regpoll::stats::ServiceStats| {
        b.lateness.since(&a.lateness).quantiles(&[0.99]).unwrap()[0]
    };
    let (normal, outage) = ((s1.overruns - s0.overruns), (s2.overruns - s1.overruns));
    let outage_polls = s2.polls - s1.polls;
    println!(
        "overruns normal {normal} outage {outage} of {outage_polls} polls; lateness p99 normal {:?} outage {:?}; {:?}",
        p99(&s0, &s1),
        p99(&s1, &s2),
        summary.history
    );
    assert!(
        outage <= normal + outage_polls / 200,
        "the outage skipped polls: {outage} overruns against {normal} without it"
    );
    assert!(
        p99(&s1, &s2) <= p99(&s0, &s1) * 2 + Duration::from_millis(50),
        "polls were late during the outage: p99 {:?} against {:?}",
        p99(&s1, &s2),
        p99(&s0, &s1)
    );
    assert!(
        s2.history.failures > s1.history.failures,
        "the outage was seen"
    );
    assert!(summary.history.rows_spooled > 0, "{:?}", summary.history);
    assert_eq!(summary.history.rows_lost, 0, "{:?}", summary.history);
    assert_eq!(summary.history.reports_dropped, 0);
    let readings: u64 = summary.readings.iter().sum();
    assert_eq!(readings, 4 * summary.polls);
    // The primary key rules out duplicates: the count says every reading
    // is there exactly once.
    assert_eq!(stored_rows(&url).await as u64, readings, "{summary:?}");
}

/// The spool at its size limit (as on a full disk): readings wait in memory
/// and nothing is lost while memory allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_loses_nothing_while_memory_allows() {
    let (summary, url, ready) = outage_with_a_full_spool(100_000).await;
    assert_eq!(summary.history.rows_lost, 0, "{:?}", summary.history);
    // Not losing, but stalled: /ready says so.
    assert_eq!(ready.status, 503, "{}", ready.body);
    let reasons: Vec<String> = ready.json()["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("history: nothing written for ")),
        "{reasons:?}"
    );
    assert!(!reasons.iter().any(|r| r.contains("losing")), "{reasons:?}");
    let readings: u64 = summary.readings.iter().sum();
    assert_eq!(stored_rows(&url).await as u64, readings, "{summary:?}");
}

/// Past the memory bound with the spool full, the oldest readings are
/// dropped: counted as lost, shown on /ready, and every other reading is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_memory_bound_a_full_spool_loses_the_oldest_counted_and_ready_says_so() {
    let (summary, url, ready) = outage_with_a_full_spool(60).await;
    let h = &summary.history;
    assert!(h.rows_lost > 0, "{h:?}");
    assert_eq!(
        h.reports_dropped, 0,
        "the pollers never found the queue full"
    );
    let readings: u64 = summary.readings.iter().sum();
    assert_eq!(
        stored_rows(&url).await as u64,
        readings - h.rows_lost,
        "every reading not counted lost is stored: {summary:?}"
    );
    assert_eq!(ready.status, 503, "{}", ready.body);
    let reasons = ready.json()["reasons"].clone();
    assert!(
        reasons
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().starts_with("history: losing readings")),
        "{reasons}"
    );
}

/// Two devices every 100 ms through an outage of 60 polls, the spool limited
/// to about three records, history called stalled after 1 s: returns the run's summary, the database URL and
/// /ready as it was at the end of the outage.
async fn outage_with_a_full_spool(
    memory_max: usize,
) -> (regpoll::stats::ServiceStats, String, common::HttpAnswer) {
    let yaml = "defaults: { host: 127.0.0.1, port: {A}, every: 100ms }\ndevices:\n  - name: a\n    registers: [ { name: x, kind: holding, address: 0 }, { name: y, kind: holding, address: 1 } ]\n  - name: b\n    unit_id: 2\n    registers: [ { name: x, kind: holding, address: 0 }, { name: y, kind: holding, address: 1 } ]\n";
    let fixture = common::simulate(yaml, &["{A}"]).await;
    let url = common::fresh_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        database_url: Some(url.clone()),
        http: Some("127.0.0.1:0".parse().unwrap()),
        batch: BatchSettings {
            max_rows: 8,
            max_delay: Duration::from_millis(20),
            spool_after: 8,
            // Three records of 8 rows (272 bytes each), as on a tiny disk.
            spool_max: Some(900),
            memory_max,
            spool_dir: Some(dir.path().join("spool")),
            stalled_after: Duration::from_secs(1),
            ..BatchSettings::default()
        },
        shutdown_timeout: Duration::from_secs(30),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .unwrap();
    common::wait_for_polls(&running, 3).await;
    common::set_reachable(&url, false).await;
    let polls = running.latest.device("a").unwrap().state.polls;
    common::wait_for_polls(&running, polls + 60).await;
    let ready = common::http_get(running.http_addr().unwrap(), "/ready").await;
    let during = running.stats().history;
    assert!(
        during.spool_bytes > 0 && during.spool_bytes <= 900,
        "{during:?}"
    );
    common::set_reachable(&url, true).await;
    until_history_is_written(&running, 8).await;
    let summary = running.shutdown().await.unwrap();
    println!("{:?}", summary.history);
    (summary, url, ready)
}
