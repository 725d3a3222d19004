//! Redis going away must not disturb polling or history, and the latest
//! values must be complete again within one poll after it comes back. The
//! test runs a Redis of its own: the shared test Redis must not be killed.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands as _;
use regpoll::app::{self, DeviceSource, Settings};

struct OwnRedis(Child);

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/test");
        OwnRedis(child)
    }

    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

async fn latest(port: u16, key: &str) -> Option<HashMap<String, String>> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    con.hgetall(key).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_leaves_polling_and_history_alone_and_keys_return_within_one_poll() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = OwnRedis::start(port);
    let yaml = "devices:\n  - name: boiler\n    host: 127.0.0.1\n    port: {A}\n    every: 200ms\n    registers:\n      - { name: a, kind: holding, address: 0 }\n      - { name: b, kind: input, address: 0, type: f32 }\n";
    let fixture = common::simulate(yaml, &["{A}"]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("r.db"),
        redis_url: Some(format!("redis://127.0.0.1:{port}/")),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .unwrap();
    let memory = Arc::clone(&running.latest);
    let polls = || memory.device("boiler").map_or(0, |d| d.state.polls);
    common::wait_for_polls(&running, 3).await;
    let mut waited = 0;
    while latest(port, "regpoll:latest:boiler")
        .await
        .is_none_or(|h| h.len() < 2)
    {
        assert!(waited < 100, "Redis never got the latest values");
        tokio::time::sleep(Duration::from_millis(50)).await; // another process
        waited += 1;
    }

    redis.stop();
    let before = polls();
    common::wait_for_polls(&running, before + 5).await;
    assert!(
        running.lateness(&[1.0]).unwrap()[0] < Duration::from_millis(100),
        "polling was not slowed by the outage"
    );

    // Back, empty (no persistence): the next poll of each group restores everything.
    let redis = OwnRedis::start(port);
    let back_at = polls();
    let mut waited = 0;
    let restored = loop {
        if let Some(h) = latest(port, "regpoll:latest:boiler").await
            && h.len() == 2
        {
            break polls();
        }
        assert!(waited < 100, "keys not restored");
        tokio::time::sleep(Duration::from_millis(50)).await; // another process
        waited += 1;
    };
    println!(
        "restored {} polls after Redis came back",
        restored - back_at
    );
    let summary = running.shutdown().await.unwrap();
    // Measured: the first poll after the restart restores every key. One more
    // is allowed for the writer's next connection attempt (every 100 ms).
    assert!(
        restored - back_at <= 2,
        "restored after {} polls",
        restored - back_at
    );
    assert_eq!(summary.history.rows_lost, 0);
    assert_eq!(
        summary.history.rows_written,
        2 * summary.polls,
        "every reading reached history through the outage"
    );
    redis.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_redis_down_polls_writes_history_and_fills_redis_once_it_is_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = "devices:\n  - name: boiler\n    host: 127.0.0.1\n    port: {A}\n    every: 200ms\n    registers:\n      - { name: a, kind: holding, address: 0 }\n      - { name: b, kind: input, address: 0, type: f32 }\n";
    let fixture = common::simulate(yaml, &["{A}"]).await;
    let url = common::fresh_postgres().await;
    let settings = Settings {
        database_url: Some(url.clone()),
        redis_url: Some(format!("redis://127.0.0.1:{port}/")),
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Settings::default()
    };
    // Nothing listens on the port yet.
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .expect("Redis being down does not stop the start");
    common::wait_for_polls(&running, 5).await;
    let ready = common::http_get(running.http_addr().unwrap(), "/ready").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("redis:"), "{}", ready.body);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut waited = 0;
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM register_readings")
        .fetch_one(&pool)
        .await
        .unwrap()
        < 2 * 4
    {
        assert!(waited < 100, "history is not written while Redis is down");
        tokio::time::sleep(Duration::from_millis(50)).await; // the writer batches
        waited += 1;
    }

    let redis = OwnRedis::start(port);
    let mut waited = 0;
    while latest(port, "regpoll:latest:boiler")
        .await
        .is_none_or(|h| h.len() < 2)
    {
        assert!(waited < 200, "latest values never reached Redis");
        tokio::time::sleep(Duration::from_millis(50)).await; // another process
        waited += 1;
    }
    let summary = running.shutdown().await.unwrap();
    assert_eq!(summary.history.rows_lost, 0);
    assert_eq!(summary.history.rows_written, 2 * summary.polls);
    redis.stop();
}
