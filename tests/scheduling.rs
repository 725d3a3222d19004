//! Schedules against the real simulator: poll groups at their own rates,
//! overruns skipped rather than caught up, and SIGTERM losing nothing read.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use regpoll::app::{self, DeviceSource, Settings};
use regpoll::db::Db;
use regpoll::sim::{Bind, FaultAction, SimFault, Simulator};

async fn counts(db: &Db) -> Vec<(String, String, i64)> {
    let Db::Sqlite(pool) = db else {
        unreachable!("these tests use SQLite")
    };
    sqlx::query_as("SELECT device, register, COUNT(*) FROM register_readings_named GROUP BY device, register ORDER BY device, register")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_with_its_own_schedule_is_polled_at_its_own_rate() {
    let yaml = "devices:\n  - name: boiler\n    host: 127.0.0.1\n    port: {A}\n    every: 1s\n    align: strict\n    registers:\n      - { name: slow, kind: holding, address: 0 }\n      - { name: fast, kind: holding, address: 50, every: 100ms }\n";
    let fixture = common::simulate(yaml, &["{A}"]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("r.db"),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .unwrap();
    common::wait_for_polls(&running, 25).await;
    running.shutdown().await.unwrap();
    let db = Db::sqlite(&settings.sqlite_path).await.unwrap();
    let c = counts(&db).await;
    let (fast, slow) = (
        c.iter().find(|r| r.1 == "fast").unwrap().2,
        c.iter().find(|r| r.1 == "slow").unwrap().2,
    );
    // 25 polls of the device (both groups) take ~2.3 s: the 100 ms group
    // fires about ten times for each firing of the 1 s group.
    assert!(fast + slow >= 25, "fast {fast}, slow {slow}");
    assert!(
        (1..=4).contains(&slow) && fast >= 6 * slow,
        "fast {fast}, slow {slow}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_slower_than_its_interval_skips_ticks_and_never_bursts() {
    let yaml = "devices:\n  - name: slow\n    host: 127.0.0.1\n    port: {A}\n    every: 200ms\n    align: strict\n    timeout: 2s\n    registers:\n      - { name: a, kind: holding, address: 0 }\n";
    let fixture = common::simulate(yaml, &["{A}"]).await;
    // The fixture's simulator answers at once; this one answers after 450 ms.
    let sim = Simulator::start_with_faults(
        &fixture.devices,
        Bind::Ephemeral,
        vec![SimFault {
            device: "slow".into(),
            register: None,
            action: FaultAction::Delay(Duration::from_millis(450)),
        }],
    )
    .await
    .unwrap();
    let mut devices = fixture.devices.clone();
    devices[0].port = sim.addr_of(&devices[0]).unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("o.db"),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(devices))
        .await
        .unwrap();
    common::wait_for_polls(&running, 4).await;
    let overruns = running.overruns();
    let summary = running.shutdown().await.unwrap();
    // Each 450 ms poll spans two 200 ms firings after its own: they are skipped.
    assert!(
        overruns >= 6 && overruns <= 2 * summary.polls + 2,
        "overruns {overruns} for {} polls",
        summary.polls
    );

    let db = Db::sqlite(&settings.sqlite_path).await.unwrap();
    let Db::Sqlite(pool) = &db else {
        unreachable!()
    };
    let ts: Vec<i64> = sqlx::query_scalar("SELECT ts FROM register_readings ORDER BY ts")
        .fetch_all(pool)
        .await
        .unwrap();
    for pair in ts.windows(2) {
        let gap_ms = (pair[1] - pair[0]) / 1000;
        assert!(
            gap_ms >= 590,
            "polls {gap_ms} ms apart: a burst of catch-up polls"
        );
        // Polls start on the 200 ms grid (strict alignment).
        assert!(
            pair[1] / 1000 % 200 < 20,
            "poll at {} ms is off the 200 ms grid",
            pair[1] / 1000 % 1000
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_polling_exits_zero_and_keeps_every_reading() {
    let yaml = "defaults: { host: 127.0.0.1, every: 100ms }\ndevices:\n  - name: a\n    port: {A}\n    registers:\n      - { name: x, kind: holding, address: 0 }\n      - { name: y, kind: input, address: 0, type: f32 }\n  - name: b\n    port: {A}\n    unit_id: 2\n    registers:\n      - { name: x, kind: coil, address: 0 }\n      - { name: y, kind: holding, address: 9, type: u32 }\n";
    let fixture = common::simulate(yaml, &["{A}"]).await;
    let (dir, path) = common::write_yaml(&fixture.yaml);
    let mut child = Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args([
            "run",
            "--devices",
            path.to_str().unwrap(),
            "--sqlite-path",
            "run.db",
        ])
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("REGPOLL_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    // Let it poll for a while: wait until it reports it started, then for rows.
    while !log.next().unwrap().unwrap().contains("polling started") {}
    let db = Db::sqlite(&dir.path().join("run.db")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while counts(&db).await.iter().map(|c| c.2).sum::<i64>() < 20 {
            tokio::time::sleep(Duration::from_millis(50)).await; // another process: nothing to await
        }
    })
    .await
    .expect("no readings within 10 s");

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let rest: Vec<String> = log.map_while(Result::ok).collect();
    assert!(
        child.wait().unwrap().success(),
        "exit 0 on SIGTERM: {rest:#?}"
    );
    let stopped = rest
        .iter()
        .find(|l| l.contains("stopped"))
        .unwrap_or_else(|| panic!("{rest:#?}"));
    let field = |name: &str| -> i64 {
        let at = stopped.find(&format!("{name}=")).unwrap() + name.len() + 1;
        stopped[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let stored: i64 = counts(&db).await.iter().map(|c| c.2).sum();
    assert_eq!(field("rows_lost"), 0, "{stopped}");
    assert_eq!(stored, field("rows_written"), "{stopped}");
    // Every poll read two registers, and every one of them is stored.
    assert_eq!(stored, 2 * field("polls"), "{stopped}");
}
